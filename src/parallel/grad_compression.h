// A data-parallel group's compressed gradient reduction ([parallel] grad_compression), on
// the whole flat gradient once backward has finished (no overlap with backward):
//   int8:     every rank quantizes each dp rank's chunk of its gradient (plus its error
//             feedback) to int8 blocks and sends it to that rank (all-to-all); each rank
//             sums the chunks it owns in fp32, quantizes the sum (with a second error
//             feedback of its own) and all ranks all-gather the quantized sums. About 1/4
//             of fp32's bytes; every rank ends with the same bits.
//   powersgd: each 2-D parameter (whose rank-r factors are smaller than it) through
//             PowerSgd (parallel/compress.h), all P's in one all-reduce and all Q's in
//             another; the rest (biases, layernorms, the padding) all-reduced as it is;
//             the first `start` reductions uncompressed (PyTorch's start_powerSGD_iter).
// The result is the sum over the group, as an all-reduce would leave it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "model/param_spec.h"
#include "parallel/compress.h"

namespace loom {

enum class GradCompression { kNone, kBf16, kInt8, kPowerSgd };
GradCompression parse_grad_compression(const std::string& name);  // InputError if unknown
const char* grad_compression_name(GradCompression c);

class GradCompressor {
 public:
  // `params`: this rank's parameters in the flat buffer of n floats (n divisible by dp).
  GradCompressor(GradCompression kind, const std::vector<ParamSpec>& params, size_t n,
                 int powersgd_rank, int powersgd_start, uint64_t seed);

  // Replaces grads[0, n) by the group's (approximate) sum.
  void reduce(Comm& dp, float* grads);

  GradCompression kind() const { return kind_; }
  int64_t reductions() const { return reductions_; }

 private:
  void reduce_int8(Comm& dp, float* grads);
  void reduce_powersgd(Comm& dp, float* grads);

  GradCompression kind_;
  size_t n_;
  int start_;
  int64_t reductions_ = 0;
  std::vector<float> residual_, server_residual_;  // int8 error feedback
  std::vector<std::byte> send_, recv_, mine_, all_;
  std::vector<float> scales_, tmp_, sum_;  // int8 scratch
  PowerSgd psgd_;
  // PowerSGD's split of the flat buffer, fixed by the parameters: the 2-D parameters it
  // compresses (id, offset, rows, columns) and the ranges reduced as they are.
  struct Compressed {
    int id;
    size_t offset;
    int n, m;
  };
  std::vector<Compressed> compressed_;
  std::vector<std::pair<size_t, size_t>> rest_ranges_;
  std::vector<float> rest_;  // PowerSGD: the uncompressed values, packed
};

}  // namespace loom
