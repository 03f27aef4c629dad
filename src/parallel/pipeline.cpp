#include "parallel/pipeline.h"

#include <fmt/format.h>

#include <algorithm>
#include <exception>
#include <map>
#include <tuple>
#include <utility>

#include "core/check.h"
#include "core/timer.h"

namespace loom {
namespace {

bool is_grad(OpKind op) { return op == OpKind::kSendGrad || op == OpKind::kRecvGrad; }

std::string describe_msg(const MsgKey& k) {
  return fmt::format("{} of micro-batch {} from virtual stage {} to {}",
                     std::get<0>(k) ? "gradient" : "activation", std::get<1>(k),
                     std::get<2>(k), std::get<3>(k));
}

}  // namespace

Schedule build_schedule(const std::string& name, int p, int m, int v) {
  Schedule compute;
  if (name == "gpipe" || name == "1f1b") {
    LOOM_REQUIRE(v == 1,
                 "pipeline schedule '{}' runs one model chunk per rank (virtual stages 1), "
                 "got {}; use 'interleaved' for more", name, v);
    compute = name == "gpipe" ? build_gpipe(p, m) : build_1f1b(p, m);
  } else if (name == "interleaved") {
    compute = build_interleaved_1f1b(p, m, v);
  } else {
    LOOM_REQUIRE(false, "unknown pipeline schedule '{}': valid names are gpipe, 1f1b, interleaved",
                 name);
  }
  return lower(compute, p, v);
}

std::string pipeline_error_grid(const Schedule& lowered, int v, int rank, size_t failed_index) {
  const std::string marker = " <-- ERROR HERE";
  size_t rows = 0, width = 6;
  for (const auto& list : lowered) {
    rows = std::max(rows, list.size());
    for (const Action& a : list) width = std::max(width, to_string(a, v).size());
  }
  width += marker.size() + 1;
  const bool past_end = rank >= 0 && rank < static_cast<int>(lowered.size()) &&
                        failed_index >= lowered[rank].size();
  std::string grid = fmt::format("pipeline schedule of rank {} failed at action {}{}:\n", rank,
                                 failed_index, past_end ? " (waiting for its sends)" : "");
  grid += fmt::format("{:>8}", "step");
  for (size_t r = 0; r < lowered.size(); ++r)
    grid += fmt::format(" {:<{}}", fmt::format("rank {}", r), width);
  for (size_t i = 0; i < rows; ++i) {
    while (grid.back() == ' ') grid.pop_back();
    grid += fmt::format("\n{:>8}", i);
    for (size_t r = 0; r < lowered.size(); ++r) {
      std::string cell = i < lowered[r].size() ? to_string(lowered[r][i], v) : "";
      if (static_cast<int>(r) == rank && i == failed_index) cell += marker;
      grid += fmt::format(" {:<{}}", cell, width);
    }
  }
  while (grid.back() == ' ') grid.pop_back();
  if (past_end) grid += fmt::format("\n{:>8} rank {} {}", "end", rank, marker);
  return grid + "\n";
}

std::string p2p_order_mismatch(const Schedule& lowered, int v) {
  const int p = static_cast<int>(lowered.size());
  // [from][to]: the messages in the order the sender posts them / the receiver posts them.
  std::map<std::pair<int, int>, std::vector<MsgKey>> sent, received;
  for (int r = 0; r < p; ++r)
    for (const Action& a : lowered[r]) {
      if (a.peer == r) continue;  // to itself: copied by the executor, never matched
      if (is_send(a.op)) sent[{r, a.peer}].push_back(msg_key(a, p));
      if (is_recv(a.op)) received[{a.peer, r}].push_back(msg_key(a, p));
    }
  for (const auto& [pair, msgs] : sent) {
    const std::vector<MsgKey>& got = received[pair];
    for (size_t i = 0; i < std::max(msgs.size(), got.size()); ++i) {
      if (i < msgs.size() && i < got.size() && msgs[i] == got[i]) continue;
      return fmt::format("messages from rank {} to rank {} (v={}) differ at position {}: sent {}, "
                         "received {}", pair.first, pair.second, v, i,
                         i < msgs.size() ? describe_msg(msgs[i]) : "nothing",
                         i < got.size() ? describe_msg(got[i]) : "nothing");
    }
  }
  for (const auto& [pair, got] : received)
    if (!got.empty() && !sent.count(pair))
      return fmt::format("rank {} receives {} from rank {}, which never sends to it", pair.second,
                         describe_msg(got[0]), pair.first);
  return "";
}

// One expected message. A message a rank sends itself (pp=1 interleaved: chunk c feeds
// chunk c+1 of the same rank) is copied at the send and never touches the communicator.
struct PendingRecv {
  std::unique_ptr<CommHandle> handle;  // null for a message to itself
  int peer = -1;                       // who sends it (for the trace)
  bool posted = false;                 // its RecvAct / RecvGrad ran
  bool arrived = false;                // a message to itself was copied in
};

struct PipelineExecutor::RunState {
  RunState(int v, int m, PipelineStage& s, int64_t step_)
      : stage(s), step(step_), recv_act(size_t(v) * m), recv_grad(size_t(v) * m),
        fwd_done(size_t(v) * m, 0), bwd_done(size_t(v) * m, 0) {}
  PipelineStage& stage;
  int64_t step;
  std::vector<PendingRecv> recv_act, recv_grad;  // [chunk * m + mb]
  std::vector<std::unique_ptr<CommHandle>> sends;
  std::vector<char> fwd_done, bwd_done;  // [chunk * m + mb]
  PipelineStats stats;
};

PipelineExecutor::PipelineExecutor(Comm& pp, Schedule lowered, int m, int v, size_t act_floats,
                                   Trace* trace, CommProgress* progress)
    : pp_(pp), lowered_(std::move(lowered)), m_(m), v_(v), act_floats_(act_floats),
      trace_(trace), progress_(progress) {
  const int p = pp_.size(), rank = pp_.rank(), last = p * v - 1;
  LOOM_CHECK(static_cast<int>(lowered_.size()) == p,
             "schedule has {} ranks, communicator {} has {}", lowered_.size(), pp_.name(), p);
  LOOM_CHECK(m >= 1 && v >= 1 && act_floats >= 1, "bad pipeline shape m={} v={} act_floats={}", m,
             v, act_floats);
  const std::string order = p2p_order_mismatch(lowered_, v);
  LOOM_CHECK(order.empty(), "schedule cannot run over MPI's in-order matching: {}", order);
  for (auto* b : {&recv_act_, &send_act_, &recv_grad_, &send_grad_})
    b->assign(v, std::vector<std::vector<float>>(m));
  for (const Action& a : lowered_[rank]) {
    LOOM_CHECK(a.stage == rank && a.chunk >= 0 && a.chunk < v && a.microbatch >= 0 &&
                   a.microbatch < m,
               "action {} of rank {} out of range for pp={} m={} v={}", to_string(a, v), rank, p,
               m, v);
    const int vs = virtual_stage(a, p);
    auto alloc = [&](auto& b) { b[a.chunk][a.microbatch].resize(act_floats_); };
    if (a.op == OpKind::kForward && vs > 0) alloc(recv_act_);
    if (a.op == OpKind::kForward && vs < last) alloc(send_act_);
    if (a.op == OpKind::kBackward && vs < last) alloc(recv_grad_);
    if (a.op == OpKind::kBackward && vs > 0) alloc(send_grad_);
  }
  // Every send and receive must move a buffer that some forward or backward uses.
  for (const Action& a : lowered_[rank])
    if (is_send(a.op) || is_recv(a.op))
      LOOM_CHECK(buffer(a.op, a.chunk, a.microbatch).size() == act_floats_,
                 "{} moves a buffer no forward or backward of rank {} uses", to_string(a, v), rank);
}

std::vector<float>& PipelineExecutor::buffer(OpKind op, int chunk, int mb) {
  switch (op) {
    case OpKind::kRecvAct: return recv_act_[chunk][mb];
    case OpKind::kSendAct: return send_act_[chunk][mb];
    case OpKind::kRecvGrad: return recv_grad_[chunk][mb];
    default: return send_grad_[chunk][mb];
  }
}

PipelineStats PipelineExecutor::run(PipelineStage& stage, int64_t step) {
  Timer timer;
  RunState st(v_, m_, stage, step);
  const std::vector<Action>& list = lowered_[pp_.rank()];
  size_t i = 0;
  try {
    for (; i < list.size(); ++i) execute(list[i], st);
    for (auto& h : st.sends) h->wait();
    for (const auto& pending : {&st.recv_act, &st.recv_grad})
      for (const PendingRecv& r : *pending)
        LOOM_CHECK(!r.posted,
                   "a receive from rank {} was posted but no forward or backward used it", r.peer);
  } catch (const std::exception& e) {
    fmt::print(stderr, "{}{}\n", pipeline_error_grid(lowered_, v_, pp_.rank(), i), e.what());
    throw;
  }
  st.stats.seconds = timer.seconds();
  return st.stats;
}

void PipelineExecutor::execute(const Action& a, RunState& st) {
  switch (a.op) {
    case OpKind::kRecvAct:
    case OpKind::kRecvGrad: post_recv(a, st); break;
    case OpKind::kSendAct:
    case OpKind::kSendGrad: post_send(a, st); break;
    case OpKind::kForward:
    case OpKind::kBackward: compute(a, st); break;
  }
}

void PipelineExecutor::post_recv(const Action& a, RunState& st) {
  const size_t idx = size_t(a.chunk) * m_ + a.microbatch;
  PendingRecv& slot = (a.op == OpKind::kRecvAct ? st.recv_act : st.recv_grad)[idx];
  LOOM_CHECK(!slot.posted, "receive {} posted twice", to_string(a, v_));
  slot.posted = true;
  slot.peer = a.peer;
  if (a.peer == pp_.rank()) return;  // post_send copies it in
  std::vector<float>& buf = buffer(a.op, a.chunk, a.microbatch);
  slot.handle = pp_.recv_async(buf.data(), buf.size(), a.peer);
}

void PipelineExecutor::post_send(const Action& a, RunState& st) {
  const bool grad = is_grad(a.op);
  const size_t idx = size_t(a.chunk) * m_ + a.microbatch;
  LOOM_CHECK((grad ? st.bwd_done : st.fwd_done)[idx], "send {} comes before its {}",
             to_string(a, v_), grad ? "backward" : "forward");
  std::vector<float>& buf = buffer(a.op, a.chunk, a.microbatch);
  TraceScope scope(trace_,
                   tracing() ? fmt::format("SEND {}->{}", grad ? "grad" : "act", a.peer) : "",
                   "p2p", kLaneP2p, int64_t(buf.size() * sizeof(float)), st.step, a.microbatch);
  if (a.peer != pp_.rank()) {
    st.sends.push_back(pp_.send_async(buf.data(), buf.size(), a.peer));
    return;
  }
  // To itself: straight into the receiving chunk's buffer.
  const int p = pp_.size(), to_vs = virtual_stage(a, p) + (grad ? -1 : 1), to_chunk = to_vs / p;
  const OpKind recv_op = grad ? OpKind::kRecvGrad : OpKind::kRecvAct;
  std::vector<float>& dst = buffer(recv_op, to_chunk, a.microbatch);
  LOOM_CHECK(to_vs % p == pp_.rank() && dst.size() == buf.size(),
             "send {} to itself has no receiving buffer", to_string(a, v_));
  std::copy(buf.begin(), buf.end(), dst.begin());
  (grad ? st.recv_grad : st.recv_act)[size_t(to_chunk) * m_ + a.microbatch].arrived = true;
}

// Waits for the receive that feeds forward/backward `a`; its time is the pipeline bubble
// this rank sees, so it goes on the p2p lane.
void PipelineExecutor::wait_input(const Action& a, RunState& st) {
  const bool fwd = a.op == OpKind::kForward;
  const size_t idx = size_t(a.chunk) * m_ + a.microbatch;
  PendingRecv& slot = (fwd ? st.recv_act : st.recv_grad)[idx];
  LOOM_CHECK(slot.posted, "{} needs its input but no receive was posted before it "
             "(is the schedule lowered?)", to_string(a, v_));
  if (slot.handle) {
    TraceScope scope(trace_,
                     tracing() ? fmt::format("WAIT {}<-{}", fwd ? "act" : "grad", slot.peer) : "",
                     "p2p", kLaneP2p, int64_t(act_floats_ * sizeof(float)), st.step, a.microbatch);
    slot.handle->wait();
    slot.handle.reset();
  } else {
    LOOM_CHECK(slot.arrived, "{} waits for a message its own rank sends only later",
               to_string(a, v_));
  }
  slot.posted = false;
}

void PipelineExecutor::compute(const Action& a, RunState& st) {
  const bool fwd = a.op == OpKind::kForward;
  const int p = pp_.size(), vs = virtual_stage(a, p), last = p * v_ - 1;
  const int c = a.chunk, mb = a.microbatch;
  const size_t idx = size_t(c) * m_ + mb;
  if (progress_) *progress_ = CommProgress{st.step, mb};
  if (fwd ? vs > 0 : vs < last) wait_input(a, st);
  std::vector<char>& done = fwd ? st.fwd_done : st.bwd_done;
  LOOM_CHECK(!done[idx], "{} runs twice", to_string(a, v_));
  LOOM_CHECK(fwd || st.fwd_done[idx], "backward {} runs before its forward", to_string(a, v_));
  TraceScope scope(trace_,
                   tracing() ? fmt::format("{} mb{} c{}", fwd ? "F" : "B", mb, c) : "",
                   "compute", kLaneCompute, -1, st.step, mb);
  Timer t;
  if (fwd)
    st.stage.forward(c, mb, vs > 0 ? recv_act_[c][mb].data() : nullptr,
                     vs < last ? send_act_[c][mb].data() : nullptr);
  else
    st.stage.backward(c, mb, vs < last ? recv_grad_[c][mb].data() : nullptr,
                      vs > 0 ? send_grad_[c][mb].data() : nullptr);
  st.stats.compute_s += t.seconds();
  done[idx] = 1;
}

int PipelineExecutor::peak_inflight(int chunk) const {
  int now = 0, peak = 0;
  for (const Action& a : lowered_[pp_.rank()]) {
    if (a.chunk != chunk) continue;
    if (a.op == OpKind::kForward) peak = std::max(peak, ++now);
    if (a.op == OpKind::kBackward) --now;
  }
  return peak;
}

}  // namespace loom
