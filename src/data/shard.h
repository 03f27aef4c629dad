// Token shards in llm.c's format, so shards made by either tool load in both:
//   header: 256 int32, little endian: [0] magic 20240520, [1] version 1, [2] token count
//   body:   count uint16 tokens
#pragma once

#include <cstdint>
#include <filesystem>
#include <span>
#include <vector>

namespace loom {

inline constexpr int32_t kShardMagic = 20240520;
inline constexpr int32_t kShardVersion = 1;
inline constexpr size_t kShardHeaderInts = 256;
inline constexpr size_t kShardHeaderBytes = kShardHeaderInts * sizeof(int32_t);

// Writes atomically (temp file, fsync, rename): a crash leaves the old shard or the new.
void write_shard(const std::filesystem::path& path, std::span<const uint16_t> tokens);

// Validates magic, version and that the file holds exactly the tokens the header counts;
// throws InputError naming the file, what was expected and what was found.
std::vector<uint16_t> read_shard(const std::filesystem::path& path);

}  // namespace loom
