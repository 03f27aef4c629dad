// The whole model against PyTorch: logits, loss, every parameter gradient, and the losses
// of 10 AdamW steps with weight decay, clipping, warm-up + cosine LR and accumulation 2.
// torch_ref.py builds the same GPT-2 in PyTorch from the same weights and tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>

#include "core/file_io.h"
#include "../shell_util.h"
#include "test_util.h"
#include "train/reference_io.h"
#include "train/trainer.h"

namespace loom {
namespace {

template <typename T>
std::vector<T> read_bin(const std::filesystem::path& p) {
  std::vector<uint8_t> bytes = read_file_bytes(p);
  std::vector<T> out(bytes.size() / sizeof(T));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

// ||a - b|| / ||b||
double normalised_error(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

class GptVsTorch : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = test::scratch_dir("torch");
    cfg_ = test::tiny_config(dir_);
  }
  void run_reference() {
    const std::string cmd = "OPENBLAS_NUM_THREADS=1 /usr/bin/python3 " LOOM_SOURCE_DIR
                            "/tests/train/torch_ref.py " + dir_.string();
    const test::Result r = test::shell(cmd);
    ASSERT_EQ(r.code, 0) << "PyTorch reference failed: " << cmd
                         << " (needs Debian's python3-torch)\n" << r.output;
  }
  std::filesystem::path dir_;
  RunConfig cfg_;
};

TEST_F(GptVsTorch, LogitsLossGradientsAndTenSteps) {
  const ProcessGrid grid = ProcessGrid::single();
  Trainer tr(cfg_, grid);
  write_reference_inputs(dir_, tr);
  run_reference();
  if (HasFatalFailure()) return;

  // Micro-batch 0 at the initial weights.
  const int B = cfg_.train.micro_batch, T = cfg_.train.seq_len, N = B * T;
  const int V = cfg_.model.vocab_size, Vp = cfg_.model.padded_vocab();
  TokenLoader data(cfg_.data.train, B, T);
  std::vector<int32_t> x(N), y(N);
  data.load(0, x.data(), y.data());
  Gpt& model = tr.model();
  const float loss = model.forward(x.data(), y.data(), B, T);
  const auto ref_logits = read_bin<float>(dir_ / "ref_logits.bin");
  ASSERT_EQ(ref_logits.size(), size_t(N) * V);
  double max_logit_err = 0;
  for (int i = 0; i < N; ++i)
    for (int v = 0; v < V; ++v)
      max_logit_err = std::max(max_logit_err, double(std::abs(model.logits()[size_t(i) * Vp + v] -
                                                               ref_logits[size_t(i) * V + v])));
  EXPECT_LT(max_logit_err, 1e-5) << "max |logit - torch|";
  const float ref_loss = read_bin<float>(dir_ / "ref_loss.bin").at(0);
  EXPECT_LT(std::abs(loss - ref_loss) / ref_loss, 1e-5) << loss << " vs torch " << ref_loss;

  model.zero_grads();
  model.forward_train(x.data(), y.data(), B, T, 1.0f);
  model.backward();
  const auto ref_grads = read_bin<float>(dir_ / "ref_grads.bin");
  size_t ref_off = 0;
  double worst_grad = 0;
  for (const ParamSpec& p : model.params()) {
    const size_t n = p.real_rows >= 0 ? size_t(p.real_rows) * (p.numel / p.global_shape[0]) : p.numel;
    ASSERT_LE(ref_off + n, ref_grads.size());
    const float* g = model.grads().data() + p.offset;
    const double err = normalised_error(g, ref_grads.data() + ref_off, n);
    EXPECT_LE(err, 1e-4) << "gradient of " << p.name;
    worst_grad = std::max(worst_grad, err);
    for (size_t i = n; i < p.numel; ++i) ASSERT_EQ(g[i], 0.0f) << p.name << " padding row grad";
    ref_off += n;
  }
  EXPECT_EQ(ref_off, ref_grads.size());
  std::printf("max |logit - torch| %.3g, loss rel err %.3g, worst gradient normalised err %.3g\n",
              max_logit_err, std::abs(loss - ref_loss) / ref_loss, worst_grad);

  // Ten optimizer steps from the same initial weights (a fresh trainer).
  Trainer fresh(cfg_, grid);
  const auto ref_losses = read_bin<double>(dir_ / "ref_losses.bin");
  ASSERT_EQ(ref_losses.size(), size_t(cfg_.train.steps));
  bool clipped = false;
  double worst_step = 0;
  for (int s = 0; s < cfg_.train.steps; ++s) {
    const StepStats st = fresh.train_step();
    clipped |= st.grad_norm > cfg_.train.grad_clip;
    worst_step = std::max(worst_step, std::abs(st.loss - ref_losses[s]) / ref_losses[s]);
    EXPECT_LT(std::abs(st.loss - ref_losses[s]) / ref_losses[s], 1e-5)
        << "step " << s << ": loom " << st.loss << " vs torch " << ref_losses[s];
  }
  EXPECT_TRUE(clipped) << "the test should exercise gradient clipping";
  std::printf("10 AdamW steps: worst relative loss difference %.3g (loss %.4f -> %.4f)\n",
              worst_step, ref_losses.front(), ref_losses.back());
}

}  // namespace
}  // namespace loom
