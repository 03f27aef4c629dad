// Config parsing: defaults, overrides, and every kind of bad input -> InputError (exit 2).
#include <gtest/gtest.h>

#include "core/check.h"
#include "train/run_config.h"
#include "train/schedule.h"

namespace loom {
namespace {

const char* kBase = R"(
[model]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 16
vocab_size = 97
[train]
seq_len = 13
[data]
train = "x.bin"
)";

std::string error_of(const std::string& toml, std::vector<std::string> overrides = {}) {
  try {
    parse_run_config(toml, "cfg.toml", overrides);
  } catch (const InputError& e) {
    EXPECT_EQ(e.exit_code(), 2);
    return e.what();
  }
  ADD_FAILURE() << "expected an InputError for:\n" << toml;
  return "";
}

TEST(RunConfig, ParsesDefaultsAndOverrides) {
  RunConfig c = parse_run_config(kBase, "cfg.toml", {"train.lr=1e-3", "run.dir=runs/x",
                                                     "train.shuffle=true"});
  EXPECT_EQ(c.model.n_layer, 2);
  EXPECT_EQ(c.model.padded_vocab(), 128);
  EXPECT_EQ(c.train.seq_len, 13);
  EXPECT_DOUBLE_EQ(c.train.lr, 1e-3);
  EXPECT_EQ(c.run.dir, "runs/x");
  EXPECT_TRUE(c.train.shuffle);
  EXPECT_EQ(c.train.micro_batch, 4);  // default
  // The resolved config round-trips through TOML.
  RunConfig again = parse_run_config(c.to_toml(), "resolved.toml");
  EXPECT_EQ(again.to_toml(), c.to_toml());
}

TEST(RunConfig, RejectsBadInput) {
  EXPECT_NE(error_of("[model\nn_layer = 2").find("invalid TOML"), std::string::npos);
  EXPECT_NE(error_of(std::string(kBase) + "bogus = 1\n").find("unknown key 'bogus'"),
            std::string::npos);
  EXPECT_NE(error_of(std::string(kBase) + "[extra]\n").find("unknown section"), std::string::npos);
  EXPECT_NE(error_of(kBase, {"model.n_head=3"}).find("not divisible"), std::string::npos);
  EXPECT_NE(error_of(kBase, {"train.seq_len=17"}).find("block_size"), std::string::npos);
  EXPECT_NE(error_of(kBase, {"train.lr=\"fast\""}).find("must be a number"), std::string::npos);
  EXPECT_NE(error_of(kBase, {"train.lr_schedule=linear"}).find("lr_schedule"), std::string::npos);
  EXPECT_NE(error_of(kBase, {"train.grad_accum=0"}).find("grad_accum"), std::string::npos);
  EXPECT_NE(error_of(kBase, {"nodot=1"}).find("section.key=value"), std::string::npos);
  EXPECT_NE(error_of(kBase, {"data.train=\"\""}).find("[data] train"), std::string::npos);
  EXPECT_NE(error_of(kBase, {"train.precision=\"fp8\""}).find("'fp32', 'bf16' or 'fp16'"),
            std::string::npos);
  EXPECT_NE(error_of(kBase, {"parallel.grad_reduce=\"fp16\""}).find("'fp32' or 'bf16'"),
            std::string::npos);
}

TEST(RunConfig, PrecisionAndGradReduce) {
  RunConfig c = parse_run_config(kBase, "cfg.toml");
  EXPECT_EQ(c.train.precision, "fp32");
  EXPECT_EQ(c.parallel.grad_reduce, "fp32");
  c = parse_run_config(kBase, "cfg.toml",
                       {"train.precision=\"bf16\"", "parallel.grad_reduce=\"bf16\""});
  EXPECT_EQ(c.train.precision, "bf16");
  EXPECT_EQ(c.parallel.grad_reduce, "bf16");
  EXPECT_EQ(parse_run_config(c.to_toml(), "resolved.toml").to_toml(), c.to_toml());
}

// What does not combine with compressed gradients is refused, saying why.
TEST(RunConfig, GradCompressionAndWhatItDoesNotCombineWith) {
  RunConfig c = parse_run_config(kBase, "cfg.toml");
  EXPECT_EQ(c.parallel.grad_compression, "none");
  EXPECT_EQ(c.parallel.powersgd_rank, 4);
  c = parse_run_config(kBase, "cfg.toml",
                       {"parallel.grad_compression=\"powersgd\"", "parallel.powersgd_rank=2",
                        "parallel.zero=1"});
  EXPECT_EQ(c.parallel.grad_compression, "powersgd");
  EXPECT_EQ(parse_run_config(c.to_toml(), "resolved.toml").to_toml(), c.to_toml());
  EXPECT_NE(error_of(kBase, {"parallel.grad_compression=\"zip\""})
                .find("none, bf16, int8 or powersgd"), std::string::npos);
  const std::string zero2 = error_of(kBase, {"parallel.grad_compression=\"int8\"",
                                             "parallel.zero=2"});
  EXPECT_NE(zero2.find("needs zero 0 or 1, not 2: it reduces the whole gradient on every "
                       "rank, while ZeRO 2 reduces each bucket only to its owner"),
            std::string::npos) << zero2;
  EXPECT_NE(error_of(kBase, {"parallel.grad_compression=\"powersgd\"",
                             "parallel.grad_reduce=\"bf16\""}).find("leave grad_reduce='fp32'"),
            std::string::npos);
  EXPECT_NE(error_of(kBase, {"parallel.grad_compression=\"powersgd\"",
                             "parallel.powersgd_rank=0"}).find("powersgd_rank=0 must be >= 1"),
            std::string::npos);
}

TEST(Schedule, WarmupThenCosineToMinLr) {
  TrainConfig t;
  t.lr = 1.0;
  t.min_lr = 0.1;
  t.warmup_steps = 4;
  t.steps = 14;
  EXPECT_DOUBLE_EQ(learning_rate(t, 0), 0.25);
  EXPECT_DOUBLE_EQ(learning_rate(t, 3), 1.0);
  EXPECT_DOUBLE_EQ(learning_rate(t, 4), 1.0);
  EXPECT_NEAR(learning_rate(t, 9), 0.55, 1e-12);
  EXPECT_NEAR(learning_rate(t, 14), 0.1, 1e-12);
  t.lr_schedule = "constant";
  EXPECT_DOUBLE_EQ(learning_rate(t, 10), 1.0);
}

}  // namespace
}  // namespace loom
