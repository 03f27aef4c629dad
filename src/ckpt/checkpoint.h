// Training checkpoints, sharded. One directory per save:
//
//   run_dir/checkpoints/step_00000100/
//     model-00000.safetensors      a writer's slices of the weights: tensors named by their
//     model-00005.safetensors ...  global (loom) name with local shapes, loom (out, in)
//                                  orientation; each slice's place in the global tensor is
//                                  in the file's metadata ("loom.slices")
//     optimizer-00000.safetensors  the AdamW moments of the same slices (optional)
//     manifest.json                written last: magic, version, step, data position, seed,
//                                  model sizes, the resolved config and its hash, the layout
//                                  at save, size + xxh64 of every file, every slice
//
// Each parameter element is stored once (tensor-parallel slices by their ranks, replicated
// parameters by one rank). A save writes step_XXXXXXXX.tmp/, fsyncs every file, renames the
// directory into place and fsyncs the parent, so a crash mid-save never leaves a half
// checkpoint under a final name. Loading validates the manifest, the size and checksum of
// every file it reads and every tensor's shape, then assembles whatever slicing the caller's
// specs describe (any tp, pp, dp, ZeRO) before touching the caller's buffers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/param_spec.h"

namespace loom {

inline constexpr const char* kCheckpointMagic = "loom-checkpoint";
inline constexpr int kCheckpointVersion = 2;

struct CheckpointState {
  int64_t step = 0;         // optimizer steps completed
  uint64_t next_batch = 0;  // data loader position: index of the next micro-batch (k) to read
  uint64_t seed = 0;        // the run's seed
  std::string config_toml;  // the resolved run config, verbatim
  GptConfig model;          // model sizes
  // The parallel layout at save, e.g. "dp=2 tp=2 pp=2 zero=1 micro_batch=1 grad_accum=2"
  // (informational: any layout loads any checkpoint).
  std::string layout;
  // Set by load/read: whether the checkpoint holds optimizer state (imported models do not).
  bool has_optimizer = false;
  // AdamW updates taken: the step minus the steps fp16 loss scaling skipped (-1 = step).
  int64_t optimizer_step = -1;
  // fp16 dynamic loss scaling (train/loss_scaler.h): the scale (0 = none) and the clean
  // steps since it last changed.
  float loss_scale = 0;
  int loss_scale_growth_tracker = 0;
};

// Writes run_dir/checkpoints/step_%08d (returned) as described above. m and v are the AdamW
// moments in the flat layout of `weights` (both null: no optimizer file). Keeps only the
// newest `keep_last` complete checkpoints (0 = keep all) and removes the temporary
// directories of interrupted saves of earlier steps. Replaces an existing checkpoint of the
// same step. `before_commit` runs after the tensor files are written and before the
// manifest is (fault injection tests a crash there).
std::filesystem::path save_checkpoint(const std::filesystem::path& run_dir,
                                      const std::vector<ParamSpec>& specs, const float* weights,
                                      const float* m, const float* v, const CheckpointState& state,
                                      int keep_last,
                                      const std::function<void()>& before_commit = {});

// The same in three collective-free parts, for many writers: rank 0 begins (a fresh
// step_XXXXXXXX.tmp/, returned), every writer writes its shard (its slices of distinct
// parameters, numbered by the caller), then, after all have written, rank 0 commits: it
// reads the shards' headers, checks every tensor is covered exactly once, writes the
// manifest, renames the directory into place and prunes.
std::filesystem::path begin_checkpoint(const std::filesystem::path& run_dir, int64_t step);
// Where begin_checkpoint puts the save of `step` until it is committed.
std::filesystem::path checkpoint_tmp_dir(const std::filesystem::path& run_dir, int64_t step);
void write_checkpoint_shard(const std::filesystem::path& tmp_dir, int shard,
                            const std::vector<ParamSpec>& specs, const float* weights,
                            const float* m, const float* v);
std::filesystem::path commit_checkpoint(const std::filesystem::path& run_dir,
                                        const CheckpointState& state, int keep_last);

// Validates the manifest (magic, version, fields), the size and xxh64 of every file, the
// model sizes and every tensor's name and shape against `specs`; then fills weights and, if
// m and v are non-null and the checkpoint has optimizer state, m and v (otherwise they are
// left untouched; see CheckpointState::has_optimizer).
CheckpointState load_checkpoint(const std::filesystem::path& ckpt_dir,
                                const std::vector<ParamSpec>& specs, float* weights, float* m,
                                float* v);

// Reads only the manifest (validated): the model config and state, to build the model first.
CheckpointState read_checkpoint_manifest(const std::filesystem::path& ckpt_dir);

// read_checkpoint_manifest plus every listed file's presence, size and xxh64.
CheckpointState verify_checkpoint(const std::filesystem::path& ckpt_dir);

// Accepts a checkpoint directory (has manifest.json), a run directory, or a run's
// checkpoints/ directory. For the latter two returns the newest complete checkpoint that
// verifies, skipping *.tmp directories and invalid checkpoints (saying on stderr which and
// why). Throws InputError if there is none.
std::filesystem::path resolve_checkpoint(const std::filesystem::path& path);

// "step_00000100".
std::string checkpoint_dir_name(int64_t step);

}  // namespace loom
