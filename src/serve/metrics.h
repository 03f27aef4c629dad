// What `GET /metrics` reports, in Prometheus' text format: requests by HTTP status, prompt
// and generated tokens, time-to-first-token and time-per-output-token histograms (seconds),
// busy slots and queue length. Updated from the HTTP and decode threads.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace loom {

class Histogram {
 public:
  static constexpr std::array<double, 12> kBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                      0.5,   1,    2.5,   5,    10,  30};
  void observe(double seconds);
  // "name_bucket{le=...} n" lines, then name_sum and name_count.
  std::string text(const std::string& name) const;

 private:
  std::array<uint64_t, kBuckets.size()> counts_{};
  uint64_t count_ = 0;
  double sum_ = 0;
};

class Metrics {
 public:
  void request_done(int status);
  void cancelled();  // a request whose client went away
  void tokens(int prompt, int generated);
  void time_to_first_token(double seconds);
  void time_per_output_token(double seconds);
  // The exposition, with the gauges read now.
  std::string text(int busy_slots, int queue_length) const;

 private:
  mutable std::mutex mu_;
  std::map<int, uint64_t> requests_;  // by status
  uint64_t prompt_tokens_ = 0, generated_tokens_ = 0, cancelled_ = 0;
  Histogram ttft_, tpot_;
};

}  // namespace loom
