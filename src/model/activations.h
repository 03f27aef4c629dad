// The model's activation and scratch layout as one declarative table: every buffer Gpt
// keeps or uses during a step, with its dtype role, its shape, its scope (once per chunk,
// once per block, the head's, shared scratch) and whether recomputation may drop it. The
// arena sizes and offsets (Gpt::reserve), the per-block views (Gpt::block_views), the
// recompute policy and the memory the start-up line predicts (train/memory_need) are all
// derived from this table, so they cannot disagree.
#pragma once

#include <functional>
#include <span>
#include <string>

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
  kLnf,        // scratch (N,C): ln_f's output, used within the head's forward
  kLnfMean,    // (Nl)
  kLnfRstd,    // (Nl)
  kLogits,     // scratch (head_rows,Vp/tp): one row block; d loss/d logits after the loss
  kLosses,     // (N)
  kDlnf,       // (N,C) d loss/d lnf (partial over vocab shards under tp)
  // scratch: one copy shared by every chunk and slot (one micro-batch computes at a time)
  kDresidual,  // (Nl,C)
  kDresFull,   // (N,C) sequence parallel: gathered dresidual
  kDln,        // (N,C)
  kDlnLocal,   // (Nl,C) tp > 1
  kDatty,      // (N,C/tp)
  kDfch,       // (N,4C/tp) d fch_gelu, then d fch (in place), then d qkv (N,3C/tp)
  kAttScratch, // attention backward
  kProj,       // (N,C) row-parallel partial sums
  kLocal,      // (Nl,C) tp > 1: local LN output / reduced projection
  kCeStats,    // (tp+1,N,3) vocab-parallel cross-entropy statistics
  kSpGrads,    // sequence parallel: per-chunk partial LN / wpe gradients
  kStage32,    // (N,max(C,4C/tp)) low precision: a compute-precision entry's fp32 values
  kStageLow,   // (N,max(C,4C/tp)) low precision: a GEMM output gradient in the compute dtype
  kCount
};
}  // namespace act

enum class ActScope : uint8_t { kChunk, kBlock, kHead, kScratch };
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
  double stage = 0;  // elements of each conversion stage: 0 in fp32
  double head_rows = 0;  // rows of logits the head computes at once: min(N, head_rows)
};

// The head's default row block: 128 rows keep GPT-2's (rows, 50304) fp32 logits at 26 MB
// while each block's GEMMs still reuse every wte element read 128 times.
constexpr int kHeadRows = 128;

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
// shared (chunk = slot = -1) for scratch and for recomputed block entries.
struct ArenaRegion {
  const ActEntry* entry;
  int chunk, slot;
  double numel;
  DType dtype;
};

// Visits the arena's regions in layout order: per chunk and slot the chunk, kept block
// (stacked) and head entries; then one block of each recomputed entry; then the scratch.
void for_each_region(const ActDims& d, std::span<const ChunkShape> chunks, int slots,
                     Recompute policy, DType compute,
                     const std::function<void(const ArenaRegion&)>& visit);

// Bytes of all regions (without alignment padding).
double activation_bytes(const ActDims& d, std::span<const ChunkShape> chunks, int slots,
                        Recompute policy, DType compute);

}  // namespace loom
