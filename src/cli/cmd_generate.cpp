// loom generate --ckpt RUN --prompt TEXT [--max-tokens N --temperature T --top-k K --seed S]
#include <fmt/core.h>

#include <cstdio>

#include "cli/command.h"
#include "comm/process_grid.h"
#include "data/tokenizer.h"
#include "infer/generate.h"
#include "kernels/openblas.h"

namespace loom::cli {

RunFn setup_generate(CLI::App& sub) {
  struct Opts {
    std::string ckpt, prompt = "\n", tokenizer;
    SampleOptions sample;
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  o->tokenizer = default_tokenizer_dir().string();
  sub.add_option("--ckpt", o->ckpt, "run directory or checkpoint directory")->required();
  sub.add_option("--prompt", o->prompt, "text to continue");
  sub.add_option("--max-tokens", o->sample.max_tokens, "tokens to generate")
      ->capture_default_str()
      ->check(in_range(0, 1e9));
  sub.add_option("--temperature", o->sample.temperature, "softmax temperature; 0 = greedy")
      ->capture_default_str()
      ->check(in_range(0, 100));
  sub.add_option("--top-k", o->sample.top_k, "sample among the k likeliest; 0 = all")
      ->capture_default_str()
      ->check(in_range(0, 1e9));
  sub.add_option("--seed", o->sample.seed, "sampling seed")->capture_default_str();
  sub.add_option("--tokenizer", o->tokenizer, "directory with encoder.json and vocab.bpe");
  sub.add_option("--threads", o->threads, "OpenMP threads (0 = this host's cores / its ranks)")
      ->check(in_range(0, 4096));
  return [o] {
    kernels::set_compute_threads(o->threads);
    const Gpt2Tokenizer tok = Gpt2Tokenizer::load(o->tokenizer);
    const ProcessGrid grid = ProcessGrid::single();
    auto model = std::move(load_model(o->ckpt, grid).model);
    std::vector<int32_t> tokens = tok.encode(o->prompt);
    if (tokens.empty()) tokens.push_back(Gpt2Tokenizer::kEndOfText);
    fmt::print("{}", o->prompt);
    std::fflush(stdout);
    generate(*model, tokens, o->sample, [&](int32_t id) {
      const int32_t one[1] = {id};
      fmt::print("{}", tok.decode(one));
      std::fflush(stdout);
    });
    fmt::print("\n");
    return 0;
  };
}

}  // namespace loom::cli
