#include "model/tp_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <omp.h>
#include <limits>

namespace loom {

void vocab_embedding_lookup(float* out, const int32_t* tokens, const float* wte_local, int N,
                            int C, int v0, int Vl) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    float* o = out + size_t(i) * C;
    const int t = tokens[i] - v0;
    if (t >= 0 && t < Vl)
      std::memcpy(o, wte_local + size_t(t) * C, size_t(C) * sizeof(float));
    else
      std::fill(o, o + C, 0.0f);
  }
}

void vocab_embedding_backward(float* dwte_local, const float* dout, const int32_t* tokens,
                              int N, int C, int v0, int Vl) {
  // Threads own channels; rows are added in order, so the result is deterministic.
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int c0 = int(int64_t(C) * id / nt), c1 = int(int64_t(C) * (id + 1) / nt);
    for (int i = 0; i < N; ++i) {
      const int t = tokens[i] - v0;
      if (t < 0 || t >= Vl) continue;
      float* d = dwte_local + size_t(t) * C;
      const float* g = dout + size_t(i) * C;
      for (int c = c0; c < c1; ++c) d[c] += g[c];
    }
  }
}

void add_positions(float* out, const float* wpe, int n, int row0, int T, int C) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < n; ++i) {
    const float* p = wpe + size_t((row0 + i) % T) * C;
    float* o = out + size_t(i) * C;
    for (int c = 0; c < C; ++c) o[c] += p[c];
  }
}

void positions_backward(float* dwpe, const float* dout, int n, int row0, int T, int C) {
#pragma omp parallel
  {
    const int nt = omp_get_num_threads(), id = omp_get_thread_num();
    const int c0 = int(int64_t(C) * id / nt), c1 = int(int64_t(C) * (id + 1) / nt);
    for (int i = 0; i < n; ++i) {
      float* d = dwpe + size_t((row0 + i) % T) * C;
      const float* g = dout + size_t(i) * C;
      for (int c = c0; c < c1; ++c) d[c] += g[c];
    }
  }
}

void vocab_ce_local_stats(float* stats, const float* logits, const int32_t* targets, int N,
                          int Vl, int v0, int V) {
  const int real = std::clamp(V - v0, 0, Vl);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const float* x = logits + size_t(i) * Vl;
    float m = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < real; ++j) m = std::max(m, x[j]);
    double s = 0.0;
    for (int j = 0; j < real; ++j) s += std::exp(double(x[j] - m));
    const int t = targets ? targets[i] - v0 : -1;
    float* st = stats + size_t(i) * 3;
    st[0] = m;
    st[1] = float(s);
    st[2] = t >= 0 && t < real ? x[t] : 0.0f;
  }
}

void vocab_ce_finish(float* losses, float* logits, const float* all_stats, int tp,
                     const int32_t* targets, int N, int Vl, int v0, int V, float dloss) {
  const int real = std::clamp(V - v0, 0, Vl);
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    float M = -std::numeric_limits<float>::infinity();
    for (int q = 0; q < tp; ++q) M = std::max(M, all_stats[(size_t(q) * N + i) * 3]);
    double S = 0.0, tgt = 0.0;
    for (int q = 0; q < tp; ++q) {
      const float* st = all_stats + (size_t(q) * N + i) * 3;
      if (st[1] > 0) S += double(st[1]) * std::exp(double(st[0] - M));
      tgt += st[2];
    }
    if (losses) losses[i] = float(std::log(S) + double(M) - tgt);
    if (dloss <= 0) continue;
    float* x = logits + size_t(i) * Vl;
    const float inv = float(1.0 / S);
    const int t = targets[i] - v0;
    for (int j = 0; j < real; ++j) {
      const float p = std::exp(x[j] - M) * inv;
      x[j] = (p - (j == t ? 1.0f : 0.0f)) * dloss;
    }
    std::fill(x + real, x + Vl, 0.0f);
  }
}

}  // namespace loom
