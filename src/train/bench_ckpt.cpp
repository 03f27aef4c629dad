// `loom bench checkpoint`: the checkpoint writer's bandwidth beside dd writing the same
// number of bytes to the same directory with an fsync, in the same run.
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdlib>

#include "ckpt/checkpoint.h"
#include "core/check.h"
#include "core/file_io.h"
#include "core/timer.h"
#include "train/bench_train.h"

namespace loom {
namespace fs = std::filesystem;

int bench_checkpoint(const RunConfig& cfg, const fs::path& dir, int repeats,
                     const fs::path& json_out) {
  const std::vector<ParamSpec> specs = gpt2_param_specs(cfg.model);
  const size_t n = flat_size(specs);
  std::vector<float> w(n), m(n), v(n);
  init_params(specs, cfg.train.seed, w.data());
  for (size_t i = 0; i < n; ++i) m[i] = v[i] = w[i] * 0.5f;
  CheckpointState st;
  st.model = cfg.model;
  st.seed = cfg.train.seed;
  const fs::path run = dir / fmt::format("loom_bench_ckpt_{}", ::getpid());
  fs::create_directories(run);
  // Validate first: what was written loads back bitwise.
  st.step = 1;
  const fs::path first = save_checkpoint(run, specs, w.data(), m.data(), v.data(), st, 1);
  std::vector<float> back(n);
  load_checkpoint(first, specs, back.data(), nullptr, nullptr);
  LOOM_CHECK(back == w, "the checkpoint did not load back bitwise: not timing it");
  const double bytes = 3.0 * double(n) * sizeof(float);
  std::vector<double> ours, dd;
  for (int r = 0; r < repeats; ++r) {
    st.step = 2 + r;
    Timer t;
    save_checkpoint(run, specs, w.data(), m.data(), v.data(), st, 1);
    ours.push_back(bytes / t.seconds() / 1e9);
    const std::string cmd =
        fmt::format("dd if=/dev/zero of='{}' bs=1M count={} conv=fsync status=none",
                    (run / "dd.bin").string(), size_t(bytes) >> 20);
    Timer td;
    LOOM_CHECK(std::system(cmd.c_str()) == 0, "'{}' failed", cmd);
    dd.push_back(double(size_t(bytes) >> 20 << 20) / td.seconds() / 1e9);
    fs::remove(run / "dd.bin");
  }
  fs::remove_all(run);
  const double a = median(ours), b = median(dd);
  fmt::print("bench checkpoint: {:.0f} MB (weights + AdamW moments, L={} C={}) to {}, median "
             "of {}\n{:<22} {:>10}\n{:<22} {:>9.2f}\n{:<22} {:>9.2f}\n{:<22} {:>9.2f}\n",
             bytes / 1e6, cfg.model.n_layer, cfg.model.n_embd, dir.string(), repeats, "", "GB/s",
             "loom save_checkpoint", a, "dd conv=fsync", b, "loom / dd", a / b);
  const nlohmann::json out = {{"bytes", bytes}, {"loom_gbps", ours}, {"dd_gbps", dd},
                              {"median_loom_gbps", a}, {"median_dd_gbps", b}, {"ratio", a / b}};
  write_file_atomic(json_out, out.dump(2));
  fmt::print("wrote {}\n", json_out.string());
  return 0;
}

}  // namespace loom
