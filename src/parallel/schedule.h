// Pipeline schedules as data: a schedule is, per pipeline rank, the list of actions that
// rank executes in order. Builders produce compute-only schedules (forwards and
// backwards); lower() inserts the point-to-point sends and receives, so one simulator
// (schedule_sim.h) and one executor can run any schedule without knowing how it was made.
#pragma once

#include <string>
#include <tuple>
#include <vector>

namespace loom {

enum class OpKind { kForward, kBackward, kSendAct, kRecvAct, kSendGrad, kRecvGrad };

struct Action {
  OpKind op;
  int stage;       // pipeline rank executing the action
  int microbatch;
  int chunk = 0;   // model chunk on that rank (virtual stage chunk * p + stage); 0 unless interleaved
  int peer = -1;   // the other rank of a send or receive
  bool operator==(const Action&) const = default;
};

// Virtual stage of an action in a pipeline of p ranks.
inline int virtual_stage(const Action& a, int p) { return a.chunk * p + a.stage; }

// Compact form as torchtitan prints it: "2F0", "2B0", "2SA0>3", "3RA0<2", "3SG0>2",
// "2RG0<3"; with v > 1 the chunk follows the micro-batch: "1F3c1", "1SA3c1>2".
std::string to_string(const Action& a, int v = 1);

using Schedule = std::vector<std::vector<Action>>;

inline bool is_send(OpKind op) { return op == OpKind::kSendAct || op == OpKind::kSendGrad; }
inline bool is_recv(OpKind op) { return op == OpKind::kRecvAct || op == OpKind::kRecvGrad; }

// A message as both of its ends name it: (gradient?, micro-batch, from virtual stage, to
// virtual stage); a send and its receive compute the same key on their own sides.
using MsgKey = std::tuple<bool, int, int, int>;
MsgKey msg_key(const Action& a, int p);

// All forwards, then all backwards: peak memory m activations on every rank.
Schedule build_gpipe(int p, int m);
// PipeDream-flush 1F1B: p-1-rank warm-up forwards, then alternate, then drain backwards.
Schedule build_1f1b(int p, int m);
// Megatron's interleaved 1F1B with v model chunks per rank (chunk c of rank r is virtual
// stage c*p + r). Requires m % p == 0 and v >= 2.
Schedule build_interleaved_1f1b(int p, int m, int v);

// Inserts the sends and receives around each compute action of a compute-only schedule.
Schedule lower(const Schedule& compute, int p, int v);

}  // namespace loom
