#include "infer/bench_generate.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <map>
#include <utility>

#include "ckpt/interop.h"
#include "core/check.h"
#include "core/file_io.h"
#include "core/philox.h"
#include "core/timer.h"
#include "infer/decoder.h"
#include "kernels/bench_kernels.h"

namespace loom {
namespace fs = std::filesystem;
namespace {

std::vector<int32_t> random_prompt(int n, int V) {
  const Philox rng(1234, name_hash("bench.generate"));
  std::vector<int32_t> out(size_t(n), 0);
  for (int i = 0; i < n; ++i) out[size_t(i)] = int32_t(rng.block(uint64_t(i))[0] % uint32_t(V));
  return out;
}

int32_t argmax(const float* logits, int V) {
  return int32_t(std::max_element(logits, logits + V) - logits);
}

// max |a - b| / max(1, max |b|)
double norm_err(const float* a, const float* b, size_t n) {
  double worst = 0, top = 1;
  for (size_t i = 0; i < n; ++i) {
    worst = std::max(worst, double(std::abs(a[i] - b[i])));
    top = std::max(top, double(std::abs(b[i])));
  }
  return worst / top;
}

struct Greedy {
  std::vector<int32_t> tokens;
  std::vector<float> logits;  // every step's (V), if kept
  double step_s = 0;          // median decode step (after the prefill)
};

// Slot 0 of `d`: the prompt, then `steps` greedy tokens.
Greedy greedy(Decoder& d, const std::vector<int32_t>& prompt, int steps, bool keep_logits) {
  const int V = d.vocab_size(), P = int(prompt.size());
  std::vector<DecodeRow> rows;
  for (int i = 0; i < P; ++i) rows.push_back({0, i, prompt[size_t(i)], i + 1 == P});
  Greedy g;
  std::vector<float> logits;
  std::vector<double> times;
  for (int s = 0; s < steps; ++s) {
    Timer t;
    d.forward(rows, logits);
    if (s > 0) times.push_back(t.seconds());
    if (keep_logits) g.logits.insert(g.logits.end(), logits.begin(), logits.end());
    g.tokens.push_back(argmax(logits.data(), V));
    rows = {{0, P + s, g.tokens.back(), true}};
  }
  g.step_s = times.empty() ? 0 : median(times);
  return g;
}

// Time to the first token of the prompt (prefill + argmax), median of `reps`.
double time_ttft(Decoder& d, const std::vector<int32_t>& prompt, int reps) {
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    Timer t;
    greedy(d, prompt, 1, false);
    times.push_back(t.seconds());
  }
  return median(times);
}

// Tokens/s of greedy decode steps of B sequences (each the prompt) after their prefill.
double decode_tok_s(const Gpt& model, const ProcessGrid& one, DType p,
                    const std::vector<int32_t>& prompt, int B, int steps) {
  const int P = int(prompt.size()), V = model.config().vocab_size;
  Decoder d(model, one, p, B, P + steps + 1, std::max(B, P));
  std::vector<float> logits;
  std::vector<DecodeRow> rows;
  for (int b = 0; b < B; ++b) {  // each prompt in a call of its own (untimed)
    std::vector<DecodeRow> prefill;
    for (int i = 0; i < P; ++i) prefill.push_back({b, i, prompt[size_t(i)], i + 1 == P});
    d.forward(prefill, logits);
    rows.push_back({b, P, argmax(logits.data(), V), true});
  }
  std::vector<double> times;
  for (int s = 1; s <= steps; ++s) {
    Timer t;
    d.forward(rows, logits);
    times.push_back(t.seconds());
    for (int b = 0; b < B; ++b)
      rows[size_t(b)] = {b, P + s, argmax(logits.data() + size_t(b) * V, V), true};
  }
  return B / median(times);
}

// FLOPs of a prompt's prefill to its first token: the blocks' GEMMs over every row,
// attention over the causal half, the head over the last row only.
double prompt_flops(const GptConfig& c, int P) {
  const double C = c.n_embd, L = c.n_layer;
  const double gemm = 2.0 * L * (12 * C * C) * P;
  const double attention = 2.0 * L * C * double(P) * (P + 1);  // q.k and p.v, causal
  const double head = 2.0 * C * c.padded_vocab();
  return gemm + attention + head;
}

struct TorchSide {
  std::map<std::string, double> ttft;                   // by precision
  std::map<std::string, std::map<int, double>> decode;  // by precision, batch
  std::vector<float> teacher_logits;                    // fp32, steps x V
  std::string version;
};

TorchSide run_torch(const fs::path& dir, const GenerateBenchOptions& opt,
                    const std::vector<int32_t>& prompt, const std::vector<int32_t>& teacher) {
  const nlohmann::json job = {{"prompt", prompt}, {"teacher", teacher},
                              {"batches", opt.batches}, {"decode_steps", opt.decode_steps},
                              {"ttft_reps", 3}, {"precisions", opt.precisions}};
  write_file_atomic(dir / "job.json", job.dump());
  const std::string cmd =
      fmt::format("OPENBLAS_NUM_THREADS={0} OMP_NUM_THREADS={0} /usr/bin/python3 '{1}' '{2}' {0}",
                  opt.threads, opt.torch_script.string(), dir.string());
  LOOM_REQUIRE(std::system(cmd.c_str()) == 0,
               "the PyTorch side failed ({}); it needs Debian's python3-torch", cmd);
  const nlohmann::json j =
      nlohmann::json::parse(read_file_text(dir / "torch_decode_result.json"));
  TorchSide t;
  t.version = j.at("torch").get<std::string>();
  for (const std::string& p : opt.precisions) {
    t.ttft[p] = j.at(p).at("ttft_s").get<double>();
    for (int b : opt.batches) t.decode[p][b] = j.at(p).at("decode_tok_s").at(std::to_string(b));
  }
  const std::string raw = read_file_text(dir / "torch_logits.bin");
  t.teacher_logits.resize(raw.size() / sizeof(float));
  std::memcpy(t.teacher_logits.data(), raw.data(), t.teacher_logits.size() * sizeof(float));
  return t;
}


struct Row {  // one precision's figures, loom's and PyTorch's
  std::string precision;
  double ttft = 0, torch_ttft = 0;
  std::map<int, double> decode, torch_decode;
  double weight_bytes = 0, kv_bytes = 0, peak = 0;
};

struct Validation {
  std::vector<int32_t> tokens;  // fp32 greedy tokens after the prompt
  std::vector<float> logits;    // their logits (steps x V)
  double full_err = 0, torch_err = 0;
  int full_mismatch = 0;
  bool ok() const { return full_err < 1e-4 && full_mismatch == 0 && torch_err < 1e-4; }
};

// fp32 greedy tokens on the KV cache against the full forward over the same tokens.
Validation check_against_full_forward(Gpt& model, const ProcessGrid& one,
                                      const std::vector<int32_t>& prompt, int steps) {
  const int P = int(prompt.size()), V = model.config().vocab_size;
  Decoder d(model, one, DType::kF32, 1, P + steps + 1, 256);
  const Greedy g = greedy(d, prompt, steps, true);
  Validation v{g.tokens, g.logits};
  std::vector<int32_t> seq = prompt;
  seq.insert(seq.end(), g.tokens.begin(), g.tokens.end() - 1);
  model.set_precision(DType::kF32);
  model.reserve(1, int(seq.size()));
  model.forward(seq.data(), nullptr, 1, int(seq.size()));
  for (int s = 0; s < steps; ++s) {
    const float* want = model.logits() + size_t(P - 1 + s) * model.padded_vocab();
    v.full_err = std::max(v.full_err, norm_err(g.logits.data() + size_t(s) * V, want, size_t(V)));
    v.full_mismatch += argmax(want, V) != g.tokens[size_t(s)];
  }
  return v;
}

// Greedy fp32 tokens after a short prompt, then bf16's top-1 over the same positions
// (teacher-forced, in prefill chunks): the share of positions where bf16 picks fp32's token.
double bf16_agreement(const Gpt& model, const ProcessGrid& one, const std::vector<int32_t>& prompt,
                      int positions, int* compared) {
  const int V = model.config().vocab_size, cap = model.config().block_size;
  const std::vector<int32_t> head(prompt.begin(),
                                  prompt.begin() + std::min<long>(24, long(prompt.size())));
  const int P = int(head.size()), N = std::min(positions, cap - P);
  Decoder d32(model, one, DType::kF32, 1, P + N, 256);
  const Greedy g = greedy(d32, head, N, false);
  std::vector<int32_t> seq = head;
  seq.insert(seq.end(), g.tokens.begin(), g.tokens.end() - 1);
  Decoder d16(model, one, DType::kBF16, 1, P + N, 256);
  std::vector<float> logits;
  int agree = 0, seen = 0;
  for (int r0 = 0; r0 < int(seq.size()); r0 += 256) {
    std::vector<DecodeRow> rows;
    for (int i = r0; i < std::min<int>(int(seq.size()), r0 + 256); ++i)
      rows.push_back({0, i, seq[size_t(i)], i >= P - 1});
    d16.forward(rows, logits);
    for (size_t k = 0; k < logits.size() / size_t(V); ++k, ++seen)
      agree += argmax(logits.data() + k * V, V) == g.tokens[size_t(seen)];
  }
  *compared = seen;
  return double(agree) / double(seen);
}

// loom's figures in one precision, beside PyTorch's.
Row measure(const Gpt& model, const ProcessGrid& one, const std::string& name,
            const std::vector<int32_t>& prompt, const GenerateBenchOptions& opt,
            const TorchSide& torch) {
  const DType p = parse_dtype(name);
  Row r;
  r.precision = name;
  r.peak = kernels::measure_gemm_peak_gflops(p) * 1e9;
  Decoder d(model, one, p, 1, int(prompt.size()) + 1, 256);
  r.ttft = time_ttft(d, prompt, 5);
  r.weight_bytes = double(d.weight_bytes_per_step());
  r.kv_bytes = double(d.kv_bytes_per_token());
  for (int b : opt.batches) r.decode[b] = decode_tok_s(model, one, p, prompt, b, opt.decode_steps);
  r.torch_ttft = torch.ttft.at(name);
  r.torch_decode = torch.decode.at(name);
  return r;
}

void print_table(const std::vector<Row>& rows, const GenerateBenchOptions& opt) {
  std::string head = fmt::format("{:<6} {:<8} {:>9} {:>13}", "prec", "impl", "TTFT ms",
                                 "prefill tok/s");
  for (int b : opt.batches) head += fmt::format(" {:>12}", fmt::format("decode b={}", b));
  fmt::print("\n{}\n", head);
  for (const Row& r : rows)
    for (int side = 0; side < 2; ++side) {
      const double ttft = side ? r.torch_ttft : r.ttft;
      const auto& dec = side ? r.torch_decode : r.decode;
      std::string line = fmt::format("{:<6} {:<8} {:>9.1f} {:>13.1f}", r.precision,
                                     side ? "pytorch" : "loom", ttft * 1e3, opt.prompt_len / ttft);
      for (int b : opt.batches) line += fmt::format(" {:>12.1f}", dec.at(b));
      fmt::print("{}\n", line);
    }
  fmt::print("\n");
}

// The ratios of one precision, printed and as JSON.
nlohmann::json report(const Row& r, const GptConfig& cfg, const GenerateBenchOptions& opt,
                      double bandwidth) {
  const int b1 = opt.batches.front(), bn = opt.batches.back();
  const double bound = bandwidth * 1e9 / r.weight_bytes, flops = prompt_flops(cfg, opt.prompt_len);
  const double ttft_bound = flops / r.peak;
  fmt::print("{}: decode b={} {:.1f} tok/s = {:.2f}x PyTorch, {:.0f}% of the bandwidth bound "
             "{:.1f} tok/s ({:.1f} GB/s read / {:.1f} MB of weights a token); b={} = {:.1f}x "
             "b={}; TTFT {:.1f} ms = {:.2f}x the compute bound {:.1f} ms ({:.1f} GFLOP at "
             "{:.0f} GFLOP/s); KV cache {:.1f} KiB a token\n", r.precision, b1, r.decode.at(b1),
             r.decode.at(b1) / r.torch_decode.at(b1), 100 * r.decode.at(b1) / bound, bound,
             bandwidth, r.weight_bytes / 1e6, bn, r.decode.at(bn) / r.decode.at(b1), b1,
             r.ttft * 1e3, r.ttft / ttft_bound, ttft_bound * 1e3, flops / 1e9, r.peak / 1e9,
             r.kv_bytes / 1024);
  nlohmann::json j = {{"ttft_s", r.ttft}, {"torch_ttft_s", r.torch_ttft},
                      {"weight_bytes_per_token", r.weight_bytes},
                      {"kv_bytes_per_token", r.kv_bytes}, {"gemm_peak_gflops", r.peak / 1e9},
                      {"bandwidth_bound_tok_s", bound}, {"ttft_bound_s", ttft_bound},
                      {"prompt_flops", flops}};
  for (int b : opt.batches) {
    j["decode_tok_s"][std::to_string(b)] = r.decode.at(b);
    j["torch_decode_tok_s"][std::to_string(b)] = r.torch_decode.at(b);
  }
  return j;
}

}  // namespace

int bench_generate(Gpt& model, const GenerateBenchOptions& opt) {
  const GptConfig& cfg = model.config();
  const int P = opt.prompt_len, K = 16;
  LOOM_REQUIRE(P >= 1 && P + std::max(K, opt.decode_steps) + 1 <= cfg.block_size,
               "bench generate: --prompt-len {} plus {} decode steps must fit the block size {}",
               P, std::max(K, opt.decode_steps), cfg.block_size);
  const ProcessGrid one = ProcessGrid::single();
  const std::vector<int32_t> prompt = random_prompt(P, cfg.vocab_size);
  fmt::print("bench generate: L={} C={} NH={} V={}, {} threads, prompt {} tokens, median of {} "
             "decode steps per batch size\n{}\n", cfg.n_layer, cfg.n_embd, cfg.n_head,
             cfg.vocab_size, opt.threads, P, opt.decode_steps, opt.cpu);
  const double bandwidth = kernels::measure_read_bandwidth_gbs();
  Validation v = check_against_full_forward(model, one, prompt, K);
  const fs::path dir = fs::temp_directory_path() / fmt::format("loom_bench_generate_{}", getpid());
  fs::create_directories(dir);
  const auto w = std::as_const(model).weights();
  write_reference_model(dir, cfg, model.params(), w.data(), w.size());
  const TorchSide torch = run_torch(dir, opt, prompt, v.tokens);
  fs::remove_all(dir);
  LOOM_CHECK(torch.teacher_logits.size() == v.logits.size(), "PyTorch gave {} logits, not {}",
             torch.teacher_logits.size(), v.logits.size());
  v.torch_err = norm_err(torch.teacher_logits.data(), v.logits.data(), v.logits.size());
  fmt::print("validation over {} greedy fp32 tokens: KV-cache decode vs full forward: max "
             "normalised logit error {:.2e}, {} tokens differ; vs PyTorch's KV-cache decode: "
             "{:.2e} ({})\n", K, v.full_err, v.full_mismatch, v.torch_err,
             v.ok() ? "ok" : "FAILED");
  std::vector<Row> rows;
  for (const std::string& name : opt.precisions)
    rows.push_back(measure(model, one, name, prompt, opt, torch));
  print_table(rows, opt);
  nlohmann::json out = {{"model", {{"n_layer", cfg.n_layer}, {"n_embd", cfg.n_embd},
                                   {"n_head", cfg.n_head}, {"vocab_size", cfg.vocab_size}}},
                        {"threads", opt.threads}, {"cpu", opt.cpu}, {"prompt_len", P},
                        {"read_bandwidth_gbs", bandwidth}, {"torch", torch.version},
                        {"validation", {{"full_forward_err", v.full_err},
                                        {"full_forward_token_mismatches", v.full_mismatch},
                                        {"torch_err", v.torch_err}, {"ok", v.ok()}}}};
  for (const Row& r : rows) out[r.precision] = report(r, cfg, opt, bandwidth);
  if (std::count(opt.precisions.begin(), opt.precisions.end(), "bf16") > 0) {
    int compared = 0;
    const double agreement =
        bf16_agreement(model, one, prompt, opt.agreement_positions, &compared);
    fmt::print("bf16 picks fp32's greedy token at {:.1f}% of {} decoded positions\n",
               100 * agreement, compared);
    out["bf16_top1_agreement"] = {{"rate", agreement}, {"positions", compared}};
  }
  write_file_atomic(opt.json_out, out.dump(1));
  fmt::print("wrote {}\n", opt.json_out.string());
  return v.ok() ? 0 : 1;
}

}  // namespace loom
