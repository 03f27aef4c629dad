#include "train/reference_io.h"

#include <nlohmann/json.hpp>

#include "ckpt/interop.h"
#include "core/file_io.h"
#include "data/shard.h"

namespace loom {
namespace {

template <typename T>
void write_raw(const std::filesystem::path& p, const T* data, size_t n) {
  AtomicFile f(p);
  f.write(data, n * sizeof(T));
  f.commit();
}

}  // namespace

void write_reference_inputs(const std::filesystem::path& dir, Trainer& tr) {
  const RunConfig& cfg = tr.config();
  const TrainConfig& t = cfg.train;
  nlohmann::json spec;
  spec["train"] = {{"micro_batch", t.micro_batch}, {"seq_len", t.seq_len},
                   {"grad_accum", t.grad_accum}, {"steps", t.steps}, {"lr", t.lr},
                   {"min_lr", t.min_lr}, {"warmup_steps", t.warmup_steps},
                   {"lr_schedule", t.lr_schedule}, {"weight_decay", t.weight_decay},
                   {"beta1", t.beta1}, {"beta2", t.beta2}, {"eps", t.eps},
                   {"grad_clip", t.grad_clip}};
  auto w = tr.model().weights();
  write_reference_model(dir, cfg.model, tr.model().params(), w.data(), w.size(), spec);
  const std::vector<uint16_t> tok16 = read_shard(cfg.data.train);
  const std::vector<int32_t> tok(tok16.begin(), tok16.end());
  write_raw(dir / "tokens.bin", tok.data(), tok.size());
}

}  // namespace loom
