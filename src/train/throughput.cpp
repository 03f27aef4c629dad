#include "train/throughput.h"


namespace loom {

double model_flops_per_token(int64_t n_params, const GptConfig& cfg, int T) {
  return 6.0 * double(n_params) + 12.0 * cfg.n_layer * cfg.n_embd * double(T);
}

}  // namespace loom
