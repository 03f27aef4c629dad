#include "model/activations.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "core/check.h"
#include "kernels/kernels.h"
#include "model/config.h"

namespace loom {

const char* recompute_name(Recompute r) {
  switch (r) {
    case Recompute::kNone: return "none";
    case Recompute::kSelective: return "selective";
    case Recompute::kFull: return "full";
  }
  return "?";
}

Recompute parse_recompute(const std::string& name) {
  if (name == "none") return Recompute::kNone;
  if (name == "selective") return Recompute::kSelective;
  if (name == "full") return Recompute::kFull;
  LOOM_REQUIRE(false, "unknown recompute '{}': expected none, selective or full", name);
  __builtin_unreachable();
}

const char* attention_name(AttentionKernel a) {
  return a == AttentionKernel::kFlash ? "flash" : "materialized";
}

AttentionKernel parse_attention(const std::string& name) {
  if (name == "flash") return AttentionKernel::kFlash;
  if (name == "materialized") return AttentionKernel::kMaterialized;
  LOOM_REQUIRE(false, "unknown attention kernel '{}': expected flash or materialized", name);
  __builtin_unreachable();
}

ActDims activation_dims(const GptConfig& cfg, int B, int T, int tp, bool sp,
                        AttentionKernel attention, DType precision, int head_rows) {
  ActDims d;
  d.B = B;
  d.T = T;
  d.N = double(B) * T;
  d.sp = sp && tp > 1;
  d.Nl = d.sp ? d.N / tp : d.N;
  d.C = cfg.n_embd;
  d.tp = tp;
  d.Cl = d.C / tp;
  d.NHl = double(cfg.n_head / tp);
  d.Vl = double(cfg.padded_vocab(tp) / tp);
  d.head_rows = std::min(d.N, double(std::max(1, head_rows)));
  // The widest block GEMM output gradient (fc's), and one row block of the head's.
  if (precision != DType::kF32) {
    d.stage = d.N * std::max(d.C, 4 * d.Cl);
    d.head_stage = d.head_rows * d.Vl;
  }
  const double pairs = d.B * d.NHl;
  if (attention == AttentionKernel::kFlash) {
    d.lse = pairs * d.T;
    d.att_scratch = pairs * double(kernels::flash_attention_backward_scratch(1, T, 1, 1));
  } else {
    d.att = pairs * d.T * d.T;
    d.att_scratch = pairs * double(kernels::attention_backward_scratch(1, T, 1, 1));
  }
  return d;
}

namespace {

using S = ActScope;
using K = Keep;
using R = ActRole;
using D = const ActDims&;

// Saved in the compute precision: the inputs of GEMMs (ln1, atty, ln2, fch_gelu, lnf: kept
// for the weight gradient), which the forward multiplies in that precision anyway, so
// keeping them rounded loses nothing backward did not already see. The rest stay fp32: the
// residual stream (it accumulates every block's update: rounding it each block would
// compound), layernorm statistics, q/k/v (the scores feed a softmax, and attention runs in
// fp32), attention probabilities and log-sum-exp (softmax), the GELU input (its derivative
// is steep near 0), logits and losses (cross-entropy in fp32) and every gradient.
// d loss/d lnf replaces the (N,Vp/tp) logits a head keeping them for backward would hold.
constexpr ActEntry kTable[] = {
    {act::kInput, "input", S::kChunk, K::kAlways, R::kF32, [](D d) { return d.Nl * d.C; }},
    {act::kLn1, "ln1", S::kBlock, K::kUnlessSelective, R::kCompute,
     [](D d) { return d.N * d.C; }},
    {act::kLn1Mean, "ln1_mean", S::kBlock, K::kUnlessFull, R::kF32, [](D d) { return d.Nl; }},
    {act::kLn1Rstd, "ln1_rstd", S::kBlock, K::kUnlessFull, R::kF32, [](D d) { return d.Nl; }},
    {act::kQkv, "qkv", S::kBlock, K::kUnlessFull, R::kF32, [](D d) { return 3 * d.N * d.Cl; }},
    {act::kAtty, "atty", S::kBlock, K::kUnlessFull, R::kCompute, [](D d) { return d.N * d.Cl; }},
    {act::kAtt, "att", S::kBlock, K::kUnlessSelective, R::kF32, [](D d) { return d.att; }},
    {act::kLse, "lse", S::kBlock, K::kUnlessFull, R::kF32, [](D d) { return d.lse; }},
    {act::kResidual2, "residual2", S::kBlock, K::kUnlessFull, R::kF32,
     [](D d) { return d.Nl * d.C; }},
    {act::kLn2, "ln2", S::kBlock, K::kUnlessSelective, R::kCompute,
     [](D d) { return d.N * d.C; }},
    {act::kLn2Mean, "ln2_mean", S::kBlock, K::kUnlessFull, R::kF32, [](D d) { return d.Nl; }},
    {act::kLn2Rstd, "ln2_rstd", S::kBlock, K::kUnlessFull, R::kF32, [](D d) { return d.Nl; }},
    {act::kFch, "fch", S::kBlock, K::kUnlessFull, R::kF32, [](D d) { return 4 * d.N * d.Cl; }},
    {act::kFchGelu, "fch_gelu", S::kBlock, K::kUnlessSelective, R::kCompute,
     [](D d) { return 4 * d.N * d.Cl; }},
    {act::kResidual3, "residual3", S::kBlock, K::kAlways, R::kF32,
     [](D d) { return d.Nl * d.C; }},
    {act::kLnfMean, "lnf_mean", S::kHead, K::kAlways, R::kF32, [](D d) { return d.Nl; }},
    {act::kLnfRstd, "lnf_rstd", S::kHead, K::kAlways, R::kF32, [](D d) { return d.Nl; }},
    {act::kLosses, "losses", S::kHead, K::kAlways, R::kF32, [](D d) { return d.N; }},
    {act::kDlnf, "dlnf", S::kHead, K::kAlways, R::kF32, [](D d) { return d.N * d.C; }},
    {act::kDresidual, "dresidual", S::kScratch, K::kAlways, R::kF32,
     [](D d) { return d.Nl * d.C; }},
    {act::kSpGrads, "sp_grads", S::kScratch, K::kAlways, R::kF32,
     [](D d) { return d.sp_grads; }},
    {act::kLnf, "lnf", S::kForward, K::kAlways, R::kCompute, [](D d) { return d.N * d.C; }},
    {act::kLogits, "logits", S::kForward, K::kAlways, R::kF32,
     [](D d) { return d.head_rows * d.Vl; }},
    {act::kHeadStage, "head_stage", S::kForward, K::kAlways, R::kCompute,
     [](D d) { return d.head_stage; }},
    {act::kCeStats, "ce_stats", S::kForward, K::kAlways, R::kF32,
     [](D d) { return (d.tp + 1) * d.N * 3; }},
    {act::kProj, "proj", S::kForward, K::kAlways, R::kF32, [](D d) { return d.N * d.C; }},
    {act::kLocal, "local", S::kForward, K::kAlways, R::kF32,
     [](D d) { return d.tp > 1 ? d.Nl * d.C : 0.0; }},
    {act::kDresFull, "dres_full", S::kBackward, K::kAlways, R::kF32,
     [](D d) { return d.sp ? d.N * d.C : 0.0; }},
    {act::kDln, "dln", S::kBackward, K::kAlways, R::kF32, [](D d) { return d.N * d.C; }},
    {act::kDlnLocal, "dln_local", S::kBackward, K::kAlways, R::kF32,
     [](D d) { return d.tp > 1 ? d.Nl * d.C : 0.0; }},
    {act::kDatty, "datty", S::kBackward, K::kAlways, R::kF32, [](D d) { return d.N * d.Cl; }},
    {act::kDfch, "dfch", S::kBackward, K::kAlways, R::kF32, [](D d) { return 4 * d.N * d.Cl; }},
    {act::kAttScratch, "att_scratch", S::kBackward, K::kAlways, R::kF32,
     [](D d) { return d.att_scratch; }},
    {act::kStageLow, "stage_low", S::kBackward, K::kAlways, R::kCompute,
     [](D d) { return d.stage; }},
};

constexpr bool ids_in_order() {
  if (std::size(kTable) != size_t(act::kCount)) return false;
  for (size_t i = 0; i < std::size(kTable); ++i)
    if (kTable[i].id != int(i)) return false;
  return true;
}
static_assert(ids_in_order(), "activation_table() entries must be in act::Id order");

}  // namespace

std::span<const ActEntry> activation_table() { return kTable; }

bool kept(const ActEntry& e, Recompute policy) {
  switch (e.keep) {
    case Keep::kAlways: return true;
    case Keep::kUnlessSelective: return policy == Recompute::kNone;
    case Keep::kUnlessFull: return policy != Recompute::kFull;
  }
  return true;
}

DType entry_dtype(const ActEntry& e, DType compute) {
  return e.role == ActRole::kCompute ? compute : DType::kF32;
}

ArenaLayout arena_layout(const ActDims& d, std::span<const ChunkShape> chunks, int slots,
                         Recompute policy, DType compute) {
  ArenaLayout out;
  double end = 0;
  auto place = [&](const ActEntry& e, int chunk, int slot, double numel, double& at) {
    const DType dt = entry_dtype(e, compute);
    out.regions.push_back({&e, chunk, slot, numel, dt, at});
    at += std::ceil(numel * double(dtype_size(dt)) / 64) * 64;
  };
  for (size_t c = 0; c < chunks.size(); ++c)
    for (int s = 0; s < slots; ++s)
      for (const ActEntry& e : kTable) {
        if (e.scope == S::kBlock && !kept(e, policy)) continue;
        double copies = 0;
        if (e.scope == S::kChunk) copies = 1;
        else if (e.scope == S::kBlock) copies = chunks[c].blocks;
        else if (e.scope == S::kHead) copies = chunks[c].head ? 1 : 0;
        else continue;  // scratch
        place(e, int(c), s, copies * e.numel(d), end);
      }
  for (const ActEntry& e : kTable)
    if (e.scope == S::kBlock && !kept(e, policy)) place(e, -1, -1, e.numel(d), end);
  for (const ActEntry& e : kTable)
    if (e.scope == S::kScratch) place(e, -1, -1, e.numel(d), end);
  double fwd = end, bwd = end;
  for (const ActEntry& e : kTable) {
    if (e.scope == S::kForward) place(e, -1, -1, e.numel(d), fwd);
    if (e.scope == S::kBackward) place(e, -1, -1, e.numel(d), bwd);
  }
  out.bytes = std::max(fwd, bwd);
  return out;
}

double activation_bytes(const ActDims& d, std::span<const ChunkShape> chunks, int slots,
                        Recompute policy, DType compute) {
  return arena_layout(d, chunks, slots, policy, compute).bytes;
}

}  // namespace loom
