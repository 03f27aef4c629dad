// CPU kernels for the GPT-2 family, forward and backward, fp32. Shapes use llm.c's letters:
// B batch, T time, C channels, NH heads, HS = C/NH, V vocab, Vp padded vocab, N = B*T rows.
// Kernels know nothing about parallelism: a tensor-parallel layer calls them on its shard.
//
// Conventions:
//  - Weight matrices are (OC, C) row-major ("out, in"), so out = inp @ weight^T + bias.
//  - Parameter gradients (dweight, dbias, dwte, ...) ACCUMULATE (+=): that is what gradient
//    accumulation over micro-batches needs.
//  - Activation gradients (dinp) are OVERWRITTEN unless the comment says "accumulates".
//  - Everything is deterministic: the same inputs and thread count give bitwise the same
//    outputs (no atomics; reductions in a fixed order).
//  - Threads: OpenMP, honouring omp_set_num_threads / OMP_NUM_THREADS.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "core/dtype.h"

namespace loom::kernels {

// ---- GEMM facade -------------------------------------------------------------------------
enum class GemmBackend { kOneDnn, kOpenBlas };
const char* gemm_backend_name(GemmBackend b);
GemmBackend parse_gemm_backend(const std::string& name);  // "onednn" | "openblas"

// Row-major C (M,N) = alpha * op(A) @ op(B) + beta * C, op = transpose if trans_*.
// lda/ldb/ldc are row strides. Dispatches to the process-wide default backend unless one
// is given.
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
          int lda, const float* B, int ldb, float beta, float* C, int ldc);
void gemm(GemmBackend backend, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
          const float* A, int lda, const float* B, int ldb, float beta, float* C, int ldc);
void set_default_gemm_backend(GemmBackend b);
GemmBackend default_gemm_backend();

// ---- mixed precision -----------------------------------------------------------------
// Row-major C (M,N) fp32 = alpha * op(A) @ op(B) + beta * C with A and B in `ab` (fp32,
// bf16 or fp16) and fp32 accumulation (oneDNN matmul; fp32 goes to gemm()). Same argument
// conventions as gemm().
void gemm_typed(DType ab, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                const void* A, int lda, const void* B, int ldb, float beta, float* C, int ldc);
// Whether oneDNN has a matmul for `ab` inputs on this CPU (oneDNN 2.6 has bf16 on AVX-512
// CPUs; fp16 only on CPUs with AVX512-FP16 in later versions). gemm_typed throws otherwise.
bool gemm_typed_available(DType ab);
// oneDNN's implementation of that GEMM (e.g. "brg:avx512_core_bf16") for dense operands.
std::string gemm_typed_impl(DType ab, bool trans_a, bool trans_b, int M, int N, int K);
// n elements from `in` to `out`: fp32 -> bf16 (round to nearest even) / fp16 (IEEE, round
// to nearest even, overflow to inf), bf16/fp16 -> fp32 (exact), or a copy.
void convert(void* out, DType out_type, const void* in, DType in_type, size_t n);

// Compute precision t (autocast): what the GEMM operands of a t computation are stored as.
// fp32 -> fp32; bf16/fp16 -> itself where gemm_typed has it, else fp32 holding values
// rounded to t (fp16 on oneDNN 2.6), multiplied by sgemm: the same rounding of the
// operands, fp32 accumulation either way.
DType compute_storage(DType t);
// n fp32 values -> compute_storage(t) with t's rounding / back to fp32 (exact).
void to_compute(DType t, void* out, const float* in, size_t n);
void from_compute(DType t, float* out, const void* in, size_t n);
// out = fp32(t(in)): rounded to t (round to nearest even), n elements; in place allowed.
void round_to(DType t, float* out, const float* in, size_t n);
// The linear layer with inp and weight in compute_storage(t): out (N,OC) fp32 =
// inp @ weight^T + bias (fp32, may be null). t = fp32 is matmul_forward exactly.
void matmul_forward_typed(DType t, float* out, const void* inp, const void* weight,
                          const float* bias, int N, int C, int OC);
// Its backward: dout (N,OC) fp32 is rounded to t through `stage` (stage_elems elements of
// compute_storage(t), at least N; the output columns go in blocks that fit), then dinp
// (N,C) fp32 = dout @ weight (skipped if null) and dweight (OC,C) fp32 += dout^T @ inp;
// dbias accumulates the fp32 dout's column sums. t = fp32 is matmul_backward exactly.
void matmul_backward_typed(DType t, float* dinp, float* dweight, float* dbias, const float* dout,
                           const void* inp, const void* weight, void* stage, size_t stage_elems,
                           int N, int C, int OC);

// ---- linear layers with weights laid out once (inference) ------------------------------
// A weight (OC, C), rounded to compute_storage(t) and reordered once into the layout
// oneDNN's matmul reads fastest, so that a GEMM of few rows (a decode step) streams it once
// instead of re-laying it out on every call (kernels/matmul_packed.cpp has the figures).
class PackedLinear {
 public:
  PackedLinear();
  PackedLinear(DType t, const float* weight, int C, int OC);
  ~PackedLinear();
  PackedLinear(PackedLinear&&) noexcept;
  PackedLinear& operator=(PackedLinear&&) noexcept;
  // out (N,OC) fp32 = inp (N,C) in compute_storage(t) @ weight^T + bias (fp32, may be
  // null), fp32 accumulation. Safe to call from several threads.
  void forward(float* out, const void* inp, const float* bias, int N) const;
  size_t bytes() const;  // of the packed weight

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- embedding ---------------------------------------------------------------------------
// out (B,T,C) = wte[inp[b,t]] + wpe[t]. wte (Vp,C), wpe (maxT,C), inp (B,T).
void encoder_forward(float* out, const int32_t* inp, const float* wte, const float* wpe,
                     int B, int T, int C);
// dwte, dwpe accumulate. dout (B,T,C).
void encoder_backward(float* dwte, float* dwpe, const float* dout, const int32_t* inp, int B,
                      int T, int C);

// ---- layernorm (eps = 1e-5, biased variance, as torch.nn.LayerNorm) ----------------------
// out (N,C); mean, rstd (N) are saved for backward.
void layernorm_forward(float* out, float* mean, float* rstd, const float* inp,
                       const float* weight, const float* bias, int N, int C);
// dinp ACCUMULATES (it is the residual stream's gradient); dweight, dbias accumulate.
void layernorm_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                        const float* inp, const float* weight, const float* mean,
                        const float* rstd, int N, int C);

// ---- linear ------------------------------------------------------------------------------
// out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC); bias may be null.
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int N, int C, int OC);
// dinp (N,C) overwritten (skipped if null); dweight (OC,C), dbias (OC) accumulate (dbias may
// be null).
void matmul_backward(float* dinp, float* dweight, float* dbias, const float* dout,
                     const float* inp, const float* weight, int N, int C, int OC);

// ---- GELU, tanh approximation (torch.nn.functional.gelu(x, approximate="tanh")) ----------
void gelu_forward(float* out, const float* inp, size_t n);
// dinp overwritten.
void gelu_backward(float* dinp, const float* inp, const float* dout, size_t n);

// ---- residual ----------------------------------------------------------------------------
// out = a + b (n elements).
void residual_forward(float* out, const float* a, const float* b, size_t n);

// ---- causal self-attention ---------------------------------------------------------------
// qkv (B,T,3C): for each token, [q (C) | k (C) | v (C)], head h occupies columns
// [h*HS, (h+1)*HS) of each part. out (B,T,C) with heads concatenated the same way.
// att (B,NH,T,T) holds the softmax probabilities (row t valid for columns <= t; the rest
// must be written as 0) and is saved for backward. Scale 1/sqrt(HS).
void attention_forward(float* out, float* att, const float* qkv, int B, int T, int C, int NH);
// att alone, bitwise as attention_forward writes it (the same blocks and kernels): what
// selective recomputation re-runs in backward instead of keeping the probabilities.
void attention_probs(float* att, const float* qkv, int B, int T, int C, int NH);
// Floats of scratch that attention_backward needs for these sizes.
size_t attention_backward_scratch(int B, int T, int C, int NH);
// dqkv (B,T,3C) overwritten.
void attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv,
                        const float* att, int B, int T, int C, int NH);

// ---- causal self-attention in O(T) memory (blocked, online softmax) -------------------
// Same qkv/out layout and scale as attention_forward; instead of the (T,T) probabilities
// it saves lse (B,NH,T): the log-sum-exp of each row's scaled scores.
void flash_attention_forward(float* out, float* lse, const float* qkv, int B, int T, int C, int NH);
// Floats of scratch flash_attention_backward needs: per (b, h) pair two small tiles and T,
// never T^2.
size_t flash_attention_backward_scratch(int B, int T, int C, int NH);
// dqkv (B,T,3C) overwritten. out and lse are the forward's.
void flash_attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv,
                              const float* out, const float* lse, int B, int T, int C, int NH);
// The same with `out` held in `out_type` (fp32, bf16 or fp16; autocast keeps the attention
// output rounded to the compute precision): exactly the fp32 version on its fp32 values.
void flash_attention_backward(float* dqkv, float* scratch, const float* dout, const float* qkv,
                              const void* out, DType out_type, const float* lse, int B, int T,
                              int C, int NH);

// ---- causal attention over cached keys and values (decoding) ----------------------------
// One run: n query rows of one sequence at positions pos0 .. pos0+n-1, row i attending to
// positions 0 .. pos0+i, whose keys and values (this run's rows' included) are already in
// the cache of `capacity` positions: head h's keys transposed, an (HS, capacity) block at
// k + h*capacity*HS (position t's key in column t), and its values as rows, a (capacity,
// HS) block at v + h*capacity*HS, elements of type `kv` (fp32 or bf16). q's rows have stride
// ldq and out's ldo, head h at columns [h*HS, (h+1)*HS). Scale 1/sqrt(HS), the softmax and
// every product in fp32 (a bf16 cache is widened exactly), as attention_forward.
struct CachedAttentionRun {
  const float* q;
  float* out;
  const void* k;
  const void* v;
  int n = 1, pos0 = 0;
};
// Every run's out; runs are independent (each row's result is the same whatever else the
// call holds). pos0 + n <= capacity for every run.
void cached_attention(std::span<const CachedAttentionRun> runs, int NH, int HS, int ldq, int ldo,
                      int capacity, DType kv = DType::kF32);

// ---- softmax cross-entropy over the real vocab V of padded logits (N,Vp) -----------------
// losses (N) = -log softmax(logits[i, :V])[targets[i]]. Columns >= V are ignored.
void crossentropy_forward(float* losses, const float* logits, const int32_t* targets, int N,
                          int V, int Vp);
// Fused forward + backward: writes losses (N) and OVERWRITES logits in place with
// dloss * (softmax - onehot(target)) for columns < V and 0 for columns >= V.
// dloss is d(total loss)/d(loss_i), e.g. 1/(B*T*grad_accum) for a mean.
void crossentropy_fused(float* losses, float* logits, const int32_t* targets, int N, int V,
                        int Vp, float dloss);

// Vocab-parallel cross-entropy: each tensor-parallel rank holds the columns [v0, v0+Vl) of
// the padded logits. Per row of its local logits (N,Vl), over the real columns (global
// index < V): stats[i] = {max m, sum of exp(x - m), x[target] if the target is local else
// 0}. With keep_exps the real columns are overwritten with exp(x - m), which
// vocab_ce_finish turns into the gradient without a second exp.
void vocab_ce_local_stats(float* stats, float* logits, const int32_t* targets, int N, int Vl,
                          int v0, int V, bool keep_exps);
// Combines the tp ranks' stats (all (tp,N,3), rank order) into losses (N); with dloss > 0
// also overwrites the local logits, which must hold what vocab_ce_local_stats left with
// keep_exps, with dloss * (softmax - onehot) (0 on padding columns).
void vocab_ce_finish(float* losses, float* logits, const float* all_stats, int tp,
                     const int32_t* targets, int N, int Vl, int v0, int V, float dloss);

// ---- AdamW (torch.optim.AdamW, decoupled decay) ------------------------------------------
// For i in [0,n): p *= (1 - lr*wd); m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
// p -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps), with g = grad[i] * grad_scale.
// `t` is the 1-based step count. The operation order matches PyTorch 1.13's
// _single_tensor_adamw so results agree to fp32 round-off. (lr, beta1, beta2 and weight_decay
// are read as the double of their shortest decimal spelling, 0.9f -> 0.9, as Python holds
// them; with such values the update is bitwise torch's, fused multiply-adds included.)
void adamw_update(float* params, const float* grads, float* m, float* v, size_t n, float lr,
                  float beta1, float beta2, float eps, float weight_decay, int t,
                  float grad_scale);

// Sum of squares of n floats, accumulated in double in a fixed order (deterministic).
double sum_squares(const float* x, size_t n);
// x *= s.
void scale(float* x, size_t n, float s);

}  // namespace loom::kernels
