#include "ckpt/checkpoint.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/file_io.h"
#include "test_util.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using test::file_bytes;
using test::same_bits;
using test::TempDir;
using test::TinyModel;
using test::write_bytes;

// A tiny model with AdamW moments that exercise every bit pattern a copy could disturb.
struct TrainedTiny : TinyModel {
  std::vector<float> m, v;
  CheckpointState state;

  explicit TrainedTiny(int n_layer = 2) : TinyModel(1, n_layer) {
    m.resize(weights.size());
    v.resize(weights.size());
    init_params(specs, 2, m.data());
    init_params(specs, 3, v.data());
    for (float& x : v) x = std::fabs(x);
    m[0] = std::numeric_limits<float>::max();  // NaN is refused on load (NonFiniteRefused)
    m[1] = -0.0f;
    m[2] = std::numeric_limits<float>::denorm_min();
    state.step = 7;
    state.next_batch = 123;
    state.seed = 0xdeadbeefcafebabeull;  // above 2^63: must survive JSON
    state.config_toml = "[model]\nn_layer = 2\nname = \"tiny \\u00e9\"\n";
    state.model = cfg;
  }

  fs::path save(const fs::path& run, int keep_last = 0, int64_t step = -1) {
    if (step >= 0) state.step = step;
    return save_checkpoint(run, specs, weights.data(), m.data(), v.data(), state, keep_last);
  }
};

nlohmann::json read_manifest(const fs::path& dir) {
  return nlohmann::json::parse(read_file_text(dir / "manifest.json"));
}

void write_manifest(const fs::path& dir, const nlohmann::json& j) {
  write_file_atomic(dir / "manifest.json", j.dump(2));
}

TEST(Checkpoint, SaveLoadRoundTripIsBitwise) {
  TempDir tmp;
  TrainedTiny t;
  const fs::path dir = t.save(tmp / "run");
  EXPECT_EQ(dir, tmp / "run" / "checkpoints" / "step_00000007");
  EXPECT_TRUE(fs::is_regular_file(dir / "model-00000.safetensors"));
  EXPECT_TRUE(fs::is_regular_file(dir / "optimizer-00000.safetensors"));
  EXPECT_FALSE(fs::exists(tmp / "run" / "checkpoints" / "step_00000007.tmp"));

  const size_t n = t.weights.size();
  std::vector<float> w(n, 9.0f);
  std::vector<float> m(n, 9.0f);
  std::vector<float> v(n, 9.0f);
  const CheckpointState s = load_checkpoint(dir, t.specs, w.data(), m.data(), v.data());
  EXPECT_TRUE(same_bits(w, t.weights));
  EXPECT_TRUE(same_bits(m, t.m));
  EXPECT_TRUE(same_bits(v, t.v));
  EXPECT_EQ(s.step, 7);
  EXPECT_EQ(s.next_batch, 123u);
  EXPECT_EQ(s.seed, 0xdeadbeefcafebabeull);
  EXPECT_EQ(s.config_toml, t.state.config_toml);
  EXPECT_EQ(s.model.n_layer, 2);
  EXPECT_EQ(s.model.n_head, 2);
  EXPECT_EQ(s.model.n_embd, 16);
  EXPECT_EQ(s.model.block_size, 8);
  EXPECT_EQ(s.model.vocab_size, 50);
  EXPECT_TRUE(s.has_optimizer);

  const CheckpointState only = read_checkpoint_manifest(dir);
  EXPECT_EQ(only.step, 7);
  EXPECT_EQ(only.model.n_head, 2);
}

TEST(Checkpoint, NonFiniteRefused) {
  // A NaN weight would evaluate to a NaN loss and generate garbage: loading names the tensor.
  TempDir tmp;
  TrainedTiny t;
  t.weights[5] = std::numeric_limits<float>::infinity();
  const fs::path dir = t.save(tmp / "run");
  std::vector<float> w(t.weights.size()), m(w.size()), v(w.size());
  EXPECT_INPUT_ERROR(load_checkpoint(dir, t.specs, w.data(), m.data(), v.data()),
                     "model-00000.safetensors", "'" + t.specs[0].name + "'",
                     "non-finite value (inf at element 5 of");
}

TEST(Checkpoint, ManifestRecordsFilesAndState) {
  TempDir tmp;
  TrainedTiny t;
  const fs::path dir = t.save(tmp / "run");
  const nlohmann::json j = read_manifest(dir);
  EXPECT_EQ(j["magic"], "loom-checkpoint");
  EXPECT_EQ(j["version"], 2);
  EXPECT_EQ(j["step"], 7);
  EXPECT_EQ(j["next_batch"], 123);
  EXPECT_EQ(j["model"]["n_layer"], 2);
  EXPECT_EQ(j["model"]["vocab_size"], 50);
  for (const char* name : {"model-00000.safetensors", "optimizer-00000.safetensors"}) {
    EXPECT_EQ(j["files"][name]["bytes"].get<uint64_t>(), fs::file_size(dir / name)) << name;
    EXPECT_EQ(j["files"][name]["xxh64"].get<std::string>().size(), 16u) << name;
  }
}

TEST(Checkpoint, WithoutOptimizerState) {
  TempDir tmp;
  TrainedTiny t;
  const fs::path dir =
      save_checkpoint(tmp / "run", t.specs, t.weights.data(), nullptr, nullptr, t.state, 0);
  EXPECT_FALSE(fs::exists(dir / "optimizer-00000.safetensors"));
  std::vector<float> w(t.weights.size()), m(w.size(), 5.0f), v(w.size(), 5.0f);
  const CheckpointState s = load_checkpoint(dir, t.specs, w.data(), m.data(), v.data());
  EXPECT_FALSE(s.has_optimizer);
  EXPECT_TRUE(same_bits(w, t.weights));
  EXPECT_EQ(m, std::vector<float>(w.size(), 5.0f)) << "moments absent: left untouched";
}

TEST(Checkpoint, BadMagic) {
  TempDir tmp;
  TrainedTiny t;
  const fs::path dir = t.save(tmp / "run");
  nlohmann::json j = read_manifest(dir);
  j["magic"] = "not-loom";
  write_manifest(dir, j);
  std::vector<float> w(t.weights.size());
  EXPECT_INPUT_ERROR(load_checkpoint(dir, t.specs, w.data(), nullptr, nullptr), "manifest.json",
                     "bad magic \"not-loom\"");
  EXPECT_INPUT_ERROR(read_checkpoint_manifest(dir), "bad magic");
}

TEST(Checkpoint, BadVersion) {
  TempDir tmp;
  TrainedTiny t;
  const fs::path dir = t.save(tmp / "run");
  nlohmann::json j = read_manifest(dir);
  j["version"] = 3;
  write_manifest(dir, j);
  EXPECT_INPUT_ERROR(read_checkpoint_manifest(dir), "manifest.json", "unsupported version 3");
}

TEST(Checkpoint, ManifestNotJsonOrMissingField) {
  TempDir tmp;
  TrainedTiny t;
  const fs::path dir = t.save(tmp / "run");
  nlohmann::json j = read_manifest(dir);
  j.erase("next_batch");
  write_manifest(dir, j);
  EXPECT_INPUT_ERROR(read_checkpoint_manifest(dir), "manifest.json", "'next_batch' is missing");
  write_file_atomic(dir / "manifest.json", std::string_view("{\"magic\": "));
  EXPECT_INPUT_ERROR(read_checkpoint_manifest(dir), "manifest.json", "not valid JSON");
}

// Found by the manifest fuzzer (issue 12): 1e99999 made nlohmann::json throw out_of_range,
// which escaped as an uncaught exception instead of naming the manifest.
TEST(Checkpoint, ANumberOutOfRangeInTheManifestIsNamed) {
  TempDir tmp;
  TrainedTiny t;
  const fs::path dir = t.save(tmp / "run");
  write_file_atomic(dir / "manifest.json", std::string("{\"magic\": \"loom-checkpoint\", "
                                                       "\"step\": 1e99999}"));
  EXPECT_INPUT_ERROR(read_checkpoint_manifest(dir), "manifest.json", "not valid JSON");
}

TEST(Checkpoint, ChecksumMismatchLeavesBuffersUntouched) {
  TempDir tmp;
  TrainedTiny t;
  const fs::path dir = t.save(tmp / "run");
  auto bytes = file_bytes(dir / "model-00000.safetensors");
  bytes[bytes.size() - 100] ^= 0x01;  // one bit of one weight: sizes and header still valid
  write_bytes(dir / "model-00000.safetensors", bytes);
  std::vector<float> w(t.weights.size(), 9.0f);
  EXPECT_INPUT_ERROR(load_checkpoint(dir, t.specs, w.data(), nullptr, nullptr), "step_00000007",
                     "checksum mismatch in model-00000.safetensors");
  EXPECT_EQ(w, std::vector<float>(w.size(), 9.0f));
}

TEST(Checkpoint, TruncatedFile) {
  TempDir tmp;
  TrainedTiny t;
  const fs::path dir = t.save(tmp / "run");
  auto bytes = file_bytes(dir / "optimizer-00000.safetensors");
  bytes.resize(bytes.size() - 4);
  write_bytes(dir / "optimizer-00000.safetensors", bytes);
  std::vector<float> w(t.weights.size()), m(w.size()), v(w.size());
  EXPECT_INPUT_ERROR(load_checkpoint(dir, t.specs, w.data(), m.data(), v.data()),
                     "optimizer-00000.safetensors", "truncated");
}

TEST(Checkpoint, MissingFile) {
  TempDir tmp;
  TrainedTiny t;
  const fs::path dir = t.save(tmp / "run");
  fs::remove(dir / "model-00000.safetensors");
  std::vector<float> w(t.weights.size());
  EXPECT_INPUT_ERROR(load_checkpoint(dir, t.specs, w.data(), nullptr, nullptr), "step_00000007",
                     "model-00000.safetensors listed in the manifest is missing");
  fs::remove(dir / "manifest.json");
  EXPECT_INPUT_ERROR(read_checkpoint_manifest(dir), "manifest.json is missing");
}

TEST(Checkpoint, ModelMismatch) {
  TempDir tmp;
  TrainedTiny t(4);
  const fs::path dir = t.save(tmp / "run");
  TinyModel other(1, 6);
  EXPECT_INPUT_ERROR(load_checkpoint(dir, other.specs, other.weights.data(), nullptr, nullptr),
                     "step_00000007", "checkpoint has n_layer=4 but the model has n_layer=6");
  GptConfig wide = t.cfg;
  wide.n_embd = 32;
  std::vector<ParamSpec> wide_specs = gpt2_param_specs(wide);
  std::vector<float> w(flat_size(wide_specs));
  EXPECT_INPUT_ERROR(load_checkpoint(dir, wide_specs, w.data(), nullptr, nullptr),
                     "checkpoint has n_embd=16 but the model has n_embd=32");
}

TEST(Checkpoint, ResolveIgnoresTmpAndInvalid) {
  TempDir tmp;
  TrainedTiny t;
  const fs::path run = tmp / "run";
  const fs::path s1 = t.save(run, 0, 1);
  const fs::path s2 = t.save(run, 0, 2);
  // An interrupted save of step 3: files but no manifest, under the temporary name.
  fs::create_directories(run / "checkpoints" / "step_00000003.tmp");
  fs::copy_file(s2 / "model-00000.safetensors", run / "checkpoints/step_00000003.tmp/model-00000.safetensors");
  testing::internal::CaptureStderr();
  EXPECT_EQ(resolve_checkpoint(run), s2);
  EXPECT_NE(testing::internal::GetCapturedStderr().find("step_00000003.tmp"), std::string::npos);
  EXPECT_EQ(resolve_checkpoint(run / "checkpoints"), s2);
  EXPECT_EQ(resolve_checkpoint(s1), s1);

  // The newest is corrupt: fall back to step 1, saying why.
  auto bytes = file_bytes(s2 / "model-00000.safetensors");
  bytes.back() ^= 0x40;
  write_bytes(s2 / "model-00000.safetensors", bytes);
  testing::internal::CaptureStderr();
  EXPECT_EQ(resolve_checkpoint(run), s1);
  const std::string err = testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("step_00000002"), std::string::npos) << err;
  EXPECT_NE(err.find("checksum mismatch"), std::string::npos) << err;
  // Named explicitly, a bad checkpoint is an error, not a fallback.
  EXPECT_INPUT_ERROR(resolve_checkpoint(s2), "checksum mismatch");
}

TEST(Checkpoint, ResolveWithoutCheckpointsFails) {
  TempDir tmp;
  fs::create_directories(tmp / "run");
  EXPECT_INPUT_ERROR(resolve_checkpoint(tmp / "run"), "no valid checkpoint", "run");
  EXPECT_INPUT_ERROR(resolve_checkpoint(tmp / "nowhere"), "nowhere");
}

TEST(Checkpoint, KeepLastPrunesOldest) {
  TempDir tmp;
  TrainedTiny t;
  const fs::path run = tmp / "run";
  // An interrupted save older than the next one: cleaned up by it.
  fs::create_directories(run / "checkpoints" / "step_00000005.tmp");
  for (int step = 1; step <= 5; ++step) t.save(run, 2, step * 10);
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(run / "checkpoints"))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"step_00000040", "step_00000050"}));

  for (int step = 6; step <= 8; ++step) t.save(run, 0, step * 10);  // 0 keeps all
  int count = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(run / "checkpoints")) ++count;
  EXPECT_EQ(count, 5);
}

TEST(Checkpoint, ResavingAStepReplacesIt) {
  TempDir tmp;
  TrainedTiny t;
  const fs::path dir = t.save(tmp / "run");
  t.weights[5] += 1.0f;
  t.state.next_batch = 999;
  EXPECT_EQ(t.save(tmp / "run"), dir);
  std::vector<float> w(t.weights.size());
  EXPECT_EQ(load_checkpoint(dir, t.specs, w.data(), nullptr, nullptr).next_batch, 999u);
  EXPECT_TRUE(same_bits(w, t.weights));
}

}  // namespace
}  // namespace loom
