// Token shards: llm.c's layout, round trips, and every way a file can be wrong.
#include <gtest/gtest.h>

#include <array>
#include <fstream>
#include <random>

#include "core/check.h"
#include "data/shard.h"
#include "test_util.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

std::vector<uint16_t> random_tokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint16_t> tokens(n);
  for (uint16_t& t : tokens) t = uint16_t(rng());
  return tokens;
}

std::string read_error(const fs::path& path) {
  try {
    read_shard(path);
  } catch (const InputError& e) {
    return e.what();
  }
  ADD_FAILURE() << "reading '" << path << "' did not throw InputError";
  return "";
}

// Overwrites header int `index` of the shard at `path`.
void poke_header(const fs::path& path, int index, int32_t value) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(index * 4);
  f.write(reinterpret_cast<const char*>(&value), 4);
}

TEST(Shard, RoundTrips) {
  TempDir tmp("shard_rt");
  for (size_t n : {size_t(0), size_t(1), size_t(12345)}) {
    std::vector<uint16_t> tokens = random_tokens(n, uint32_t(n));
    if (n > 2) tokens[0] = 0, tokens[1] = 65535;
    fs::path path = tmp.path() / fmt::format("s{}.bin", n);
    write_shard(path, tokens);
    EXPECT_EQ(fs::file_size(path), 1024 + 2 * n);
    EXPECT_EQ(read_shard(path), tokens);
  }
}

TEST(Shard, HeaderIsLlmcs) {
  TempDir tmp("shard_header");
  fs::path path = tmp.path() / "s.bin";
  write_shard(path, std::vector<uint16_t>{7, 50256, 9});
  std::ifstream in(path, std::ios::binary);
  std::array<int32_t, 256> header{};
  in.read(reinterpret_cast<char*>(header.data()), 1024);
  EXPECT_EQ(header[0], 20240520);
  EXPECT_EQ(header[1], 1);
  EXPECT_EQ(header[2], 3);
  for (int i = 3; i < 256; ++i) ASSERT_EQ(header[size_t(i)], 0) << "header int " << i;
  std::array<uint16_t, 3> body{};
  in.read(reinterpret_cast<char*>(body.data()), 6);
  EXPECT_EQ(body, (std::array<uint16_t, 3>{7, 50256, 9}));
  // No temporary file is left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator()), 1);
}

TEST(Shard, TruncatedIsRejected) {
  TempDir tmp("shard_trunc");
  fs::path path = tmp.path() / "s.bin";
  write_shard(path, random_tokens(100, 1));
  fs::resize_file(path, 1024 + 199);
  std::string msg = read_error(path);
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("truncated"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected 1224 bytes, found 1223"), std::string::npos) << msg;

  fs::resize_file(path, 100);
  msg = read_error(path);
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("1024-byte header"), std::string::npos) << msg;
}

TEST(Shard, OversizedIsRejected) {
  TempDir tmp("shard_over");
  fs::path path = tmp.path() / "s.bin";
  write_shard(path, random_tokens(100, 2));
  fs::resize_file(path, 1024 + 202);
  std::string msg = read_error(path);
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("oversized"), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected 1224 bytes, found 1226"), std::string::npos) << msg;
}

TEST(Shard, BadMagicIsRejected) {
  TempDir tmp("shard_magic");
  fs::path path = tmp.path() / "s.bin";
  write_shard(path, random_tokens(10, 3));
  poke_header(path, 0, 12345);
  std::string msg = read_error(path);
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("expected magic 20240520, found 12345"), std::string::npos) << msg;
}

TEST(Shard, BadVersionIsRejected) {
  TempDir tmp("shard_version");
  fs::path path = tmp.path() / "s.bin";
  write_shard(path, random_tokens(10, 4));
  poke_header(path, 1, 2);
  std::string msg = read_error(path);
  EXPECT_NE(msg.find(path.string()), std::string::npos) << msg;
  EXPECT_NE(msg.find("version 2, expected 1"), std::string::npos) << msg;

  poke_header(path, 1, 1);
  poke_header(path, 2, -5);
  msg = read_error(path);
  EXPECT_NE(msg.find("negative token count -5"), std::string::npos) << msg;
}

TEST(Shard, MissingFileIsNamed) {
  TempDir tmp("shard_missing");
  std::string msg = read_error(tmp.path() / "absent.bin");
  EXPECT_NE(msg.find("absent.bin"), std::string::npos) << msg;
}

}  // namespace
}  // namespace loom
