// Naive reference kernels for tests: the textbook loops, no blocking, no threads,
// templated on the scalar type so that tests can run them in double (for finite
// differences and tight comparisons). Same shapes and accumulate/overwrite conventions as
// kernels/kernels.h.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace loom::kernels::ref {

// Row-major C (M,N) = alpha * op(A) @ op(B) + beta * C, products summed in double.
template <class T>
void gemm(bool trans_a, bool trans_b, int M, int N, int K, T alpha, const T* A, int lda, const T* B,
          int ldb, T beta, T* C, int ldc) {
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int k = 0; k < K; ++k) {
        double a = trans_a ? A[size_t(k) * lda + i] : A[size_t(i) * lda + k];
        double b = trans_b ? B[size_t(j) * ldb + k] : B[size_t(k) * ldb + j];
        acc += a * b;
      }
      T& c = C[size_t(i) * ldc + j];
      c = beta == T(0) ? T(alpha * acc) : T(alpha * acc + double(beta) * c);
    }
}

template <class T>
void encoder_forward(T* out, const int32_t* inp, const T* wte, const T* wpe, int B, int T_, int C) {
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T_; ++t)
      for (int c = 0; c < C; ++c)
        out[(size_t(b) * T_ + t) * C + c] =
            wte[size_t(inp[b * T_ + t]) * C + c] + wpe[size_t(t) * C + c];
}

template <class T>
void encoder_backward(T* dwte, T* dwpe, const T* dout, const int32_t* inp, int B, int T_, int C) {
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < T_; ++t)
      for (int c = 0; c < C; ++c) {
        T d = dout[(size_t(b) * T_ + t) * C + c];
        dwte[size_t(inp[b * T_ + t]) * C + c] += d;
        dwpe[size_t(t) * C + c] += d;
      }
}

template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* bias, int N,
                       int C) {
  for (int n = 0; n < N; ++n) {
    const T* x = inp + size_t(n) * C;
    double m = 0.0, var = 0.0;
    for (int c = 0; c < C; ++c) m += x[c];
    m /= C;
    for (int c = 0; c < C; ++c) var += (x[c] - m) * (x[c] - m);
    var /= C;
    double r = 1.0 / std::sqrt(var + 1e-5);
    for (int c = 0; c < C; ++c) out[size_t(n) * C + c] = T((x[c] - m) * r * w[c] + bias[c]);
    mean[n] = T(m);
    rstd[n] = T(r);
  }
}

// dinp, dweight, dbias accumulate.
template <class T>
void layernorm_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* w,
                        const T* mean, const T* rstd, int N, int C) {
  for (int n = 0; n < N; ++n) {
    const T* x = inp + size_t(n) * C;
    const T* dy = dout + size_t(n) * C;
    double dnorm_mean = 0.0, dnorm_norm_mean = 0.0;
    for (int c = 0; c < C; ++c) {
      double norm = (double(x[c]) - mean[n]) * rstd[n];
      dnorm_mean += double(w[c]) * dy[c];
      dnorm_norm_mean += double(w[c]) * dy[c] * norm;
    }
    dnorm_mean /= C;
    dnorm_norm_mean /= C;
    for (int c = 0; c < C; ++c) {
      double norm = (double(x[c]) - mean[n]) * rstd[n];
      dbias[c] += dy[c];
      dweight[c] += T(norm * dy[c]);
      double d = double(w[c]) * dy[c] - dnorm_mean - norm * dnorm_norm_mean;
      dinp[size_t(n) * C + c] += T(d * rstd[n]);
    }
  }
}

// out (N,OC) = inp (N,C) @ w (OC,C)^T + bias.
template <class T>
void matmul_forward(T* out, const T* inp, const T* w, const T* bias, int N, int C, int OC) {
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double acc = bias ? double(bias[o]) : 0.0;
      for (int c = 0; c < C; ++c) acc += double(inp[size_t(n) * C + c]) * w[size_t(o) * C + c];
      out[size_t(n) * OC + o] = T(acc);
    }
}

// dinp overwritten (if not null), dweight and dbias accumulate.
template <class T>
void matmul_backward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* w, int N,
                     int C, int OC) {
  if (dinp)
    for (int n = 0; n < N; ++n)
      for (int c = 0; c < C; ++c) {
        double acc = 0.0;
        for (int o = 0; o < OC; ++o) acc += double(dout[size_t(n) * OC + o]) * w[size_t(o) * C + c];
        dinp[size_t(n) * C + c] = T(acc);
      }
  for (int o = 0; o < OC; ++o) {
    for (int c = 0; c < C; ++c) {
      double acc = 0.0;
      for (int n = 0; n < N; ++n) acc += double(dout[size_t(n) * OC + o]) * inp[size_t(n) * C + c];
      dweight[size_t(o) * C + c] += T(acc);
    }
    if (dbias) {
      double acc = 0.0;
      for (int n = 0; n < N; ++n) acc += dout[size_t(n) * OC + o];
      dbias[o] += T(acc);
    }
  }
}

// GELU, tanh approximation, exactly as torch writes it.
template <class T>
T gelu(T x) {
  const double k = std::sqrt(2.0 / M_PI);
  double xd = x;
  return T(0.5 * xd * (1.0 + std::tanh(k * (xd + 0.044715 * xd * xd * xd))));
}

template <class T>
T gelu_grad(T x) {
  const double k = std::sqrt(2.0 / M_PI);
  double xd = x;
  double u = k * (xd + 0.044715 * xd * xd * xd);
  double th = std::tanh(u);
  double sech2 = 1.0 - th * th;
  return T(0.5 * (1.0 + th) + 0.5 * xd * sech2 * k * (1.0 + 3.0 * 0.044715 * xd * xd));
}

// att (B,NH,T,T) with zeros above the diagonal; out (B,T,C); qkv (B,T,3C).
template <class T>
void attention_forward(T* out, T* att, const T* qkv, int B, int T_, int C, int NH) {
  const int HS = C / NH, C3 = 3 * C;
  const double scale = 1.0 / std::sqrt(double(HS));
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < T_; ++t) {
        const T* q = qkv + (size_t(b) * T_ + t) * C3 + h * HS;
        T* a = att + ((size_t(b) * NH + h) * T_ + t) * T_;
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (int t2 = 0; t2 <= t; ++t2) {
          const T* k = qkv + (size_t(b) * T_ + t2) * C3 + C + h * HS;
          double dot = 0.0;
          for (int i = 0; i < HS; ++i) dot += double(q[i]) * k[i];
          s[t2] = dot * scale;
          mx = std::max(mx, s[t2]);
        }
        double sum = 0.0;
        for (int t2 = 0; t2 <= t; ++t2) sum += (s[t2] = std::exp(s[t2] - mx));
        for (int t2 = 0; t2 < T_; ++t2) a[t2] = t2 <= t ? T(s[t2] / sum) : T(0);
        for (int i = 0; i < HS; ++i) {
          double acc = 0.0;
          for (int t2 = 0; t2 <= t; ++t2)
            acc += double(a[t2]) * qkv[(size_t(b) * T_ + t2) * C3 + 2 * C + h * HS + i];
          out[(size_t(b) * T_ + t) * C + h * HS + i] = T(acc);
        }
      }
}

// dqkv (B,T,3C) overwritten.
template <class T>
void attention_backward(T* dqkv, const T* dout, const T* qkv, const T* att, int B, int T_, int C,
                        int NH) {
  const int HS = C / NH, C3 = 3 * C;
  const double scale = 1.0 / std::sqrt(double(HS));
  for (size_t i = 0; i < size_t(B) * T_ * C3; ++i) dqkv[i] = T(0);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < NH; ++h)
      for (int t = 0; t < T_; ++t) {
        const size_t row = size_t(b) * T_;
        const T* a = att + ((size_t(b) * NH + h) * T_ + t) * T_;
        const T* dy = dout + (row + t) * C + h * HS;
        std::vector<double> datt(t + 1);
        double dot = 0.0;
        for (int t2 = 0; t2 <= t; ++t2) {
          const T* v = qkv + (row + t2) * C3 + 2 * C + h * HS;
          T* dv = dqkv + (row + t2) * C3 + 2 * C + h * HS;
          double d = 0.0;
          for (int i = 0; i < HS; ++i) d += double(dy[i]) * v[i], dv[i] += T(double(a[t2]) * dy[i]);
          datt[t2] = d;
          dot += d * a[t2];
        }
        const T* q = qkv + (row + t) * C3 + h * HS;
        T* dq = dqkv + (row + t) * C3 + h * HS;
        for (int t2 = 0; t2 <= t; ++t2) {
          double dpre = double(a[t2]) * (datt[t2] - dot) * scale;
          const T* k = qkv + (row + t2) * C3 + C + h * HS;
          T* dk = dqkv + (row + t2) * C3 + C + h * HS;
          for (int i = 0; i < HS; ++i) dq[i] += T(dpre * k[i]), dk[i] += T(dpre * q[i]);
        }
      }
}

// losses (N); if dlogits is not null it gets dloss * (softmax - onehot), 0 for cols >= V.
template <class T>
void crossentropy(T* losses, T* dlogits, const T* logits, const int32_t* targets, int N, int V,
                  int Vp, double dloss) {
  for (int n = 0; n < N; ++n) {
    const T* x = logits + size_t(n) * Vp;
    double mx = -1e300, sum = 0.0;
    for (int v = 0; v < V; ++v) mx = std::max(mx, double(x[v]));
    for (int v = 0; v < V; ++v) sum += std::exp(double(x[v]) - mx);
    losses[n] = T(std::log(sum) + mx - x[targets[n]]);
    if (!dlogits) continue;
    for (int v = 0; v < Vp; ++v) {
      double p = v < V ? std::exp(double(x[v]) - mx) / sum : 0.0;
      dlogits[size_t(n) * Vp + v] = T(dloss * (p - (v == targets[n] ? 1.0 : 0.0)));
    }
  }
}

// AdamW as the formula in kernels.h, all in double.
inline void adamw(double* p, const double* g, double* m, double* v, size_t n, double lr,
                  double beta1, double beta2, double eps, double wd, int t, double grad_scale) {
  const double bc1 = 1.0 - std::pow(beta1, t), bc2 = 1.0 - std::pow(beta2, t);
  for (size_t i = 0; i < n; ++i) {
    double gi = g[i] * grad_scale;
    p[i] *= 1.0 - lr * wd;
    m[i] = beta1 * m[i] + (1.0 - beta1) * gi;
    v[i] = beta2 * v[i] + (1.0 - beta2) * gi * gi;
    p[i] -= (lr / bc1) * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
  }
}

}  // namespace loom::kernels::ref
