// Helpers shared by the data layer's tests.
#pragma once

#include "data/tokenizer.h"
#include "scratch.h"

namespace loom::testing {

// The real GPT-2 tokenizer, loaded once. If its files are missing, load() throws an
// InputError saying how to fetch them and every test that needs it fails (never skips).
inline const Gpt2Tokenizer& gpt2() {
  static const Gpt2Tokenizer tokenizer = Gpt2Tokenizer::load(default_tokenizer_dir());
  return tokenizer;
}

// A fresh, empty folder, removed when the object dies (or the test ends).
using TempDir = ::loom::test::ScratchDir;

}  // namespace loom::testing
