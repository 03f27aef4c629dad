#include "infer/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"
#include "core/philox.h"

namespace loom {

void validate(const SampleOptions& opt) {
  LOOM_REQUIRE(std::isfinite(opt.temperature) && opt.temperature >= 0,
               "temperature {} must be a number >= 0 (0 = greedy)", opt.temperature);
  LOOM_REQUIRE(opt.top_k >= 0, "top_k {} must be >= 0 (0 = the whole vocabulary)", opt.top_k);
  LOOM_REQUIRE(opt.top_p > 0 && opt.top_p <= 1, "top_p {} must be in (0, 1]", opt.top_p);
  LOOM_REQUIRE(opt.max_tokens >= 0, "max_tokens {} must be >= 0", opt.max_tokens);
  for (const std::string& s : opt.stop) LOOM_REQUIRE(!s.empty(), "a stop string is empty");
}

int32_t sample_token(const float* logits, int V, const SampleOptions& opt, uint64_t index) {
  if (opt.temperature <= 0.0f) return int32_t(std::max_element(logits, logits + V) - logits);
  std::vector<int32_t> ids(size_t(V), 0);
  std::iota(ids.begin(), ids.end(), 0);
  auto likelier = [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  };
  int K = V;
  if (opt.top_k > 0 && opt.top_k < V) {
    K = opt.top_k;
    std::partial_sort(ids.begin(), ids.begin() + K, ids.end(), likelier);
  } else if (opt.top_p < 1) {
    std::sort(ids.begin(), ids.end(), likelier);
  }
  float max_logit = logits[ids[0]];
  for (int i = 0; i < K; ++i) max_logit = std::max(max_logit, logits[ids[size_t(i)]]);
  std::vector<double> probs(static_cast<size_t>(K));
  double sum = 0.0;
  for (int i = 0; i < K; ++i) {
    probs[size_t(i)] = std::exp(double(logits[ids[size_t(i)]] - max_logit) / opt.temperature);
    sum += probs[size_t(i)];
  }
  if (opt.top_p < 1) {  // ids[0..K) are in decreasing order: keep the shortest head >= top_p
    double head = 0.0;
    int keep = 0;
    while (keep < K && head < opt.top_p * sum) head += probs[size_t(keep++)];
    K = std::max(keep, 1);
    sum = head;
  }
  const double u = double(Philox(opt.seed, name_hash("generate")).uniform(index)) * sum;
  double acc = 0.0;
  for (int i = 0; i < K; ++i) {
    acc += probs[size_t(i)];
    if (u <= acc) return ids[size_t(i)];
  }
  return ids[size_t(K - 1)];
}

}  // namespace loom
