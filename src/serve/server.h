// `loom serve`: the OpenAI completions API over HTTP (cpp-httplib) in front of the decode
// engine. This layer parses, validates and queues (serve/protocol.h); the scheduler owns the
// batch (serve/scheduler.h); infer/ decodes.
//
// Endpoints: POST /v1/completions (JSON, or server-sent events with "stream": true),
// GET /health, GET /v1/models, GET /metrics (Prometheus), GET / (the playground page).
// Errors are {"error": {"message", "type", "code"}}: 400 bad request, 404 unknown path or
// model, 405 wrong method, 413 body over the limit, 503 loading, full or shutting down.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "comm/process_grid.h"
#include "data/tokenizer.h"
#include "model/gpt.h"
#include "serve/metrics.h"

namespace loom {

struct ServeOptions {
  std::string host = "127.0.0.1";
  int port = 8080;          // 0: any free port
  int slots = 4;            // sequences decoded together
  int max_queue = 64;       // requests waiting for a slot before 503
  std::string precision = "fp32";
  size_t max_body_bytes = size_t(1) << 20;  // a larger body is refused with 413
  std::string model_name = "loom";          // what /v1/models lists and requests may name
};

class Scheduler;

class ServeSession {
 public:
  // Binds host:port and starts the HTTP threads (slots + max_queue + 4: one for every
  // request the server admits and four more, so that streams never starve /health): until
  // run() has the model, /health and the API answer 503.
  // `tokenizer` must outlive the session. InputError when the address cannot be bound.
  ServeSession(const ServeOptions& opt, const Gpt2Tokenizer& tokenizer);
  ~ServeSession();
  int port() const { return port_; }

  // Serves `model` (this rank's tp slice over `grid`, whose other tp ranks run
  // serve_follower) on the calling thread, which runs the decode loop, until shutdown() has
  // been asked and the requests in flight have ended; `on_ready` runs once the API takes
  // requests (/health says ok). Returns 0.
  int run(const Gpt& model, const ProcessGrid& grid, const std::function<void()>& on_ready = {});
  // From any thread (a signal, a test): take no new requests, let the ones in flight end,
  // then run() returns and the listener stops.
  void shutdown();

 private:
  struct Routes;
  void register_routes();
  ServeOptions opt_;
  const Gpt2Tokenizer& tokenizer_;
  Metrics metrics_;
  std::unique_ptr<Routes> routes_;
  std::thread listener_;
  int port_ = 0;
  std::atomic<bool> shutdown_{false};
  // Held by shutdown() while it drains and by run() while it publishes or withdraws the
  // scheduler, so a shutdown never drains one that run() is destroying.
  std::mutex scheduler_mu_;
};

// A tp rank other than 0 of `loom serve --tp`: decodes its slice of every step in step with
// rank 0's session until rank 0 has drained. Returns 0.
int serve_follower(const Gpt& model, const ProcessGrid& grid, const ServeOptions& opt,
                   const Gpt2Tokenizer& tokenizer);

}  // namespace loom
