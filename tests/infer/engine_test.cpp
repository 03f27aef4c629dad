// Continuous batching: requests queued beyond the slots join as others leave and get what
// they get alone (sampled with their own seed: temperature, top-k, top-p); stop strings end
// a sequence and never show in its text, even across tokens; bad requests are refused with
// the numbers that are wrong.
#include "infer/engine.h"

#include <gtest/gtest.h>

#include <map>

#include "comm/process_grid.h"
#include "core/check.h"
#include "model/param_spec.h"

namespace loom {
namespace {

struct Fixture {
  ProcessGrid grid = ProcessGrid::single();
  Gpt model{GptConfig{.n_layer = 2, .n_head = 2, .n_embd = 32, .block_size = 40,
                      .vocab_size = 50257},
            grid};
  Gpt2Tokenizer tok = Gpt2Tokenizer::load(default_tokenizer_dir());
  Fixture() {
    init_params(model.params(), 5, model.weights().data());
    for (float& w : model.weights()) w *= 4.0f;  // logits far from uniform
  }
};

struct Result {
  std::vector<int32_t> tokens;
  std::string text;
  std::optional<FinishReason> finished;
  int completion_tokens = 0;
};

// Runs the requests through an engine of `slots` slots; results by request id.
std::map<int, Result> run(Fixture& f, const std::vector<Request>& requests, int slots,
                          int max_rows = 64) {
  Decoder d(f.model, f.grid, DType::kF32, slots, 40, max_rows);
  Engine e(d, &f.tok);
  for (const Request& r : requests) e.submit(r);
  std::map<int, Result> out;
  e.run([&](const TokenEvent& ev) {
    Result& r = out[ev.id];
    EXPECT_FALSE(r.finished) << "an event after request " << ev.id << " finished";
    if (ev.token >= 0) r.tokens.push_back(ev.token);
    r.text += ev.text;
    r.finished = ev.finished;
    r.completion_tokens = ev.completion_tokens;
  });
  return out;
}

std::vector<Request> mixed_requests(const Fixture& f) {
  std::vector<Request> rs;
  const char* prompts[] = {"In the beginning", "And God said, Let there be light",
                           "The", "Blessed are the meek: for they shall inherit the earth."};
  for (int i = 0; i < 4; ++i) {
    Request r{f.tok.encode(prompts[i]), {}};
    r.sample.max_tokens = 6 + 3 * i;
    r.sample.seed = uint64_t(100 + i);
    r.sample.temperature = i == 0 ? 0.0f : 0.9f;  // greedy, then sampled
    r.sample.top_k = i == 2 ? 40 : 0;
    r.sample.top_p = i == 3 ? 0.8f : 1.0f;
    r.sample.stop_at_end_of_text = false;
    rs.push_back(r);
  }
  return rs;
}

TEST(Engine, QueuedRequestsJoinAsOthersLeaveAndGetWhatTheyGetAlone) {
  Fixture f;
  const std::vector<Request> rs = mixed_requests(f);
  std::vector<Result> alone;
  for (const Request& r : rs) alone.push_back(run(f, {r}, 1).at(0));
  // Two slots for four requests: 2 and 3 wait, then join mid-flight; a small max_rows
  // splits the prefill of a joining prompt over several decoder calls.
  for (int max_rows : {64, 5}) {
    const std::map<int, Result> together = run(f, rs, 2, max_rows);
    for (int i = 0; i < 4; ++i) {
      const Result& got = together.at(i);
      EXPECT_EQ(got.tokens, alone[size_t(i)].tokens) << "request " << i;
      EXPECT_EQ(got.text, alone[size_t(i)].text) << "request " << i;
      EXPECT_EQ(int(got.tokens.size()), rs[size_t(i)].sample.max_tokens);
      EXPECT_EQ(got.finished, FinishReason::kLength);
      EXPECT_EQ(got.text, f.tok.decode(got.tokens));
    }
  }
}

TEST(Engine, ASeedGivesTheSameTokensAndAnotherSeedOthers) {
  Fixture f;
  Request r{f.tok.encode("Behold"), {}};
  r.sample.max_tokens = 12;
  r.sample.temperature = 1.5f;
  const Result a = run(f, {r}, 1).at(0), b = run(f, {r}, 1).at(0);
  EXPECT_EQ(a.tokens, b.tokens);
  r.sample.seed = 7;
  EXPECT_NE(run(f, {r}, 1).at(0).tokens, a.tokens);
  // top_p so small that only the likeliest token is left: greedy.
  Request g = r;
  g.sample.temperature = 0;
  r.sample.top_p = 1e-6f;
  EXPECT_EQ(run(f, {r}, 1).at(0).tokens, run(f, {g}, 1).at(0).tokens);
}

TEST(Engine, AStopStringEndsTheSequenceAndNeverShowsEvenAcrossTokens) {
  Fixture f;
  Request r{f.tok.encode("In the beginning"), {}};
  r.sample.max_tokens = 20;
  r.sample.temperature = 0;
  r.sample.stop_at_end_of_text = false;
  const Result whole = run(f, {r}, 1).at(0);
  // A stop string from the end of token 3's text into token 4's.
  const std::string t3 = f.tok.decode_token(whole.tokens[3]),
                    t4 = f.tok.decode_token(whole.tokens[4]);
  ASSERT_FALSE(t3.empty() || t4.empty());
  const std::string stop = t3.substr(t3.size() - 1) + t4.substr(0, 1);
  const size_t at = whole.text.find(stop);
  ASSERT_NE(at, std::string::npos);
  r.sample.stop = {"never in this text \x01", stop};
  Decoder d(f.model, f.grid, DType::kF32, 1, 40, 64);
  Engine e(d, &f.tok);
  e.submit(r);
  Result got;
  e.run([&](const TokenEvent& ev) {
    EXPECT_EQ(ev.text.find(stop), std::string::npos);
    got.text += ev.text;
    got.finished = ev.finished;
  });
  EXPECT_EQ(got.text, whole.text.substr(0, at));
  EXPECT_EQ(got.finished, FinishReason::kStop);
}

// A cancelled request (a client gone) frees its slot: the queued request behind it starts
// at the next step and still gets what it gets alone.
TEST(Engine, ACancelledRequestFreesItsSlotForTheNextInTheQueue) {
  Fixture f;
  const std::vector<Request> rs = mixed_requests(f);
  const Result alone = run(f, {rs[1]}, 1).at(0);
  Decoder d(f.model, f.grid, DType::kF32, 1, 40, 64);
  Engine e(d, &f.tok);
  const int first = e.submit(rs[0]), second = e.submit(rs[1]);
  std::map<int, Result> out;
  auto record = [&](const TokenEvent& ev) {
    if (ev.token >= 0) out[ev.id].tokens.push_back(ev.token);
    out[ev.id].finished = ev.finished;
  };
  e.step(record);
  e.step(record);
  EXPECT_EQ(e.running(), 1);
  EXPECT_EQ(e.queued(), 1);
  EXPECT_TRUE(e.cancel(first));
  EXPECT_FALSE(e.cancel(first));
  EXPECT_EQ(e.running(), 0);
  e.step(record);  // the second joins the freed slot
  EXPECT_EQ(e.running(), 1);
  e.run(record);
  EXPECT_EQ(out[first].tokens.size(), 2u);
  EXPECT_FALSE(out[first].finished);
  EXPECT_EQ(out[second].tokens, alone.tokens);
  // A queued request can be cancelled before it starts.
  const int third = e.submit(rs[2]);
  EXPECT_TRUE(e.cancel(third));
  EXPECT_TRUE(e.idle());
}

TEST(Engine, RefusesWhatCannotRunNamingTheNumbers) {
  Fixture f;
  Decoder d(f.model, f.grid, DType::kF32, 1, 40, 64);
  Engine e(d, &f.tok);
  auto message = [&](Request r) {
    try {
      e.submit(std::move(r));
    } catch (const InputError& err) {
      return std::string(err.what());
    }
    return std::string("accepted");
  };
  Request ok{{1, 2, 3}, {}};
  EXPECT_NE(message({{}, {}}).find("the prompt is empty"), std::string::npos);
  Request long_prompt{std::vector<int32_t>(41, 5), {}};
  EXPECT_NE(message(long_prompt).find("41 tokens but the context holds 40"), std::string::npos);
  Request too_many = ok;
  too_many.sample.max_tokens = 38;
  const std::string m = message(too_many);
  EXPECT_NE(m.find("3 tokens"), std::string::npos) << m;
  EXPECT_NE(m.find("max_tokens 38"), std::string::npos) << m;
  Request bad = ok;
  bad.sample.top_p = 0;
  EXPECT_NE(message(bad).find("top_p"), std::string::npos);
  bad = ok;
  bad.sample.temperature = -1;
  EXPECT_NE(message(bad).find("temperature"), std::string::npos);
  bad = ok;
  bad.prompt = {50257};
  EXPECT_NE(message(bad).find("outside the vocabulary"), std::string::npos);
  EXPECT_EQ(message(ok), "accepted");
  // No token wanted: it ends at once, with its length reason.
  Request none = ok;
  none.sample.max_tokens = 0;
  e.submit(none);
  int finished = 0;
  e.run([&](const TokenEvent& ev) { finished += ev.finished.has_value(); });
  EXPECT_EQ(finished, 2);
}

}  // namespace
}  // namespace loom
