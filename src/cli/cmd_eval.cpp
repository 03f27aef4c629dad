// loom eval --ckpt RUN --data SHARD [--tokens N] [--batch B] [--seq-len T]
#include <fmt/core.h>

#include "cli/command.h"
#include "comm/process_grid.h"
#include "core/check.h"
#include "data/loader.h"
#include "infer/generate.h"
#include "kernels/openblas.h"
#include "train/run_config.h"

namespace loom::cli {

RunFn setup_eval(CLI::App& sub) {
  struct Opts {
    std::string ckpt, data;
    int64_t tokens = 0;
    int batch = 0, seq_len = 0, threads = 0;
  };
  auto o = std::make_shared<Opts>();
  sub.add_option("--ckpt", o->ckpt, "run directory or checkpoint directory")->required();
  sub.add_option("--data", o->data, "token shard (loom prepare's format)")->required();
  sub.add_option("--tokens", o->tokens, "tokens to evaluate (default: the whole shard)")
      ->check(in_range(1, 1e15));
  sub.add_option("--batch", o->batch, "rows per batch (B; default: the run's micro_batch, else 4)")
      ->check(in_range(1, 1e6));
  sub.add_option("--seq-len", o->seq_len,
                 "tokens per row (T; default: the run's seq_len, else the block size)")
      ->check(in_range(1, 1e8));
  sub.add_option("--threads", o->threads, "OpenMP threads (0 = this host's cores / its ranks)")
      ->check(in_range(0, 4096));
  return [o] {
    kernels::set_compute_threads(o->threads);
    const ProcessGrid grid = ProcessGrid::single();
    LoadedModel loaded = load_model(o->ckpt, grid);
    Gpt* model = loaded.model.get();
    const CheckpointState& st = loaded.state;
    // Defaults: the micro-batch and sequence length the run trained with.
    TrainConfig trained;
    trained.micro_batch = 4;
    trained.seq_len = model->config().block_size;
    if (!st.config_toml.empty()) trained = parse_run_config(st.config_toml, "checkpoint config").train;
    const int B = o->batch > 0 ? o->batch : trained.micro_batch;
    const int T = o->seq_len > 0 ? o->seq_len : trained.seq_len;
    TokenLoader data(o->data, B, T);
    const int64_t bt = int64_t(B) * T;
    const int64_t tokens = o->tokens > 0 ? o->tokens : int64_t(data.num_tokens() - 1);
    const int64_t batches = tokens / bt;
    LOOM_REQUIRE(batches >= 1 && uint64_t(batches) <= data.batches_per_epoch(),
                 "--tokens {} must cover between 1 and {} batches of B*T = {} tokens", tokens,
                 data.batches_per_epoch(), bt);
    model->reserve(B, T);
    std::vector<int32_t> inputs(static_cast<size_t>(bt)), targets(static_cast<size_t>(bt));
    double sum = 0.0;
    for (int64_t k = 0; k < batches; ++k) {
      data.load(uint64_t(k), inputs.data(), targets.data());
      sum += model->forward(inputs.data(), targets.data(), B, T);
    }
    fmt::print("val_loss {:.6f}\n", sum / double(batches));
    return 0;
  };
}

}  // namespace loom::cli
