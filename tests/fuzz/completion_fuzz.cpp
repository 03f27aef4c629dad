// POST /v1/completions bodies through loom serve's parser: any bytes give a request or an
// ApiError (the 4xx a client sees); anything else (another exception, a crash, a sanitizer
// report) is a finding. A request that parses fits the context and the vocabulary.
#include <cstdlib>
#include <memory>
#include <string>

#include "data/tokenizer.h"
#include "serve/protocol.h"

namespace {
std::unique_ptr<loom::Gpt2Tokenizer> tokenizer;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizer = std::make_unique<loom::Gpt2Tokenizer>(
      loom::Gpt2Tokenizer::load(loom::default_tokenizer_dir()));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  const loom::ApiContext ctx{"loom", 50257, 1024};
  try {
    const loom::CompletionRequest c = loom::parse_completion(body, *tokenizer, ctx);
    const auto& r = c.request;
    if (r.prompt.empty() || r.prompt.size() + size_t(r.sample.max_tokens) > 1024) std::abort();
    for (int32_t t : r.prompt)
      if (t < 0 || t >= 50257) std::abort();
    loom::validate(r.sample);  // what the engine checks again: must pass
  } catch (const loom::ApiError& e) {
    if (e.status < 400 || e.status > 499) std::abort();
    (void)loom::error_body(e);
  }
  return 0;
}
