// Every parameter knows its global name (Hugging Face GPT-2's, e.g. "h.3.attn.c_attn.weight"),
// its global shape, which slice of it this rank holds, where that slice lives in the rank's
// flat weight/grad buffers, and its flags. Buckets, ZeRO partitions and checkpoints are
// views of the flat buffers described by these specs.
//
// Orientation: loom stores linear weights as (out, in) (llm.c's orientation; y = x W^T).
// Hugging Face's Conv1D stores (in, out); import/export transposes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"

namespace loom {

enum class InitKind { kNormal, kZeros, kOnes };

struct ParamSpec {
  std::string name;                   // HF GPT-2 global name
  std::vector<int64_t> global_shape;  // loom orientation, unpadded for tp but Vp for wte
  // The slice this rank holds: along split_dim (-1 = whole tensor), [split_start,
  // split_start + local_shape[split_dim]). With split_parts P > 1 the dimension is P equal
  // parts (q|k|v of c_attn) and the rank holds [split_start, +local/P) of each part,
  // concatenated part by part (Megatron's partition stride).
  int split_dim = -1;
  int64_t split_start = 0;
  int split_parts = 1;
  std::vector<int64_t> local_shape;
  size_t offset = 0;  // into the flat buffers, in floats
  size_t numel = 0;   // local elements
  int layer = -1;     // transformer block index; -1 = embeddings, n_layer = final LN
  bool decay = false; // AdamW weight decay (2-D weights and embeddings; not biases/LN)
  bool tied = false;  // wte doubles as lm_head
  InitKind init = InitKind::kZeros;
  float init_std = 0.0f;
  // Rows [real_rows, global_shape[0]) are padding (wte's Vp - V rows): initialised to 0.
  int64_t real_rows = -1;

  int64_t global_numel() const;
};

// The parameters of a GPT-2 model in flat-buffer order: wte, wpe, then per block
// ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj (weight before bias), then
// ln_f. Per-block contiguity means a block's parameters are one range of the flat buffer
// (pipeline stages, ZeRO-3 gathers and gradient buckets are ranges).
std::vector<ParamSpec> gpt2_param_specs(const GptConfig& cfg);

// What one rank holds of the model: a tensor-parallel slice of some blocks, the embeddings
// (first pipeline stage) and/or the head (last stage: ln_f and its own copy of the tied
// wte). Megatron's layout: c_attn and mlp.c_fc are column-parallel (split along out, heads
// kept whole), attn.c_proj and mlp.c_proj row-parallel (split along in; their biases
// replicated), wte vocab-parallel (split along Vp rows), wpe and the layernorms replicated.
struct ModelShard {
  int tp = 1, tp_rank = 0;
  std::vector<int> blocks;  // in flat-buffer order (chunk order for interleaved pipelines)
  bool embed = true;        // wte + wpe
  bool head = true;         // ln_f (+ wte)
  static ModelShard whole(const GptConfig& cfg);
};
// The shard's parameters in flat order: wte (if embed or head), wpe (if embed), the blocks
// in the given order, ln_f (if head). Vp = cfg.padded_vocab(tp). InputError when heads or
// widths do not divide by tp.
std::vector<ParamSpec> gpt2_param_specs(const GptConfig& cfg, const ModelShard& shard);

// Copies between a whole tensor (global_shape, row-major) and this rank's slice of it.
void slice_to_local(const ParamSpec& p, const float* global_tensor, float* local);
void local_to_global(const ParamSpec& p, const float* local, float* global_tensor);

// Total floats of the flat buffer for these specs.
size_t flat_size(const std::vector<ParamSpec>& specs);
// Parameters that are real, i.e. without wte's padding rows (Vp - V of them).
size_t real_param_count(const std::vector<ParamSpec>& specs);

// Finds a spec by name; throws if absent.
const ParamSpec& find_param(const std::vector<ParamSpec>& specs, const std::string& name);

// Fills the flat weight buffer: element i of parameter P gets a value that depends only on
// (seed, P.name, global index of i) through Philox, so any sharding initialises identically.
void init_params(const std::vector<ParamSpec>& specs, uint64_t seed, float* weights);

}  // namespace loom
