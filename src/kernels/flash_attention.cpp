// Causal multi-head self-attention in O(T) memory: blocked, with an online softmax
// (FlashAttention-2's algorithm on the CPU).
//
// The forward walks each block of query rows across the key blocks up to its diagonal,
// keeping a running max m and sum l per row and rescaling the partial output whenever m
// grows; it saves only lse = m + log(l) per row. The backward recomputes each tile's
// probabilities P = exp(S - lse) from q, k and lse, so no (T,T) buffer exists anywhere.
//
// As in attention.cpp, work is split over the B*NH (batch, head) pairs and each pair runs
// single-threaded GEMMs (detail::gemm_in_thread) on strided views of qkv. Inside a pair
// every loop runs in a fixed order, so the output is independent of the thread count.
#include <algorithm>
#include <cmath>
#include <limits>

#include "core/check.h"
#include "kernels/internal.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

using detail::HeadView;
using detail::head_view;

// Tile sizes, measured at B=4, C=768, NH=12 (HS=64), T=256 and 1024, 2 threads, tiles
// from 64x64 to 256x256: 128 query rows x 128 key columns was among the fastest forwards
// and the fastest backward. 64x64 took 1.2-1.3x as long at T=1024 (four times the GEMM
// calls, each with a quarter of the work); 256x256 lost ~10% (more of each diagonal tile
// is masked out). The forward's key block is a multiple of its query block, so that a
// query row never meets a key block that is entirely in its future (handled anyway).
constexpr int kFwdBlockQ = 128;
constexpr int kFwdBlockK = 128;
constexpr int kBwdBlockQ = 128;
constexpr int kBwdBlockK = 128;

// Row t of a tile whose key columns start at c0 sees the first `len` of its `width`
// columns (keys c0..t).
int visible(int t, int c0, int width) { return std::clamp(t - c0 + 1, 0, width); }

// Online-softmax step for one row of scores p[0..width) of which the first len are
// visible: p becomes exp(p - m') (0 past len), with m' the new running max; l and the
// output row o (HS) are rescaled to m'. `first`: o holds nothing yet (the caller's GEMM
// overwrites it), and m = -inf, l = 0.
void online_softmax_row(float* p, int len, int width, float& m, float& l, float* o, int HS,
                        bool first) {
  if (len == 0) {  // the whole key block is in this row's future
    std::fill(p, p + width, 0.0f);
    return;
  }
  const float mx = std::max(m, detail::max_lanes(p, len));
  const float sum = detail::exp_shift_sum(p, p, len, mx);
  std::fill(p + len, p + width, 0.0f);
  if (!first && mx != m) {
    const float corr = std::exp(m - mx);
    l *= corr;
    for (int i = 0; i < HS; ++i) o[i] *= corr;
  }
  l += sum;
  m = mx;
}

// Query rows [r0, r1) of one pair: out rows (stride ld_out) and lse[r0..r1).
// tile (kFwdBlockQ, kFwdBlockK) holds the scores, then the unnormalised probabilities.
void query_block_forward(float* out, float* lse, float* tile, int r0, int r1,
                         const HeadView& hv) {
  const int rows = r1 - r0, HS = hv.HS, ldq = hv.ld_qkv, ldo = hv.ld_out;
  float m[kFwdBlockQ], l[kFwdBlockQ];
  std::fill(m, m + rows, -std::numeric_limits<float>::infinity());
  std::fill(l, l + rows, 0.0f);
  float* out_blk = out + static_cast<size_t>(r0) * ldo;
  const float* q_blk = hv.q + static_cast<size_t>(r0) * ldq;
  for (int c0 = 0; c0 < r1; c0 += kFwdBlockK) {
    const int width = std::min(c0 + kFwdBlockK, r1) - c0;
    const bool first = c0 == 0;  // key 0 is visible to every row
    // tile = scale * q[r0:r1] @ k[c0:c0+width]^T
    detail::gemm_in_thread(false, true, rows, width, HS, hv.scale, q_blk, ldq,
                           hv.k + static_cast<size_t>(c0) * ldq, ldq, 0.0f, tile, kFwdBlockK);
    for (int i = 0; i < rows; ++i)
      online_softmax_row(tile + static_cast<size_t>(i) * kFwdBlockK, visible(r0 + i, c0, width),
                         width, m[i], l[i], out_blk + static_cast<size_t>(i) * ldo, HS, first);
    // out[r0:r1] (+)= tile @ v[c0:c0+width]
    detail::gemm_in_thread(false, false, rows, HS, width, 1.0f, tile, kFwdBlockK,
                           hv.v + static_cast<size_t>(c0) * ldq, ldq, first ? 0.0f : 1.0f,
                           out_blk, ldo);
  }
  for (int i = 0; i < rows; ++i) {
    const float inv = 1.0f / l[i];
    float* o = out_blk + static_cast<size_t>(i) * ldo;
    for (int j = 0; j < HS; ++j) o[j] *= inv;
    lse[r0 + i] = m[i] + std::log(l[i]);
  }
}

// Elements [o, o + n) of `data` (of type t) as fp32: the data itself, or converted into buf.
const float* row_f32(const void* data, DType t, size_t o, int n, float* buf) {
  if (t == DType::kF32) return static_cast<const float*>(data) + o;
  if (t == DType::kBF16) {
    const uint16_t* r = static_cast<const uint16_t*>(data) + o;
    for (int i = 0; i < n; ++i) buf[i] = bf16_to_float(r[i]);
  } else {
    const _Float16* r = static_cast<const _Float16*>(data) + o;
    for (int i = 0; i < n; ++i) buf[i] = static_cast<float>(r[i]);
  }
  return buf;
}

// Per-pair scratch of the backward: two (kBwdBlockQ, kBwdBlockK) tiles and D (T), rounded
// up to 16 floats so that every pair's tiles start 64-byte aligned relative to scratch.
size_t backward_pair_floats(int T) {
  const size_t n = 2 * size_t{kBwdBlockQ} * kBwdBlockK + static_cast<size_t>(T);
  return detail::ceil_div(n, 16) * 16;
}

// One pair's backward state: gradients (stride ld_qkv), the forward's saved values and
// the scratch tiles.
struct HeadGrads {
  float* dq;          // (T,HS) stride ld_qkv
  float* dk;          // (T,HS) stride ld_qkv
  float* dv;          // (T,HS) stride ld_qkv
  const float* dout;  // (T,HS) stride ld_out
  const float* lse;   // (T)
  const float* d;     // (T) rowsum(dout * out)
  float* p;           // (kBwdBlockQ, kBwdBlockK): probabilities
  float* ds;          // (kBwdBlockQ, kBwdBlockK): d(probabilities), then d(q k^T)
};

// Tile of query rows [r0, r0+rows) x key columns [c0, c0+width). dq accumulates unless
// c0 == 0; dk, dv accumulate unless first_q (the key block's first query block).
void backward_tile(const HeadGrads& g, const HeadView& hv, int r0, int rows, int c0, int width,
                   bool first_q) {
  const int HS = hv.HS, ldq = hv.ld_qkv, ldo = hv.ld_out;
  const size_t qo = static_cast<size_t>(r0) * ldq, ko = static_cast<size_t>(c0) * ldq;
  const float* dout_blk = g.dout + static_cast<size_t>(r0) * ldo;
  const float beta_kv = first_q ? 0.0f : 1.0f;
  // p = exp(scale * q_i k_j^T - lse), 0 where masked
  detail::gemm_in_thread(false, true, rows, width, HS, hv.scale, hv.q + qo, ldq, hv.k + ko, ldq,
                         0.0f, g.p, kBwdBlockK);
  for (int i = 0; i < rows; ++i) {
    float* p = g.p + static_cast<size_t>(i) * kBwdBlockK;
    const int len = visible(r0 + i, c0, width);
    detail::exp_shift_sum(p, p, len, g.lse[r0 + i]);
    std::fill(p + len, p + width, 0.0f);
  }
  // dv_j += p^T dout_i
  detail::gemm_in_thread(true, false, width, HS, rows, 1.0f, g.p, kBwdBlockK, dout_blk, ldo,
                         beta_kv, g.dv + ko, ldq);
  // ds = dout_i v_j^T, then ds = scale * p * (ds - D)
  detail::gemm_in_thread(false, true, rows, width, HS, 1.0f, dout_blk, ldo, hv.v + ko, ldq, 0.0f,
                         g.ds, kBwdBlockK);
  for (int i = 0; i < rows; ++i) {
    const float* p = g.p + static_cast<size_t>(i) * kBwdBlockK;
    float* ds = g.ds + static_cast<size_t>(i) * kBwdBlockK;
    const float d = g.d[r0 + i];
    for (int s = 0; s < width; ++s) ds[s] = hv.scale * (p[s] * (ds[s] - d));
  }
  // dq_i += ds k_j; dk_j += ds^T q_i
  detail::gemm_in_thread(false, false, rows, HS, width, 1.0f, g.ds, kBwdBlockK, hv.k + ko, ldq,
                         c0 == 0 ? 0.0f : 1.0f, g.dq + qo, ldq);
  detail::gemm_in_thread(true, false, width, HS, rows, 1.0f, g.ds, kBwdBlockK, hv.q + qo, ldq,
                         beta_kv, g.dk + ko, ldq);
}

// Outer loop over key blocks, inner over the query blocks at or below each: dk_j and dv_j
// are complete after their inner loop, dq_i gathers key block 0, 1, ... in that order.
// Every key block is visited by query rows at or after it, so each dk/dv row is written
// by the first query block (first_q); each dq row by key block 0.
void head_backward(const HeadGrads& g, const HeadView& hv) {
  const int T = hv.T;
  for (int c0 = 0; c0 < T; c0 += kBwdBlockK) {
    const int width = std::min(T, c0 + kBwdBlockK) - c0;
    const int q_start = c0 / kBwdBlockQ * kBwdBlockQ;
    for (int r0 = q_start; r0 < T; r0 += kBwdBlockQ)
      backward_tile(g, hv, r0, std::min(T, r0 + kBwdBlockQ) - r0, c0, width, r0 == q_start);
  }
}

}  // namespace

void flash_attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C,
                             int NH) {
  detail::check_attention_sizes("flash_attention_forward", B, T, C, NH);
  const int HS = C / NH;
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    // 64 KiB on the thread's stack: the forward needs no caller scratch.
    alignas(64) float tile[kFwdBlockQ * kFwdBlockK];
    float* out_bh = out + static_cast<size_t>(b) * T * C + static_cast<size_t>(h) * HS;
    const HeadView hv = head_view(qkv, b, h, T, C, NH);
    for (int r0 = 0; r0 < T; r0 += kFwdBlockQ)
      query_block_forward(out_bh, lse + static_cast<size_t>(bh) * T, tile, r0,
                          std::min(T, r0 + kFwdBlockQ), hv);
  }
}

size_t flash_attention_backward_scratch(int B, int T, int C, int NH) {
  detail::check_attention_sizes("flash_attention_backward_scratch", B, T, C, NH);
  return static_cast<size_t>(B) * NH * backward_pair_floats(T);
}

void flash_attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv,
                              const float* out, const float* lse, int B, int T, int C, int NH) {
  flash_attention_backward(dqkv, scratch, dout, qkv, out, DType::kF32, lse, B, T, C, NH);
}

void flash_attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv,
                              const void* out, DType out_type, const float* lse, int B, int T,
                              int C, int NH) {
  detail::check_attention_sizes("flash_attention_backward", B, T, C, NH);
  const int HS = C / NH;
  const size_t tile = size_t{kBwdBlockQ} * kBwdBlockK;
  LOOM_CHECK(out_type == DType::kF32 || size_t(HS) <= tile,
             "flash_attention_backward: head size {} over the {} floats of a scratch tile", HS,
             tile);
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    const size_t head_off = static_cast<size_t>(h) * HS;
    float* dq = dqkv + static_cast<size_t>(b) * T * 3 * C + head_off;  // (T,HS) stride 3C
    const size_t row_off = static_cast<size_t>(b) * T * C + head_off;  // stride C
    float* mine = scratch + static_cast<size_t>(bh) * backward_pair_floats(T);
    float* d = mine + 2 * tile;
    for (int t = 0; t < T; ++t) {
      const size_t o = row_off + static_cast<size_t>(t) * C;
      // mine (the p tile) is free until head_backward: a row of out in fp32 if it is not.
      d[t] = detail::dot_lanes(dout + o, row_f32(out, out_type, o, HS, mine), HS);
    }
    const float* lse_bh = lse + static_cast<size_t>(bh) * T;
    const HeadGrads g{dq, dq + C, dq + 2 * C, dout + row_off, lse_bh, d, mine, mine + tile};
    head_backward(g, head_view(qkv, b, h, T, C, NH));
  }
}

}  // namespace loom::kernels
