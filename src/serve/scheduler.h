// Between the HTTP threads and the decode engine (llama.cpp server's split: the HTTP layer
// parses, validates and queues; one thread owns the slots and the batch). HTTP threads
// submit requests and read their streams; the decode thread runs Engine steps while there
// is work, routes each token to its stream, and drops requests whose client has gone. At
// most slots + max_queue requests are in the server; more are refused (503).
//
// Tensor-parallel: every rank of the tp group runs the same engine, so each step's inputs
// (the requests that join, the ids dropped, whether draining) go from rank 0, whose
// scheduler takes them, to the other ranks (follow_steps), which apply them in the same
// order and step with it; a message goes even when idle, so the others never wait on a
// collective past its deadline.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "comm/comm.h"
#include "core/timer.h"
#include "infer/engine.h"
#include "serve/metrics.h"
#include "serve/protocol.h"

namespace loom {

// One request's events, written by the decode thread and read by its HTTP thread.
class Stream {
 public:
  explicit Stream(Request r) : request_(std::move(r)) {}
  // Waits up to `timeout` for events and moves out what has come; `ended` once the last
  // event (or an error) has been taken.
  std::vector<TokenEvent> take(std::chrono::milliseconds timeout, bool& ended);
  // The client has gone: the request is dropped at the next step.
  void cancel() { cancelled_ = true; }
  bool cancelled() const { return cancelled_; }
  // The engine refused the request (empty when it did not).
  std::string error() const;

 private:
  friend class Scheduler;
  void push(TokenEvent ev);
  void fail(const std::string& message);

  Request request_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<TokenEvent> events_;
  bool ended_ = false;
  std::string error_;
  std::atomic<bool> cancelled_{false};
  Timer clock_;              // since submit
  double last_token_s_ = -1;  // clock_ at the last token
};

class Scheduler {
 public:
  // `tp`: the tensor-parallel communicator whose other ranks run follow_steps (null or a
  // one-rank group: none).
  Scheduler(Engine& engine, int slots, int max_queue, Metrics& metrics, Comm* tp = nullptr);
  // From any thread. ApiError 503 when the server holds slots + max_queue requests already,
  // or is draining.
  std::shared_ptr<Stream> submit(Request request);
  // The decode loop, on the thread that owns the engine; returns when draining and nothing
  // is left.
  void run();
  // From any thread: refuse new requests; run() returns after the ones in flight end.
  void drain();
  int busy_slots() const { return busy_; }
  int queue_length() const { return queued_; }

 private:
  std::vector<std::shared_ptr<Stream>> take_inbox(bool& draining);
  std::vector<int> cancelled_ids() const;
  void route(const TokenEvent& ev);

  Engine& engine_;
  const int slots_, max_queue_;
  Metrics& metrics_;
  Comm* tp_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<Stream>> inbox_;  // submitted, not yet the engine's
  bool draining_ = false;
  std::atomic<int> busy_{0}, queued_{0}, in_flight_{0};
  std::unordered_map<int, std::shared_ptr<Stream>> streams_;  // by engine id (decode thread)
};

// A tp rank other than 0 of a served model: applies the step inputs rank 0's scheduler
// sends and steps its engine with it, until rank 0 has drained.
void follow_steps(Engine& engine, Comm& tp);

}  // namespace loom
