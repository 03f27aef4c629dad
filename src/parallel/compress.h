// Compressed data-parallel gradient reduction, the math ([parallel] grad_compression):
// int8 blocks with error feedback, and PowerSGD's low-rank approximation with error
// feedback and a warm-started Q (the semantics of PyTorch's powerSGD_hook).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <vector>

#include "comm/comm.h"

namespace loom {

// ---- int8 ----------------------------------------------------------------------------
// Values are quantized in blocks of kInt8Block, each with its own scale max|x| / 127, to
// the nearest step: one byte a value plus 4 bytes a block (3.94x fewer than fp32).
inline constexpr size_t kInt8Block = 256;
inline size_t int8_blocks(size_t n) { return (n + kInt8Block - 1) / kInt8Block; }

// q[i] = round(x[i] / s), s = the block's max|x| / 127 (0 for an all-zero block), so
// |x[i] - q[i] * s| <= s / 2.
void quantize_int8(const float* x, size_t n, int8_t* q, float* scales);
void dequantize_int8(const int8_t* q, const float* scales, size_t n, float* out);
// Error feedback: quantizes x + residual, and leaves in `residual` what that lost, to be
// added to the next step's values (so nothing is lost over steps, only delayed).
void quantize_int8_feedback(const float* x, float* residual, size_t n, int8_t* q,
                            float* scales);

// ---- PowerSGD ------------------------------------------------------------------------
// Modified Gram-Schmidt on the r columns of the row-major n x r matrix P, each column
// divided by its norm + eps. A column that the earlier ones span (what is left of it is
// below 1e-4 of its norm: round-off) becomes zero, as does an all-zero column, so a
// gradient of rank below r is reproduced exactly.
void orthogonalize(float* P, int n, int r, float eps = 1e-8f);

class PowerSgd {
 public:
  // `rank`: the approximation's rank r; `seed`: Q's initial values (the same on every rank).
  PowerSgd(int rank, uint64_t seed) : rank_(rank), seed_(seed) {}

  // Replaces this rank's n x m gradient matrix M (row-major) by a rank-r approximation of
  // the sum of every dp rank's: M += error; P = M Q; all-reduce P; orthogonalize P;
  // Q = M^T P; all-reduce Q; M = P Q^T; error = (M before) - (M after) / dp size. Q and the
  // error are kept per `id` (a parameter) and carried to the next step. Two all-reduces of
  // (n + m) r values instead of one of n m. Every rank ends with the same bits.
  void reduce(Comm& dp, int id, float* M, int n, int m) { reduce_all(dp, {{id, M, n, m}}); }
  // The same for several matrices at once: their P's travel in one all-reduce, their Q's
  // in another.
  struct Matrix {
    int id;
    float* M;
    int n, m;
  };
  void reduce_all(Comm& dp, const std::vector<Matrix>& mats);

  int rank() const { return rank_; }
  // The carried state, per id: Q (m x r) then the error (n x m), for checkpoints.
  struct State {
    std::vector<float> q, error;
  };
  const std::map<int, State>& state() const { return state_; }
  std::map<int, State>& state() { return state_; }

 private:
  int rank_;
  uint64_t seed_;
  std::map<int, State> state_;
  std::vector<float> p_, q_;  // every matrix's P (n x r) and Q (m x r), packed
};

}  // namespace loom
