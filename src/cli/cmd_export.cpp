// loom export --ckpt PATH --format safetensors|llmc --out FILE
// Writes a checkpoint's weights as Hugging Face GPT-2 safetensors or an llm.c model file.
#include <fmt/core.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "ckpt/checkpoint.h"
#include "ckpt/interop.h"
#include "cli/command.h"
#include "core/file_io.h"

namespace loom::cli {

namespace {

struct ExportOptions {
  std::string ckpt;
  std::string format;
  std::string out;
};

int run_export(const ExportOptions& o) {
  require_file_target(o.out);  // before loading anything
  const std::filesystem::path dir = resolve_checkpoint(o.ckpt);
  const CheckpointState manifest = read_checkpoint_manifest(dir);
  const GptConfig& cfg = manifest.model;
  const std::vector<ParamSpec> specs = gpt2_param_specs(cfg);
  std::vector<float> weights(flat_size(specs));
  load_checkpoint(dir, specs, weights.data(), nullptr, nullptr);  // weights only
  if (o.format == "safetensors") {
    export_hf_safetensors(o.out, cfg, specs, weights.data());
  } else {
    export_llmc(o.out, cfg, specs, weights.data());
  }
  fmt::print("wrote {} ({}, {} parameters, L={} NH={} C={} V={} maxT={}) from {} (step {})\n",
             o.out, o.format == "safetensors" ? "HF GPT-2 safetensors" : "llm.c model file v3",
             real_param_count(specs), cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size,
             cfg.block_size, dir.string(), manifest.step);
  return 0;
}

}  // namespace

RunFn setup_export(CLI::App& sub) {
  auto o = std::make_shared<ExportOptions>();
  sub.add_option("--ckpt", o->ckpt,
                 "run directory (newest valid checkpoint) or checkpoint "
                 "directory")
      ->required();
  sub.add_option("--format", o->format, "safetensors (HF GPT-2 names) or llmc (llm.c model file)")
      ->required()
      ->check(CLI::IsMember({"safetensors", "llmc"}));
  sub.add_option("--out", o->out, "file to write")->required();
  return [o] { return run_export(*o); };
}

}  // namespace loom::cli
