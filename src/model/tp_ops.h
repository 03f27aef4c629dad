// Vocab-parallel pieces of the model (Megatron's VocabParallelEmbedding and
// VocabParallelCrossEntropy): tp rank r holds rows [r*Vl, (r+1)*Vl) of the padded
// vocabulary, Vl = Vp/tp. Pure computations on one rank's shard; the model moves the
// statistics between ranks (one all-gather of 3 floats per token), so the full logits
// are never gathered.
#pragma once

#include <cstddef>
#include <cstdint>

namespace loom {

// out (N,C): row i = wte_local[tok - v0] if tokens[i] is in [v0, v0 + Vl), else zeros.
void vocab_embedding_lookup(float* out, const int32_t* tokens, const float* wte_local, int N,
                            int C, int v0, int Vl);
// dwte_local[tok - v0] += dout[i] for the owned tokens (deterministic: rows in order).
void vocab_embedding_backward(float* dwte_local, const float* dout, const int32_t* tokens,
                              int N, int C, int v0, int Vl);
// out[i] += wpe[(row0 + i) % T] for i in [0, n): the position embedding of token rows
// row0.. of a (B,T) batch. dwpe[(row0 + i) % T] += dout[i] (deterministic).
void add_positions(float* out, const float* wpe, int n, int row0, int T, int C);
void positions_backward(float* dwpe, const float* dout, int n, int row0, int T, int C);

}  // namespace loom
