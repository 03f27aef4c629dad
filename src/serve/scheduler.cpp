#include "serve/scheduler.h"

#include <fmt/format.h>

#include "core/check.h"

namespace loom {

std::vector<TokenEvent> Stream::take(std::chrono::milliseconds timeout, bool& ended) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !events_.empty() || ended_; });
  std::vector<TokenEvent> out(events_.begin(), events_.end());
  events_.clear();
  ended = ended_;
  return out;
}

std::string Stream::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void Stream::push(TokenEvent ev) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (ev.finished) ended_ = true;
    events_.push_back(std::move(ev));
  }
  cv_.notify_all();
}

void Stream::fail(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = message;
    ended_ = true;
  }
  cv_.notify_all();
}

Scheduler::Scheduler(Engine& engine, int slots, int max_queue, Metrics& metrics)
    : engine_(engine), slots_(slots), max_queue_(max_queue), metrics_(metrics) {}

std::shared_ptr<Stream> Scheduler::submit(Request request) {
  auto s = std::make_shared<Stream>(std::move(request));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_)
      throw ApiError(503, "server_shutting_down", "draining",
                     "the server is shutting down: it finishes the requests in flight and "
                     "takes no new ones");
    if (in_flight_ >= slots_ + max_queue_)
      throw ApiError(503, "server_overloaded", "queue_full",
                     fmt::format("the server is full: {} requests decode and {} wait (--slots "
                                 "{}, --max-queue {}); retry later",
                                 slots_, max_queue_, slots_, max_queue_));
    ++in_flight_;
    inbox_.push_back(s);
  }
  cv_.notify_all();
  return s;
}

void Scheduler::drain() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
  }
  cv_.notify_all();
}

void Scheduler::take_inbox(bool& draining) {
  std::vector<std::shared_ptr<Stream>> fresh;
  {
    std::unique_lock<std::mutex> lock(mu_);
    // Idle: sleep until a request (or drain) comes; busy: just collect what has.
    if (engine_.idle())
      cv_.wait_for(lock, std::chrono::milliseconds(200),
                   [&] { return !inbox_.empty() || draining_; });
    fresh.swap(inbox_);
    draining = draining_;
  }
  for (const std::shared_ptr<Stream>& s : fresh) {
    try {
      streams_[engine_.submit(s->request_)] = s;
    } catch (const Error& e) {  // protocol checks come first; this is a last guard
      s->fail(e.what());
      --in_flight_;
    }
  }
}

void Scheduler::drop_cancelled() {
  for (auto it = streams_.begin(); it != streams_.end();) {
    if (!it->second->cancelled()) {
      ++it;
      continue;
    }
    engine_.cancel(it->first);
    it->second->fail("cancelled");
    metrics_.cancelled();
    it = streams_.erase(it);
    --in_flight_;
  }
}

void Scheduler::route(const TokenEvent& ev) {
  const auto it = streams_.find(ev.id);
  if (it == streams_.end()) return;
  Stream& s = *it->second;
  if (ev.token >= 0) {
    const double now = s.clock_.seconds();
    if (s.last_token_s_ < 0) metrics_.time_to_first_token(now);
    else metrics_.time_per_output_token(now - s.last_token_s_);
    s.last_token_s_ = now;
  }
  if (ev.finished) metrics_.tokens(ev.prompt_tokens, ev.completion_tokens);
  const bool finished = ev.finished.has_value();
  s.push(ev);
  if (finished) {
    streams_.erase(it);
    --in_flight_;
  }
}

void Scheduler::run() {
  for (;;) {
    bool draining = false;
    take_inbox(draining);
    drop_cancelled();
    busy_ = engine_.running();
    queued_ = engine_.queued();
    if (engine_.idle()) {
      if (draining) return;
      continue;
    }
    engine_.step([&](const TokenEvent& ev) { route(ev); });
    busy_ = engine_.running();  // what /metrics sees until the next step
    queued_ = engine_.queued();
  }
}

}  // namespace loom
