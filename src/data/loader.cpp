#include "data/loader.h"

#include "core/check.h"
#include "data/shard.h"

namespace loom {

TokenLoader::TokenLoader(const std::filesystem::path& shard, int B, int T)
    : TokenLoader(read_shard(shard), B, T, fmt::format("'{}'", shard.string())) {}

TokenLoader::TokenLoader(std::vector<uint16_t> tokens, int B, int T, std::string name)
    : tokens_(std::move(tokens)), B_(B), T_(T) {
  LOOM_REQUIRE(B > 0 && T > 0, "batch size B = {} and sequence length T = {} must be positive",
               B, T);
  const size_t bt = size_t(B) * size_t(T);
  LOOM_REQUIRE(tokens_.size() >= bt + 1, "shard {} has {} tokens, fewer than B*T+1 = {}*{}+1 "
               "= {}: use a larger corpus (or a larger --val-fraction for the val shard) or a "
               "smaller B or T", name, tokens_.size(), B, T, bt + 1);
  batches_ = (tokens_.size() - 1) / bt;
}

size_t TokenLoader::offset(uint64_t k) const {
  return size_t(k % batches_) * size_t(B_) * size_t(T_);
}

void TokenLoader::load(uint64_t k, int32_t* inputs, int32_t* targets) const {
  load_rows(k, 0, B_, inputs, targets);
}

void TokenLoader::load_rows(uint64_t k, int row_begin, int row_count, int32_t* inputs,
                            int32_t* targets) const {
  LOOM_CHECK(row_begin >= 0 && row_count >= 0 && row_begin + row_count <= B_,
             "rows [{}, {}) are outside the batch of B = {} rows", row_begin,
             row_begin + row_count, B_);
  const uint16_t* src = tokens_.data() + offset(k) + size_t(row_begin) * size_t(T_);
  const size_t n = size_t(row_count) * size_t(T_);
  for (size_t i = 0; i < n; ++i) {
    inputs[i] = src[i];
    targets[i] = src[i + 1];
  }
}

}  // namespace loom
