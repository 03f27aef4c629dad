// Text file -> GPT-2 token shards for training: out_dir/val_000000.bin holds the first
// round(val_fraction * n) tokens, out_dir/train_000000.bin the rest.
#pragma once

#include <cstddef>
#include <filesystem>

#include "data/tokenizer.h"

namespace loom {

struct PrepareStats {
  std::filesystem::path train_path, val_path;
  size_t text_bytes = 0;     // size of the input text
  size_t train_tokens = 0;
  size_t val_tokens = 0;
  size_t train_bytes = 0;    // file sizes of the shards, header included
  size_t val_bytes = 0;
  double encode_seconds = 0;  // tokenizer time alone (one thread)
  double total_seconds = 0;   // read + encode + write
};

// The whole file is one document, led by one <|endoftext|> as llm.c does. val_fraction
// must be in [0, 0.5]; creates out_dir.
PrepareStats prepare_corpus(const std::filesystem::path& text_file,
                            const std::filesystem::path& out_dir, double val_fraction,
                            const Gpt2Tokenizer& tokenizer);

}  // namespace loom
