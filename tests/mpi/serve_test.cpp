// `loom serve --tp` (run at tp = world size, 2): rank 0 listens and every rank decodes its
// slice in step; the answers, greedy and sampled with a seed, several at once, are the
// single process's; a shutdown on rank 0 ends every rank.
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <thread>

#include "comm/process_grid.h"
#include "infer/decoder.h"
#include "infer/engine.h"
#include "model/param_spec.h"
#include "mpi_test_main.h"
#include "serve/protocol.h"
#include "serve/server.h"

namespace loom {
namespace {

using nlohmann::json;

GptConfig cfg() {
  return GptConfig{.n_layer = 2, .n_head = 4, .n_embd = 64, .block_size = 64,
                   .vocab_size = 50257};
}

void init(Gpt& m) {
  init_params(m.params(), 8, m.weights().data());
  for (float& w : m.weights()) w *= 4.0f;
}

// The single process's text for a request, through the engine.
std::string alone(const Gpt2Tokenizer& tok, const std::string& prompt, SampleOptions opt) {
  const ProcessGrid one = ProcessGrid::single();
  Gpt model(cfg(), one);
  init(model);
  Decoder d(model, one, DType::kF32, 1, cfg().block_size, 64);
  Engine e(d, &tok);
  e.submit({tok.encode(prompt), opt});
  std::string text;
  e.run([&](const TokenEvent& ev) { text += ev.text; });
  return text;
}

TEST(TensorParallelServe, AnswersAsTheSingleProcess) {
  const ProcessGrid grid = ProcessGrid::create(
      test::mpi().world(), GridShape{.pp = 1, .dp = 1, .tp = test::mpi().world_size()});
  const Gpt2Tokenizer tok = Gpt2Tokenizer::load(default_tokenizer_dir());
  Gpt model(cfg(), grid);
  init(model);
  ServeOptions opt;
  opt.port = 0;
  opt.slots = 2;
  if (grid.rank() != 0) {
    EXPECT_EQ(serve_follower(model, grid, opt, tok), 0);
    return;
  }
  ServeSession session(opt, tok);
  int rc = -1;
  std::thread runner([&] { rc = session.run(model, grid); });
  httplib::Client c("127.0.0.1", session.port());
  c.set_read_timeout(120, 0);
  for (int i = 0; i < 600; ++i) {
    if (auto r = c.Get("/health"); r && r->status == 200) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  struct Case {
    std::string prompt;
    float temperature;
    uint64_t seed;
  };
  const std::vector<Case> cases = {{"In the beginning", 0, 0}, {"And God said", 0.9f, 7},
                                   {"Let there be light", 1.2f, 11}};
  std::vector<std::string> got(cases.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < cases.size(); ++i)
    clients.emplace_back([&, i] {
      httplib::Client ci("127.0.0.1", session.port());
      ci.set_read_timeout(120, 0);
      const json body = {{"prompt", cases[i].prompt}, {"max_tokens", 10},
                         {"temperature", cases[i].temperature}, {"seed", cases[i].seed}};
      if (auto r = ci.Post("/v1/completions", body.dump(), "application/json"))
        got[i] = json::parse(r->body)["choices"][0]["text"].get<std::string>();
    });
  for (std::thread& t : clients) t.join();
  for (size_t i = 0; i < cases.size(); ++i) {
    SampleOptions s;
    s.max_tokens = 10;
    s.temperature = cases[i].temperature;
    s.seed = cases[i].seed;
    // As JSON carries it: bytes that are not UTF-8 (a random model emits some) become U+FFFD.
    const std::string want = json::parse(dump(json(alone(tok, cases[i].prompt, s))));
    EXPECT_EQ(got[i], want) << "request " << i;
  }
  session.shutdown();
  runner.join();
  EXPECT_EQ(rc, 0);
}

}  // namespace
}  // namespace loom
