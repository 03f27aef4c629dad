#include "data/shard.h"

#include <array>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>

#include "core/check.h"
#include "core/file_io.h"

namespace loom {
namespace fs = std::filesystem;

// The format is little endian and we write memory as is.
static_assert(std::endian::native == std::endian::little, "shards assume a little-endian host");

void write_shard(const fs::path& path, std::span<const uint16_t> tokens) {
  LOOM_REQUIRE(tokens.size() <= size_t(std::numeric_limits<int32_t>::max()),
               "cannot write '{}': {} tokens do not fit the shard header's int32 count",
               path.string(), tokens.size());
  std::array<int32_t, kShardHeaderInts> header{};
  header[0] = kShardMagic;
  header[1] = kShardVersion;
  header[2] = int32_t(tokens.size());
  AtomicFile file(path);
  file.write(header.data(), kShardHeaderBytes);
  file.write(tokens.data(), tokens.size_bytes());
  file.commit();
}

std::vector<uint16_t> read_shard(const fs::path& path) {
  std::error_code ec;
  const uintmax_t size = fs::file_size(path, ec);
  LOOM_REQUIRE(!ec, "cannot read token shard '{}': {}", path.string(), ec.message());
  std::ifstream in(path, std::ios::binary);
  LOOM_REQUIRE(in.good(), "cannot open token shard '{}': {}", path.string(),
               std::strerror(errno));
  LOOM_REQUIRE(size >= kShardHeaderBytes, "token shard '{}' is truncated: expected a {}-byte "
               "header, found a {}-byte file", path.string(), kShardHeaderBytes, size);

  std::array<int32_t, kShardHeaderInts> header{};
  in.read(reinterpret_cast<char*>(header.data()), kShardHeaderBytes);
  LOOM_REQUIRE(in.good(), "cannot read the header of token shard '{}'", path.string());
  LOOM_REQUIRE(header[0] == kShardMagic, "'{}' is not a token shard: expected magic {}, found "
               "{}", path.string(), kShardMagic, header[0]);
  LOOM_REQUIRE(header[1] == kShardVersion, "token shard '{}' has version {}, expected {}",
               path.string(), header[1], kShardVersion);
  LOOM_REQUIRE(header[2] >= 0, "token shard '{}' has a negative token count {}",
               path.string(), header[2]);

  const auto count = size_t(header[2]);
  const uintmax_t expected = kShardHeaderBytes + count * sizeof(uint16_t);
  LOOM_REQUIRE(size == expected, "token shard '{}' is {}: its header counts {} tokens, so "
               "expected {} bytes, found {}", path.string(),
               size < expected ? "truncated" : "oversized", count, expected, size);
  std::vector<uint16_t> tokens(count);
  in.read(reinterpret_cast<char*>(tokens.data()), std::streamsize(count * sizeof(uint16_t)));
  LOOM_REQUIRE(in.good() || count == 0, "cannot read the tokens of shard '{}'", path.string());
  return tokens;
}

}  // namespace loom
