// GPT-2 family hyper-parameters.
#pragma once

#include <cstdint>

namespace loom {

struct GptConfig {
  int n_layer = 12;      // L
  int n_head = 12;       // NH
  int n_embd = 768;      // C
  int block_size = 1024; // maxT: rows of the position embedding
  int vocab_size = 50257;// V: real vocabulary
  // Vp: V rounded up to a multiple of 128 (llm.c), so the lm_head GEMM has friendly shapes,
  // and, under tensor parallelism, to a multiple of lcm(128, tp) so every tp rank holds
  // Vp/tp rows (the same Vp for every power of two up to 128). Padded rows of wte are zero
  // and never predicted: softmax runs over [0, V) only.
  int padded_vocab(int tp = 1) const {
    int a = 128, b = tp;
    while (b) { const int t = a % b; a = b; b = t; }
    const int mult = 128 / a * tp;  // lcm(128, tp)
    return (vocab_size + mult - 1) / mult * mult;
  }
  int head_size() const { return n_embd / n_head; }
  // Throws InputError on an inconsistent config (C % NH, sizes < 1).
  void validate() const;
};

}  // namespace loom
