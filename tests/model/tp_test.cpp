// Tensor-parallel building blocks without MPI: the parameter slices every tp rank holds,
// vocabulary padding, and the vocab-parallel embedding and cross-entropy, each checked
// against the unsharded computation (Megatron's single-process style of TP tests).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/check.h"
#include "kernels/kernels.h"
#include "model/param_spec.h"
#include "model/tp_ops.h"

namespace loom {
namespace {

namespace k = kernels;

GptConfig tp_cfg() {
  return GptConfig{.n_layer = 2, .n_head = 8, .n_embd = 64, .block_size = 16, .vocab_size = 97};
}

std::vector<float> random_floats(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<int32_t> random_targets(int n, int V, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, V - 1);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int32_t& x : v) x = dist(rng);
  return v;
}

struct Model {
  std::vector<ParamSpec> specs;
  std::vector<float> w;
};

Model build(const GptConfig& cfg, const ModelShard& shard, uint64_t seed) {
  Model m{gpt2_param_specs(cfg, shard), {}};
  m.w.resize(flat_size(m.specs));
  init_params(m.specs, seed, m.w.data());
  return m;
}

// ---- 1. every rank's parameters are exact slices of the tp=1 parameters -------------------
TEST(TpSlices, ShardsAreExactSlicesCoveringEveryElementOnce) {
  const GptConfig cfg = tp_cfg();
  const uint64_t seed = 1234;
  Model whole{gpt2_param_specs(cfg), {}};
  whole.w.resize(flat_size(whole.specs));
  init_params(whole.specs, seed, whole.w.data());

  // tp=1 through the shard interface is the whole model, bitwise.
  {
    const Model one = build(cfg, ModelShard{1, 0, {0, 1}, true, true}, seed);
    ASSERT_EQ(one.w.size(), whole.w.size());
    EXPECT_EQ(std::memcmp(one.w.data(), whole.w.data(), whole.w.size() * sizeof(float)), 0);
  }

  for (int tp : {2, 4, 8}) {
    SCOPED_TRACE("tp=" + std::to_string(tp));
    ASSERT_EQ(cfg.n_head % tp, 0);
    std::vector<Model> ranks;
    for (int r = 0; r < tp; ++r) ranks.push_back(build(cfg, ModelShard{tp, r, {0, 1}, true, true}, seed));
    for (const ParamSpec& wp : whole.specs) {
      SCOPED_TRACE(wp.name);
      const float* wt = whole.w.data() + wp.offset;
      const size_t gn = size_t(wp.global_numel());
      std::vector<float> assembled(gn, 0.0f), count(gn, 0.0f), tmp;
      bool split = false;
      for (int r = 0; r < tp; ++r) {
        const ParamSpec& p = find_param(ranks[size_t(r)].specs, wp.name);
        ASSERT_EQ(p.global_shape, wp.global_shape);
        split = p.split_dim >= 0;
        ASSERT_EQ(p.numel * size_t(split ? tp : 1), gn);
        const float* local = ranks[size_t(r)].w.data() + p.offset;
        tmp.assign(p.numel, -1.0f);
        slice_to_local(p, wt, tmp.data());
        ASSERT_EQ(std::memcmp(tmp.data(), local, p.numel * sizeof(float)), 0) << "rank " << r;
        local_to_global(p, local, assembled.data());
        std::vector<float> ones(p.numel, 1.0f), hit(gn, 0.0f);
        local_to_global(p, ones.data(), hit.data());
        for (size_t i = 0; i < gn; ++i) count[i] += hit[i];
      }
      const float expect_count = split ? 1.0f : float(tp);
      for (size_t i = 0; i < gn; ++i) ASSERT_EQ(count[i], expect_count) << "element " << i;
      EXPECT_EQ(std::memcmp(assembled.data(), wt, gn * sizeof(float)), 0);
    }
    // The flat buffers are contiguous and together hold exactly the split parameters once.
    for (const Model& m : ranks) {
      size_t off = 0;
      for (const ParamSpec& p : m.specs) {
        EXPECT_EQ(p.offset, off) << p.name;
        off += p.numel;
      }
    }

    // c_attn's partition stride: rank r's rows are [its q rows | its k rows | its v rows].
    const int64_t C = cfg.n_embd, Cl = C / tp;
    for (int r = 0; r < tp; ++r) {
      const ParamSpec& wq = find_param(whole.specs, "h.1.attn.c_attn.weight");
      const ParamSpec& lq = find_param(ranks[size_t(r)].specs, "h.1.attn.c_attn.weight");
      ASSERT_EQ(lq.local_shape, (std::vector<int64_t>{3 * Cl, C}));
      const float* L = ranks[size_t(r)].w.data() + lq.offset;
      const float* W = whole.w.data() + wq.offset;
      for (int part = 0; part < 3; ++part)
        for (int64_t row = 0; row < Cl; ++row)
          ASSERT_EQ(std::memcmp(L + (part * Cl + row) * C, W + (part * C + r * Cl + row) * C,
                                size_t(C) * sizeof(float)),
                    0)
              << "rank " << r << " part " << part << " row " << row;
      if (r == 1) {
        EXPECT_EQ(L[0], W[Cl * C]);                 // local row 0 = whole row C/tp
        EXPECT_EQ(L[Cl * C], W[(C + Cl) * C]);      // first k row = whole row C + C/tp
        EXPECT_EQ(L[2 * Cl * C], W[(2 * C + Cl) * C]);
      }
      // Row-parallel c_proj: columns [r*4C/tp, (r+1)*4C/tp) of every row.
      const ParamSpec& wf = find_param(whole.specs, "h.0.mlp.c_proj.weight");
      const ParamSpec& lf = find_param(ranks[size_t(r)].specs, "h.0.mlp.c_proj.weight");
      const int64_t Fl = 4 * C / tp;
      ASSERT_EQ(lf.local_shape, (std::vector<int64_t>{C, Fl}));
      for (int64_t row = 0; row < C; ++row)
        ASSERT_EQ(std::memcmp(ranks[size_t(r)].w.data() + lf.offset + row * Fl,
                              whole.w.data() + wf.offset + row * 4 * C + r * Fl,
                              size_t(Fl) * sizeof(float)),
                  0);
      // Vocab-parallel wte: rows [r*Vp/tp, (r+1)*Vp/tp).
      const ParamSpec& lw = find_param(ranks[size_t(r)].specs, "wte.weight");
      const int64_t Vl = cfg.padded_vocab(tp) / tp;
      EXPECT_EQ(lw.split_dim, 0);
      EXPECT_EQ(lw.split_start, r * Vl);
      EXPECT_EQ(lw.local_shape, (std::vector<int64_t>{Vl, C}));
      // Row-parallel biases and layernorms are replicated.
      EXPECT_EQ(find_param(ranks[size_t(r)].specs, "h.0.attn.c_proj.bias").split_dim, -1);
      EXPECT_EQ(find_param(ranks[size_t(r)].specs, "h.0.ln_1.weight").split_dim, -1);
    }
  }
}

// ---- 2. vocabulary padding ----------------------------------------------------------------
TEST(TpVocabPadding, PaddedVocabAndZeroPaddingRowsOnEveryRank) {
  GptConfig cfg = tp_cfg();
  for (int tp : {1, 2, 4, 8}) EXPECT_EQ(cfg.padded_vocab(tp), 128) << "tp=" << tp;
  EXPECT_EQ(cfg.padded_vocab(3), 384);
  EXPECT_EQ(cfg.padded_vocab(), 128);
  GptConfig big;
  big.vocab_size = 50257;
  for (int tp : {1, 2, 4, 8}) EXPECT_EQ(big.padded_vocab(tp), 50304) << "tp=" << tp;

  const int V = cfg.vocab_size, C = cfg.n_embd;
  for (int tp : {1, 2, 4, 8}) {
    for (int r = 0; r < tp; ++r) {
      const Model m = build(cfg, ModelShard{tp, r, {}, true, false}, 99);
      const ParamSpec& wte = find_param(m.specs, "wte.weight");
      EXPECT_EQ(wte.real_rows, V);
      const int64_t rows = wte.local_shape[0], g0 = tp > 1 ? wte.split_start : 0;
      for (int64_t lr = 0; lr < rows; ++lr) {
        const float* row = m.w.data() + wte.offset + lr * C;
        const bool pad = g0 + lr >= V;
        int nonzero = 0;
        for (int c = 0; c < C; ++c) nonzero += row[c] != 0.0f;
        if (pad)
          ASSERT_EQ(nonzero, 0) << "tp=" << tp << " rank " << r << " global row " << g0 + lr;
        else
          ASSERT_GT(nonzero, C / 2) << "tp=" << tp << " rank " << r << " global row " << g0 + lr;
      }
    }
  }
}

// ---- 3. heads must divide by tp -----------------------------------------------------------
TEST(TpHeadsMustDivide, ThrowsInputErrorNamingBothNumbers) {
  const GptConfig cfg = tp_cfg();
  try {
    gpt2_param_specs(cfg, ModelShard{3, 0, {0, 1}, true, true});
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("n_head=8"), std::string::npos) << what;
    EXPECT_NE(what.find("tp=3"), std::string::npos) << what;
    EXPECT_EQ(e.exit_code(), 2);
  }
  EXPECT_THROW(gpt2_param_specs(cfg, ModelShard{16, 0, {0}, true, true}), InputError);
  EXPECT_NO_THROW(gpt2_param_specs(cfg, ModelShard{8, 7, {0}, true, true}));
}

// ---- 4. vocab-parallel cross-entropy ------------------------------------------------------
void check_vocab_ce(int N, int V, int Vp, int tp, uint32_t seed) {
  SCOPED_TRACE("V=" + std::to_string(V) + " Vp=" + std::to_string(Vp) + " tp=" + std::to_string(tp));
  ASSERT_EQ(Vp % tp, 0);
  const int Vl = Vp / tp;
  const std::vector<float> logits = random_floats(size_t(N) * Vp, seed, 3.0f);  // padding too
  const std::vector<int32_t> targets = random_targets(N, V, seed + 1);
  auto split = [&](int r) {
    std::vector<float> local(size_t(N) * Vl);
    for (int i = 0; i < N; ++i)
      std::copy_n(logits.begin() + ptrdiff_t(size_t(i) * Vp + size_t(r) * Vl), Vl,
                  local.begin() + ptrdiff_t(size_t(i) * Vl));
    return local;
  };
  // Evaluation keeps the logits; training leaves exps in them. Both give the same stats.
  std::vector<float> stats(size_t(tp) * N * 3), train_stats(stats.size());
  std::vector<std::vector<float>> locals, exps;
  for (int r = 0; r < tp; ++r) {
    locals.push_back(split(r));
    k::vocab_ce_local_stats(stats.data() + size_t(r) * N * 3, locals.back().data(),
                            targets.data(), N, Vl, r * Vl, V, false);
    ASSERT_EQ(locals.back(), split(r)) << "rank " << r;
    exps.push_back(split(r));
    k::vocab_ce_local_stats(train_stats.data() + size_t(r) * N * 3, exps.back().data(),
                            targets.data(), N, Vl, r * Vl, V, true);
  }
  ASSERT_EQ(std::memcmp(stats.data(), train_stats.data(), stats.size() * sizeof(float)), 0);

  // Evaluation (dloss <= 0): logits untouched, losses as crossentropy_forward.
  std::vector<float> ref_loss(static_cast<size_t>(N));
  k::crossentropy_forward(ref_loss.data(), logits.data(), targets.data(), N, V, Vp);
  for (float dl : {0.0f, -1.0f}) {
    for (int r = 0; r < tp; ++r) {
      std::vector<float> loc = locals[size_t(r)], loss(size_t(N), -7.0f);
      k::vocab_ce_finish(loss.data(), loc.data(), stats.data(), tp, targets.data(), N, Vl, r * Vl,
                         V, dl);
      ASSERT_EQ(std::memcmp(loc.data(), locals[size_t(r)].data(), loc.size() * sizeof(float)), 0);
      for (int i = 0; i < N; ++i)
        ASSERT_NEAR(loss[size_t(i)], ref_loss[size_t(i)], 1e-6 * std::abs(ref_loss[size_t(i)]))
            << "eval rank " << r << " row " << i;
    }
  }

  // Training: losses and the concatenated gradient match the fused kernel.
  const float dloss = 0.5f;
  std::vector<float> ref_grad = logits, fused_loss(static_cast<size_t>(N));
  k::crossentropy_fused(fused_loss.data(), ref_grad.data(), targets.data(), N, V, Vp, dloss);
  std::vector<float> grad(size_t(N) * Vp), loss0;
  for (int r = 0; r < tp; ++r) {
    std::vector<float> loss(static_cast<size_t>(N));
    std::vector<float>& loc = exps[size_t(r)];
    k::vocab_ce_finish(loss.data(), loc.data(), stats.data(), tp, targets.data(), N, Vl, r * Vl, V,
                       dloss);
    for (int i = 0; i < N; ++i)
      std::copy_n(loc.begin() + ptrdiff_t(size_t(i) * Vl), Vl,
                  grad.begin() + ptrdiff_t(size_t(i) * Vp + size_t(r) * Vl));
    if (r == 0) loss0 = loss;
    // Every rank computes the same losses from the same gathered statistics.
    ASSERT_EQ(std::memcmp(loss.data(), loss0.data(), loss.size() * sizeof(float)), 0) << "rank " << r;
  }
  for (int i = 0; i < N; ++i) {
    ASSERT_NEAR(loss0[size_t(i)], fused_loss[size_t(i)], 1e-6 * std::abs(fused_loss[size_t(i)]))
        << "row " << i;
    double gsum = 0.0;
    for (int j = 0; j < Vp; ++j) {
      const float g = grad[size_t(i) * Vp + size_t(j)];
      if (j >= V) {
        ASSERT_EQ(g, 0.0f) << "padding column " << j << " row " << i;
        continue;
      }
      gsum += g;
      ASSERT_NEAR(g, ref_grad[size_t(i) * Vp + size_t(j)], 1e-6 * dloss) << "row " << i << " col " << j;
    }
    EXPECT_NEAR(gsum, 0.0, 1e-5);  // softmax - onehot sums to zero
    EXPECT_LT(grad[size_t(i) * Vp + size_t(targets[size_t(i)])], 0.0f);
  }
}

TEST(TpVocabCrossEntropy, MatchesFusedKernelAcrossRanks) {
  for (int tp : {1, 2, 4}) check_vocab_ce(48, 97, 128, tp, 10u + uint32_t(tp));
  // tp=4, Vp=128: rank 1 holds columns 32..63 with 28 real; ranks 2 and 3 hold only padding.
  check_vocab_ce(48, 60, 128, 4, 20);
  check_vocab_ce(48, 60, 128, 2, 21);
  // tp=8: rank 6 holds 96..111 with only 96 real, rank 7 only padding.
  check_vocab_ce(48, 97, 128, 8, 22);
}

TEST(TpVocabCrossEntropy, PaddingRankStatsAreNeutral) {
  // A rank without real columns reports max=-inf, sum=0, target logit 0: it must not move
  // the loss, and its gradient is all zeros.
  const int N = 4, Vl = 32, V = 60;
  std::vector<float> logits = random_floats(size_t(N) * Vl, 5, 100.0f);
  const std::vector<int32_t> targets = random_targets(N, V, 6);
  std::vector<float> st(size_t(N) * 3);
  k::vocab_ce_local_stats(st.data(), logits.data(), targets.data(), N, Vl, 64, V, true);
  for (int i = 0; i < N; ++i) {
    EXPECT_TRUE(std::isinf(st[size_t(i) * 3]) && st[size_t(i) * 3] < 0);
    EXPECT_EQ(st[size_t(i) * 3 + 1], 0.0f);
    EXPECT_EQ(st[size_t(i) * 3 + 2], 0.0f);
  }
}

// ---- 5. vocab-parallel embedding ----------------------------------------------------------
TEST(TpVocabEmbedding, LookupAndBackwardMatchEncoderKernels) {
  const int B = 4, T = 8, C = 24, V = 97, Vp = 128, maxT = 16, N = B * T;
  std::vector<float> wte = random_floats(size_t(Vp) * C, 31, 0.5f);
  std::fill(wte.begin() + ptrdiff_t(size_t(V) * C), wte.end(), 0.0f);
  const std::vector<float> wpe = random_floats(size_t(maxT) * C, 32, 0.5f);
  std::vector<int32_t> tokens = random_targets(N, V, 33);
  tokens[5] = tokens[0];  // repeated tokens accumulate
  tokens[17] = tokens[0];
  tokens[9] = V - 1;
  tokens[10] = 0;
  const std::vector<float> dout = random_floats(size_t(N) * C, 34);

  std::vector<float> ref(size_t(N) * C), ref_dwte(size_t(Vp) * C, 0.0f), ref_dwpe(size_t(maxT) * C, 0.0f);
  k::encoder_forward(ref.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
  k::encoder_backward(ref_dwte.data(), ref_dwpe.data(), dout.data(), tokens.data(), B, T, C);

  auto near_rel = [](const std::vector<float>& a, const std::vector<float>& b, const char* what) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i)
      ASSERT_NEAR(a[i], b[i], 1e-6 * std::max(1.0f, std::abs(b[i]))) << what << " element " << i;
  };

  for (int tp : {1, 2, 4, 8}) {
    SCOPED_TRACE("tp=" + std::to_string(tp));
    const int Vl = Vp / tp;
    std::vector<float> sum(size_t(N) * C, 0.0f), part(size_t(N) * C), dwte(size_t(Vp) * C, 0.0f);
    for (int r = 0; r < tp; ++r) {
      std::fill(part.begin(), part.end(), 123.0f);  // lookup overwrites every row
      vocab_embedding_lookup(part.data(), tokens.data(), wte.data() + size_t(r) * Vl * C, N, C,
                             r * Vl, Vl);
      for (size_t i = 0; i < sum.size(); ++i) sum[i] += part[i];
      vocab_embedding_backward(dwte.data() + size_t(r) * Vl * C, dout.data(), tokens.data(), N, C,
                               r * Vl, Vl);
    }
    std::vector<float> tok_only = sum;  // wte rows only, before positions
    add_positions(sum.data(), wpe.data(), N, 0, T, C);
    EXPECT_EQ(std::memcmp(sum.data(), ref.data(), sum.size() * sizeof(float)), 0);
    near_rel(dwte, ref_dwte, "dwte");

    // Sequence-parallel slices of rows (row0 > 0, not aligned to T): forward rows match.
    for (auto [row0, n] : {std::pair{12, 12}, std::pair{24, 8}, std::pair{3, 29}}) {
      std::vector<float> slice(tok_only.begin() + ptrdiff_t(size_t(row0) * C),
                               tok_only.begin() + ptrdiff_t(size_t(row0 + n) * C));
      add_positions(slice.data(), wpe.data(), n, row0, T, C);
      EXPECT_EQ(std::memcmp(slice.data(), ref.data() + size_t(row0) * C, slice.size() * sizeof(float)), 0)
          << "row0=" << row0;
    }
  }

  std::vector<float> dwpe(size_t(maxT) * C, 0.0f);
  positions_backward(dwpe.data(), dout.data(), N, 0, T, C);
  near_rel(dwpe, ref_dwpe, "dwpe");

  // Position gradients of row slices, accumulated over a sequence-parallel split, equal the
  // whole; one slice alone equals encoder_backward of dout restricted to those rows.
  std::vector<float> acc(size_t(maxT) * C, 0.0f);
  for (auto [row0, n] : {std::pair{0, 5}, std::pair{5, 14}, std::pair{19, 13}})
    positions_backward(acc.data(), dout.data() + size_t(row0) * C, n, row0, T, C);
  near_rel(acc, ref_dwpe, "dwpe (slices)");
  {
    const int row0 = 11, n = 10;
    std::vector<float> masked(size_t(N) * C, 0.0f), one(size_t(maxT) * C, 0.0f);
    std::copy_n(dout.begin() + ptrdiff_t(size_t(row0) * C), size_t(n) * C,
                masked.begin() + ptrdiff_t(size_t(row0) * C));
    std::vector<float> ref_one(size_t(maxT) * C, 0.0f), scratch(size_t(Vp) * C, 0.0f);
    k::encoder_backward(scratch.data(), ref_one.data(), masked.data(), tokens.data(), B, T, C);
    positions_backward(one.data(), dout.data() + size_t(row0) * C, n, row0, T, C);
    near_rel(one, ref_one, "dwpe (one slice)");
    // Rows of wpe beyond T are never touched.
    for (size_t i = size_t(T) * C; i < one.size(); ++i) ASSERT_EQ(one[i], 0.0f);
  }
}

}  // namespace
}  // namespace loom
