#include "data/prepare.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <span>
#include <vector>

#include "core/check.h"
#include "core/file_io.h"
#include "core/timer.h"
#include "data/shard.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

// Length of the valid UTF-8 sequence at s[i], or 0 if none starts there (RFC 3629: no
// overlong forms, no surrogates, nothing above U+10FFFF).
size_t utf8_sequence(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return uint8_t(s[k]); };
  const uint8_t c = b(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  uint8_t lo = 0x80, hi = 0xBF;  // range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size() || b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k) {
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  }
  return n;
}

void check_is_text(const fs::path& file, std::string_view text, bool binary_ok) {
  LOOM_REQUIRE(!text.empty(), "'{}' is empty: there is nothing to tokenize", file.string());
  const TextScan scan = scan_text(text);
  const bool binary = scan.nul_bytes > 0 || scan.invalid_utf8 * 100 > text.size();
  if (binary && !binary_ok) {
    const std::string why =
        scan.nul_bytes > 0
            ? fmt::format("{} NUL bytes, the first at byte {}", scan.nul_bytes, scan.first_nul)
            : fmt::format("{} of its {} bytes are not UTF-8, the first at byte {}",
                          scan.invalid_utf8, text.size(), scan.first_invalid);
    throw InputError(fmt::format(
        "'{}' does not look like text ({}); pass --binary-ok to tokenize it anyway",
        file.string(), why));
  }
  if (scan.invalid_utf8 > 0 && !binary) {
    fmt::print(stderr, "warning: '{}': {} bytes are not UTF-8 (the first at byte {}); they are "
               "tokenized as bytes\n", file.string(), scan.invalid_utf8, scan.first_invalid);
  }
}

}  // namespace

TextScan scan_text(std::string_view text) {
  TextScan scan;
  for (size_t i = 0; i < text.size();) {
    if (text[i] == '\0' && scan.nul_bytes++ == 0) scan.first_nul = i;
    const size_t n = utf8_sequence(text, i);
    if (n == 0 && scan.invalid_utf8++ == 0) scan.first_invalid = i;
    i += n == 0 ? 1 : n;
  }
  return scan;
}

PrepareStats prepare_corpus(const fs::path& text_file, const fs::path& out_dir,
                            double val_fraction, const Gpt2Tokenizer& tokenizer,
                            bool binary_ok) {
  LOOM_REQUIRE(val_fraction >= 0.0 && val_fraction <= 0.5,
               "--val-fraction is {}, expected a value in [0, 0.5]", val_fraction);
  Timer total;
  PrepareStats stats;
  const std::string text = read_file_text(text_file);
  check_is_text(text_file, text, binary_ok);
  stats.text_bytes = text.size();

  Timer encode_timer;
  std::vector<int32_t> ids = tokenizer.encode(text);
  stats.encode_seconds = encode_timer.seconds();

  // GPT-2 ids are < 50257, so they fit the shards' uint16.
  std::vector<uint16_t> tokens;
  tokens.reserve(ids.size() + 1);
  tokens.push_back(uint16_t(Gpt2Tokenizer::kEndOfText));
  for (int32_t id : ids) tokens.push_back(uint16_t(id));

  const auto n_val = size_t(std::llround(val_fraction * double(tokens.size())));
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  LOOM_REQUIRE(!ec && fs::is_directory(out_dir), "cannot create output folder '{}': {}",
               out_dir.string(), ec.message());
  stats.val_path = out_dir / "val_000000.bin";
  stats.train_path = out_dir / "train_000000.bin";
  std::span<const uint16_t> all(tokens);
  write_shard(stats.val_path, all.first(n_val));
  write_shard(stats.train_path, all.subspan(n_val));

  stats.val_tokens = n_val;
  stats.train_tokens = tokens.size() - n_val;
  stats.val_bytes = kShardHeaderBytes + 2 * stats.val_tokens;
  stats.train_bytes = kShardHeaderBytes + 2 * stats.train_tokens;
  stats.total_seconds = total.seconds();
  return stats;
}

}  // namespace loom
