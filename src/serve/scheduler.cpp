#include "serve/scheduler.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

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

namespace {

// One step's inputs, as every tp rank applies them.
struct StepInput {
  std::vector<Request> submit;
  std::vector<int> cancel;
  bool draining = false;
};

nlohmann::json to_json(const StepInput& in) {
  nlohmann::json j = {{"cancel", in.cancel}, {"draining", in.draining},
                      {"submit", nlohmann::json::array()}};
  for (const Request& r : in.submit) {
    const SampleOptions& o = r.sample;
    j["submit"].push_back({{"prompt", r.prompt}, {"max_tokens", o.max_tokens},
                           {"temperature", o.temperature}, {"top_k", o.top_k},
                           {"top_p", o.top_p}, {"seed", o.seed}, {"stop", o.stop},
                           {"eot", o.stop_at_end_of_text}});
  }
  return j;
}

StepInput from_json(const nlohmann::json& j) {
  StepInput in;
  in.cancel = j.at("cancel").get<std::vector<int>>();
  in.draining = j.at("draining").get<bool>();
  for (const nlohmann::json& r : j.at("submit")) {
    Request q;
    q.prompt = r.at("prompt").get<std::vector<int32_t>>();
    SampleOptions& o = q.sample;
    o.max_tokens = r.at("max_tokens");
    o.temperature = r.at("temperature");
    o.top_k = r.at("top_k");
    o.top_p = r.at("top_p");
    o.seed = r.at("seed");
    o.stop = r.at("stop").get<std::vector<std::string>>();
    o.stop_at_end_of_text = r.at("eot");
    in.submit.push_back(std::move(q));
  }
  return in;
}

// Rank 0's inputs to every rank of tp (in place on the others): the length, then the JSON.
void broadcast(Comm& tp, StepInput& in) {
  std::string text = tp.rank() == 0 ? to_json(in).dump() : std::string();
  uint64_t n = text.size();
  tp.broadcast_bytes_async(reinterpret_cast<std::byte*>(&n), sizeof n, 0)->wait();
  text.resize(n);
  tp.broadcast_bytes_async(reinterpret_cast<std::byte*>(text.data()), n, 0)->wait();
  if (tp.rank() != 0) in = from_json(nlohmann::json::parse(text));
}

}  // namespace

void follow_steps(Engine& engine, Comm& tp) {
  for (;;) {
    StepInput in;
    broadcast(tp, in);
    for (Request& r : in.submit) {
      try {
        engine.submit(std::move(r));
      } catch (const Error&) {  // refused on every rank alike
      }
    }
    for (int id : in.cancel) engine.cancel(id);
    if (engine.idle()) {
      if (in.draining) return;
      continue;
    }
    engine.step([](const TokenEvent&) {});
  }
}

Scheduler::Scheduler(Engine& engine, int slots, int max_queue, Metrics& metrics, Comm* tp)
    : engine_(engine), slots_(slots), max_queue_(max_queue), metrics_(metrics),
      tp_(tp && tp->size() > 1 ? tp : nullptr) {}

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
    // Notified under the lock: once the decode thread can see the request it may finish it,
    // drain and return, and the scheduler goes; nothing of it may be touched after unlock.
    cv_.notify_all();
  }
  return s;
}

void Scheduler::drain() {
  std::lock_guard<std::mutex> lock(mu_);
  draining_ = true;
  cv_.notify_all();  // under the lock, as in submit (TSan found the notify racing ~Scheduler)
}

std::vector<std::shared_ptr<Stream>> Scheduler::take_inbox(bool& draining) {
  std::vector<std::shared_ptr<Stream>> fresh;
  std::unique_lock<std::mutex> lock(mu_);
  // Idle: sleep until a request (or drain) comes; busy: just collect what has.
  if (engine_.idle())
    cv_.wait_for(lock, std::chrono::milliseconds(200),
                 [&] { return !inbox_.empty() || draining_; });
  fresh.swap(inbox_);
  draining = draining_;
  return fresh;
}

std::vector<int> Scheduler::cancelled_ids() const {
  std::vector<int> ids;
  for (const auto& [id, s] : streams_)
    if (s->cancelled()) ids.push_back(id);
  return ids;
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
    StepInput in;
    const std::vector<std::shared_ptr<Stream>> fresh = take_inbox(in.draining);
    for (const std::shared_ptr<Stream>& s : fresh) in.submit.push_back(s->request_);
    in.cancel = cancelled_ids();
    if (tp_) broadcast(*tp_, in);
    for (size_t i = 0; i < fresh.size(); ++i) {
      try {
        streams_[engine_.submit(std::move(in.submit[i]))] = fresh[i];
      } catch (const Error& e) {  // protocol checks come first; this is a last guard
        fresh[i]->fail(e.what());
        --in_flight_;
      }
    }
    for (int id : in.cancel) {
      engine_.cancel(id);
      streams_.at(id)->fail("cancelled");
      streams_.erase(id);
      metrics_.cancelled();
      --in_flight_;
    }
    busy_ = engine_.running();
    queued_ = engine_.queued();
    if (engine_.idle()) {
      if (in.draining) return;
      continue;
    }
    engine_.step([&](const TokenEvent& ev) { route(ev); });
    busy_ = engine_.running();  // what /metrics sees until the next step
    queued_ = engine_.queued();
  }
}

}  // namespace loom
