#include "comm/mpi_comm.h"

#include <mpi.h>
#include <unistd.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"
#include "core/trace.h"

namespace loom {
namespace {

constexpr int kMaxComms = 64;  // communicators whose progress a rank publishes

void mpi_check(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    LOOM_CHECK(false, "{} failed: {}", what, std::string(msg, size_t(len)));
  }
}

int as_int(size_t count) {
  LOOM_CHECK(count <= size_t(INT_MAX), "message of {} elements exceeds MPI's int count", count);
  return int(count);
}

}  // namespace

bool launched_under_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

struct MpiRuntime::State {
  MpiOptions opt;
  int rank = 0, size = 1;
  MPI_Win win = MPI_WIN_NULL;
  int64_t* entered = nullptr;  // (kMaxComms,) this rank's published sequence numbers
  // Ids of live communicators. Every rank creates and frees communicators collectively in
  // the same order, and a new one takes the lowest free id, so ids agree across ranks.
  std::vector<bool> comm_ids = std::vector<bool>(kMaxComms, false);
  CommProgress progress;
  std::atomic<Trace*> trace{nullptr};  // set_trace; read by every worker
  std::function<std::string(int)> describe = [](int r) { return fmt::format("rank {}", r); };
  std::vector<std::string> hosts;  // every world rank's host name
  MPI_Op bf16_sum = MPI_OP_NULL;  // bf16 sum (fp32 add, rounded), created once
};

namespace {

// MPI_User_function for bf16 sums over MPI_UINT16_T: inout = bf16(float(in) + float(inout)).
// Commutative (IEEE addition is), so every rank of an allreduce gets the same bits.
void bf16_sum(void* in, void* inout, int* len, MPI_Datatype*) {
  const auto* a = static_cast<const uint16_t*>(in);
  auto* b = static_cast<uint16_t*>(inout);
  for (int i = 0; i < *len; ++i)
    b[i] = bf16_from_float(bf16_to_float(a[i]) + bf16_to_float(b[i]));
}

struct OpTag {
  const char* op;
  int64_t seq;  // collectives only: every rank of the group numbers them alike
  size_t bytes;
  CommProgress at;
  int peer = -1;  // point-to-point: the other rank (group rank); seq is 0
};

// Completion of one operation.
struct OpState {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  // Point-to-point: the worker only posts the request (MPI_Isend/MPI_Irecv, in submission
  // order, so messages between a pair match in program order) and sets `done`; the waiter
  // then tests the request. A worker never blocks in a send or receive, so a rank's later
  // operations are never stuck behind a peer that has not posted its side yet.
  MPI_Request req = MPI_REQUEST_NULL;
  bool p2p = false;
};

// Runs a communicator's operations one after another on its own thread.
class Worker {
 public:
  Worker() : thread_([this] { loop(); }) {}
  ~Worker() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void push(std::function<void()> task) {
    {
      std::lock_guard lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  void loop() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return stop_ || !tasks_.empty(); });
        if (tasks_.empty()) return;
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::thread thread_;
};

class MpiComm;

class MpiHandle final : public CommHandle {
 public:
  MpiHandle(MpiComm* comm, std::shared_ptr<OpState> op, OpTag tag)
      : comm_(comm), op_(std::move(op)), tag_(tag) {}
  void wait() override;
  bool ready() override {
    std::lock_guard lock(op_->mu);
    if (!op_->done) return false;
    if (!op_->p2p || op_->req == MPI_REQUEST_NULL) return true;
    int flag = 0;
    MPI_Test(&op_->req, &flag, MPI_STATUS_IGNORE);
    return flag != 0;
  }

 private:
  MpiComm* comm_;
  std::shared_ptr<OpState> op_;
  OpTag tag_;
};

class MpiComm final : public Comm {
 public:
  MpiComm(std::shared_ptr<MpiRuntime::State> rt, MPI_Comm comm, const std::string& base)
      : rt_(std::move(rt)), comm_(comm) {
    auto free_id = std::find(rt_->comm_ids.begin(), rt_->comm_ids.end(), false);
    LOOM_CHECK(free_id != rt_->comm_ids.end(), "more than {} live communicators", kMaxComms);
    id_ = int(free_id - rt_->comm_ids.begin());
    *free_id = true;
    __atomic_store_n(rt_->entered + id_, int64_t{0}, __ATOMIC_SEQ_CST);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    members_ = world_ranks();
    name_ = base + group_suffix();
  }
  ~MpiComm() override {
    worker_.reset();  // drains and joins
    if (comm_ != MPI_COMM_WORLD) MPI_Comm_free(&comm_);
    rt_->comm_ids[size_t(id_)] = false;
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }
  Traffic traffic() const override {
    std::lock_guard lock(traffic_mu_);
    return traffic_;
  }

  std::unique_ptr<CommHandle> allreduce_async(float* data, size_t count, ReduceOp op) override {
    const MPI_Op mop = op == ReduceOp::kSum ? MPI_SUM : MPI_MAX;
    return submit("ALLREDUCE", count * 4, [=, this] {
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, data, as_int(count), MPI_FLOAT, mop, comm_),
                "MPI_Allreduce");
    });
  }
  void allreduce(double* data, size_t count, ReduceOp op) override {
    const MPI_Op mop = op == ReduceOp::kSum ? MPI_SUM : MPI_MAX;
    submit("ALLREDUCE", count * 8, [=, this] {
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, data, as_int(count), MPI_DOUBLE, mop, comm_),
                "MPI_Allreduce");
    })->wait();
  }
  std::unique_ptr<CommHandle> allgather_async(const float* send, float* recv,
                                              size_t count) override {
    return submit("ALLGATHER", count * 4 * size_t(size_), [=, this] {
      const void* src = send == recv + size_t(rank_) * count ? MPI_IN_PLACE : send;
      mpi_check(MPI_Allgather(src, as_int(count), MPI_FLOAT, recv, as_int(count), MPI_FLOAT,
                              comm_),
                "MPI_Allgather");
    });
  }
  std::unique_ptr<CommHandle> reduce_scatter_async(const float* send, float* recv,
                                                   size_t count) override {
    return submit("REDUCE_SCATTER", count * 4 * size_t(size_), [=, this] {
      mpi_check(MPI_Reduce_scatter_block(send, recv, as_int(count), MPI_FLOAT, MPI_SUM, comm_),
                "MPI_Reduce_scatter_block");
    });
  }
  std::unique_ptr<CommHandle> reduce_async(float* data, size_t count, int root) override {
    return submit("REDUCE", count * 4, [=, this] {
      const void* send = rank_ == root ? MPI_IN_PLACE : data;
      mpi_check(MPI_Reduce(send, rank_ == root ? data : nullptr, as_int(count), MPI_FLOAT,
                           MPI_SUM, root, comm_),
                "MPI_Reduce");
    });
  }
  std::unique_ptr<CommHandle> broadcast_async(float* data, size_t count, int root) override {
    return submit("BROADCAST", count * 4, [=, this] {
      mpi_check(MPI_Bcast(data, as_int(count), MPI_FLOAT, root, comm_), "MPI_Bcast");
    });
  }
  // Point-to-point runs on the same worker as the collectives: a rank's sends and
  // receives on one communicator are ordered with its collectives there.
  std::unique_ptr<CommHandle> send_async(const float* data, size_t count, int dst) override {
    return submit_p2p("SEND", count * 4, dst, [=, this](MPI_Request* req) {
      mpi_check(MPI_Isend(data, as_int(count), MPI_FLOAT, dst, 0, comm_, req), "MPI_Isend");
    });
  }
  std::unique_ptr<CommHandle> recv_async(float* data, size_t count, int src) override {
    return submit_p2p("RECV", count * 4, src, [=, this](MPI_Request* req) {
      mpi_check(MPI_Irecv(data, as_int(count), MPI_FLOAT, src, 0, comm_, req), "MPI_Irecv");
    });
  }
  std::unique_ptr<CommHandle> allreduce_bf16_async(uint16_t* data, size_t count) override {
    return submit("ALLREDUCE(bf16)", count * 2, [=, this] {
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, data, as_int(count), MPI_UINT16_T, rt_->bf16_sum,
                              comm_),
                "MPI_Allreduce");
    });
  }
  std::unique_ptr<CommHandle> reduce_bf16_async(uint16_t* data, size_t count, int root) override {
    return submit("REDUCE(bf16)", count * 2, [=, this] {
      const void* send = rank_ == root ? MPI_IN_PLACE : data;
      mpi_check(MPI_Reduce(send, rank_ == root ? data : nullptr, as_int(count), MPI_UINT16_T,
                           rt_->bf16_sum, root, comm_),
                "MPI_Reduce");
    });
  }
  std::unique_ptr<CommHandle> broadcast_u16_async(uint16_t* data, size_t count,
                                                  int root) override {
    return submit("BROADCAST(16-bit)", count * 2, [=, this] {
      mpi_check(MPI_Bcast(data, as_int(count), MPI_UINT16_T, root, comm_), "MPI_Bcast");
    });
  }
  std::unique_ptr<CommHandle> broadcast_bytes_async(std::byte* data, size_t count,
                                                    int root) override {
    return submit("BROADCAST(bytes)", count, [=, this] {
      mpi_check(MPI_Bcast(data, as_int(count), MPI_BYTE, root, comm_), "MPI_Bcast");
    });
  }
  std::unique_ptr<CommHandle> alltoall_bytes_async(const std::byte* send, std::byte* recv,
                                                   size_t count) override {
    return submit("ALLTOALL(bytes)", count * size_t(size_), [=, this] {
      mpi_check(MPI_Alltoall(send, as_int(count), MPI_BYTE, recv, as_int(count), MPI_BYTE,
                             comm_),
                "MPI_Alltoall");
    });
  }
  std::unique_ptr<CommHandle> allgather_bytes_async(const std::byte* send, std::byte* recv,
                                                    size_t count) override {
    return submit("ALLGATHER(bytes)", count * size_t(size_), [=, this] {
      const void* src = send == recv + size_t(rank_) * count ? MPI_IN_PLACE : send;
      mpi_check(MPI_Allgather(src, as_int(count), MPI_BYTE, recv, as_int(count), MPI_BYTE,
                              comm_),
                "MPI_Allgather");
    });
  }
  std::unique_ptr<CommHandle> barrier_async() override {
    return submit("BARRIER", 0, [this] { mpi_check(MPI_Barrier(comm_), "MPI_Barrier"); });
  }
  [[noreturn]] void abort(int exit_code) override {
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }
  std::unique_ptr<Comm> split(int color, int key, const std::string& name) override {
    MPI_Comm out = MPI_COMM_NULL;
    submit("SPLIT", 0, [&, this] {
      mpi_check(MPI_Comm_split(comm_, color, key, &out), "MPI_Comm_split");
    })->wait();
    return std::make_unique<MpiComm>(rt_, out, name);
  }

  // Blocks until op completes; past the deadline, reports who never arrived and aborts.
  void wait_for(OpState& op, const OpTag& tag) {
    std::unique_lock lock(op.mu);
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + std::chrono::duration<double>(rt_->opt.timeout_s);
    const auto waited = [&] {
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    };
    if (!op.cv.wait_until(lock, deadline, [&] { return op.done; })) {
      lock.unlock();
      report_hang(tag, waited());
    }
    if (!op.p2p) return;
    // Poll the posted request, backing off to 100 us between tests.
    for (int spin = 0;; ++spin) {
      int flag = 0;
      mpi_check(MPI_Test(&op.req, &flag, MPI_STATUS_IGNORE), "MPI_Test");
      if (flag) return;
      if (std::chrono::steady_clock::now() > deadline) {
        lock.unlock();
        report_hang(tag, waited());
      }
      if (spin > 64)
        std::this_thread::sleep_for(std::chrono::microseconds(std::min(100, spin - 64)));
      else
        std::this_thread::yield();
    }
  }

 private:
  // Point-to-point operations are not numbered: ranks post different numbers of them, and
  // the group's sequence numbers must stay comparable for the collectives' hang reports.
  std::unique_ptr<CommHandle> submit_p2p(const char* what, size_t bytes, int peer,
                                         std::function<void(MPI_Request*)> post) {
    auto op = std::make_shared<OpState>();
    op->p2p = true;
    return submit(what, bytes, [op, post = std::move(post)] { post(&op->req); }, op, peer);
  }

  std::unique_ptr<CommHandle> submit(const char* what, size_t bytes, std::function<void()> fn,
                                     std::shared_ptr<OpState> op = nullptr, int peer = -1) {
    if (!op) op = std::make_shared<OpState>();
    if (bytes > 0) {
      std::lock_guard lock(traffic_mu_);
      TrafficCount& t = traffic_[what];
      ++t.ops;
      t.bytes += sent_bytes(what, bytes);
    }
    const bool p2p = op && op->p2p;
    const OpTag tag{what, p2p ? 0 : ++seq_, bytes, rt_->progress, peer};
    int64_t* slot = rt_->entered + id_;
    worker_->push([op, fn = std::move(fn), slot, seq = tag.seq, this, tag] {
      if (seq > 0) __atomic_store_n(slot, seq, __ATOMIC_SEQ_CST);
      if (seq > 0) {
        std::lock_guard lock(running_mu_);
        running_ = tag;
      }
      Trace* trace = rt_->trace.load(std::memory_order_acquire);
      const double t0 = trace ? trace->now_us() : 0.0;
      fn();
      if (trace) record(*trace, tag, op->p2p, t0);
      std::lock_guard lock(op->mu);
      op->done = true;
      op->cv.notify_all();
    });
    return std::make_unique<MpiHandle>(this, op, tag);
  }

  // What this rank sends for an operation on a `bytes` buffer under the bandwidth-optimal
  // algorithm (comm.h's TrafficCount).
  uint64_t sent_bytes(std::string_view what, size_t bytes) const {
    const double g = size_, share = (g - 1) / g;
    if (what == "SEND") return bytes;
    if (what == "RECV") return 0;
    if (what.starts_with("ALLREDUCE")) return uint64_t(2 * share * double(bytes) + 0.5);
    return uint64_t(share * double(bytes) + 0.5);
  }

  // The event of an operation that started at t0 (microseconds of the trace's clock).
  void record(Trace& trace, const OpTag& tag, bool p2p, double t0) const {
    trace.add(TraceEvent{std::string(tag.op) + " " + name_, p2p ? "p2p" : "collective", t0,
                         trace.now_us() - t0, p2p ? kLaneP2p : kLaneCollective,
                         int64_t(tag.bytes), tag.at.step, tag.at.micro_batch});
  }

  // `seconds`: how long this rank waited, measured here (the deadline, plus scheduling).
  [[noreturn]] void report_hang(const OpTag& waited, double seconds) {
    FailureRecord r;
    r.rank = rt_->rank;
    r.where = rt_->describe(rt_->rank);
    r.group = name_;
    r.waited_s = seconds;
    r.deadline_s = rt_->opt.timeout_s;
    r.exit_code = 3;
    if (waited.peer >= 0) {
      const bool send = std::string(waited.op) == "SEND";
      fill(r, FailureKind::kPeerDeadline, waited);
      r.peer = members_[size_t(waited.peer)];
      r.message = fmt::format(
          "{}: deadline of {:.0f} s passed waiting for {} ({} bytes) {} {} of group {} at step "
          "{}, micro-batch {} (waited {:.2f} s): it never posted the matching {}", r.where,
          r.deadline_s, r.op, r.bytes, send ? "to" : "from", rt_->describe(r.peer), name_,
          r.step, r.micro_batch, seconds, send ? "receive" : "send");
      abort_on_hang(r, "");
    }
    // The operation this rank is stuck in may be an earlier one than the one waited for.
    const int64_t mine = __atomic_load_n(rt_->entered + id_, __ATOMIC_SEQ_CST);
    OpTag stuck = waited;
    if (mine >= waited.seq) {
      std::lock_guard lock(running_mu_);
      stuck = running_;
    }
    fill(r, FailureKind::kCollectiveDeadline, stuck);
    r.seq = stuck.seq;
    r.message = fmt::format(
        "{}: deadline of {:.0f} s passed waiting for {} #{} ({} bytes) of group {} at step {}, "
        "micro-batch {} (waited {:.2f} s)", r.where, r.deadline_s, r.op, r.seq, r.bytes, name_,
        r.step, r.micro_batch, seconds);
    fmt::print(stderr, "{}\n", r.message);
    // The members on this host first: their counters are read through shared memory. A read
    // across hosts can end this process (libfabric aborts on a cut link), so the record goes
    // to the supervisor before those are read, naming them as not read yet; a second record
    // replaces it once they have been.
    std::vector<int> here, away;
    for (int m : members_) (rt_->hosts[size_t(m)] == rt_->hosts[size_t(rt_->rank)] ? here : away)
        .push_back(m);
    std::string lines = classify(r, here, stuck);
    if (!away.empty()) {
      r.unread = away;
      if (rt_->opt.on_failure) rt_->opt.on_failure(r);
      r.unread.clear();
      lines += classify(r, away, stuck);
    }
    abort_on_hang(r, lines.empty() ? "(every rank entered it; a rank may be stuck inside)\n"
                                   : lines);
  }

  // Reads `ranks`' counters and adds those that never entered `stuck` (or did not answer)
  // to the record; returns the report's lines for them.
  std::string classify(FailureRecord& r, const std::vector<int>& ranks, const OpTag& stuck) {
    std::string lines;
    const std::vector<int64_t> seen = read_entered_within(ranks, kReadLimitS);
    for (size_t i = 0; i < ranks.size(); ++i) {
      const int m = ranks[i];
      if (seen[i] == kNoAnswer) {
        r.unreachable.push_back(m);
        lines += fmt::format("{} on {} did not answer within {:g} s (its host cannot be "
                             "reached?)\n", rt_->describe(m), rt_->hosts[size_t(m)], kReadLimitS);
      } else if (seen[i] < stuck.seq) {
        r.missing.push_back(m);
        lines += fmt::format("{} never entered {} #{} of group {} at step {}\n",
                             rt_->describe(m), stuck.op, stuck.seq, name_, stuck.at.step);
      }
    }
    return lines;
  }

  static void fill(FailureRecord& r, FailureKind kind, const OpTag& op) {
    r.kind = kind;
    r.op = op.op;
    r.bytes = int64_t(op.bytes);
    r.step = op.at.step;
    r.micro_batch = op.at.micro_batch;
  }

  // Prints the report (a peer deadline's message, then `more` lines), hands the record on,
  // and ends the
  // job after a grace as long as a report's reads may take: the ranks whose deadlines pass
  // a little later (waiting on a host that does not answer) report too, and together the
  // reports say where the job broke.
  [[noreturn]] void abort_on_hang(const FailureRecord& r, const std::string& more) {
    if (r.kind == FailureKind::kPeerDeadline) fmt::print(stderr, "{}\n", r.message);
    fmt::print(stderr, "{}aborting the job\n", more);
    std::fflush(stderr);
    if (rt_->opt.on_failure) {
      rt_->opt.on_failure(r);
      std::this_thread::sleep_for(std::chrono::duration<double>(kReadLimitS + 0.5));
    }
    MPI_Abort(MPI_COMM_WORLD, r.exit_code);
    std::_Exit(r.exit_code);
  }

  // How long a hang report waits for the members' counters; a member whose host does not
  // answer by then (a cut link) is reported as such.
  static constexpr double kReadLimitS = 2;
  static constexpr int64_t kNoAnswer = INT64_MIN;

  static int64_t read_entered(MPI_Win win, int id, int world_rank) {
    int64_t value = -1;
    MPI_Win_lock(MPI_LOCK_SHARED, world_rank, 0, win);
    MPI_Get(&value, 1, MPI_INT64_T, world_rank, id, 1, MPI_INT64_T, win);
    MPI_Win_unlock(world_rank, win);
    return value;
  }

  // The published counters of `ranks` (kNoAnswer for those not read within limit_s), read
  // by up to 16 threads of their own: a read from a host that cannot be reached blocks in
  // MPI, and is left blocked (the job is about to abort).
  std::vector<int64_t> read_entered_within(const std::vector<int>& ranks, double limit_s) {
    struct Reads {
      std::mutex mu;
      std::condition_variable cv;
      std::vector<int64_t> seen;
      size_t done = 0;
      std::atomic<size_t> next{0};
    };
    auto reads = std::make_shared<Reads>();
    reads->seen.assign(ranks.size(), kNoAnswer);
    const size_t threads = std::min<size_t>(16, ranks.size());
    for (size_t t = 0; t < threads; ++t) {
      std::thread([reads, rt = rt_, id = id_, members = ranks] {
        for (size_t i; (i = reads->next.fetch_add(1)) < members.size();) {
          const int64_t v = read_entered(rt->win, id, members[i]);
          std::lock_guard lock(reads->mu);
          reads->seen[i] = v;
          ++reads->done;
          reads->cv.notify_all();
        }
      }).detach();
    }
    std::unique_lock lock(reads->mu);
    reads->cv.wait_for(lock, std::chrono::duration<double>(limit_s),
                       [&] { return reads->done == ranks.size(); });
    return reads->seen;
  }

  std::vector<int> world_ranks() const {
    MPI_Group mine, world;
    MPI_Comm_group(comm_, &mine);
    MPI_Comm_group(MPI_COMM_WORLD, &world);
    std::vector<int> local(static_cast<size_t>(size_)), global(static_cast<size_t>(size_));
    for (int i = 0; i < size_; ++i) local[size_t(i)] = i;
    MPI_Group_translate_ranks(mine, size_, local.data(), world, global.data());
    MPI_Group_free(&mine);
    MPI_Group_free(&world);
    return global;
  }

  // "[0..3]" for contiguous world ranks, else "[0,2,4]".
  std::string group_suffix() const {
    bool contiguous = true;
    for (size_t i = 1; i < members_.size(); ++i) contiguous &= members_[i] == members_[i - 1] + 1;
    if (contiguous) return fmt::format("[{}..{}]", members_.front(), members_.back());
    return fmt::format("[{}]", fmt::join(members_, ","));
  }

  std::shared_ptr<MpiRuntime::State> rt_;
  MPI_Comm comm_;
  int id_ = 0, rank_ = 0, size_ = 1;
  std::vector<int> members_;
  std::string name_;
  int64_t seq_ = 0;  // operations submitted (by the owning thread)
  std::mutex running_mu_;
  OpTag running_{"NONE", 0, 0, {}};  // the operation the worker runs now
  mutable std::mutex traffic_mu_;
  Traffic traffic_;  // what submit() was handed, by kind
  std::unique_ptr<Worker> worker_ = std::make_unique<Worker>();
};

void MpiHandle::wait() { comm_->wait_for(*op_, tag_); }

}  // namespace

MpiRuntime::MpiRuntime(const MpiOptions& opt) : state_(std::make_shared<State>()) {
  state_->opt = opt;
  int provided = 0;
  mpi_check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
  LOOM_CHECK(provided == MPI_THREAD_MULTIPLE,
             "this MPI provides thread level {}, loom needs MPI_THREAD_MULTIPLE", provided);
  MPI_Comm_rank(MPI_COMM_WORLD, &state_->rank);
  MPI_Comm_size(MPI_COMM_WORLD, &state_->size);
  mpi_check(MPI_Win_allocate(kMaxComms * sizeof(int64_t), sizeof(int64_t), MPI_INFO_NULL,
                             MPI_COMM_WORLD, &state_->entered, &state_->win),
            "MPI_Win_allocate");
  for (int i = 0; i < kMaxComms; ++i) state_->entered[i] = 0;
  mpi_check(MPI_Op_create(&bf16_sum, 1, &state_->bf16_sum), "MPI_Op_create");
  // Every rank's host name: a hang report reads its own host's counters first.
  char name[64] = "";
  gethostname(name, sizeof name - 1);
  std::vector<char> names(sizeof name * size_t(state_->size));
  mpi_check(MPI_Allgather(name, sizeof name, MPI_CHAR, names.data(), sizeof name, MPI_CHAR,
                          MPI_COMM_WORLD), "MPI_Allgather");
  for (int r = 0; r < state_->size; ++r)
    state_->hosts.emplace_back(names.data() + sizeof name * size_t(r));
}

MpiRuntime::~MpiRuntime() {
  MPI_Op_free(&state_->bf16_sum);
  MPI_Win_free(&state_->win);
  MPI_Finalize();
}

int MpiRuntime::world_rank() const { return state_->rank; }
int MpiRuntime::world_size() const { return state_->size; }
std::unique_ptr<Comm> MpiRuntime::world() {
  return std::make_unique<MpiComm>(state_, MPI_COMM_WORLD, "world");
}
CommProgress& MpiRuntime::progress() { return state_->progress; }
void MpiRuntime::set_rank_describer(std::function<std::string(int)> f) {
  state_->describe = std::move(f);
}
void MpiRuntime::set_trace(Trace* trace) { state_->trace.store(trace, std::memory_order_release); }

}  // namespace loom
