// Incremental inference over a KV cache: the model's forward for a batch of rows drawn from
// several sequences (slots), each row one token at its position in its sequence. Prefill
// is a slot's prompt rows in one call (GEMMs over all of them); a decode step is one row per
// live slot. Keys and values of every position are written to the cache once and read by
// the later positions' attention, so a token costs the same at position 1000 as at 10.
//
// Tensor-parallel over the grid's tp communicator as training is (Megatron's layout: heads
// and MLP columns split, row-parallel outputs all-reduced, vocab-parallel embedding and
// logits): each rank holds its slice of the weights and the keys and values of its heads
// only. Every rank returns the same full logits, so every rank samples the same tokens.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "comm/process_grid.h"
#include "core/buffer.h"
#include "core/dtype.h"
#include "kernels/kernels.h"
#include "model/gpt.h"

namespace loom {

// One token of one sequence: at position `pos` of slot `slot`, whose positions < pos are
// in the cache (from this call's earlier rows of the slot or from earlier calls).
struct DecodeRow {
  int slot = 0;
  int pos = 0;
  int32_t token = 0;
  bool logits = false;  // whether the caller wants the next-token logits after this row
};

// Keys and values of `slots` sequences of up to `capacity` positions for `layers` layers
// and this rank's `heads`, in `dtype` (fp32, or bf16: half the bytes a decode step reads):
// per (layer, slot, head) an (HS, capacity) block of keys (transposed: position t in
// column t) and a (capacity, HS) block of values, the layouts kernels::cached_attention
// reads down contiguous memory.
class KvCache {
 public:
  KvCache() = default;
  KvCache(int layers, int slots, int capacity, int heads, int head_size, DType dtype);
  std::byte* keys(int layer, int slot, int head) { return at(0, layer, slot, head); }
  std::byte* values(int layer, int slot, int head) { return at(1, layer, slot, head); }
  int capacity() const { return capacity_; }
  DType dtype() const { return dtype_; }
  size_t bytes() const { return buf_.bytes(); }
  // Bytes one position of one sequence takes on this rank (keys and values, all layers).
  size_t bytes_per_token() const {
    return 2 * size_t(layers_) * heads_ * hs_ * dtype_size(dtype_);
  }

 private:
  std::byte* at(int kv, int layer, int slot, int head);
  Buffer buf_;
  DType dtype_ = DType::kF32;
  int layers_ = 0, slots_ = 0, capacity_ = 0, heads_ = 0, hs_ = 0;
};

class Decoder {
 public:
  // `model`: the weights (this rank's tp slice of the whole model over `grid`'s tp
  // communicator; pp must be 1). Both must outlive the decoder. `precision`: the GEMMs' operands (fp32, or bf16/fp16 with
  // the weights rounded once here and fp32 accumulation, as training's autocast); bf16
  // also keeps the KV cache in bf16 (as autocast's q, k, v are), fp16 keeps it in fp32.
  // `slots` sequences of up to `capacity` positions (<= block_size); one forward() takes
  // at most `max_rows` rows.
  Decoder(const Gpt& model, const ProcessGrid& grid, DType precision, int slots, int capacity,
          int max_rows);

  // Runs `rows` (at most max_rows; a slot's rows in increasing, consecutive positions,
  // each below capacity) and writes the logits of the rows that want them, in row order,
  // to `logits`: (wanted rows, vocab_size()) over the real vocabulary. Every tp rank must
  // call it with the same rows.
  void forward(std::span<const DecodeRow> rows, std::vector<float>& logits);

  const GptConfig& config() const { return model_.config(); }
  int vocab_size() const { return model_.config().vocab_size; }
  int slots() const { return slots_; }
  int capacity() const { return cache_.capacity(); }
  int max_rows() const { return max_rows_; }
  DType precision() const { return precision_; }
  // This rank's KV cache: bytes per position of a sequence, and in all.
  size_t kv_bytes_per_token() const { return cache_.bytes_per_token(); }
  size_t kv_bytes() const { return cache_.bytes(); }
  // Bytes of weights one decode step reads on this rank (the GEMM weights in their compute
  // dtype, the rest in fp32; wpe and the embedding rows looked up are not counted).
  size_t weight_bytes_per_step() const;

 private:
  struct Block {  // flat offsets of one block's vectors, and its GEMM weights packed
    size_t ln1w, ln1b, qkvb, attprojb, ln2w, ln2b, fcb, fcprojb;
    kernels::PackedLinear qkv, attproj, fc, fcproj;
  };
  const float* w(size_t offset) const { return model_.weights().data() + offset; }
  void check_rows(std::span<const DecodeRow> rows) const;
  void embed(std::span<const DecodeRow> rows);
  void block(int l, std::span<const DecodeRow> rows);
  void attention(int l, std::span<const DecodeRow> rows);
  void head(std::span<const DecodeRow> rows, std::vector<float>& logits);
  // The linear layer on n rows of an fp32 input (C columns), through the compute precision.
  void linear(float* out, const float* in, const kernels::PackedLinear& weight,
              const float* bias, int n, int C);
  // Row-parallel partial sums -> the full sums on every tp rank.
  void reduce(float* partial, size_t count);

  const Gpt& model_;
  const ProcessGrid& grid_;
  DType precision_;
  int slots_, max_rows_;
  int tp_ = 1, tp_rank_ = 0, C_ = 0, Cl_ = 0, NHl_ = 0, HS_ = 0, Vl_ = 0;
  size_t wte_ = 0, wpe_ = 0, lnfw_ = 0, lnfb_ = 0;
  std::vector<Block> blocks_;
  kernels::PackedLinear head_;  // wte as the lm_head: (Vp/tp, C)
  KvCache cache_;
  // Scratch for max_rows rows.
  std::vector<float> x_, ln_, mean_, rstd_, qkv_, atty_, proj_, fch_, gelu_, logits_local_,
      gathered_;
  Buffer stage_;  // GEMM inputs in the compute dtype
};

}  // namespace loom
