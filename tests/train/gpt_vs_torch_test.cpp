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
  void run_reference(const std::string& precision = "fp32") {
    const std::string cmd = "OPENBLAS_NUM_THREADS=1 /usr/bin/python3 " LOOM_SOURCE_DIR
                            "/tests/train/torch_ref.py " + dir_.string() + " " + precision;
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
  model.forward(x.data(), nullptr, B, T);  // the logits
  const float loss = model.forward(x.data(), y.data(), B, T);
  const auto ref_logits = read_bin<float>(dir_ / "ref_logits.bin");
  ASSERT_EQ(ref_logits.size(), size_t(N) * V);
  double max_logit_err = 0;
  const std::vector<float> logits(model.logits(), model.logits() + size_t(N) * Vp);
  for (int i = 0; i < N; ++i)
    for (int v = 0; v < V; ++v)
      max_logit_err = std::max(max_logit_err, double(std::abs(logits[size_t(i) * Vp + v] -
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

// bf16 and fp16 against PyTorch on the same weights and batch (torch_ref.py): the loss,
// every gradient and 10 AdamW steps (fp16 with loss scaling on both sides) against the
// same model with autocast's GEMM semantics (operands rounded, fp32 accumulation); and bf16
// against torch.autocast itself, which also rounds every matmul's output to bf16: its loss
// and steps track loom's, and loom's gradients are nowhere further from the fp32 ones than
// autocast's are.
class GptVsTorchPrecision : public GptVsTorch, public ::testing::WithParamInterface<const char*> {
 protected:
  // Unscaled gradient of each parameter's real rows, in spec order (as the references).
  std::vector<float> flat_grads(Gpt& model, float scale) {
    std::vector<float> out;
    for (const ParamSpec& p : model.params()) {
      const size_t n =
          p.real_rows >= 0 ? size_t(p.real_rows) * (p.numel / p.global_shape[0]) : p.numel;
      for (size_t i = 0; i < n; ++i) out.push_back(model.grads()[p.offset + i] / scale);
    }
    return out;
  }
  // Normalised error of each parameter's gradient in `a` against `b`.
  std::vector<double> errors(const Gpt& model, const std::vector<float>& a,
                             const std::vector<float>& b) {
    EXPECT_EQ(a.size(), b.size());
    std::vector<double> out;
    size_t off = 0;
    for (const ParamSpec& p : model.params()) {
      const size_t n =
          p.real_rows >= 0 ? size_t(p.real_rows) * (p.numel / p.global_shape[0]) : p.numel;
      if (off + n > std::min(a.size(), b.size())) return out;
      out.push_back(normalised_error(a.data() + off, b.data() + off, n));
      off += n;
    }
    return out;
  }
  double worst_step_error(const std::vector<float>& loom, const std::string& file) {
    const auto ref = read_bin<double>(dir_ / file);
    EXPECT_EQ(ref.size(), loom.size()) << file;
    double worst = 0;
    for (size_t s = 0; s < std::min(ref.size(), loom.size()); ++s) {
      const double err = std::abs(loom[s] - ref[s]) / ref[s];
      worst = std::max(worst, err);
      EXPECT_LT(err, 2e-2) << file << " step " << s << ": loom " << loom[s] << " vs " << ref[s];
    }
    return worst;
  }
};

TEST_P(GptVsTorchPrecision, LossGradientsAndTenSteps) {
  const std::string precision = GetParam();
  cfg_.train.precision = precision;
  const ProcessGrid grid = ProcessGrid::single();
  Trainer tr(cfg_, grid);
  write_reference_inputs(dir_, tr);
  run_reference(precision);
  if (HasFatalFailure()) return;

  const int B = cfg_.train.micro_batch, T = cfg_.train.seq_len, N = B * T;
  TokenLoader data(cfg_.data.train, B, T);
  std::vector<int32_t> x(N), y(N);
  data.load(0, x.data(), y.data());
  Gpt& model = tr.model();
  ASSERT_EQ(model.precision(), parse_dtype(precision));
  model.zero_grads();
  const float scale = 65536.0f;  // exact in every precision (a power of 2)
  const float loss = model.forward_train(x.data(), y.data(), B, T, scale);
  model.backward();
  const std::vector<float> grads = flat_grads(model, scale);
  const float ref_loss = read_bin<float>(dir_ / "ref_loss.bin").at(0);
  const double loss_err = std::abs(loss - ref_loss) / ref_loss;
  EXPECT_LT(loss_err, 1e-2) << loss << " vs torch " << ref_loss;
  const std::vector<double> err = errors(model, grads, read_bin<float>(dir_ / "ref_grads.bin"));
  const std::vector<double> err32 =
      errors(model, grads, read_bin<float>(dir_ / "fp32_grads.bin"));
  ASSERT_EQ(err.size(), model.params().size());
  ASSERT_EQ(err32.size(), model.params().size());
  for (size_t i = 0; i < err.size(); ++i)
    EXPECT_LE(err[i], 2e-2) << "gradient of " << model.params()[i].name;

  Trainer fresh(cfg_, grid);
  std::vector<float> losses;
  for (int s = 0; s < cfg_.train.steps; ++s) {
    const StepStats st = fresh.train_step();
    EXPECT_FALSE(st.skipped) << "step " << s;
    losses.push_back(st.loss);
  }
  const double worst_step = worst_step_error(losses, "ref_losses.bin");
  std::printf("%s vs torch (rounded GEMM operands): loss rel err %.3g, worst gradient "
              "normalised err %.3g, 10 AdamW steps worst relative loss difference %.3g\n"
              "%s vs fp32 torch: worst gradient normalised err %.3g\n",
              precision.c_str(), loss_err, *std::max_element(err.begin(), err.end()), worst_step,
              precision.c_str(), *std::max_element(err32.begin(), err32.end()));
  if (precision != "bf16") return;

  const float auto_loss = read_bin<float>(dir_ / "autocast_loss.bin").at(0);
  EXPECT_LT(std::abs(loss - auto_loss) / auto_loss, 1e-2) << loss << " vs autocast " << auto_loss;
  const auto auto_grads = read_bin<float>(dir_ / "autocast_grads.bin");
  const std::vector<double> auto_vs_loom = errors(model, grads, auto_grads);
  const std::vector<double> auto32 =
      errors(model, auto_grads, read_bin<float>(dir_ / "fp32_grads.bin"));
  ASSERT_EQ(auto32.size(), err32.size());
  for (size_t i = 0; i < err32.size(); ++i)
    EXPECT_LE(err32[i], auto32[i]) << "loom bf16's gradient of " << model.params()[i].name
                                   << " is further from fp32 than torch.autocast's";
  const double auto_step = worst_step_error(losses, "autocast_losses.bin");
  std::printf("bf16 vs torch.autocast: loss rel err %.3g, gradient normalised err %.3g worst "
              "(autocast itself is %.3g from fp32, loom %.3g), 10 steps %.3g\n",
              std::abs(loss - auto_loss) / auto_loss,
              *std::max_element(auto_vs_loom.begin(), auto_vs_loom.end()),
              *std::max_element(auto32.begin(), auto32.end()),
              *std::max_element(err32.begin(), err32.end()), auto_step);
}

INSTANTIATE_TEST_SUITE_P(Precisions, GptVsTorchPrecision, ::testing::Values("bf16", "fp16"),
                         [](const auto& info) { return std::string(info.param); });

}  // namespace
}  // namespace loom
