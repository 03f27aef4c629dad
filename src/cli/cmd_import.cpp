// loom import --format safetensors|llmc --in FILE --out RUN_DIR [--n-head N]
// Makes a run directory holding a step-0 checkpoint of the imported weights, which
// `loom generate/eval --ckpt RUN_DIR` (and training, as an initialisation) can use.
#include <fmt/core.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "ckpt/checkpoint.h"
#include "ckpt/interop.h"
#include "cli/command.h"
#include "core/check.h"

namespace loom::cli {

namespace {

struct ImportOptions {
  std::string format;
  std::string in;
  std::string out;
  int n_head = 0;  // 0: from the file
};

int run_import(const ImportOptions& o) {
  namespace fs = std::filesystem;
  // Mixing an imported model into an existing run would make its newest checkpoint a
  // different model from the run's history: refuse rather than guess.
  LOOM_REQUIRE(!fs::exists(fs::path(o.out) / "checkpoints"),
               "'{}' already has checkpoints; import into a new run directory", o.out);
  ImportedModel model =
      o.format == "safetensors"
          ? import_hf_safetensors(o.in, o.n_head > 0 ? std::optional<int>(o.n_head) : std::nullopt)
          : import_llmc(o.in);
  const GptConfig& cfg = model.config;
  if (o.format == "llmc" && o.n_head > 0)
    LOOM_REQUIRE(o.n_head == cfg.n_head, "--n-head {} contradicts the llm.c header's n_head={}",
                 o.n_head, cfg.n_head);
  CheckpointState state;  // step 0, no data position, empty config: a fresh start
  state.model = cfg;
  const std::vector<ParamSpec> specs = gpt2_param_specs(cfg);
  const fs::path dir =
      save_checkpoint(o.out, specs, model.weights.data(), nullptr, nullptr, state, 0);
  fmt::print("imported {} ({}): L={} NH={} C={} V={} maxT={}, {} parameters\n", o.in, o.format,
             cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.vocab_size, cfg.block_size,
             real_param_count(specs));
  fmt::print("wrote {}\n", dir.string());
  return 0;
}

}  // namespace

RunFn setup_import(CLI::App& sub) {
  auto o = std::make_shared<ImportOptions>();
  sub.add_option("--format", o->format, "safetensors (HF GPT-2) or llmc (llm.c model file)")
      ->required()
      ->check(CLI::IsMember({"safetensors", "llmc"}));
  sub.add_option("--in", o->in, "file to import")->required()->check(CLI::ExistingFile);
  sub.add_option("--out", o->out, "run directory to create")->required();
  sub.add_option("--n-head", o->n_head,
                 "attention heads, for safetensors files that do not record n_head")
      ->check(CLI::PositiveNumber);
  return [o] { return run_import(*o); };
}

}  // namespace loom::cli
