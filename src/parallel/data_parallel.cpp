#include "parallel/data_parallel.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/check.h"
#include "core/timer.h"
#include "kernels/kernels.h"

namespace loom {

DataParallel::DataParallel(Gpt& model, Comm& dp, int zero_stage, double bucket_mb)
    : model_(model), dp_(dp), zero_(zero_stage) {
  LOOM_REQUIRE(zero_stage >= 0 && zero_stage <= 2,
               "zero={} is not supported (0, 1 or 2; stage 3 is not implemented yet)", zero_stage);
  LOOM_REQUIRE(bucket_mb > 0, "[parallel] bucket_mb={} must be > 0", bucket_mb);
  const size_t n = model.grads().size();
  LOOM_CHECK(n % size_t(dp.size()) == 0, "flat buffer of {} floats is not padded to dp={}", n,
             dp.size());
  if (zero_ >= 1) {
    const size_t shard = n / size_t(dp.size());
    shard_begin_ = shard * size_t(dp.rank());
    shard_end_ = shard_begin_ + shard;
  } else {
    shard_end_ = n;
  }
  build_buckets(bucket_mb);
}

void DataParallel::build_buckets(double bucket_mb) {
  const size_t cap = std::max<size_t>(1, size_t(bucket_mb * 1024 * 1024 / sizeof(float)));
  const std::vector<ParamSpec>& specs = model_.params();
  const size_t n = model_.grads().size();
  // Walk in reverse flat order: ln_f, blocks L-1..0, then wpe, wte. The padding after the
  // last parameter travels with the first bucket.
  GradBucket cur;
  cur.end = n;
  cur.begin = n;
  cur.ready_layer = model_.config().n_layer;
  for (auto it = specs.rbegin(); it != specs.rend(); ++it) {
    if (cur.end - cur.begin >= cap && it->layer != cur.ready_layer) {
      buckets_.push_back(std::move(cur));
      cur = GradBucket{};
      cur.end = buckets_.back().begin;
      cur.begin = cur.end;
    }
    cur.begin = it->offset;
    cur.ready_layer = it->layer;
  }
  buckets_.push_back(std::move(cur));
}

void DataParallel::launch(GradBucket& b) {
  float* g = model_.grads().data();
  if (zero_ < 2) {
    b.inflight.push_back(dp_.allreduce_async(g + b.begin, b.end - b.begin, ReduceOp::kSum));
    return;
  }
  // ZeRO-2: reduce each part of the bucket to the rank owning it (shards are equal, in
  // rank order), so only owners hold the sums.
  const size_t shard = model_.grads().size() / size_t(dp_.size());
  for (size_t lo = b.begin; lo < b.end;) {
    const int owner = int(lo / shard);
    const size_t hi = std::min(b.end, size_t(owner + 1) * shard);
    b.inflight.push_back(dp_.reduce_async(g + lo, hi - lo, owner));
    lo = hi;
  }
}

void DataParallel::on_layer_ready(int layer) {
  // Layer l finished means every parameter of layers >= l (and ln_f) is final.
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].ready_layer >= layer)
    launch(buckets_[next_bucket_++]);
}

void DataParallel::arm_for_last_micro_batch() {
  next_bucket_ = 0;
  if (dp_.size() == 1) {
    model_.set_backward_hook(nullptr);
    return;
  }
  model_.set_backward_hook([this](int layer) { on_layer_ready(layer); });
}

const float* DataParallel::finish() {
  model_.set_backward_hook(nullptr);
  Timer wait;
  float* grads = model_.grads().data();
  if (dp_.size() > 1) {
    early_ = 0;
    early_floats_ = 0;
    for (size_t i = 0; i < next_bucket_; ++i) {
      bool done = true;
      for (auto& h : buckets_[i].inflight) done = done && h->ready();
      if (!done) continue;
      ++early_;
      early_floats_ += buckets_[i].end - buckets_[i].begin;
    }
    on_layer_ready(-1);  // anything not launched yet (e.g. no hook ran)
    for (GradBucket& b : buckets_) {
      for (auto& h : b.inflight) h->wait();
      b.inflight.clear();
    }
  }
  last_wait_s_ = wait.seconds();
  return grads + shard_begin_;
}

std::string DataParallel::memory_report() const {
  const double psi = double(flat_size(model_.params())), N = dp_.size();
  const double weights = 4.0 * double(model_.weights().size());
  // Stage 2 still accumulates into a full gradient buffer during backward, so its
  // measured gradient bytes are the full buffer, above the formula's 4 Psi/N.
  const double grads = 4.0 * double(model_.grads().size());
  const double optim = 8.0 * double(shard_end_ - shard_begin_);
  const double formula[] = {16 * psi, 8 * psi + 8 * psi / N, 4 * psi + 12 * psi / N};
  constexpr double kMiB = 1024.0 * 1024.0;
  return fmt::format(
      "memory per rank (zero {}, dp {}): weights {:.1f} MiB, gradients {:.1f} MiB, optimizer "
      "{:.1f} MiB = {:.1f} MiB; ZeRO formula (fp32: {}) = {:.1f} MiB",
      zero_, dp_.size(), weights / kMiB, grads / kMiB, optim / kMiB,
      (weights + grads + optim) / kMiB,
      zero_ == 0 ? "16 Psi" : zero_ == 1 ? "4 Psi + 4 Psi + 8 Psi/N" : "4 Psi + 12 Psi/N",
      formula[zero_] / kMiB);
}

double DataParallel::grad_sum_squares() {
  if (zero_ < 2 || dp_.size() == 1)
    return kernels::sum_squares(model_.grads().data(), model_.grads().size());
  double local = kernels::sum_squares(model_.grads().data() + shard_begin_,
                                      shard_end_ - shard_begin_);
  dp_.allreduce(&local, 1, ReduceOp::kSum);
  return local;
}

void DataParallel::gather_weights() {
  if (zero_ == 0 || dp_.size() == 1) return;
  float* w = model_.weights().data();
  dp_.allgather(w + shard_begin_, w, shard_end_ - shard_begin_);
}

}  // namespace loom
