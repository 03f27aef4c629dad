// Import and export of model weights in other engines' formats:
//
// - Hugging Face GPT-2 safetensors: HF names ("wte.weight", "h.0.attn.c_attn.weight", ...).
//   HF's Conv1D layers (attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj) store weights as
//   (in, out); loom stores (out, in), so those four are transposed. wte has V rows (loom's
//   padding rows are dropped on export and zero-filled on import); lm_head is tied to wte.
// - llm.c's model file (train_gpt2.py's write_model): a 256 x int32 header, then fp32
//   parameters, each concatenated over layers. llm.c uses loom's (out, in) orientation and
//   padded Vp rows, so only the order differs.
//
// Every copy is a bit copy: loom -> format -> loom reproduces the weights exactly, and
// exporting an imported file reproduces the file byte for byte.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <optional>
#include <vector>

#include "model/config.h"
#include "model/param_spec.h"

namespace loom {

// A model read from another format: its config and weights in loom's flat layout
// (gpt2_param_specs(config) order, wte padded to Vp rows with zeros).
struct ImportedModel {
  GptConfig config;
  std::vector<float> weights;
};

inline constexpr int kLlmcMagic = 20240326;
inline constexpr int kLlmcVersion = 3;  // fp32 parameters (5 is llm.c's bf16 file)

// Writes HF GPT-2 safetensors. specs must be gpt2_param_specs(cfg) (whole tensors).
void export_hf_safetensors(const std::filesystem::path& path, const GptConfig& cfg,
                           const std::vector<ParamSpec>& specs, const float* weights);

// Reads HF GPT-2 safetensors (with or without a "transformer." name prefix). The sizes come
// from the shapes; n_head from the argument, else the file's "n_head" metadata, else an
// InputError asking for --n-head. Ignores the causal-mask buffers (h.N.attn.bias,
// h.N.attn.masked_bias) and a lm_head.weight equal to wte.weight.
ImportedModel import_hf_safetensors(const std::filesystem::path& path,
                                    std::optional<int> n_head = std::nullopt);

// Writes llm.c's fp32 model file (version 3).
void export_llmc(const std::filesystem::path& path, const GptConfig& cfg,
                 const std::vector<ParamSpec>& specs, const float* weights);

// Reads llm.c's fp32 model file, validating magic, version, sizes and the file length.
ImportedModel import_llmc(const std::filesystem::path& path);

// What the PyTorch reference (reference/torch_gpt.py load_model) rebuilds a model from:
// dir/spec.json (`spec` with "config": the sizes, and "params": every parameter's name,
// global shape, offset and decay flag) and dir/weights.bin (the flat fp32 buffer). specs
// must be whole tensors. Used by the PyTorch comparison test and the benchmarks.
void write_reference_model(const std::filesystem::path& dir, const GptConfig& cfg,
                           const std::vector<ParamSpec>& specs, const float* weights,
                           size_t weight_floats, nlohmann::json spec = {});

}  // namespace loom
