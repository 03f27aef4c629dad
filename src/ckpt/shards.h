// Checkpoint shards (internal to ckpt): each writing rank stores its slices of the
// parameters in model-<shard>.safetensors (and the AdamW moments in
// optimizer-<shard>.safetensors), tensors named by their global name, local shapes, with
// each slice's place in the global tensor in the file's metadata ("loom.slices"). The
// manifest lists every slice; loading assembles any other slicing from them.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ckpt/safetensors.h"
#include "model/param_spec.h"

namespace loom::ckpt_detail {

inline constexpr const char* kModelPrefix = "model-";
inline constexpr const char* kOptimizerPrefix = "optimizer-";

// One slice of one tensor, stored in `file` (a model shard).
struct ShardEntry {
  std::string name;
  std::string file;
  std::vector<int64_t> global_shape, local_shape;
  int split_dim = -1;
  int64_t split_start = 0;
  int split_parts = 1;
};

// "model-00003.safetensors" / "optimizer-00003.safetensors".
std::string shard_file_name(const char* prefix, int shard);
// True for exactly those two patterns (a manifest must not point outside its directory).
bool is_shard_file_name(const std::string& name);
// The optimizer shard that goes with a model shard.
std::string optimizer_file_for(const std::string& model_file);

// Writes shard `shard` of `specs` (local slices; m and v both null or both given), plus a
// receipt (receipt-<shard>.json: the files' sizes and xxh64 as written, and the slices).
void write_shard_files(const std::filesystem::path& dir, int shard,
                       const std::vector<ParamSpec>& specs, const float* w, const float* m,
                       const float* v);

// Collects (and removes) the writers' receipts in `dir`: every shard file's digest and the
// slices the model shards hold; checks that the slices of each tensor cover it exactly once
// (LOOM_CHECK: a save bug).
std::vector<ShardEntry> scan_shards(const std::filesystem::path& dir,
                                    std::map<std::string, FileDigest>& files);

nlohmann::ordered_json entries_json(const std::vector<ShardEntry>& entries);
std::vector<ShardEntry> parse_entries(const std::string& what, const nlohmann::ordered_json& j);

// Fills `dst` with p's local slice assembled from the pieces of p.name, reading tensors
// `prefix + name` ("" weights, "exp_avg." / "exp_avg_sq." moments; moments from the
// optimizer shard of each piece). A wte with another padded row count is cut or
// zero-padded. `open` returns the opened, verified file of a name.
void assemble(const ParamSpec& p, const std::vector<const ShardEntry*>& pieces,
              const std::map<std::string, SafetensorsFile>& open, const std::string& prefix,
              float* dst);

}  // namespace loom::ckpt_detail
