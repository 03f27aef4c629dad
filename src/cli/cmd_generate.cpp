// loom generate --ckpt RUN --prompt TEXT | --batch-file FILE [--max-tokens N --temperature T
//   --top-k K --top-p P --seed S --stop TEXT ... --precision fp32|bf16|fp16]
// mpirun -np T loom generate --tp T ...: tensor-parallel, rank 0 prints.
#include <fmt/core.h>

#include <cstdio>
#include <fstream>
#include <map>

#include "cli/command.h"
#include "comm/mpi_comm.h"
#include "comm/process_grid.h"
#include "core/check.h"
#include "data/tokenizer.h"
#include "infer/engine.h"
#include "infer/generate.h"
#include "kernels/openblas.h"

namespace loom::cli {
namespace {

struct Opts {
  std::string ckpt, prompt = "\n", batch_file, tokenizer, precision = "fp32";
  SampleOptions sample;
  int threads = 0, tp = 1;
};

std::vector<std::string> read_prompts(const Opts& o) {
  if (o.batch_file.empty()) return {o.prompt};
  std::ifstream in(o.batch_file);
  LOOM_REQUIRE(in.good(), "cannot read --batch-file '{}'", o.batch_file);
  std::vector<std::string> prompts;
  for (std::string line; std::getline(in, line);) prompts.push_back(line);
  LOOM_REQUIRE(!prompts.empty(), "--batch-file '{}' has no prompts (one a line)", o.batch_file);
  return prompts;
}

// Decodes every prompt together; a single prompt streams its text as it comes, a batch
// prints each sequence (prompt and completion) when it ends. Only `print` ranks print.
int generate_on(const ProcessGrid& grid, const Opts& o, bool print) {
  const Gpt2Tokenizer tok = Gpt2Tokenizer::load(o.tokenizer);
  const std::vector<std::string> prompts = read_prompts(o);
  std::vector<std::vector<int32_t>> tokens;
  for (size_t i = 0; i < prompts.size(); ++i) {
    tokens.push_back(tok.encode(prompts[i]));
    LOOM_REQUIRE(!tokens.back().empty(), "{} is empty: give at least one token of text",
                 o.batch_file.empty() ? "the prompt" : fmt::format("prompt {} (line {} of "
                 "--batch-file)", i, i + 1));
  }
  LoadedModel loaded = load_model(o.ckpt, grid);
  const GptConfig& cfg = loaded.model->config();
  // Room for the longest request (submit() names a request that does not fit the model).
  int capacity = 1;
  for (const auto& t : tokens)
    capacity = std::max<int64_t>(capacity, std::min<int64_t>(cfg.block_size,
                                                             int64_t(t.size()) + o.sample.max_tokens));
  const int slots = int(prompts.size());
  Decoder decoder(*loaded.model, grid, parse_dtype(o.precision), slots, capacity,
                  std::max(slots, 256));
  Engine engine(decoder, &tok);
  for (auto& t : tokens) engine.submit({t, o.sample});
  const bool stream = prompts.size() == 1;
  if (print && stream) fmt::print("{}", prompts[0]);
  std::map<int, std::string> text;
  engine.run([&](const TokenEvent& ev) {
    if (!print) return;
    if (stream) {
      fmt::print("{}", ev.text);
      std::fflush(stdout);
    } else {
      text[ev.id] += ev.text;
      if (ev.finished)
        fmt::print("--- {} ({} tokens, {})\n{}{}\n", ev.id, ev.completion_tokens,
                   finish_reason_name(*ev.finished), prompts[size_t(ev.id)], text[ev.id]);
    }
  });
  if (print && stream) fmt::print("\n");
  return 0;
}

}  // namespace

RunFn setup_generate(CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  o->tokenizer = default_tokenizer_dir().string();
  o->sample.max_tokens = 64;
  sub.add_option("--ckpt", o->ckpt, "run directory or checkpoint directory")->required();
  CLI::Option* prompt = sub.add_option("--prompt", o->prompt, "text to continue");
  sub.add_option("--batch-file", o->batch_file,
                 "prompts to decode together, one a line (instead of --prompt)")
      ->check(CLI::ExistingFile)
      ->excludes(prompt);
  sub.add_option("--max-tokens", o->sample.max_tokens, "tokens to generate")
      ->capture_default_str()
      ->check(in_range(0, 1e9));
  sub.add_option("--temperature", o->sample.temperature, "softmax temperature; 0 = greedy")
      ->capture_default_str()
      ->check(in_range(0, 100));
  sub.add_option("--top-k", o->sample.top_k, "sample among the k likeliest; 0 = all")
      ->capture_default_str()
      ->check(in_range(0, 1e9));
  sub.add_option("--top-p", o->sample.top_p,
                 "then among the likeliest whose probability reaches p, in (0, 1]")
      ->capture_default_str()
      ->check(in_range(0, 1));
  sub.add_option("--stop", o->sample.stop, "end a sequence before this text (repeatable)");
  sub.add_option("--seed", o->sample.seed, "sampling seed")->capture_default_str();
  sub.add_option("--precision", o->precision, "GEMM operands: fp32 | bf16 | fp16 (weights "
                 "rounded once at load, fp32 accumulation)")
      ->capture_default_str();
  sub.add_option("--tp", o->tp, "tensor-parallel ranks (under mpirun -np TP)")
      ->capture_default_str()
      ->check(in_range(1, 4096));
  sub.add_option("--tokenizer", o->tokenizer, "directory with encoder.json and vocab.bpe");
  sub.add_option("--threads", o->threads, "OpenMP threads (0 = this host's cores / its ranks)")
      ->check(in_range(0, 4096));
  return [o] {
    parse_dtype(o->precision);
    validate(o->sample);
    kernels::set_compute_threads(o->threads);
    if (!launched_under_mpi()) {
      LOOM_REQUIRE(o->tp == 1, "--tp {} needs {} processes: run under mpirun -np {}", o->tp,
                   o->tp, o->tp);
      return generate_on(ProcessGrid::single(), *o, true);
    }
    MpiRuntime mpi(MpiOptions{});
    try {
      const ProcessGrid grid = ProcessGrid::create(
          mpi.world(), GridShape{.pp = 1, .dp = 1, .tp = o->tp}, &mpi.progress());
      mpi.set_rank_describer([&grid](int r) { return grid.describe(r); });
      return generate_on(grid, *o, mpi.world_rank() == 0);
    } catch (const Error& e) {
      fmt::print(stderr, "error (rank {}): {}\n", mpi.world_rank(), e.what());
      std::fflush(stderr);
      mpi.world()->abort(e.exit_code());
    }
    return 1;  // not reached: abort() ends the job
  };
}

}  // namespace loom::cli
