#include "infer/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "core/philox.h"

namespace loom {

LoadedModel load_model(const std::filesystem::path& ckpt, const ProcessGrid& grid) {
  const std::filesystem::path dir = resolve_checkpoint(ckpt);
  LoadedModel out;
  out.model = std::make_unique<Gpt>(read_checkpoint_manifest(dir).model, grid);
  out.state = load_checkpoint(dir, out.model->params(), out.model->weights().data(), nullptr,
                              nullptr);
  return out;
}

int32_t sample_token(const float* logits, int V, const SampleOptions& opt, uint64_t index) {
  if (opt.temperature <= 0.0f) return int32_t(std::max_element(logits, logits + V) - logits);
  std::vector<int32_t> ids(V);
  std::iota(ids.begin(), ids.end(), 0);
  int K = V;
  if (opt.top_k > 0 && opt.top_k < V) {
    K = opt.top_k;
    std::partial_sort(ids.begin(), ids.begin() + K, ids.end(),
                      [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  }
  float max_logit = logits[ids[0]];
  for (int i = 0; i < K; ++i) max_logit = std::max(max_logit, logits[ids[i]]);
  std::vector<double> probs(K);
  double sum = 0.0;
  for (int i = 0; i < K; ++i) {
    probs[i] = std::exp(double(logits[ids[i]] - max_logit) / opt.temperature);
    sum += probs[i];
  }
  const double u = double(Philox(opt.seed, name_hash("generate")).uniform(index)) * sum;
  double acc = 0.0;
  for (int i = 0; i < K; ++i) {
    acc += probs[i];
    if (u <= acc) return ids[i];
  }
  return ids[K - 1];
}

void generate(Gpt& model, std::vector<int32_t>& tokens, const SampleOptions& opt,
              const std::function<void(int32_t)>& on_token) {
  const GptConfig& cfg = model.config();
  LOOM_REQUIRE(!tokens.empty(), "generation needs at least one prompt token");
  model.reserve(1, cfg.block_size);
  for (int i = 0; i < opt.max_tokens; ++i) {
    const int T = std::min<int>(int(tokens.size()), cfg.block_size);
    const int32_t* window = tokens.data() + tokens.size() - T;
    model.forward(window, nullptr, 1, T);
    const float* last = model.logits() + size_t(T - 1) * cfg.padded_vocab();
    const int32_t next = sample_token(last, cfg.vocab_size, opt, uint64_t(i));
    tokens.push_back(next);
    on_token(next);
  }
}

}  // namespace loom
