// Per-rank timeline in Chrome's trace-event JSON (opens in Perfetto / chrome://tracing).
//
// A Trace collects complete events ("ph":"X") with microsecond timestamps from one
// steady clock origin; write() emits {"traceEvents":[...]} with pid = the rank and
// tid = a lane (0 compute, 1 point-to-point, 2 collectives, ...). Recording is
// thread-safe and cheap (a mutex and a push_back); nothing is written until write().
// A disabled Trace (the default) records nothing.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <string>
#include <vector>

namespace loom {

struct TraceEvent {
  std::string name;  // e.g. "F mb3 c0", "SEND act", "ALLREDUCE dp"
  std::string cat;   // "compute", "p2p", "collective", "step"
  double ts_us = 0;  // start, microseconds since the trace's origin
  double dur_us = 0;
  int lane = 0;          // Chrome tid
  int64_t bytes = -1;    // args.bytes when >= 0
  int64_t step = -1;     // args.step when >= 0
  int microbatch = -1;   // args.mb when >= 0
};

enum TraceLane : int { kLaneCompute = 0, kLaneP2p = 1, kLaneCollective = 2, kLaneStep = 3 };

class Trace {
 public:
  using Clock = std::chrono::steady_clock;
  Trace() = default;
  // An enabled trace for `rank`, timestamps relative to `origin` (use one origin per job
  // when ranks share a clock, e.g. the time of a barrier).
  Trace(int rank, Clock::time_point origin) : enabled_(true), rank_(rank), origin_(origin) {}

  // Starts recording (call before other threads use the trace).
  void enable(int rank, Clock::time_point origin) {
    enabled_ = true;
    rank_ = rank;
    origin_ = origin;
  }
  bool enabled() const { return enabled_; }
  int rank() const { return rank_; }
  double now_us() const {
    return std::chrono::duration<double, std::micro>(Clock::now() - origin_).count();
  }
  void add(TraceEvent e) {
    if (!enabled_) return;
    std::lock_guard lock(mu_);
    events_.push_back(std::move(e));
  }
  std::vector<TraceEvent> events() const {
    std::lock_guard lock(mu_);
    return events_;
  }
  void clear() {
    std::lock_guard lock(mu_);
    events_.clear();
  }
  // Writes the events as Chrome trace JSON (atomically). pid = rank, with process and
  // lane names as metadata events.
  void write(const std::filesystem::path& file, const std::string& process_name) const;

 private:
  bool enabled_ = false;
  int rank_ = 0;
  Clock::time_point origin_{};
  mutable std::mutex mu_;
  std::vector<TraceEvent> events_;
};

// Records one complete event from construction to destruction (no-op when disabled).
class TraceScope {
 public:
  TraceScope(Trace* t, std::string name, const char* cat, int lane, int64_t bytes = -1,
             int64_t step = -1, int mb = -1)
      : t_(t && t->enabled() ? t : nullptr) {
    if (!t_) return;
    e_ = TraceEvent{std::move(name), cat, t_->now_us(), 0, lane, bytes, step, mb};
  }
  ~TraceScope() {
    if (!t_) return;
    e_.dur_us = t_->now_us() - e_.ts_us;
    t_->add(std::move(e_));
  }
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;

 private:
  Trace* t_;
  TraceEvent e_;
};

}  // namespace loom
