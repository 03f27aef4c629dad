#include "model/tp_ops.h"

#include <omp.h>

#include <algorithm>
#include <cstring>

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

}  // namespace loom
