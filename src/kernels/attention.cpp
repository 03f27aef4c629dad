// Causal multi-head self-attention, forward and backward.
//
// Work is split over the B*NH (batch, head) pairs; each pair runs single-threaded GEMMs
// (detail::gemm_in_thread) on strided views of qkv, so no head is copied. Rows are taken
// in blocks of kRowBlock: a block of query rows only needs the keys up to its last row,
// which skips most of the masked upper triangle (about 40% of the work at T = 256).
// Each pair's result depends only on its own inputs, so the output is independent of the
// thread count.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/internal.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

using detail::HeadView;
using detail::head_view;

constexpr int kRowBlock = 64;

// row[0..len) = softmax(row[0..len)); row[len..end) = 0.
void softmax_causal_row(float* row, int len, int end) {
  const float mx = detail::max_lanes(row, len);
  const float sum = detail::exp_shift_sum(row, row, len, mx);
  const float inv = 1.0f / sum;
  for (int s = 0; s < len; ++s) row[s] *= inv;
  std::fill(row + len, row + end, 0.0f);
}

// att[r0:r1, :] = softmax(scale * q[r0:r1] @ k[0:r1]^T), causal; att (T,T).
void block_probs(float* att, const HeadView& hv, int r0, int r1) {
  const int T = hv.T;
  float* att_blk = att + static_cast<size_t>(r0) * T;  // (r1-r0, T)
  detail::gemm_in_thread(false, true, r1 - r0, r1, hv.HS, hv.scale,
                         hv.q + static_cast<size_t>(r0) * hv.ld_qkv, hv.ld_qkv, hv.k, hv.ld_qkv,
                         0.0f, att_blk, T);
  for (int t = r0; t < r1; ++t) softmax_causal_row(att + static_cast<size_t>(t) * T, t + 1, T);
}

// out (T,HS) stride ld_out (null: probabilities only); att (T,T).
void head_forward(float* out, float* att, const HeadView& hv) {
  const int T = hv.T;
  for (int r0 = 0; r0 < T; r0 += kRowBlock) {
    const int r1 = std::min(T, r0 + kRowBlock);
    float* att_blk = att + static_cast<size_t>(r0) * T;  // (r1-r0, T)
    block_probs(att, hv, r0, r1);
    if (!out) continue;
    // out[r0:r1] = att[r0:r1, 0:r1] @ v[0:r1]
    detail::gemm_in_thread(false, false, r1 - r0, hv.HS, r1, 1.0f, att_blk, T, hv.v, hv.ld_qkv,
                           0.0f, out + static_cast<size_t>(r0) * hv.ld_out, hv.ld_out);
  }
}

// In place over one row: d[s] = scale * att[s] * (d[s] - sum_s' att[s'] d[s']) for s < len,
// 0 for s in [len, end). Turns d(att) into d(scaled scores) * scale = d(q k^T).
void softmax_backward_row(float* d, const float* att, int len, int end, float scale) {
  const float dot = detail::dot_lanes(att, d, len);
  for (int s = 0; s < len; ++s) d[s] = scale * (att[s] * (d[s] - dot));
  std::fill(d + len, d + end, 0.0f);
}

// dq, dk, dv (T,HS) stride ld_qkv; dout (T,HS) stride ld_out; att, dpre (T,T).
// dpre's block-diagonal masked entries are zeroed up to the end of their row block, which
// is all that the dk GEMM (same blocks) reads.
void head_backward(float* dq, float* dk, float* dv, float* dpre, const float* dout,
                   const float* att, const HeadView& hv) {
  const int T = hv.T, HS = hv.HS, ldq = hv.ld_qkv, ldo = hv.ld_out;
  for (int r0 = 0; r0 < T; r0 += kRowBlock) {
    const int r1 = std::min(T, r0 + kRowBlock);
    float* dpre_blk = dpre + static_cast<size_t>(r0) * T;  // (r1-r0, T)
    // datt[r0:r1, 0:r1] = dout[r0:r1] @ v[0:r1]^T
    detail::gemm_in_thread(false, true, r1 - r0, r1, HS, 1.0f, dout + static_cast<size_t>(r0) * ldo,
                           ldo, hv.v, ldq, 0.0f, dpre_blk, T);
    for (int t = r0; t < r1; ++t) {
      const size_t off = static_cast<size_t>(t) * T;
      softmax_backward_row(dpre + off, att + off, t + 1, r1, hv.scale);
    }
    // dq[r0:r1] = dpre[r0:r1, 0:r1] @ k[0:r1]
    detail::gemm_in_thread(false, false, r1 - r0, HS, r1, 1.0f, dpre_blk, T, hv.k, ldq, 0.0f,
                           dq + static_cast<size_t>(r0) * ldq, ldq);
  }
  for (int c0 = 0; c0 < T; c0 += kRowBlock) {
    const int c1 = std::min(T, c0 + kRowBlock);
    const size_t diag = static_cast<size_t>(c0) * T + c0;
    // dk[c0:c1] = dpre[c0:T, c0:c1]^T @ q[c0:T]
    detail::gemm_in_thread(true, false, c1 - c0, HS, T - c0, 1.0f, dpre + diag, T,
                           hv.q + static_cast<size_t>(c0) * ldq, ldq, 0.0f,
                           dk + static_cast<size_t>(c0) * ldq, ldq);
    // dv[c0:c1] = att[c0:T, c0:c1]^T @ dout[c0:T]
    detail::gemm_in_thread(true, false, c1 - c0, HS, T - c0, 1.0f, att + diag, T,
                           dout + static_cast<size_t>(c0) * ldo, ldo, 0.0f,
                           dv + static_cast<size_t>(c0) * ldq, ldq);
  }
}

}  // namespace

void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH) {
  detail::check_attention_sizes("attention_forward", B, T, C, NH);
  const int HS = C / NH;
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    float* out_bh = out + static_cast<size_t>(b) * T * C + static_cast<size_t>(h) * HS;
    float* att_bh = att + static_cast<size_t>(bh) * T * T;  // (T,T)
    head_forward(out_bh, att_bh, head_view(qkv, b, h, T, C, NH));
  }
}

void attention_probs(float* att, const float* qkv, int B, int T, int C, int NH) {
  detail::check_attention_sizes("attention_probs", B, T, C, NH);
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    head_forward(nullptr, att + static_cast<size_t>(bh) * T * T, head_view(qkv, b, h, T, C, NH));
  }
}

size_t attention_backward_scratch(int B, int T, int C, int NH) {
  return static_cast<size_t>(B) * NH * T * T;  // one (T,T) d(scores) per (b, h)
}

void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv,
                        const float* att, int B, int T, int C, int NH) {
  detail::check_attention_sizes("attention_backward", B, T, C, NH);
  const int HS = C / NH;
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    const size_t head_off = static_cast<size_t>(h) * HS;
    float* dq = dqkv + static_cast<size_t>(b) * T * 3 * C + head_off;         // (T,HS) stride 3C
    const float* dout_bh = dout + static_cast<size_t>(b) * T * C + head_off;  // stride C
    const size_t tt_off = static_cast<size_t>(bh) * T * T;
    head_backward(dq, dq + C, dq + 2 * C, scratch + tt_off, dout_bh, att + tt_off,
                  head_view(qkv, b, h, T, C, NH));
  }
}

}  // namespace loom::kernels
