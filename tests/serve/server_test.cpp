// `loom serve` over loopback, in process: a server on a free port serving a small random
// model, driven by cpp-httplib's client. Completions equal the engine's own (streamed and
// not), concurrent streams get what each gets alone, every error has its status and shape,
// a client that goes away frees its slot, and a shutdown finishes the streams in flight.
#include "serve/server.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <thread>

#include "comm/process_grid.h"
#include "infer/decoder.h"
#include "infer/engine.h"
#include "model/param_spec.h"
#include "serve/protocol.h"

namespace loom {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

GptConfig cfg() {
  return GptConfig{.n_layer = 2, .n_head = 2, .n_embd = 64, .block_size = 128,
                   .vocab_size = 50257};
}

// Slow enough (a few hundred tokens/s) that a 100-token stream is still decoding when a
// test acts on it a few events in.
GptConfig slower_cfg() {
  return GptConfig{.n_layer = 6, .n_head = 6, .n_embd = 384, .block_size = 128,
                   .vocab_size = 50257};
}

// POST /v1/completions with `body`, handing the response's bytes to `receive` as they come
// (false from it hangs up). Returns the status (0: no response, a failure unless `receive`
// hung up).
int post_streaming(httplib::Client& c, const nlohmann::json& body,
                   const std::function<bool(const char*, size_t)>& receive) {
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    return receive(data, n);
  };
  httplib::Response res;
  httplib::Error error = httplib::Error::Success;
  if (c.send(req, res, error)) return res.status;
  if (error == httplib::Error::Canceled) return 0;  // `receive` hung up
  ADD_FAILURE() << "POST /v1/completions got no response: " << httplib::to_string(error);
  return 0;
}

struct Served {
  ProcessGrid grid = ProcessGrid::single();
  Gpt model;
  Gpt2Tokenizer tok = Gpt2Tokenizer::load(default_tokenizer_dir());
  std::unique_ptr<ServeSession> session;
  std::thread runner;
  int rc = -1;

  explicit Served(ServeOptions opt = {}, const GptConfig& config = cfg()) : model(config, grid) {
    init_params(model.params(), 3, model.weights().data());
    for (float& w : model.weights()) w *= 4.0f;  // logits far from uniform
    opt.port = 0;
    opt.model_name = "test-model";
    session = std::make_unique<ServeSession>(opt, tok);
    runner = std::thread([this] { rc = session->run(model, grid); });
    httplib::Client c = client();
    for (int i = 0; i < 600; ++i) {  // bounded: the model is ready in well under a second
      if (auto r = c.Get("/health"); r && r->status == 200) break;
      std::this_thread::sleep_for(50ms);
    }
  }
  ~Served() {
    session->shutdown();
    if (runner.joinable()) runner.join();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", session->port());
    c.set_read_timeout(120, 0);
    return c;
  }
  json post(const json& body, int* status = nullptr) const {
    auto r = client().Post("/v1/completions", body.dump(), "application/json");
    EXPECT_TRUE(r) << "no response";
    if (status) *status = r ? r->status : 0;
    return r ? json::parse(r->body) : json();
  }
  // A streamed completion: the concatenated text, the finish reason, the usage chunk.
  struct Streamed {
    std::string text, finish;
    json usage;
    bool done = false;
    int events = 0;
  };
  Streamed stream(json body) const {
    body["stream"] = true;
    body["stream_options"] = {{"include_usage", true}};
    std::string raw;
    httplib::Client c = client();
    EXPECT_EQ(post_streaming(c, body, [&](const char* data, size_t n) {
                raw.append(data, n);
                return true;
              }), 200);
    Streamed s;
    for (size_t at = 0; (at = raw.find("data: ", at)) != std::string::npos;) {
      const size_t end = raw.find("\n\n", at);
      const std::string event = raw.substr(at + 6, end - at - 6);
      at = end;
      ++s.events;
      if (event == "[DONE]") {
        s.done = true;
        continue;
      }
      const json j = json::parse(event);
      if (j.contains("usage")) s.usage = j["usage"];
      if (j["choices"].empty()) continue;
      s.text += j["choices"][0]["text"].get<std::string>();
      if (!j["choices"][0]["finish_reason"].is_null())
        s.finish = j["choices"][0]["finish_reason"].get<std::string>();
    }
    return s;
  }
};

// The engine on the same model and request, without HTTP.
std::string engine_text(Served& s, const std::string& prompt, SampleOptions opt) {
  Decoder d(s.model, s.grid, DType::kF32, 1, cfg().block_size, 64);
  Engine e(d, &s.tok);
  e.submit({s.tok.encode(prompt), opt});
  std::string text;
  e.run([&](const TokenEvent& ev) { text += ev.text; });
  return text;
}

TEST(Serve, AGreedyCompletionIsTheEnginesStreamedOrNot) {
  Served s;
  const json body = {{"model", "test-model"}, {"prompt", "In the beginning"},
                     {"max_tokens", 12}, {"temperature", 0}};
  SampleOptions opt;
  opt.max_tokens = 12;
  opt.temperature = 0;
  // As JSON carries it: bytes that are not UTF-8 (a random model emits some) become U+FFFD.
  const std::string want = json::parse(dump(json(engine_text(s, "In the beginning", opt))));
  int status = 0;
  const json whole = s.post(body, &status);
  ASSERT_EQ(status, 200) << whole.dump();
  EXPECT_EQ(whole["object"], "text_completion");
  EXPECT_EQ(whole["model"], "test-model");
  EXPECT_EQ(whole["choices"][0]["text"], want);
  const json usage = whole["usage"];
  EXPECT_EQ(usage["prompt_tokens"], 3);
  const Served::Streamed streamed = s.stream(body);
  EXPECT_TRUE(streamed.done);
  EXPECT_EQ(streamed.text, want);
  EXPECT_EQ(streamed.finish, whole["choices"][0]["finish_reason"]);
  EXPECT_EQ(streamed.usage, usage);
  EXPECT_EQ(usage["completion_tokens"].get<int>() + 3, usage["total_tokens"].get<int>());
  // A prompt given as token ids is the same request.
  json ids = body;
  ids["prompt"] = s.tok.encode("In the beginning");
  EXPECT_EQ(s.post(ids)["choices"][0]["text"], want);
}

TEST(Serve, SixteenConcurrentStreamsGetWhatEachGetsAlone) {
  ServeOptions opt;
  opt.slots = 4;  // 16 clients: 4 decode, 12 wait and join as others leave
  Served s(opt);
  std::vector<json> bodies;
  for (int i = 0; i < 16; ++i)
    bodies.push_back({{"prompt", "Verse " + std::to_string(i) + ": and it was so"},
                      {"max_tokens", 4 + i % 7}, {"temperature", 0.9}, {"seed", 1000 + i},
                      {"top_p", i % 2 ? 0.9 : 1.0}});
  std::vector<std::string> alone;
  for (const json& b : bodies) alone.push_back(s.stream(b).text);
  std::vector<Served::Streamed> together(bodies.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < bodies.size(); ++i)
    clients.emplace_back([&, i] { together[i] = s.stream(bodies[i]); });
  for (std::thread& t : clients) t.join();
  for (size_t i = 0; i < bodies.size(); ++i) {
    EXPECT_TRUE(together[i].done) << i;
    EXPECT_EQ(together[i].text, alone[i]) << "client " << i;
  }
}

struct ErrorCase {
  std::string body;
  int status;
  std::string code, says;
};

TEST(Serve, EveryErrorHasItsStatusAndShape) {
  Served s;
  const std::vector<ErrorCase> cases = {
      {"{bad", 400, "invalid_json", "not valid JSON"},
      {"[1, 2]", 400, "invalid_type", "must be a JSON object"},
      {R"({"max_tokens": 4})", 400, "missing_field", "'prompt' is required"},
      {R"({"prompt": 5})", 400, "invalid_type", "'prompt' must be a string"},
      {R"({"prompt": ""})", 400, "invalid_value", "'prompt' is empty"},
      {R"({"prompt": [1, 99999]})", 400, "invalid_value", "'prompt[]' is 99999"},
      {R"({"prompt": "x", "max_tokens": "4"})", 400, "invalid_type", "'max_tokens' must be an integer"},
      {R"({"prompt": "x", "temperature": -1})", 400, "invalid_value", "'temperature' is -1"},
      {R"({"prompt": "x", "top_p": 0})", 400, "invalid_value", "'top_p' is 0"},
      {R"({"prompt": "x", "top_p": 1.5})", 400, "invalid_value", "'top_p' is 1.5"},
      {R"({"prompt": "x", "stop": ["a","b","c","d","e"]})", 400, "invalid_type", "at most 4"},
      {R"({"prompt": "x", "stream": "yes"})", 400, "invalid_type", "'stream' must be true or false"},
      {R"({"prompt": "x", "n": 2})", 400, "unsupported", "'n' must be 1"},
      {R"({"prompt": "x", "max_tokens": 200})", 400, "context_length_exceeded",
       "context holds 128 tokens, but 201 were requested: 1 in the prompt and 200"},
      {R"({"prompt": "x", "model": "gpt-4"})", 404, "model_not_found", "does not exist"}};
  for (const ErrorCase& c : cases) {
    auto r = s.client().Post("/v1/completions", c.body, "application/json");
    ASSERT_TRUE(r) << c.body;
    EXPECT_EQ(r->status, c.status) << c.body;
    const json e = json::parse(r->body);
    EXPECT_EQ(e["error"]["code"], c.code) << c.body << " -> " << r->body;
    EXPECT_NE(e["error"]["message"].get<std::string>().find(c.says), std::string::npos)
        << c.body << " -> " << r->body;
    EXPECT_TRUE(e["error"].contains("type"));
  }
  httplib::Client c = s.client();
  auto r = c.Get("/v2/nothing");
  EXPECT_EQ(r->status, 404);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "not_found");
  r = c.Get("/v1/completions");
  EXPECT_EQ(r->status, 405);
  EXPECT_EQ(r->get_header_value("Allow"), "POST");
  r = c.Post("/health", "", "text/plain");
  EXPECT_EQ(r->status, 405);
  r = c.Post("/v1/completions", std::string((size_t(1) << 20) + 1, ' '), "application/json");
  EXPECT_EQ(r->status, 413);
  EXPECT_EQ(json::parse(r->body)["error"]["code"], "body_too_large");
  // And the server still answers.
  EXPECT_EQ(s.post({{"prompt", "x"}, {"max_tokens", 2}})["usage"]["completion_tokens"], 2);
}

// A streamed request whose client reads `events` events and then hangs up, on its own
// thread; returns once the client has hung up.
std::thread hang_up_after(const Served& s, int events, std::atomic<bool>& gone) {
  std::thread t([&s, events, &gone] {
    const json body = {{"prompt", "In the beginning"}, {"max_tokens", 100}, {"stream", true}};
    int seen = 0;
    httplib::Client c = s.client();
    post_streaming(c, body, [&](const char* data, size_t n) {
      for (size_t i = 0; i + 1 < n; ++i) seen += data[i] == '\n' && data[i + 1] == '\n';
      return seen < events;  // false: the client closes the connection
    });
    gone = true;
  });
  return t;
}

// Waits (bounded) until /metrics holds `line`.
bool metrics_reach(const Served& s, const std::string& line) {
  for (int i = 0; i < 600; ++i) {
    if (auto r = s.client().Get("/metrics"); r && r->body.find(line) != std::string::npos)
      return true;
    std::this_thread::sleep_for(50ms);
  }
  return false;
}

// A client that hangs up mid-stream frees its slot: the request is cancelled at the next
// step (not decoded to its 100 tokens) and the one queued behind it runs.
TEST(Serve, AClientThatHangsUpFreesItsSlot) {
  ServeOptions opt;
  opt.slots = 1;
  Served s(opt, slower_cfg());
  std::atomic<bool> gone{false};
  std::thread client = hang_up_after(s, 2, gone);
  client.join();
  EXPECT_TRUE(metrics_reach(s, "loom_requests_cancelled_total 1"));
  EXPECT_EQ(s.post({{"prompt", "x"}, {"max_tokens", 3}})["usage"]["completion_tokens"], 3);
  EXPECT_TRUE(metrics_reach(s, "loom_generation_tokens_total 3"))
      << "the cancelled request's tokens are not counted as generated";
}

// Shutting down (SIGTERM in loom serve) refuses new requests with 503 and lets the streams
// in flight finish, then run() returns 0.
TEST(Serve, ShutdownFinishesTheStreamsInFlight) {
  Served s({}, slower_cfg());
  std::string raw;
  std::atomic<int> events{0};
  std::thread client([&] {
    const json body = {{"prompt", "In the beginning"}, {"max_tokens", 100}, {"stream", true},
                       {"stream_options", {{"include_usage", true}}}};
    httplib::Client c = s.client();
    post_streaming(c, body, [&](const char* data, size_t n) {
      raw.append(data, n);
      events = int(std::count(raw.begin(), raw.end(), '\n')) / 2;
      return true;
    });
  });
  for (int i = 0; i < 6000 && events < 2; ++i) std::this_thread::sleep_for(5ms);
  s.session->shutdown();
  int status = 0;
  const json refused = s.post({{"prompt", "x"}}, &status);
  EXPECT_EQ(status, 503);
  EXPECT_EQ(refused["error"]["code"], "draining");
  client.join();
  s.runner.join();
  EXPECT_EQ(s.rc, 0);
  EXPECT_NE(raw.find("\"finish_reason\":\"length\""), std::string::npos);
  EXPECT_NE(raw.find("data: [DONE]"), std::string::npos);
  EXPECT_NE(raw.find("\"completion_tokens\":100"), std::string::npos) << "all 100 tokens";
}

// The endpoints that describe the server.
TEST(Serve, HealthModelsMetricsAndThePlayground) {
  Served s;
  httplib::Client c = s.client();
  auto r = c.Get("/health");
  EXPECT_EQ(json::parse(r->body)["status"], "ok");
  r = c.Get("/v1/models");
  EXPECT_EQ(json::parse(r->body)["data"][0]["id"], "test-model");
  s.post({{"prompt", "In the beginning"}, {"max_tokens", 3}});
  // The gauges are the decode thread's, published after its step: wait for them (bounded).
  for (const char* line : {"loom_requests_total{status=\"200\"} 1", "loom_prompt_tokens_total 3",
                           "loom_generation_tokens_total 3", "loom_time_to_first_token_seconds_count 1",
                           "loom_time_per_output_token_seconds_count 2", "loom_busy_slots 0",
                           "loom_queue_length 0"})
    EXPECT_TRUE(metrics_reach(s, line)) << line << "\n" << c.Get("/metrics")->body;
  r = c.Get("/");
  EXPECT_EQ(r->get_header_value("Content-Type"), "text/html; charset=utf-8");
  EXPECT_NE(r->body.find("id=\"generate\""), std::string::npos);
}

}  // namespace
}  // namespace loom
