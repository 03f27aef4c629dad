// The model's activation and scratch layout as one declarative table: every buffer Gpt
// keeps or uses during a step, with its dtype role, its shape, its scope (once per chunk,
// once per block, the head's, shared scratch) and whether recomputation may drop it. The
// arena sizes and offsets (Gpt::reserve), the per-block views (Gpt::block_views), the
// recompute policy and the memory the start-up line predicts (train/memory_need) are all
// derived from this table, so they cannot disagree.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"

namespace loom {

// What backward re-runs instead of keeping (Korthikanti et al. 2022):
//  none      keep everything;
//  selective drop what is large and cheap to recompute: attention probabilities (one
//            softmax(QK^T) per block), the GELU output (one elementwise pass) and the two
//            layernorm outputs (one row-wise pass each, from the kept residual; under
//            sequence parallelism with their all-gather);
//  full      keep only each block's input (the residual stream) and re-run the block's
//            forward before its backward.
// Recomputation calls the same deterministic kernels on the same inputs, so results are
// bitwise those of `none`.
enum class Recompute : uint8_t { kNone, kSelective, kFull };
const char* recompute_name(Recompute r);
Recompute parse_recompute(const std::string& name);  // InputError on anything else

// The attention kernel: "flash" (blocked, online softmax; saves the per-row log-sum-exp,
// O(T) memory) or "materialized" (saves the (T,T) probabilities).
enum class AttentionKernel : uint8_t { kFlash, kMaterialized };
const char* attention_name(AttentionKernel a);
AttentionKernel parse_attention(const std::string& name);  // InputError on anything else

namespace act {
// Table index of each buffer; activation_table()[id].id == id.
enum Id : int {
  // chunk scope: one per (chunk, slot)
  kInput,      // (Nl,C) the chunk's input residual
  // block scope: a stack over the chunk's blocks per slot, or one shared copy if recomputed
  kLn1,        // (N,C) full rows
  kLn1Mean,    // (Nl)
  kLn1Rstd,    // (Nl)
  kQkv,        // (N,3C/tp)
  kAtty,       // (N,C/tp)
  kAtt,        // (B,NH/tp,T,T) attention probabilities (materialized kernel)
  kLse,        // (B,NH/tp,T) per-row log-sum-exp of the scores (flash kernel)
  kResidual2,  // (Nl,C)
  kLn2,        // (N,C)
  kLn2Mean,    // (Nl)
  kLn2Rstd,    // (Nl)
  kFch,        // (N,4C/tp) GELU input
  kFchGelu,    // (N,4C/tp) GELU output
  kResidual3,  // (Nl,C) the block's output = the next block's input
  // head scope: per slot of the head chunk. The head runs its backward GEMMs in forward,
  // one block of head_rows rows at a time (logits, cross-entropy, d loss/d logits, d lnf
  // and wte's gradient), so only d loss/d lnf waits for backward, never (N,Vp/tp) logits.
  kLnfMean,    // (Nl)
  kLnfRstd,    // (Nl)
  kLosses,     // (N)
  kDlnf,       // (N,C) d loss/d lnf (partial over vocab shards under tp)
  // scratch: one copy shared by every chunk and slot (one micro-batch computes at a time).
  // Live across a whole backward pass (its recomputation included):
  kDresidual,  // (Nl,C)
  kSpGrads,    // sequence parallel: per-chunk partial LN / wpe gradients
  // Forward only (a chunk's forward, a block's recomputation, the head's forward with its
  // fused loss gradient); shares its memory with the backward-only scratch below:
  kLnf,        // (N,C) ln_f's output, used within the head's forward
  kLogits,     // (head_rows,Vp/tp): one row block; d loss/d logits after the loss
  kHeadStage,  // (head_rows,Vp/tp) low precision: d loss/d logits in the compute dtype
  kCeStats,    // (tp+1,N,3) vocab-parallel cross-entropy statistics
  kProj,       // (N,C) row-parallel partial sums; low precision: the fp32 values of a
               // compute-precision entry before rounding (the GELU's N*C at a time)
  kLocal,      // (Nl,C) tp > 1: local LN output / reduced projection
  // Backward only (one block's backward, the head's and the embeddings'):
  kDresFull,   // (N,C) sequence parallel: gathered dresidual
  kDln,        // (N,C)
  kDlnLocal,   // (Nl,C) tp > 1
  kDatty,      // (N,C/tp)
  kDfch,       // (N,4C/tp) d fch_gelu, then d fch (in place), then d qkv (N,3C/tp)
  kAttScratch, // attention backward
  kStageLow,   // (N,max(C,4C/tp)) low precision: a GEMM output gradient in the compute dtype
  kCount
};
}  // namespace act

// kScratch: one copy, live across a forward or backward pass; kForward / kBackward: one
// copy used only inside a forward (recomputation included) / only inside a backward step
// that recomputes nothing, so the two share their memory (each pass runs alone: a pipeline
// interleaves whole forward and backward calls, never parts of them).
enum class ActScope : uint8_t { kChunk, kBlock, kHead, kScratch, kForward, kBackward };
// kAlways: kept under every policy; kUnlessSelective: dropped by selective and full;
// kUnlessFull: dropped by full only.
enum class Keep : uint8_t { kAlways, kUnlessSelective, kUnlessFull };
// kF32: always fp32 (residual stream, normalisation statistics, softmax, loss, gradients);
// kCompute: the precision GEMM inputs are computed in.
enum class ActRole : uint8_t { kF32, kCompute };

// Sizes an entry's shape is a function of (doubles, so absurd configs are priced without
// overflow). N = B*T rows, Nl = local rows (N/tp under sequence parallelism), Cl = C/tp,
// NHl = NH/tp, Vl = Vp/tp; att, lse and att_scratch are the attention kernel's (0 for the
// buffers the other kernel has).
struct ActDims {
  double B = 0, T = 0, N = 0, Nl = 0, C = 0, Cl = 0, NHl = 0, Vl = 0, tp = 1;
  bool sp = false;
  double att = 0, lse = 0, att_scratch = 0, sp_grads = 0;
  double stage = 0;  // elements of the block GEMMs' output-gradient stage: 0 in fp32
  double head_stage = 0;  // elements of the head's d loss/d logits stage: 0 in fp32
  double head_rows = 0;  // rows of logits the head computes at once: min(N, head_rows)
};

// The head's default row block: 256 rows keep GPT-2's (rows, 50304) fp32 logits at 52 MB
// (at T=1024, B=4 no more than the backward-only scratch they share memory with), while
// each block's GEMMs reuse every wte element read 256 times. Measured on GPT-2 124M, T=256,
// B=4, 2 threads of an AMD EPYC (Zen 4): a training step 3% (fp32) and 4% (bf16) faster
// than with 128 rows, whose GEMMs run the (rows, C) x (C, 50304) shapes below 70% of the
// machine's GEMM peak; 512 rows gained nothing more.
constexpr int kHeadRows = 256;

struct GptConfig;
// The dims of micro-batches of B rows of T tokens for `cfg` at tensor-parallel size tp
// (sp: sequence parallel), with the attention kernel's buffers and the conversion stages
// of compute precision `precision`, and the head's row block; sp_grads is left 0.
ActDims activation_dims(const GptConfig& cfg, int B, int T, int tp, bool sp,
                        AttentionKernel attention, DType precision = DType::kF32,
                        int head_rows = kHeadRows);

struct ActEntry {
  act::Id id;
  const char* name;
  ActScope scope;
  Keep keep;
  ActRole role;
  double (*numel)(const ActDims&);  // per block for kBlock
};

std::span<const ActEntry> activation_table();

// Whether a block-scope entry is kept per block (stacked) under `policy`; if not, one
// shared copy holds it while a block computes and backward recomputes it.
bool kept(const ActEntry& e, Recompute policy);
DType entry_dtype(const ActEntry& e, DType compute);

// A chunk as the arena sees it.
struct ChunkShape {
  int blocks = 0;
  bool head = false;
};

// One contiguous region of the arena: `numel` elements of `entry` for (chunk, slot), or
// shared (chunk = slot = -1) for scratch and for recomputed block entries, at byte `offset`.
struct ArenaRegion {
  const ActEntry* entry;
  int chunk, slot;
  double numel;
  DType dtype;
  double offset = 0;
};

// The arena's regions in layout order, each 64-byte aligned: per chunk and slot the chunk,
// kept block (stacked) and head entries; then one block of each recomputed entry; then the
// pass-long scratch; then the forward-only and the backward-only scratch from one offset.
// Doubles, so absurd configs are priced without overflow.
struct ArenaLayout {
  std::vector<ArenaRegion> regions;
  double bytes = 0;
};
ArenaLayout arena_layout(const ActDims& d, std::span<const ChunkShape> chunks, int slots,
                         Recompute policy, DType compute);

// arena_layout(...).bytes: what Gpt::reserve allocates.
double activation_bytes(const ActDims& d, std::span<const ChunkShape> chunks, int slots,
                        Recompute policy, DType compute);

}  // namespace loom
