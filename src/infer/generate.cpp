#include "infer/generate.h"

namespace loom {

LoadedModel load_model(const std::filesystem::path& ckpt, const ProcessGrid& grid) {
  const std::filesystem::path dir = resolve_checkpoint(ckpt);
  LoadedModel out;
  out.model = std::make_unique<Gpt>(read_checkpoint_manifest(dir).model, grid);
  out.state = load_checkpoint(dir, out.model->params(), out.model->weights().data(), nullptr,
                              nullptr);
  return out;
}

}  // namespace loom
