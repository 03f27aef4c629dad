// Attention over cached keys and values (cached_attention) against the naive double
// reference of causal attention: the whole sequence as one run (prefill), one row at a time
// (decode) and in chunks, several sequences in one call, any thread count.
#include <gtest/gtest.h>

#include "core/check.h"
#include "kernel_test_util.h"
#include "kernels/kernels.h"
#include "kernels/ref/kernels_ref.h"

namespace loom::kernels {
namespace {

using namespace testing;

struct Seq {
  int T, C, NH, capacity;
};

// A sequence's qkv (T,3C) and its keys and values laid out as a cache: per head the keys
// transposed (HS, capacity) and the values (capacity, HS), positions past T NaN (a read of
// one would show).
struct Cached {
  std::vector<float> qkv, k, v;
  std::vector<double> want;  // reference out (T,C)
};

Cached make(const Seq& s, uint64_t seed) {
  const int HS = s.C / s.NH;
  Cached c;
  c.qkv = random_vec(size_t(s.T) * 3 * s.C, seed, -2.0f, 2.0f);
  c.k.assign(size_t(s.NH) * s.capacity * HS, std::nanf(""));
  c.v = c.k;
  for (int t = 0; t < s.T; ++t)
    for (int h = 0; h < s.NH; ++h)
      for (int i = 0; i < HS; ++i) {
        const size_t head = size_t(h) * s.capacity * HS;
        c.k[head + size_t(i) * s.capacity + t] = c.qkv[size_t(t) * 3 * s.C + s.C + h * HS + i];
        c.v[head + size_t(t) * HS + i] = c.qkv[size_t(t) * 3 * s.C + 2 * s.C + h * HS + i];
      }
  const std::vector<double> qkv = to_double(c.qkv);
  std::vector<double> att(size_t(s.NH) * s.T * s.T);
  c.want.assign(size_t(s.T) * s.C, 0.0);
  ref::attention_forward(c.want.data(), att.data(), qkv.data(), 1, s.T, s.C, s.NH);
  return c;
}

// Runs the sequence in chunks of the given sizes (summing to T) into a guarded out (T,C).
Guarded run_chunks(const Seq& s, const Cached& c, const std::vector<int>& chunks) {
  const int HS = s.C / s.NH;
  Guarded out(size_t(s.T) * s.C, std::nanf(""));
  int pos = 0;
  for (int n : chunks) {
    const CachedAttentionRun r{c.qkv.data() + size_t(pos) * 3 * s.C,
                               out.data() + size_t(pos) * s.C, c.k.data(), c.v.data(), n, pos};
    cached_attention({&r, 1}, s.NH, HS, 3 * s.C, s.C, s.capacity);
    pos += n;
  }
  EXPECT_TRUE(out.guards_intact());
  return out;
}

// T = 1 and 7; 150 and 257 cross the 128-row tiles elsewhere; HS = 8, 16, 64, 12.
constexpr Seq kSeqs[] = {{1, 16, 2, 4}, {7, 32, 2, 16}, {150, 128, 2, 160}, {257, 36, 3, 300}};

TEST(CachedAttention, PrefillDecodeAndChunksMatchReference) {
  for (const Seq& s : kSeqs) {
    const Cached c = make(s, uint64_t(s.T));
    EXPECT_LT(max_norm_err(run_chunks(s, c, {s.T}), c.want), kTol) << "prefill T=" << s.T;
    EXPECT_LT(max_norm_err(run_chunks(s, c, std::vector<int>(size_t(s.T), 1)), c.want), kTol)
        << "decode T=" << s.T;
    if (s.T > 3) {
      const int a = s.T / 3;
      EXPECT_LT(max_norm_err(run_chunks(s, c, {a, 1, s.T - a - 1}), c.want), kTol)
          << "chunks T=" << s.T;
    }
  }
}

// Sequences of different lengths and positions in one call give bitwise what each gives
// alone, for every thread count: the batch a sequence is decoded in changes nothing.
TEST(CachedAttention, ARunIsIndependentOfTheOthersAndOfThreads) {
  const Seq s{40, 64, 4, 48};
  const int HS = s.C / s.NH;
  std::vector<Cached> seqs;
  for (uint64_t i = 0; i < 3; ++i) seqs.push_back(make(s, 100 + i));
  // Sequence i runs n_i rows ending at row end_i: a decode row, a chunk, a prefill.
  const int n[3] = {1, 9, 40}, end[3] = {17, 33, 40};
  auto run = [&](const std::vector<int>& which, int threads) {
    ScopedThreads scoped(threads);
    std::vector<std::vector<float>> outs(3, std::vector<float>(size_t(s.T) * s.C, 0.0f));
    std::vector<CachedAttentionRun> runs;
    for (int i : which) {
      const int pos0 = end[i] - n[i];
      runs.push_back({seqs[size_t(i)].qkv.data() + size_t(pos0) * 3 * s.C,
                      outs[size_t(i)].data() + size_t(pos0) * s.C, seqs[size_t(i)].k.data(),
                      seqs[size_t(i)].v.data(), n[i], pos0});
    }
    cached_attention(runs, s.NH, HS, 3 * s.C, s.C, s.capacity);
    return outs;
  };
  for (int threads : kThreadCounts) {
    const auto together = run({0, 1, 2}, threads);
    for (int i = 0; i < 3; ++i) {
      const auto alone = run({i}, 1);
      EXPECT_TRUE(bitwise_equal(together[size_t(i)], alone[size_t(i)]))
          << "sequence " << i << ", " << threads << " threads";
    }
  }
}

// A bf16 cache gives bitwise what an fp32 cache of the same rounded values gives: the
// kernel widens exactly and computes in fp32 (prefill, decode and chunks).
TEST(CachedAttention, ABf16CacheIsTheFp32KernelOnItsValues) {
  for (const Seq& s : kSeqs) {
    Cached c = make(s, uint64_t(s.T) + 7);
    std::vector<uint16_t> k16(c.k.size()), v16(c.v.size());
    for (size_t i = 0; i < c.k.size(); ++i) {
      k16[i] = bf16_from_float(c.k[i]);
      v16[i] = bf16_from_float(c.v[i]);
      c.k[i] = bf16_to_float(k16[i]);  // NaN beyond T stays NaN
      c.v[i] = bf16_to_float(v16[i]);
    }
    const int HS = s.C / s.NH;
    for (const std::vector<int>& chunks :
         {std::vector<int>{s.T}, std::vector<int>(size_t(s.T), 1)}) {
      const std::vector<float> want = run_chunks(s, c, chunks).values();
      std::vector<float> got(size_t(s.T) * s.C, 0.0f);
      int pos = 0;
      for (int n : chunks) {
        const CachedAttentionRun r{c.qkv.data() + size_t(pos) * 3 * s.C,
                                   got.data() + size_t(pos) * s.C, k16.data(), v16.data(), n,
                                   pos};
        cached_attention({&r, 1}, s.NH, HS, 3 * s.C, s.C, s.capacity, DType::kBF16);
        pos += n;
      }
      EXPECT_TRUE(bitwise_equal(got, want)) << "T=" << s.T << ", " << chunks.size() << " chunks";
    }
  }
}

TEST(CachedAttention, RejectsARunPastTheCache) {
  const Seq s{8, 16, 2, 8};
  const Cached c = make(s, 5);
  std::vector<float> out(size_t(s.T) * s.C);
  const CachedAttentionRun r{c.qkv.data(), out.data(), c.k.data(), c.v.data(), 2, 7};
  EXPECT_THROW(cached_attention({&r, 1}, s.NH, s.C / s.NH, 3 * s.C, s.C, s.capacity), Error);
}

}  // namespace
}  // namespace loom::kernels
