// The KV-cache decoder against the training model's full forward: prefill, one token at a
// time and a mix give the logits of a full forward over the same tokens at every position
// (prompts of several lengths, one filling the context); sequences decoded together in
// slots of one batch give what each gives alone, including a slot freed and reused.
#include "infer/decoder.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>

#include "comm/process_grid.h"
#include "core/check.h"
#include "model/param_spec.h"

namespace loom {
namespace {

GptConfig small_cfg() {
  return GptConfig{.n_layer = 3, .n_head = 4, .n_embd = 32, .block_size = 24, .vocab_size = 97};
}

std::vector<int32_t> random_tokens(int n, int V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, V - 1);
  std::vector<int32_t> v(size_t(n), 0);
  for (int32_t& t : v) t = dist(rng);
  return v;
}

struct Fixture {
  ProcessGrid grid = ProcessGrid::single();
  Gpt model{small_cfg(), grid};
  Fixture() {
    init_params(model.params(), 11, model.weights().data());
    // Larger weights than GPT-2's initial 0.02 make the logits far from uniform, so the
    // greedy choices below are not near-ties.
    for (float& w : model.weights()) w *= 4.0f;
    model.reserve(1, small_cfg().block_size);
  }
  // Logits (T, V) of the full forward over tokens.
  std::vector<float> full_forward(const std::vector<int32_t>& tokens) {
    const int T = int(tokens.size()), V = model.config().vocab_size, Vp = model.padded_vocab();
    model.forward(tokens.data(), nullptr, 1, T);
    std::vector<float> out(size_t(T) * V);
    for (int t = 0; t < T; ++t)
      std::copy_n(model.logits() + size_t(t) * Vp, V, out.begin() + size_t(t) * V);
    return out;
  }
};

// max |a - b| / max(1, max |b|)
double norm_err(const float* a, const float* b, size_t n) {
  double worst = 0, top = 1;
  for (size_t i = 0; i < n; ++i) {
    worst = std::max(worst, double(std::abs(a[i] - b[i])));
    top = std::max(top, double(std::abs(b[i])));
  }
  return worst / top;
}

// Feeds tokens to slot 0 in chunks of the given sizes, every row wanting its logits.
std::vector<float> decode_in_chunks(Decoder& d, const std::vector<int32_t>& tokens,
                                    const std::vector<int>& chunks) {
  std::vector<float> all, logits;
  int pos = 0;
  for (int n : chunks) {
    std::vector<DecodeRow> rows;
    for (int i = 0; i < n; ++i, ++pos) rows.push_back({0, pos, tokens[size_t(pos)], true});
    d.forward(rows, logits);
    all.insert(all.end(), logits.begin(), logits.end());
  }
  return all;
}

TEST(Decoder, EveryPositionMatchesTheFullForward) {
  Fixture f;
  const int V = small_cfg().vocab_size;
  for (int T : {1, 5, 17, 24}) {  // 24 fills the context
    const std::vector<int32_t> tokens = random_tokens(T, V, uint32_t(T));
    const std::vector<float> want = f.full_forward(tokens);
    Decoder d(f.model, f.grid, DType::kF32, 2, 24, 24);
    const std::vector<std::vector<int>> splits = {
        {T}, std::vector<int>(size_t(T), 1), {(T + 1) / 2, T / 2}, {1, T - 1}};
    for (const std::vector<int>& chunks : splits) {
      std::vector<int> c;
      for (int n : chunks)
        if (n > 0) c.push_back(n);
      const std::vector<float> got = decode_in_chunks(d, tokens, c);
      ASSERT_EQ(got.size(), want.size());
      EXPECT_LT(norm_err(got.data(), want.data(), want.size()), 1e-5)
          << "T=" << T << " in " << c.size() << " chunks";
    }
  }
}

// Greedy decoding of one sequence, in slot `slot` of a decoder that holds others.
struct Decoded {
  std::vector<int32_t> tokens;
  std::vector<float> logits;  // every step's (V)
};

TEST(Decoder, SequencesInOneBatchGiveWhatEachGivesAlone) {
  Fixture f;
  const int V = small_cfg().vocab_size, steps = 6;
  const std::vector<std::vector<int32_t>> prompts = {random_tokens(3, V, 1), random_tokens(9, V, 2),
                                                     random_tokens(1, V, 3), random_tokens(5, V, 4)};
  auto argmax = [&](const float* l) { return int32_t(std::max_element(l, l + V) - l); };
  // Alone: each prompt in slot 0 of its own decoder, prefill then `steps` greedy tokens.
  std::vector<Decoded> alone;
  for (const auto& p : prompts) {
    Decoder d(f.model, f.grid, DType::kF32, 1, 24, 16);
    Decoded r;
    std::vector<float> logits;
    std::vector<DecodeRow> rows;
    for (size_t i = 0; i < p.size(); ++i) rows.push_back({0, int(i), p[i], i + 1 == p.size()});
    int pos = int(p.size());
    d.forward(rows, logits);
    for (int s = 0; s < steps; ++s) {
      r.logits.insert(r.logits.end(), logits.begin(), logits.end());
      r.tokens.push_back(argmax(logits.data()));
      if (s + 1 < steps) d.forward(std::vector<DecodeRow>{{0, pos++, r.tokens.back(), true}}, logits);
    }
    alone.push_back(r);
  }
  // Together: prompts 0-2 start in slots 2, 0, 1; prompt 3 joins slot 2 when prompt 0 (its
  // `steps` tokens done) leaves, while the others are mid-sequence. Each live sequence has
  // one row wanting logits per call, so the logits come in the order of `live`.
  Decoder d(f.model, f.grid, DType::kF32, 3, 24, 16);
  struct Live {
    int prompt, slot, pos, step;
  };
  std::vector<Live> live;
  std::vector<Decoded> together(prompts.size());
  std::vector<DecodeRow> rows;
  auto join = [&](std::vector<Live>& into, int prompt, int slot) {
    const auto& p = prompts[size_t(prompt)];
    for (size_t i = 0; i < p.size(); ++i) rows.push_back({slot, int(i), p[i], i + 1 == p.size()});
    into.push_back({prompt, slot, int(p.size()), 0});
  };
  join(live, 0, 2);
  join(live, 1, 0);
  join(live, 2, 1);
  std::vector<float> logits;
  while (!live.empty()) {
    d.forward(rows, logits);
    rows.clear();
    std::vector<Live> next;
    int freed = -1;
    for (size_t i = 0; i < live.size(); ++i) {
      Live l = live[i];
      const float* lg = logits.data() + i * size_t(V);
      Decoded& r = together[size_t(l.prompt)];
      r.logits.insert(r.logits.end(), lg, lg + V);
      r.tokens.push_back(argmax(lg));
      if (++l.step < steps) {
        rows.push_back({l.slot, l.pos++, r.tokens.back(), true});
        next.push_back(l);
      } else if (l.prompt == 0) {
        freed = l.slot;
      }
    }
    if (freed >= 0) join(next, 3, freed);
    live = next;
  }
  for (size_t p = 0; p < prompts.size(); ++p) {
    EXPECT_EQ(together[p].tokens, alone[p].tokens) << "prompt " << p;
    ASSERT_EQ(together[p].logits.size(), alone[p].logits.size());
    EXPECT_LT(norm_err(together[p].logits.data(), alone[p].logits.data(), alone[p].logits.size()),
              1e-5)
        << "prompt " << p;
  }
}

// bf16 weights and GEMM inputs (fp32 accumulation) pick the fp32 model's next token at
// almost every position: teacher-forced over 8 sequences filling the context.
TEST(Decoder, Bf16AgreesWithFp32OnTheLikeliestToken) {
  Fixture f;
  const int V = small_cfg().vocab_size, T = small_cfg().block_size, n = 8;
  Decoder fp32(f.model, f.grid, DType::kF32, n, T, n * T);
  Decoder bf16(f.model, f.grid, DType::kBF16, n, T, n * T);
  std::vector<DecodeRow> rows;
  for (int s = 0; s < n; ++s) {
    const std::vector<int32_t> tokens = random_tokens(T, V, uint32_t(50 + s));
    for (int t = 0; t < T; ++t) rows.push_back({s, t, tokens[size_t(t)], true});
  }
  std::vector<float> a, b;
  fp32.forward(rows, a);
  bf16.forward(rows, b);
  int agree = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    const float *x = a.data() + r * V, *y = b.data() + r * V;
    agree += std::max_element(x, x + V) - x == std::max_element(y, y + V) - y;
  }
  const double rate = double(agree) / double(rows.size());
  std::printf("bf16 top-1 agreement with fp32: %d of %zu positions (%.1f%%)\n", agree,
              rows.size(), 100 * rate);
  EXPECT_GE(rate, 0.95);
}

TEST(Decoder, RejectsPositionsPastItsCapacityAndUnknownTokens) {
  Fixture f;
  Decoder d(f.model, f.grid, DType::kF32, 1, 8, 4);
  std::vector<float> logits;
  EXPECT_THROW(d.forward(std::vector<DecodeRow>{{0, 8, 1, true}}, logits), InputError);
  EXPECT_THROW(d.forward(std::vector<DecodeRow>{{0, 0, 97, true}}, logits), InputError);
  EXPECT_THROW(Decoder(f.model, f.grid, DType::kF32, 1, 25, 4), InputError);
}

}  // namespace
}  // namespace loom
