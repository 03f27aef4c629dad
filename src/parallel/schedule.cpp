#include "parallel/schedule.h"

#include <fmt/format.h>

#include <algorithm>

#include "core/check.h"

namespace loom {
namespace {

void require_shape(int p, int m) {
  LOOM_REQUIRE(p >= 1, "pipeline stages must be >= 1, got pp={}", p);
  LOOM_REQUIRE(m >= 1, "micro-batches must be >= 1, got {}", m);
}

Action fwd(int rank, int mb, int chunk = 0) { return {OpKind::kForward, rank, mb, chunk}; }
Action bwd(int rank, int mb, int chunk = 0) { return {OpKind::kBackward, rank, mb, chunk}; }

// Shared shape of every 1F1B-style schedule: `warmup` forwards, then alternate one
// forward and one backward until the forwards run out, then the remaining backwards.
// forward(k) / backward(k) give the k-th forward / backward of the rank.
template <class F, class B>
std::vector<Action> one_f_one_b(int total, int warmup, F forward, B backward) {
  std::vector<Action> out;
  out.reserve(2 * total);
  warmup = std::min(warmup, total);
  for (int k = 0; k < warmup; ++k) out.push_back(forward(k));
  for (int k = 0; k < total - warmup; ++k) {
    out.push_back(forward(warmup + k));
    out.push_back(backward(k));
  }
  for (int k = total - warmup; k < total; ++k) out.push_back(backward(k));
  return out;
}

std::string op_code(OpKind op) {
  switch (op) {
    case OpKind::kForward: return "F";
    case OpKind::kBackward: return "B";
    case OpKind::kSendAct: return "SA";
    case OpKind::kRecvAct: return "RA";
    case OpKind::kSendGrad: return "SG";
    case OpKind::kRecvGrad: return "RG";
  }
  return "?";
}

}  // namespace

MsgKey msg_key(const Action& a, int p) {
  const int vs = virtual_stage(a, p);
  switch (a.op) {
    case OpKind::kSendAct: return {false, a.microbatch, vs, vs + 1};
    case OpKind::kRecvAct: return {false, a.microbatch, vs - 1, vs};
    case OpKind::kSendGrad: return {true, a.microbatch, vs, vs - 1};
    default: return {true, a.microbatch, vs + 1, vs};  // kRecvGrad (callers pass messages)
  }
}

std::string to_string(const Action& a, int v) {
  std::string s = fmt::format("{}{}{}", a.stage, op_code(a.op), a.microbatch);
  if (v > 1) s += fmt::format("c{}", a.chunk);
  switch (a.op) {
    case OpKind::kSendAct:
    case OpKind::kSendGrad: s += fmt::format(">{}", a.peer); break;
    case OpKind::kRecvAct:
    case OpKind::kRecvGrad: s += fmt::format("<{}", a.peer); break;
    default: break;
  }
  return s;
}

Schedule build_gpipe(int p, int m) {
  require_shape(p, m);
  Schedule s(p);
  for (int r = 0; r < p; ++r) {
    for (int mb = 0; mb < m; ++mb) s[r].push_back(fwd(r, mb));
    for (int mb = 0; mb < m; ++mb) s[r].push_back(bwd(r, mb));
  }
  return s;
}

Schedule build_1f1b(int p, int m) {
  require_shape(p, m);
  Schedule s(p);
  for (int r = 0; r < p; ++r)
    s[r] = one_f_one_b(m, p - 1 - r, [r](int k) { return fwd(r, k); },
                       [r](int k) { return bwd(r, k); });
  return s;
}

Schedule build_interleaved_1f1b(int p, int m, int v) {
  require_shape(p, m);
  LOOM_REQUIRE(v >= 2, "interleaved schedule needs >= 2 virtual stages per rank, got {}", v);
  LOOM_REQUIRE(m % p == 0,
               "interleaved schedule needs micro-batches divisible by pipeline stages: "
               "{} % {} = {}", m, p, m % p);
  // Megatron walks micro-batches in groups of p: each group goes through chunk 0, then
  // chunk 1, ... (backwards through the chunks in reverse), so a rank always has work
  // from the next chunk while the pipeline fills.
  const int total = m * v;
  auto mb_of = [p, v](int k) { return (k / (p * v)) * p + k % p; };
  Schedule s(p);
  for (int r = 0; r < p; ++r) {
    // Extra 2 per later rank: a rank runs ahead by one forward and one backward hop.
    const int warmup = (p - r - 1) * 2 + (v - 1) * p;
    s[r] = one_f_one_b(
        total, warmup, [=](int k) { return fwd(r, mb_of(k), (k / p) % v); },
        [=](int k) { return bwd(r, mb_of(k), v - 1 - (k / p) % v); });
  }
  return s;
}

Schedule lower(const Schedule& compute, int p, int v) {
  LOOM_REQUIRE(static_cast<int>(compute.size()) == p, "schedule has {} ranks, expected pp={}",
               compute.size(), p);
  const int last = p * v - 1;
  Schedule out(p);
  for (int r = 0; r < p; ++r) {
    for (const Action& a : compute[r]) {
      const int vs = virtual_stage(a, p);
      auto comm = [&](OpKind op, int peer_vs) {
        out[r].push_back({op, a.stage, a.microbatch, a.chunk, peer_vs % p});
      };
      LOOM_CHECK(a.op == OpKind::kForward || a.op == OpKind::kBackward,
                 "lower() takes compute-only schedules, got {}", to_string(a, v));
      if (a.op == OpKind::kForward) {
        if (vs > 0) comm(OpKind::kRecvAct, vs - 1);
        out[r].push_back(a);
        if (vs < last) comm(OpKind::kSendAct, vs + 1);
      } else {
        if (vs < last) comm(OpKind::kRecvGrad, vs + 1);
        out[r].push_back(a);
        if (vs > 0) comm(OpKind::kSendGrad, vs - 1);
      }
    }
  }
  return out;
}

}  // namespace loom
