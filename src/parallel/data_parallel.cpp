#include "parallel/data_parallel.h"

#include <fmt/format.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>

#include "core/check.h"
#include "core/memory.h"
#include "core/timer.h"
#include "kernels/kernels.h"

namespace loom {

DataParallel::DataParallel(Gpt& model, Comm& dp, int zero_stage, double bucket_mb)
    : model_(model), dp_(dp), zero_(zero_stage) {
  LOOM_REQUIRE(zero_stage >= 0 && zero_stage <= 3, "zero={} is not a ZeRO stage (0-3)",
               zero_stage);
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
  const int L = model.config().n_layer;
  units_.assign(size_t(L) + 2, {SIZE_MAX, 0});
  for (const ParamSpec& p : model.params()) {
    auto& u = units_[size_t(p.layer + 1)];
    u.first = std::min(u.first, p.offset);
    u.second = std::max(u.second, p.offset + p.numel);
  }
  if (zero_ == 3)
    model.set_unit_hooks([this](int u) { gather_unit(u); }, [this](int u) { release_unit(u); });
  set_weight_gather(DType::kF32);
}

void DataParallel::set_weight_gather(DType t) {
  LOOM_REQUIRE(t == DType::kF32 || t == model_.precision(),
               "weights can be gathered in fp32 or the model's precision ({}), not {}",
               dtype_name(model_.precision()), dtype_name(t));
  wire_dtype_ = t;
  segments_.clear();
  const auto low = t == DType::kF32 ? std::vector<std::pair<size_t, size_t>>{}
                                    : model_.compute_only_ranges();
  size_t at = 0, widest = 0;
  for (auto [a, b] : low) {
    if (a > at) segments_.push_back({at, a, false});
    segments_.push_back({a, b, true});
    at = b;
    for (auto [ua, ub] : units_)  // the widest unit holding words
      if (ua <= a && b <= ub) widest = std::max(widest, ub - ua);
  }
  segments_.push_back({at, model_.weights().size(), false});
  wire_.assign(low_gathers() ? widest : 0, 0);
}

bool DataParallel::low_gathers() const {
  return wire_dtype_ != DType::kF32 && zero_ >= 1 && dp_.size() > 1;
}

namespace {

// Calls fn(lo, hi, owner) for the parts of [begin, end) held by each shard owner (shards are
// equal and in rank order); a range spans one or a few shards.
template <typename Fn>
void for_each_owner(size_t begin, size_t end, size_t shard, Fn fn) {
  for (size_t lo = begin; lo < end;) {
    const int owner = int(lo / shard);
    const size_t hi = std::min(end, size_t(owner + 1) * shard);
    fn(lo, hi, owner);
    lo = hi;
  }
}

bool bucket_done(const GradBucket& b) {
  for (const auto& h : b.inflight)
    if (!h->ready()) return false;
  return true;
}

}  // namespace

void DataParallel::gather_unit(int unit) {
  if (dp_.size() == 1) return;
  const auto [begin, end] = units_[size_t(unit + 1)];
  gather_range(begin, end);
}

void DataParallel::gather_range(size_t lo, size_t hi) {
  const size_t shard = shard_end_ - shard_begin_;
  const int me = dp_.rank();
  float* w = model_.weights().data();
  // Each owner broadcasts its part of each segment.
  std::vector<std::unique_ptr<CommHandle>> parts;
  std::vector<std::pair<size_t, size_t>> words;  // received as words: expand after
  for (const Segment& s : segments_) {
    const size_t a = std::max(lo, s.begin), b = std::min(hi, s.end);
    if (a >= b) continue;
    for_each_owner(a, b, shard, [&](size_t x, size_t y, int owner) {
      if (owner != me) gathered_bytes_ += (y - x) * (s.low ? 2 : 4);
      if (!s.low) {
        parts.push_back(dp_.broadcast_async(w + x, y - x, owner));
        return;
      }
      uint16_t* u = wire_.data() + (x - lo);
      if (owner == me) kernels::convert(u, wire_dtype_, w + x, DType::kF32, y - x);
      else words.push_back({x, y});
      parts.push_back(dp_.broadcast_u16_async(u, y - x, owner));
    });
  }
  for (auto& p : parts) p->wait();
  for (auto [x, y] : words)
    kernels::convert(w + x, DType::kF32, wire_.data() + (x - lo), wire_dtype_, y - x);
}

void DataParallel::release_unit(int unit) {
  if (dp_.size() == 1) return;
  const auto [begin, end] = units_[size_t(unit + 1)];
  release_range(begin, end);
}

namespace {

// Gives the whole pages of base[lo, hi) back to the OS (they read as zeros afterwards);
// with zero_edges, the partial pages at both ends are zeroed instead.
void give_back(float* base, size_t lo, size_t hi, bool zero_edges) {
  if (lo >= hi) return;
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t a = uintptr_t(base + lo), b = uintptr_t(base + hi);
  const uintptr_t first = (a + page - 1) / page * page, last = b / page * page;
  if (first >= last) {
    if (zero_edges) std::fill(base + lo, base + hi, 0.0f);
    return;
  }
  madvise(reinterpret_cast<void*>(first), last - first, MADV_DONTNEED);
  if (zero_edges) {
    std::fill(base + lo, reinterpret_cast<float*>(first), 0.0f);
    std::fill(reinterpret_cast<float*>(last), base + hi, 0.0f);
  }
}

}  // namespace

void DataParallel::release_range(size_t lo, size_t hi) {
  // Everything in [lo, hi) but this rank's shard.
  float* w = model_.weights().data();
  give_back(w, lo, std::min(hi, shard_begin_), false);
  give_back(w, std::max(lo, shard_end_), hi, false);
}

void DataParallel::release_grads(size_t lo, size_t hi) {
  float* g = model_.grads().data();
  give_back(g, lo, std::min(hi, shard_begin_), true);
  give_back(g, std::max(lo, shard_end_), hi, true);
}

size_t DataParallel::resident_weight_bytes() const {
  return resident_bytes(model_.weights().data(), model_.weights().size_bytes());
}
size_t DataParallel::resident_grad_bytes() const {
  return resident_bytes(model_.grads().data(), model_.grads().size_bytes());
}

void DataParallel::zero_grads() {
  gathered_bytes_ = 0;
  if (zero_ < 2 || dp_.size() == 1) {
    model_.zero_grads();
    return;
  }
  float* g = model_.grads().data();
  std::fill(g + shard_begin_, g + shard_end_, 0.0f);
  release_grads(0, model_.grads().size());
  for (GradBucket& b : buckets_) b.released = false;
}

void DataParallel::release_finished_buckets() {
  for (size_t i = 0; i < next_bucket_; ++i) {
    GradBucket& b = buckets_[i];
    if (b.released || !bucket_done(b)) continue;
    release_grads(b.begin, b.end);
    b.released = true;
  }
}

void DataParallel::materialize_all() {
  if (dp_.size() == 1 || (zero_ != 3 && !low_gathers())) return;
  float* w = model_.weights().data();
  dp_.allgather(w + shard_begin_, w, shard_end_ - shard_begin_);
}

void DataParallel::release_all() {
  if (zero_ != 3 || dp_.size() == 1) return;
  release_range(0, model_.weights().size());
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

void DataParallel::set_grad_reduce(DType t) {
  LOOM_REQUIRE(t == DType::kF32 || t == DType::kBF16,
               "[parallel] grad_reduce='{}' must be 'fp32' or 'bf16'", dtype_name(t));
  reduce_dtype_ = t;
  low_.assign(t == DType::kBF16 && dp_.size() > 1 ? model_.grads().size() : 0, 0);
}

void DataParallel::set_compression(GradCompression kind, int powersgd_rank,
                                   int powersgd_start, uint64_t seed) {
  compressor_.reset();
  if (kind == GradCompression::kNone) return;
  if (kind == GradCompression::kBf16) {
    set_grad_reduce(DType::kBF16);
    return;
  }
  LOOM_REQUIRE(zero_ <= 1, "grad_compression='{}' needs ZeRO 0 or 1, not {}",
               grad_compression_name(kind), zero_);
  LOOM_REQUIRE(reduce_dtype_ == DType::kF32, "grad_compression='{}' needs grad_reduce='fp32'",
               grad_compression_name(kind));
  compressor_ = std::make_unique<GradCompressor>(kind, model_.params(), model_.grads().size(),
                                                 powersgd_rank, powersgd_start, seed);
}

void DataParallel::launch(GradBucket& b) {
  float* g = model_.grads().data();
  if (reduce_dtype_ == DType::kBF16) {
    uint16_t* low = low_.data();
    kernels::convert(low + b.begin, DType::kBF16, g + b.begin, DType::kF32, b.end - b.begin);
    if (zero_ < 2) {
      b.inflight.push_back(dp_.allreduce_bf16_async(low + b.begin, b.end - b.begin));
      return;
    }
    for_each_owner(b.begin, b.end, shard_end_ - shard_begin_, [&](size_t lo, size_t hi, int owner) {
      b.inflight.push_back(dp_.reduce_bf16_async(low + lo, hi - lo, owner));
    });
    return;
  }
  if (zero_ < 2) {  // stages 2 and 3 reduce to the shard owners
    b.inflight.push_back(dp_.allreduce_async(g + b.begin, b.end - b.begin, ReduceOp::kSum));
    return;
  }
  // ZeRO-2/3: reduce each part of the bucket to the rank owning it, so only owners hold
  // the sums.
  for_each_owner(b.begin, b.end, shard_end_ - shard_begin_, [&](size_t lo, size_t hi, int owner) {
    b.inflight.push_back(dp_.reduce_async(g + lo, hi - lo, owner));
  });
}

void DataParallel::on_layer_ready(int layer) {
  // Layer l finished means every parameter of layers >= l (and ln_f) is final.
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_].ready_layer >= layer)
    launch(buckets_[next_bucket_++]);
  if (zero_ >= 2) release_finished_buckets();  // owners hold the sums; free the rest
}

void DataParallel::arm_for_last_micro_batch() {
  next_bucket_ = 0;
  if (dp_.size() == 1 || compressor_) {  // compression reduces in finish()
    model_.set_backward_hook(nullptr);
    return;
  }
  model_.set_backward_hook([this](int layer) { on_layer_ready(layer); });
}

const float* DataParallel::finish() {
  model_.set_backward_hook(nullptr);
  Timer wait;
  float* grads = model_.grads().data();
  if (compressor_) {
    early_ = early_floats_ = 0;
    compressor_->reduce(dp_, grads);
  } else if (dp_.size() > 1) {
    early_ = 0;
    early_floats_ = 0;
    for (size_t i = 0; i < next_bucket_; ++i) {
      if (!bucket_done(buckets_[i])) continue;
      ++early_;
      early_floats_ += buckets_[i].end - buckets_[i].begin;
    }
    on_layer_ready(-1);  // anything not launched yet (e.g. no hook ran)
    for (GradBucket& b : buckets_)
      for (auto& h : b.inflight) h->wait();
    if (reduce_dtype_ == DType::kBF16) {  // the sums back into fp32 (the owned part at 2/3)
      const size_t lo = zero_ >= 2 ? shard_begin_ : 0, hi = zero_ >= 2 ? shard_end_ : low_.size();
      kernels::convert(grads + lo, DType::kF32, low_.data() + lo, DType::kBF16, hi - lo);
    }
    // All reduced: everything outside the shard goes back, pages straddling buckets too.
    if (zero_ >= 2) release_grads(0, model_.grads().size());
    for (GradBucket& b : buckets_) b.inflight.clear();
  }
  last_wait_s_ = wait.seconds();
  return grads + shard_begin_;
}

namespace {

// Floats covered by a set of [begin, end) ranges.
size_t union_size(std::vector<std::pair<size_t, size_t>> ranges) {
  std::sort(ranges.begin(), ranges.end());
  size_t total = 0, covered_to = 0;
  for (auto [a, b] : ranges) {
    a = std::max(a, covered_to);
    if (b > a) total += b - a;
    covered_to = std::max(covered_to, b);
  }
  return total;
}

}  // namespace

DataParallel::StateBytes DataParallel::state_bytes() const {
  double weights = 4.0 * double(model_.weights().size()), unit_floats = 0;
  if (zero_ == 3) {
    // Resident at the peak: the shard, the embeddings and ln_f, and one block in use.
    size_t peak = 0, units = 0;
    for (size_t u = 1; u + 1 < units_.size(); ++u) {
      peak = std::max(peak, union_size({{shard_begin_, shard_end_}, units_.front(),
                                        units_.back(), units_[u]}));
      units = std::max(units, union_size({units_.front(), units_.back(), units_[u]}));
    }
    weights = 4.0 * double(peak);
    unit_floats = double(units);
  }
  // Stages 2 and 3 keep the shard's gradients between steps; during backward a layer's
  // gradient pages are resident from when backward writes them until their bucket is
  // reduced (and all of them while accumulating micro-batches before the last).
  const double grads = zero_ >= 2 ? 4.0 * double(shard_end_ - shard_begin_)
                                   : 4.0 * double(model_.grads().size());
  const double optim = 8.0 * double(shard_end_ - shard_begin_);
  return {weights, grads, optim, 2.0 * double(low_.size() + wire_.size()), unit_floats};
}

std::string DataParallel::memory_report() const {
  const double psi = double(flat_size(model_.params())), N = dp_.size();
  const auto [weights, grads, optim, wire, units] = state_bytes();
  const double formula[] = {16 * psi, 8 * psi + 8 * psi / N, 4 * psi + 12 * psi / N,
                            16 * psi / N};
  constexpr double kMiB = 1024.0 * 1024.0;
  return fmt::format(
      "memory per rank (zero {}, dp {}): weights {:.1f} MiB, gradients {:.1f} MiB, optimizer "
      "{:.1f} MiB = {:.1f} MiB; ZeRO formula (fp32: {}) = {:.1f} MiB",
      zero_, dp_.size(), weights / kMiB, grads / kMiB, optim / kMiB,
      (weights + grads + optim) / kMiB,
      zero_ == 0   ? "16 Psi"
      : zero_ == 1 ? "4 Psi + 4 Psi + 8 Psi/N"
      : zero_ == 2 ? "4 Psi + 12 Psi/N"
                   : "16 Psi/N; weights here: shard + embeddings + ln_f + one block",
      formula[zero_] / kMiB);
}

void DataParallel::set_norm_exclusions(std::vector<std::pair<size_t, size_t>> ranges) {
  std::sort(ranges.begin(), ranges.end());
  norm_excluded_ = std::move(ranges);
}

namespace {

// Sum of squares of g[lo, hi) outside the sorted, disjoint `excluded` ranges.
double sum_squares_outside(const float* g, size_t lo, size_t hi,
                           const std::vector<std::pair<size_t, size_t>>& excluded) {
  double total = 0.0;
  size_t at = lo;
  for (auto [a, b] : excluded) {
    if (b <= at) continue;
    if (a >= hi) break;
    if (a > at) total += kernels::sum_squares(g + at, a - at);
    at = std::max(at, b);
  }
  if (at < hi) total += kernels::sum_squares(g + at, hi - at);
  return total;
}

}  // namespace

double DataParallel::grad_sum_squares() {
  const float* g = model_.grads().data();
  if (zero_ < 2 || dp_.size() == 1)  // every rank holds the whole averaged gradient
    return sum_squares_outside(g, 0, model_.grads().size(), norm_excluded_);
  double local = sum_squares_outside(g, shard_begin_, shard_end_, norm_excluded_);
  dp_.allreduce(&local, 1, ReduceOp::kSum);
  return local;
}

void DataParallel::gather_weights() {
  if (zero_ == 0 || zero_ == 3 || dp_.size() == 1) return;
  if (low_gathers()) {  // unit by unit, through the words buffer
    for (auto [a, b] : units_)
      if (a < b) gather_range(a, b);
    return;
  }
  float* w = model_.weights().data();
  const size_t shard = shard_end_ - shard_begin_;
  dp_.allgather(w + shard_begin_, w, shard);
  gathered_bytes_ += 4 * (model_.weights().size() - shard);
}

}  // namespace loom
