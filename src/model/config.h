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
  // Vp: V rounded up to a multiple of 128 (llm.c), so the lm_head GEMM has friendly shapes.
  // Padded rows of wte are zero and never predicted: softmax runs over [0, V) only.
  int padded_vocab() const { return (vocab_size + 127) / 128 * 128; }
  int head_size() const { return n_embd / n_head; }
  // Throws InputError on an inconsistent config (C % NH, sizes < 1).
  void validate() const;
};

}  // namespace loom
