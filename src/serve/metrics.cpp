#include "serve/metrics.h"

#include <fmt/format.h>

namespace loom {

void Histogram::observe(double seconds) {
  for (size_t i = 0; i < kBuckets.size(); ++i)
    if (seconds <= kBuckets[i]) ++counts_[i];
  ++count_;
  sum_ += seconds;
}

std::string Histogram::text(const std::string& name) const {
  std::string out;
  for (size_t i = 0; i < kBuckets.size(); ++i)
    out += fmt::format("{}_bucket{{le=\"{}\"}} {}\n", name, kBuckets[i], counts_[i]);
  out += fmt::format("{}_bucket{{le=\"+Inf\"}} {}\n{}_sum {}\n{}_count {}\n", name, count_, name,
                     sum_, name, count_);
  return out;
}

void Metrics::request_done(int status) {
  std::lock_guard<std::mutex> lock(mu_);
  ++requests_[status];
}

void Metrics::cancelled() {
  std::lock_guard<std::mutex> lock(mu_);
  ++cancelled_;
}

void Metrics::tokens(int prompt, int generated) {
  std::lock_guard<std::mutex> lock(mu_);
  prompt_tokens_ += uint64_t(prompt);
  generated_tokens_ += uint64_t(generated);
}

void Metrics::time_to_first_token(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  ttft_.observe(seconds);
}

void Metrics::time_per_output_token(double seconds) {
  std::lock_guard<std::mutex> lock(mu_);
  tpot_.observe(seconds);
}

std::string Metrics::text(int busy_slots, int queue_length) const {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out = "# HELP loom_requests_total Completion requests answered, by HTTP status.\n"
                    "# TYPE loom_requests_total counter\n";
  for (const auto& [status, n] : requests_)
    out += fmt::format("loom_requests_total{{status=\"{}\"}} {}\n", status, n);
  out += fmt::format(
      "# HELP loom_prompt_tokens_total Prompt tokens prefilled.\n"
      "# TYPE loom_prompt_tokens_total counter\nloom_prompt_tokens_total {}\n"
      "# HELP loom_generation_tokens_total Tokens generated.\n"
      "# TYPE loom_generation_tokens_total counter\nloom_generation_tokens_total {}\n"
      "# HELP loom_requests_cancelled_total Requests dropped because their client went away.\n"
      "# TYPE loom_requests_cancelled_total counter\nloom_requests_cancelled_total {}\n",
      prompt_tokens_, generated_tokens_, cancelled_);
  out += "# HELP loom_time_to_first_token_seconds From a request's arrival to its first token.\n"
         "# TYPE loom_time_to_first_token_seconds histogram\n" +
         ttft_.text("loom_time_to_first_token_seconds");
  out += "# HELP loom_time_per_output_token_seconds Between a request's tokens after the first.\n"
         "# TYPE loom_time_per_output_token_seconds histogram\n" +
         tpot_.text("loom_time_per_output_token_seconds");
  out += fmt::format(
      "# HELP loom_busy_slots Sequences decoding now.\n# TYPE loom_busy_slots gauge\n"
      "loom_busy_slots {}\n# HELP loom_queue_length Requests waiting for a slot.\n"
      "# TYPE loom_queue_length gauge\nloom_queue_length {}\n",
      busy_slots, queue_length);
  return out;
}

}  // namespace loom
