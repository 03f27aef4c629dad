// loom train --config FILE.toml [--set section.key=value ...] [--resume auto|DIR]
#include <fmt/core.h>
#include <omp.h>

#include <filesystem>

#include "ckpt/checkpoint.h"
#include "cli/command.h"
#include "comm/process_grid.h"
#include "train/trainer.h"

namespace loom::cli {

RunFn setup_train(CLI::App& sub) {
  struct Opts {
    std::string config;
    std::vector<std::string> overrides;
    std::string resume;
  };
  auto o = std::make_shared<Opts>();
  sub.add_option("--config", o->config, "run config (TOML)")->required();
  sub.add_option("--set", o->overrides, "override a config value: section.key=value");
  sub.add_option("--resume", o->resume,
                 "continue from a checkpoint: 'auto' (newest valid one in the run dir) or a "
                 "checkpoint directory");
  return [o] {
    const RunConfig cfg = load_run_config(o->config, o->overrides);
    if (cfg.run.threads > 0) omp_set_num_threads(cfg.run.threads);
    const ProcessGrid grid = ProcessGrid::single();
    Trainer trainer(cfg, grid);
    if (!o->resume.empty()) {
      const std::filesystem::path from =
          resolve_checkpoint(o->resume == "auto" ? std::filesystem::path(cfg.run.dir)
                                                 : std::filesystem::path(o->resume));
      trainer.resume(from);
      fmt::print("resumed from {} at step {}\n", from.string(), trainer.next_step());
    }
    trainer.run(stdout);
    return 0;
  };
}

}  // namespace loom::cli
