// Heartbeats from training ranks to `loom launch`'s supervisor.
//
// The supervisor passes, in the environment of every rank:
//   LOOM_SUPERVISOR=127.0.0.1:PORT   where it listens (TCP)
//   LOOM_SUPERVISOR_SECRET=HEX       the job's secret (16 random bytes, hex)
//   LOOM_HEARTBEAT_S=S               the supervisor's heartbeat timeout in seconds
// A rank connects once and sends text lines on that connection:
//   "SECRET RANK STEP IDLE\n"  hello and every heartbeat: STEP is the step it is in (-1 before
//                              the first); IDLE the milliseconds since its last progress (the
//                              start of that step), or "-" while it is not in a training step
//                              (starting, evaluating, saving a checkpoint). Sent every S/3
//                              seconds and whenever the step changes. "SECRET RANK STEP" (no
//                              IDLE) is read as "-".
//   "SECRET RANK done\n"       the rank finished cleanly and will send no more
//   "SECRET RANK fail JSON\n"  the rank is failing, and why: a FailureRecord (core/failure.h)
//                              as one JSON object, its "rank" that of the line. Sent on a
//                              connection of its own (send_failure_record), so it reaches
//                              the supervisor before the heartbeat connection exists, and
//                              whatever state that one is in.
// A line with a wrong secret is rejected (the supervisor closes that connection). The
// supervisor never writes: a connection that becomes readable has been closed by it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>

#include "core/failure.h"

namespace loom {

struct HeartbeatLine {
  int rank = -1;
  int step = -1;
  bool done = false;
  int64_t idle_ms = -1;  // since the rank's last progress; -1 when not in a training step
  std::optional<FailureRecord> failure;  // a "fail" line's record
};

// The longest line a supervisor reads; a failure record's message is cut to fit.
inline constexpr size_t kMaxHeartbeatLine = 16384;

// "SECRET RANK STEP IDLE" ("-" for idle_ms < 0) or "SECRET RANK done" (no newline).
std::string format_heartbeat_line(std::string_view secret, int rank, int step,
                                  int64_t idle_ms = -1);
std::string format_done_line(std::string_view secret, int rank);

// "SECRET RANK fail {...}", at most kMaxHeartbeatLine bytes (the message is shortened).
std::string format_failure_line(std::string_view secret, const FailureRecord& record);

// Sends `record` to the supervisor named by LOOM_SUPERVISOR on a connection of its own,
// giving up after timeout_s (a host whose link is down must not keep a failing rank
// alive). Fills in the host name when the record has none. False when not under
// `loom launch` or the supervisor cannot be reached (the rank's stderr still says why).
bool send_failure_record(FailureRecord record, double timeout_s = 2);

// The parsed line, or nullopt when it is malformed or its secret is not `secret` (compared
// in constant time). `line` has no trailing newline.
std::optional<HeartbeatLine> parse_heartbeat_line(std::string_view line, std::string_view secret);

class HeartbeatClient {
 public:
  // nullptr when LOOM_SUPERVISOR is unset (not launched by `loom launch`). A supervisor that
  // cannot be reached is reported once on stderr; training goes on without heartbeats.
  static std::unique_ptr<HeartbeatClient> from_env(int world_rank);

  // Beats every period_s. Once the supervisor's end of the connection has been closed for
  // orphan_after_s (it died: kill -9 leaves mpirun and the ranks running), `orphaned` is
  // called from the heartbeat thread; the default says so and ends the process, since its
  // work is no longer anyone's.
  HeartbeatClient(const std::string& address, std::string secret, int rank, double period_s,
                  double orphan_after_s = 0, std::function<void()> orphaned = nullptr);
  ~HeartbeatClient();
  HeartbeatClient(const HeartbeatClient&) = delete;
  HeartbeatClient& operator=(const HeartbeatClient&) = delete;

  // The step this rank is in: sent at once when it changes (that is progress), then with
  // every heartbeat.
  void set_step(int step);
  // Between set_busy(true) and set_busy(false) (an evaluation, a checkpoint save) the rank
  // reports no idle time: such work is not a step, and is guarded by the collectives'
  // deadline instead. Leaving it counts as progress.
  void set_busy(bool busy);
  // Says "done" and stops: the supervisor stops expecting heartbeats from this rank.
  void finish();
  bool connected() const { return fd_ >= 0; }

 private:
  void loop();
  bool send_line(const std::string& line);
  void stop_thread();
  std::string beat_line() const;
  bool supervisor_closed() const;

  std::string secret_;
  int rank_;
  double period_s_;
  double orphan_after_s_;
  std::function<void()> orphaned_;
  std::string address_;
  int fd_ = -1;
  std::atomic<int> step_{-1};
  std::atomic<bool> busy_{false};
  std::atomic<int64_t> progress_ns_{0};  // steady clock at the last progress
  std::atomic<bool> failed_{false};  // a send failed (reported once); no more sends
  std::mutex send_mu_;  // one line at a time on fd_
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  std::thread thread_;
};

}  // namespace loom
