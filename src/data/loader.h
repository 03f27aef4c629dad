// Micro-batches from one token shard, addressed by index instead of by a cursor, so a
// resumed run or another data-parallel rank can compute any batch without replaying.
// Order (llm.c's): micro-batch k reads the B*T+1 tokens at offset (k mod nb) * B*T with
// nb = (ntok - 1) / (B*T) the number of whole batches that fit; after the last whole
// batch the next starts again at offset 0 (the tail that does not fill a batch is unused).
// Rows: row b of micro-batch k is tokens [off + b*T, off + b*T + T], inputs the first T,
// targets the last T. Data-parallel ranks take disjoint row slices of the same batch.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace loom {

class TokenLoader {
 public:
  // Reads the shard; throws InputError if it holds fewer than B*T+1 tokens.
  TokenLoader(const std::filesystem::path& shard, int B, int T);
  // From tokens in memory; `name` is used in messages.
  TokenLoader(std::vector<uint16_t> tokens, int B, int T, std::string name);

  // inputs, targets: (B, T) each.
  void load(uint64_t k, int32_t* inputs, int32_t* targets) const;
  // Rows [row_begin, row_begin + row_count) of micro-batch k; inputs, targets:
  // (row_count, T) each, row 0 holding batch row row_begin.
  void load_rows(uint64_t k, int row_begin, int row_count, int32_t* inputs,
                 int32_t* targets) const;

  size_t num_tokens() const { return tokens_.size(); }
  uint64_t batches_per_epoch() const { return batches_; }
  int batch_size() const { return B_; }
  int seq_len() const { return T_; }
  // Offset of micro-batch k's first token in the shard.
  size_t offset(uint64_t k) const;

 private:
  std::vector<uint16_t> tokens_;  // (ntok,)
  int B_, T_;
  uint64_t batches_;  // nb = (ntok - 1) / (B*T)
};

}  // namespace loom
