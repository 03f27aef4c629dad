// `loom bench serve`: a load test of a running `loom serve` over loopback. For each
// concurrency level, C clients each send streamed completions (P random prompt tokens, M
// new tokens, generation past <|endoftext|>) one after another until N requests are done or
// the time is up; then it prints throughput (requests/s, generated tokens/s) and time to
// first token, time per output token and inter-token latency at p50/p90/p99, with
// vLLM benchmark_serving's definitions (TTFT: send to first token; TPOT: (latency - TTFT) /
// (tokens - 1); ITL: between consecutive token events), the error count, the ratio of each
// level's tokens/s to the first level's, and writes JSON.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace loom {

struct ServeBenchOptions {
  std::string url = "http://127.0.0.1:8080";  // loopback only
  std::vector<int> concurrency{1, 16};
  int requests = 64;        // per level, at most
  double duration_s = 60;   // per level, at most (requests in flight then finish)
  int prompt_tokens = 128;
  int max_tokens = 64;
  std::filesystem::path json_out;
};

// Returns the exit code: non-zero when a request failed.
int bench_serve(const ServeBenchOptions& opt);

}  // namespace loom
