// prepare_corpus: text -> val/train shards that together are <|endoftext|> + encode(text).
#include <gtest/gtest.h>

#include <fstream>

#include "core/check.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "test_util.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using testing::gpt2;
using testing::TempDir;

const char* kText =
    "In the beginning God created the heaven and the earth.\n"
    "And the earth was without form, and void; and darkness was upon the face of the deep.\n"
    "And God said, Let there be light: and there was light.\n";

fs::path write_corpus(const TempDir& tmp, const std::string& text) {
  fs::path path = tmp.path() / "corpus.txt";
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

TEST(Prepare, WritesValThenTrain) {
  TempDir tmp("prepare");
  fs::path out = tmp.path() / "data" / "kjv";  // created, parents too
  PrepareStats s = prepare_corpus(write_corpus(tmp, kText), out, 0.1, gpt2());

  std::vector<int32_t> ids = gpt2().encode(kText);
  std::vector<uint16_t> expected = {uint16_t(Gpt2Tokenizer::kEndOfText)};
  expected.insert(expected.end(), ids.begin(), ids.end());
  const size_t n_val = size_t(std::llround(0.1 * double(expected.size())));
  ASSERT_GT(n_val, 0u);

  EXPECT_EQ(s.val_path, out / "val_000000.bin");
  EXPECT_EQ(s.train_path, out / "train_000000.bin");
  EXPECT_EQ(s.text_bytes, std::string(kText).size());
  EXPECT_EQ(s.val_tokens, n_val);
  EXPECT_EQ(s.train_tokens, expected.size() - n_val);
  EXPECT_EQ(s.val_bytes, fs::file_size(s.val_path));
  EXPECT_EQ(s.train_bytes, fs::file_size(s.train_path));

  std::vector<uint16_t> val = read_shard(s.val_path);
  std::vector<uint16_t> train = read_shard(s.train_path);
  EXPECT_EQ(val, std::vector<uint16_t>(expected.begin(), expected.begin() + long(n_val)));
  EXPECT_EQ(train, std::vector<uint16_t>(expected.begin() + long(n_val), expected.end()));
  EXPECT_EQ(val.front(), Gpt2Tokenizer::kEndOfText);
}

TEST(Prepare, ZeroValFractionLeavesAnEmptyValShard) {
  TempDir tmp("prepare_zero");
  PrepareStats s = prepare_corpus(write_corpus(tmp, kText), tmp.path() / "out", 0.0, gpt2());
  EXPECT_EQ(s.val_tokens, 0u);
  EXPECT_TRUE(read_shard(s.val_path).empty());
  EXPECT_EQ(read_shard(s.train_path).size(), gpt2().encode(kText).size() + 1);
}

TEST(Prepare, RejectsBadValFraction) {
  TempDir tmp("prepare_bad");
  fs::path text = write_corpus(tmp, kText);
  for (double f : {-0.01, 0.51, 1.0}) {
    try {
      prepare_corpus(text, tmp.path() / "out", f, gpt2());
      ADD_FAILURE() << "val_fraction " << f << " was accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("[0, 0.5]"), std::string::npos) << e.what();
    }
  }
  EXPECT_FALSE(fs::exists(tmp.path() / "out"));
}

TEST(Prepare, MissingTextIsNamed) {
  TempDir tmp("prepare_missing");
  try {
    prepare_corpus(tmp.path() / "no_such.txt", tmp.path() / "out", 0.01, gpt2());
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("no_such.txt"), std::string::npos) << e.what();
  }
}

// The message of the InputError prepare_corpus throws for `text` ("" if none).
std::string prepare_error(const TempDir& tmp, const std::string& text, bool binary_ok = false) {
  try {
    prepare_corpus(write_corpus(tmp, text), tmp.path() / "out", 0.1, gpt2(), binary_ok);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Prepare, ScanTextFollowsRfc3629) {
  EXPECT_EQ(scan_text("plain ascii").invalid_utf8, 0u);
  EXPECT_EQ(scan_text("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80").invalid_utf8, 0u);
  EXPECT_EQ(scan_text("\xc0\xaf").invalid_utf8, 2u);          // overlong '/'
  EXPECT_EQ(scan_text("\xed\xa0\x80").invalid_utf8, 3u);      // a UTF-16 surrogate
  EXPECT_EQ(scan_text("\xf4\x90\x80\x80").invalid_utf8, 4u);  // above U+10FFFF
  const TextScan latin1 = scan_text("na\xefve");               // Latin-1 i-diaeresis
  EXPECT_EQ(latin1.invalid_utf8, 1u);
  EXPECT_EQ(latin1.first_invalid, 2u);
  const TextScan nul = scan_text(std::string("ab\0c", 4));
  EXPECT_EQ(nul.nul_bytes, 1u);
  EXPECT_EQ(nul.first_nul, 2u);
}

// Issue 11: an empty file wrote 1 token and exited 0; an executable or invalid UTF-8 was
// tokenized without a word.
TEST(Prepare, RejectsEmptyAndBinaryInput) {
  TempDir tmp("prepare_binary");
  EXPECT_NE(prepare_error(tmp, "").find("is empty"), std::string::npos);
  const std::string elf("\x7f" "ELF\x02\x01\x01\0\0\0", 10);
  const std::string e = prepare_error(tmp, elf);
  EXPECT_NE(e.find("corpus.txt' does not look like text (3 NUL bytes, the first at byte 7)"),
            std::string::npos) << e;
  EXPECT_NE(e.find("--binary-ok"), std::string::npos) << e;
  const std::string latin1(200, '\xe9');
  EXPECT_NE(prepare_error(tmp, latin1).find("200 of its 200 bytes are not UTF-8"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(tmp.path() / "out"));
  // --binary-ok tokenizes it; a stray Latin-1 byte in real text is only a warning.
  EXPECT_EQ(prepare_error(tmp, elf, true), "");
  EXPECT_EQ(prepare_error(tmp, std::string(kText) + "na\xefve\n"), "");
}

TEST(Prepare, DirectoryAsTextIsNamed) {
  TempDir tmp("prepare_dir");
  try {
    prepare_corpus(tmp.path(), tmp.path() / "out", 0.01, gpt2());
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("is a directory"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace loom
