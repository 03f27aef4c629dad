// Text file -> GPT-2 token shards for training: out_dir/val_000000.bin holds the first
// round(val_fraction * n) tokens, out_dir/train_000000.bin the rest.
#pragma once

#include <cstddef>
#include <filesystem>
#include <string_view>

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

// What makes a text look like something other than text.
struct TextScan {
  size_t nul_bytes = 0;
  size_t invalid_utf8 = 0;  // bytes that start no valid UTF-8 sequence
  size_t first_nul = 0;     // offsets, meaningful when the count is non-zero
  size_t first_invalid = 0;
};
TextScan scan_text(std::string_view text);

// The whole file is one document, led by one <|endoftext|> as llm.c does. val_fraction
// must be in [0, 0.5]; creates out_dir. An empty file is an error; so is one that looks
// binary (a NUL byte, or more than 1% of its bytes invalid UTF-8) unless binary_ok, since
// GPT-2's byte-level BPE would tokenize an executable without a word. A little invalid
// UTF-8 (a stray Latin-1 byte) is tokenized with a warning on stderr.
PrepareStats prepare_corpus(const std::filesystem::path& text_file,
                            const std::filesystem::path& out_dir, double val_fraction,
                            const Gpt2Tokenizer& tokenizer, bool binary_ok = false);

}  // namespace loom
