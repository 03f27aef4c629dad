#include "parallel/grad_compression.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"

namespace loom {

GradCompression parse_grad_compression(const std::string& name) {
  if (name == "none") return GradCompression::kNone;
  if (name == "bf16") return GradCompression::kBf16;
  if (name == "int8") return GradCompression::kInt8;
  if (name == "powersgd") return GradCompression::kPowerSgd;
  throw InputError(fmt::format("[parallel] grad_compression='{}' must be none, bf16, int8 or "
                               "powersgd", name));
}

const char* grad_compression_name(GradCompression c) {
  switch (c) {
    case GradCompression::kNone: return "none";
    case GradCompression::kBf16: return "bf16";
    case GradCompression::kInt8: return "int8";
    case GradCompression::kPowerSgd: return "powersgd";
  }
  return "none";
}

GradCompressor::GradCompressor(GradCompression kind, const std::vector<ParamSpec>& params,
                               size_t n, int powersgd_rank, int powersgd_start, uint64_t seed)
    : kind_(kind), n_(n), start_(powersgd_start), psgd_(powersgd_rank, seed) {
  LOOM_CHECK(kind == GradCompression::kInt8 || kind == GradCompression::kPowerSgd,
             "GradCompressor is for int8 and powersgd");
  LOOM_REQUIRE(powersgd_rank >= 1, "[parallel] powersgd_rank={} must be >= 1", powersgd_rank);
  LOOM_REQUIRE(powersgd_start >= 0, "[parallel] powersgd_start={} must be >= 0", powersgd_start);
  // 2-D parameters whose factors are smaller than they are go through PowerSGD; the rest,
  // in flat order with the padding, in one all-reduce.
  std::vector<ParamSpec> sorted = params;
  std::sort(sorted.begin(), sorted.end(),
            [](const ParamSpec& a, const ParamSpec& b) { return a.offset < b.offset; });
  size_t at = 0;
  for (size_t k = 0; k < sorted.size(); ++k) {
    const ParamSpec& p = sorted[k];
    if (p.offset > at) rest_ranges_.push_back({at, p.offset});
    at = p.offset + p.numel;
    if (p.local_shape.size() == 2) {
      const int64_t rows = p.local_shape[0], cols = p.local_shape[1], r = powersgd_rank;
      if (rows * cols > (rows + cols) * r) {
        compressed_.push_back({int(k), p.offset, int(rows), int(cols)});
        continue;
      }
    }
    rest_ranges_.push_back({p.offset, p.offset + p.numel});
  }
  if (at < n_) rest_ranges_.push_back({at, n_});
}

void GradCompressor::reduce(Comm& dp, float* grads) {
  if (dp.size() > 1) {
    if (kind_ == GradCompression::kInt8) reduce_int8(dp, grads);
    else reduce_powersgd(dp, grads);
  }
  ++reductions_;
}

namespace {

// One chunk's int8 blocks packed as bytes: the values, then the blocks' scales.
size_t packed_bytes(size_t floats) { return floats + 4 * int8_blocks(floats); }

void pack(const float* x, float* residual, size_t n, std::byte* out, std::vector<float>& scales) {
  scales.resize(int8_blocks(n));
  quantize_int8_feedback(x, residual, n, reinterpret_cast<int8_t*>(out), scales.data());
  std::memcpy(out + n, scales.data(), 4 * scales.size());
}

// Adds (add) or writes the values a packed chunk holds.
void unpack(const std::byte* in, size_t n, float* out, bool add, std::vector<float>& scales,
            std::vector<float>& tmp) {
  scales.resize(int8_blocks(n));
  std::memcpy(scales.data(), in + n, 4 * scales.size());
  float* dst = add ? (tmp.resize(n), tmp.data()) : out;
  dequantize_int8(reinterpret_cast<const int8_t*>(in), scales.data(), n, dst);
  if (add)
    for (size_t i = 0; i < n; ++i) out[i] += tmp[i];
}

}  // namespace

void GradCompressor::reduce_int8(Comm& dp, float* grads) {
  const size_t g = size_t(dp.size()), chunk = n_ / g, per = packed_bytes(chunk);
  LOOM_CHECK(n_ % g == 0, "int8 reduction: {} floats do not split over dp={}", n_, g);
  if (residual_.empty()) {
    residual_.assign(n_, 0.0f);
    server_residual_.assign(chunk, 0.0f);
  }
  send_.resize(g * per);
  recv_.resize(g * per);
  sum_.assign(chunk, 0.0f);
  for (size_t q = 0; q < g; ++q)  // chunk q of this rank's gradient, for rank q
    pack(grads + q * chunk, residual_.data() + q * chunk, chunk, send_.data() + q * per,
         scales_);
  dp.alltoall_bytes_async(send_.data(), recv_.data(), per)->wait();
  for (size_t q = 0; q < g; ++q)  // every rank's part of this rank's chunk, in rank order
    unpack(recv_.data() + q * per, chunk, sum_.data(), true, scales_, tmp_);
  mine_.resize(per);
  all_.resize(g * per);
  pack(sum_.data(), server_residual_.data(), chunk, mine_.data(), scales_);
  dp.allgather_bytes_async(mine_.data(), all_.data(), per)->wait();
  for (size_t q = 0; q < g; ++q)
    unpack(all_.data() + q * per, chunk, grads + q * chunk, false, scales_, tmp_);
}

void GradCompressor::reduce_powersgd(Comm& dp, float* grads) {
  if (reductions_ < start_) {  // the first steps uncompressed
    dp.allreduce(grads, n_, ReduceOp::kSum);
    return;
  }
  std::vector<PowerSgd::Matrix> mats;
  for (const Compressed& c : compressed_) mats.push_back({c.id, grads + c.offset, c.n, c.m});
  rest_.clear();
  for (auto [a, b] : rest_ranges_) rest_.insert(rest_.end(), grads + a, grads + b);
  dp.allreduce(rest_.data(), rest_.size(), ReduceOp::kSum);
  size_t from = 0;
  for (auto [a, b] : rest_ranges_) {
    std::copy(rest_.begin() + ptrdiff_t(from), rest_.begin() + ptrdiff_t(from + b - a), grads + a);
    from += b - a;
  }
  psgd_.reduce_all(dp, mats);
}

}  // namespace loom
