// Choosing the next token from logits: greedy, temperature, top-k and top-p (nucleus), with
// a seeded counter-based random stream per request, so a request's tokens depend only on its
// own logits, seed and position in its output, never on what else shares the batch.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace loom {

struct SampleOptions {
  int max_tokens = 16;    // tokens to generate at most
  float temperature = 1;  // softmax temperature; 0 = greedy (argmax)
  int top_k = 0;          // sample among the k likeliest; 0 = the whole vocabulary
  float top_p = 1;        // then among the likeliest whose probabilities reach top_p, in (0, 1]
  uint64_t seed = 42;     // the request's random stream
  std::vector<std::string> stop;  // generation ends before the first of these in its text
  bool stop_at_end_of_text = true;  // and at <|endoftext|>
};

// InputError naming the option and its range: temperature < 0 or not finite, top_k < 0,
// top_p outside (0, 1] or NaN, max_tokens < 0, an empty stop string.
void validate(const SampleOptions& opt);

// The token for draw `index` (the request's `index`-th generated token) from logits over a
// vocabulary of V entries.
int32_t sample_token(const float* logits, int V, const SampleOptions& opt, uint64_t index);

}  // namespace loom
