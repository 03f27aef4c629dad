// GPT-2's byte-level BPE on arbitrary bytes: encode never fails and never yields
// <|endoftext|>, every id is in range, and decode(encode(x)) == x, byte for byte.
#include <cstdlib>
#include <memory>
#include <string_view>

#include "data/tokenizer.h"
#include "fuzz_util.h"

namespace {
std::unique_ptr<loom::Gpt2Tokenizer> tokenizer;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizer = std::make_unique<loom::Gpt2Tokenizer>(
      loom::Gpt2Tokenizer::load(loom::default_tokenizer_dir()));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = tokenizer->encode(text);
  for (int32_t id : ids)
    if (id < 0 || id >= loom::Gpt2Tokenizer::kEndOfText) std::abort();
  if (tokenizer->decode(ids) != text) std::abort();
  return 0;
}
