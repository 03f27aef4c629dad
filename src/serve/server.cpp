#include "serve/server.h"

#include <fmt/format.h>
#include <httplib.h>

#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <random>

#include "core/check.h"
#include "infer/decoder.h"
#include "infer/engine.h"
#include "serve/playground.h"
#include "serve/protocol.h"
#include "serve/scheduler.h"

namespace loom {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_body(e), "application/json");
}

// Paths and the methods they answer; another method on them is 405.
const std::map<std::string, std::string> kRoutes = {
    {"/v1/completions", "POST"}, {"/health", "GET"}, {"/v1/models", "GET"},
    {"/metrics", "GET"}, {"/", "GET"}};

}  // namespace

// Everything the HTTP threads share with run(); the scheduler appears when the model is
// loaded.
struct ServeSession::Routes {
  httplib::Server http;
  std::atomic<Scheduler*> scheduler{nullptr};
  ApiContext ctx;
  int64_t created = unix_now();
  std::atomic<uint64_t> next_id{0};
  uint64_t seed_base = std::random_device{}();
  socket_t listen_socket = -1;  // httplib's, set when it binds
};

ServeSession::ServeSession(const ServeOptions& opt, const Gpt2Tokenizer& tokenizer)
    : opt_(opt), tokenizer_(tokenizer), routes_(std::make_unique<Routes>()) {
  LOOM_REQUIRE(opt.slots >= 1 && opt.max_queue >= 0, "--slots {} must be >= 1 and --max-queue "
               "{} >= 0", opt.slots, opt.max_queue);
  Routes& r = *routes_;
  r.ctx.model = opt.model_name;
  // Every admitted request holds a thread while it waits or streams: slots + max_queue of
  // them, and 4 more so that /health, /metrics and the 503s of a full server always answer.
  const size_t threads = size_t(opt.slots) + size_t(opt.max_queue) + 4;
  r.http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  r.http.set_payload_max_length(opt.max_body_bytes);
  // httplib's default also sets SO_REUSEPORT, which lets a second server bind the same port
  // and share its connections: keep only SO_REUSEADDR (a quick restart after TIME_WAIT). The
  // socket is kept to widen its accept queue once bound (below).
  r.http.set_socket_options([&r](socket_t sock) {
    const int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, reinterpret_cast<const char*>(&yes), sizeof yes);
    r.listen_socket = sock;
  });
  r.http.set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // ours already
    if (res.status == 404) {
      const auto route = kRoutes.find(req.path);
      if (route != kRoutes.end()) {
        res.status = 405;
        res.set_header("Allow", route->second);
        send_error(res, ApiError(405, "invalid_request_error", "method_not_allowed",
                                 fmt::format("{} {} is not allowed: use {}", req.method, req.path,
                                             route->second)));
      } else {
        send_error(res, ApiError(404, "not_found_error", "not_found",
                                 fmt::format("no such path: {}", req.path)));
      }
    } else if (res.status == 413) {
      send_error(res, ApiError(413, "invalid_request_error", "body_too_large",
                               fmt::format("the body is over {} bytes", opt_.max_body_bytes)));
    } else {
      send_error(res, ApiError(res.status, "invalid_request_error", "http_error",
                               fmt::format("HTTP {}", res.status)));
    }
    return httplib::Server::HandlerResponse::Handled;
  }));
  register_routes();
  port_ = opt.port == 0 ? r.http.bind_to_any_port(opt.host)
                        : (r.http.bind_to_port(opt.host, opt.port) ? opt.port : -1);
  LOOM_REQUIRE(port_ > 0, "cannot listen on {}:{}: the address is in use or not this host's",
               opt.host, opt.port);
  // Debian's libcpp-httplib is built with a listen backlog of 5: 16 clients connecting at
  // once overflow it, and a kernel that aborts on overflow (tcp_abort_on_overflow) refuses
  // them. listen() again on the bound socket widens the queue to the system's limit.
  LOOM_REQUIRE(::listen(r.listen_socket, SOMAXCONN) == 0,
               "cannot listen on {}:{}: {}", opt.host, port_, std::strerror(errno));
  listener_ = std::thread([this] { routes_->http.listen_after_bind(); });
}

namespace {

// A streamed completion: one "data:" event per batch of tokens the stream has, the last with
// the finish reason, then the usage chunk if asked, then [DONE]. A client gone (the socket
// not writable, or the response ending unsuccessfully) cancels the request.
void stream_completion(httplib::Response& res, std::shared_ptr<Stream> st, std::string id,
                       int64_t created, std::string model, bool include_usage, int prompt) {
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [=](size_t, httplib::DataSink& sink) {
        if (!sink.is_writable()) {
          st->cancel();
          return false;
        }
        bool ended = false;
        int completion = 0;
        for (const TokenEvent& ev : st->take(100ms, ended)) {
          completion = ev.completion_tokens;
          if (ev.text.empty() && !ev.finished) continue;
          const std::string e =
              sse_event(completion_json(id, created, model, ev.text, ev.finished, std::nullopt));
          if (!sink.write(e.data(), e.size())) {
            st->cancel();
            return false;
          }
        }
        if (!ended) return true;
        std::string tail;
        if (const std::string err = st->error(); !err.empty())
          tail += sse_event(json::parse(error_body(ApiError(500, "server_error", "failed", err))));
        else if (include_usage)
          tail += sse_event({{"id", id}, {"object", "text_completion"}, {"created", created},
                             {"model", model}, {"choices", json::array()},
                             {"usage", usage_json({prompt, completion})}});
        tail += kSseDone;
        sink.write(tail.data(), tail.size());
        sink.done();
        return true;
      },
      [st](bool success) {
        if (!success) st->cancel();
      });
}

// The whole completion at once.
void whole_completion(httplib::Response& res, Stream& st, const std::string& id, int64_t created,
                      const std::string& model, int prompt) {
  std::string text;
  std::optional<FinishReason> finish;
  Usage usage{prompt, 0};
  for (bool ended = false; !ended;)
    for (const TokenEvent& ev : st.take(1000ms, ended)) {
      text += ev.text;
      usage.completion_tokens = ev.completion_tokens;
      if (ev.finished) finish = ev.finished;
    }
  if (const std::string err = st.error(); !err.empty())
    return send_error(res, ApiError(500, "server_error", "failed", err));
  res.set_content(dump(completion_json(id, created, model, text, finish, usage)),
                  "application/json");
}

}  // namespace

void ServeSession::register_routes() {
  Routes& r = *routes_;
  r.http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const bool ready = routes_->scheduler.load() != nullptr && !shutdown_;
    res.status = ready ? 200 : 503;
    res.set_content(json{{"status", ready ? "ok" : shutdown_ ? "shutting down" : "loading"}}.dump(),
                    "application/json");
  });
  r.http.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(models_json(routes_->ctx.model, routes_->created).dump(), "application/json");
  });
  r.http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    const Scheduler* s = routes_->scheduler.load();
    res.set_content(metrics_.text(s ? s->busy_slots() : 0, s ? s->queue_length() : 0),
                    "text/plain; version=0.0.4");
  });
  r.http.Get("/", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(playground_html(), "text/html; charset=utf-8");
  });
  r.http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    Routes& r = *routes_;
    try {
      Scheduler* s = r.scheduler.load();
      if (!s) throw ApiError(503, "server_unavailable", "loading", "the model is still loading");
      CompletionRequest c = parse_completion(req.body, tokenizer_, r.ctx);
      const uint64_t n = r.next_id++;
      if (!c.seeded) c.request.sample.seed = r.seed_base + n;
      const std::string id = fmt::format("cmpl-{:x}-{}", r.created, n);
      const int prompt = int(c.request.prompt.size());
      std::shared_ptr<Stream> st = s->submit(std::move(c.request));
      if (c.stream)
        stream_completion(res, st, id, r.created, r.ctx.model, c.include_usage, prompt);
      else
        whole_completion(res, *st, id, r.created, r.ctx.model, prompt);
    } catch (const ApiError& e) {
      send_error(res, e);
    }
    metrics_.request_done(res.status < 0 ? 200 : res.status);
  });
}

int ServeSession::run(const Gpt& model, const ProcessGrid& grid,
                      const std::function<void()>& on_ready) {
  Routes& r = *routes_;
  const GptConfig& cfg = model.config();
  r.ctx.vocab_size = cfg.vocab_size;
  r.ctx.context = cfg.block_size;
  Decoder decoder(model, grid, parse_dtype(opt_.precision), opt_.slots, cfg.block_size,
                  std::max(opt_.slots, 256));
  Engine engine(decoder, &tokenizer_);
  Scheduler scheduler(engine, opt_.slots, opt_.max_queue, metrics_, &grid.tp_comm());
  {
    std::lock_guard<std::mutex> lock(scheduler_mu_);
    r.scheduler = &scheduler;
    if (shutdown_) scheduler.drain();
  }
  if (on_ready) on_ready();
  scheduler.run();
  // Drained: every stream has ended. Stopping the listener waits for the HTTP threads, so
  // none still holds the scheduler when it goes.
  r.http.stop();
  if (listener_.joinable()) listener_.join();
  std::lock_guard<std::mutex> lock(scheduler_mu_);
  r.scheduler = nullptr;
  return 0;
}

ServeSession::~ServeSession() {
  routes_->http.stop();
  if (listener_.joinable()) listener_.join();
}

void ServeSession::shutdown() {
  std::lock_guard<std::mutex> lock(scheduler_mu_);
  shutdown_ = true;
  if (Scheduler* s = routes_->scheduler.load()) s->drain();
}

int serve_follower(const Gpt& model, const ProcessGrid& grid, const ServeOptions& opt,
                   const Gpt2Tokenizer& tokenizer) {
  Decoder decoder(model, grid, parse_dtype(opt.precision), opt.slots, model.config().block_size,
                  std::max(opt.slots, 256));
  Engine engine(decoder, &tokenizer);
  follow_steps(engine, grid.tp_comm());
  return 0;
}

}  // namespace loom
