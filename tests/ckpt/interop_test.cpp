#include "ckpt/interop.h"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "ckpt/safetensors.h"
#include "test_util.h"

namespace loom {
namespace {

namespace fs = std::filesystem;
using test::file_bytes;
using test::same_bits;
using test::TempDir;
using test::TinyModel;
using test::write_bytes;

void expect_same_config(const GptConfig& a, const GptConfig& b) {
  EXPECT_EQ(a.n_layer, b.n_layer);
  EXPECT_EQ(a.n_head, b.n_head);
  EXPECT_EQ(a.n_embd, b.n_embd);
  EXPECT_EQ(a.block_size, b.block_size);
  EXPECT_EQ(a.vocab_size, b.vocab_size);
}

TEST(HfSafetensors, RoundTripIsExact) {
  TempDir dir;
  TinyModel t;
  export_hf_safetensors(dir / "m.safetensors", t.cfg, t.specs, t.weights.data());
  const ImportedModel back = import_hf_safetensors(dir / "m.safetensors");  // n_head: metadata
  expect_same_config(back.config, t.cfg);
  EXPECT_TRUE(same_bits(back.weights, t.weights));
}

TEST(HfSafetensors, LayoutIsHuggingFaces) {
  TempDir dir;
  TinyModel t;
  export_hf_safetensors(dir / "m.safetensors", t.cfg, t.specs, t.weights.data());
  const SafetensorsFile f = SafetensorsFile::open(dir / "m.safetensors");
  const int64_t C = 16, V = 50;
  EXPECT_EQ(f.shape("wte.weight"), (std::vector<int64_t>{V, C})) << "unpadded";
  EXPECT_EQ(f.shape("wpe.weight"), (std::vector<int64_t>{8, C}));
  EXPECT_EQ(f.shape("h.0.attn.c_attn.weight"), (std::vector<int64_t>{C, 3 * C}));
  EXPECT_EQ(f.shape("h.1.attn.c_proj.weight"), (std::vector<int64_t>{C, C}));
  EXPECT_EQ(f.shape("h.1.mlp.c_fc.weight"), (std::vector<int64_t>{C, 4 * C}));
  EXPECT_EQ(f.shape("h.1.mlp.c_proj.weight"), (std::vector<int64_t>{4 * C, C}));
  EXPECT_EQ(f.shape("h.0.attn.c_attn.bias"), (std::vector<int64_t>{3 * C}));
  EXPECT_FALSE(f.contains("lm_head.weight"));
  EXPECT_EQ(f.tensors().size(), t.specs.size());
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("n_head"), "2");
  EXPECT_EQ(f.metadata().at("n_layer"), "2");
  EXPECT_EQ(f.metadata().at("n_embd"), "16");
  EXPECT_EQ(f.metadata().at("n_ctx"), "8");
  EXPECT_EQ(f.metadata().at("vocab_size"), "50");

  // HF c_attn.weight[i][j] == loom c_attn.weight[j][i].
  std::vector<float> hf(size_t(C * 3 * C));
  f.read("h.0.attn.c_attn.weight", hf.data(), std::vector<int64_t>{C, 3 * C});
  const float* loom = t.weights.data() + find_param(t.specs, "h.0.attn.c_attn.weight").offset;
  const int64_t i = 5, j = 37;
  EXPECT_EQ(hf[size_t(i * 3 * C + j)], loom[j * C + i]);
  EXPECT_NE(hf[size_t(i * 3 * C + j)], loom[i * C + j]) << "the element must move";
  for (int64_t a = 0; a < C; ++a)
    for (int64_t b = 0; b < 3 * C; ++b) ASSERT_EQ(hf[size_t(a * 3 * C + b)], loom[b * C + a]);
}

TEST(HfSafetensors, ExportImportExportIsByteIdentical) {
  TempDir dir;
  TinyModel t;
  export_hf_safetensors(dir / "a.safetensors", t.cfg, t.specs, t.weights.data());
  const ImportedModel back = import_hf_safetensors(dir / "a.safetensors");
  export_hf_safetensors(dir / "b.safetensors", back.config, gpt2_param_specs(back.config),
                        back.weights.data());
  EXPECT_EQ(file_bytes(dir / "a.safetensors"), file_bytes(dir / "b.safetensors"));
}

// A file as transformers writes it: "transformer." prefix, causal-mask buffers, a tied
// lm_head, and no n_head metadata.
void write_transformers_style(const fs::path& path, const TinyModel& t, bool tied_lm_head) {
  export_hf_safetensors(path.string() + ".plain", t.cfg, t.specs, t.weights.data());
  const SafetensorsFile plain = SafetensorsFile::open(path.string() + ".plain");
  std::vector<std::vector<float>> data;
  data.reserve(plain.tensors().size() + 8);
  SafetensorsWriter w;
  for (const auto& tensor : plain.tensors()) {
    auto& d = data.emplace_back(tensor.end / 4 - tensor.begin / 4);
    std::memcpy(d.data(), plain.data(tensor.name).data(), d.size() * 4);
    w.add("transformer." + tensor.name, tensor.shape, d.data());
  }
  auto& mask = data.emplace_back(64, 1.0f);
  w.add("transformer.h.0.attn.bias", {1, 1, 8, 8}, mask.data());
  w.add("transformer.h.1.attn.masked_bias", {1}, mask.data());
  std::vector<float> lm_head(data[0]);
  if (!tied_lm_head) lm_head[3] += 1.0f;
  w.add("lm_head.weight", {50, 16}, lm_head.data());
  w.write(path);
}

TEST(HfSafetensors, ImportsTransformersNamingWithNHeadArgument) {
  TempDir dir;
  TinyModel t;
  write_transformers_style(dir / "tf.safetensors", t, true);
  EXPECT_INPUT_ERROR(import_hf_safetensors(dir / "tf.safetensors"), "tf.safetensors", "--n-head");
  const ImportedModel back = import_hf_safetensors(dir / "tf.safetensors", 2);
  expect_same_config(back.config, t.cfg);
  EXPECT_TRUE(same_bits(back.weights, t.weights));
  EXPECT_INPUT_ERROR(import_hf_safetensors(dir / "tf.safetensors", 3), "tf.safetensors",
                     "not divisible by n_head=3");
}

TEST(HfSafetensors, RejectsUntiedLmHead) {
  TempDir dir;
  TinyModel t;
  write_transformers_style(dir / "tf.safetensors", t, false);
  EXPECT_INPUT_ERROR(import_hf_safetensors(dir / "tf.safetensors", 2), "tf.safetensors",
                     "'lm_head.weight' differs from wte.weight");
}

TEST(HfSafetensors, RejectsMissingOrMisshapenTensor) {
  TempDir dir;
  TinyModel t;
  std::vector<float> zeros(128 * 16);  // the largest tensor: padded wte
  SafetensorsWriter w;
  w.set_metadata("n_head", "2");
  for (const ParamSpec& p : t.specs) {
    if (p.name == "h.1.mlp.c_fc.bias") continue;
    std::vector<int64_t> shape = p.global_shape;
    if (p.name == "wte.weight") shape[0] = 50;
    if (p.name.ends_with("c_attn.weight") || p.name.ends_with("c_proj.weight") ||
        p.name.ends_with("c_fc.weight"))
      std::swap(shape[0], shape[1]);
    w.add(p.name, shape, zeros.data());
  }
  w.write(dir / "missing.safetensors");
  EXPECT_INPUT_ERROR(import_hf_safetensors(dir / "missing.safetensors"), "missing.safetensors",
                     "missing tensor 'h.1.mlp.c_fc.bias'");

  SafetensorsWriter bad;
  bad.set_metadata("n_head", "2");
  for (const ParamSpec& p : t.specs) bad.add(p.name, p.global_shape, zeros.data());  // loom layout
  bad.write(dir / "loom_layout.safetensors");
  EXPECT_INPUT_ERROR(import_hf_safetensors(dir / "loom_layout.safetensors"),
                     "loom_layout.safetensors",
                     "'h.0.attn.c_attn.weight' has shape [48, 16] but [16, 48] was expected");
}

TEST(Llmc, RoundTripIsExact) {
  TempDir dir;
  TinyModel t;
  export_llmc(dir / "m.bin", t.cfg, t.specs, t.weights.data());
  const ImportedModel back = import_llmc(dir / "m.bin");
  expect_same_config(back.config, t.cfg);
  EXPECT_TRUE(same_bits(back.weights, t.weights));
}

TEST(Llmc, HeaderAndOrderAreLlmcs) {
  TempDir dir;
  TinyModel t;
  export_llmc(dir / "m.bin", t.cfg, t.specs, t.weights.data());
  const auto bytes = file_bytes(dir / "m.bin");
  const int64_t L = 2, C = 16, Vp = 128, maxT = 8;
  const int64_t numel = Vp * C + maxT * C + L * (12 * C * C + 13 * C) + 2 * C;
  ASSERT_EQ(int64_t(bytes.size()), 1024 + 4 * numel);
  std::vector<int32_t> header(256);
  std::memcpy(header.data(), bytes.data(), 1024);
  EXPECT_EQ(std::vector<int32_t>(header.begin(), header.begin() + 8),
            (std::vector<int32_t>{20240326, 3, 8, 50, 2, 2, 16, 128}));
  EXPECT_EQ(std::count(header.begin() + 8, header.end(), 0), 248);
  // qkvw of layer 1 follows wte, wpe, ln1w (L,C), ln1b (L,C) and qkvw of layer 0.
  const float* file = reinterpret_cast<const float*>(bytes.data() + 1024);
  const float* qkvw1 = file + Vp * C + maxT * C + 2 * L * C + 3 * C * C;
  const float* loom = t.weights.data() + find_param(t.specs, "h.1.attn.c_attn.weight").offset;
  EXPECT_EQ(std::memcmp(qkvw1, loom, 3 * C * C * sizeof(float)), 0);
  // lnfb is last.
  const float* lnfb = t.weights.data() + find_param(t.specs, "ln_f.bias").offset;
  EXPECT_EQ(std::memcmp(file + numel - C, lnfb, C * sizeof(float)), 0);
}

TEST(Llmc, ExportImportExportIsByteIdentical) {
  TempDir dir;
  TinyModel t;
  export_llmc(dir / "a.bin", t.cfg, t.specs, t.weights.data());
  const ImportedModel back = import_llmc(dir / "a.bin");
  export_llmc(dir / "b.bin", back.config, gpt2_param_specs(back.config), back.weights.data());
  EXPECT_EQ(file_bytes(dir / "a.bin"), file_bytes(dir / "b.bin"));
}

// Issue 11: a NaN weight imported evaluated to val_loss nan and generated <|endoftext|>
// forever. Both importers refuse it, naming the tensor.
TEST(HfSafetensors, RejectsNonFiniteWeight) {
  TempDir dir;
  TinyModel t;
  t.weights[t.specs[1].offset + 2] = std::numeric_limits<float>::quiet_NaN();
  export_hf_safetensors(dir / "nan.safetensors", t.cfg, t.specs, t.weights.data());
  EXPECT_INPUT_ERROR(import_hf_safetensors(dir / "nan.safetensors"), "nan.safetensors",
                     "non-finite value (nan at element 2 of");
}

TEST(Llmc, RejectsNonFiniteWeight) {
  TempDir dir;
  TinyModel t;
  t.weights[t.specs[1].offset + 2] = -std::numeric_limits<float>::infinity();
  export_llmc(dir / "inf.bin", t.cfg, t.specs, t.weights.data());
  EXPECT_INPUT_ERROR(import_llmc(dir / "inf.bin"), "inf.bin", "'" + t.specs[1].name + "'",
                     "non-finite value (-inf at element 2 of");
}

TEST(Llmc, RejectsBadHeaderAndSize) {
  TempDir dir;
  TinyModel t;
  export_llmc(dir / "m.bin", t.cfg, t.specs, t.weights.data());
  const auto good = file_bytes(dir / "m.bin");
  auto with_int = [&](int index, int32_t value) {
    auto b = good;
    std::memcpy(b.data() + 4 * index, &value, 4);
    write_bytes(dir / "bad.bin", b);
  };
  with_int(0, 20240327);
  EXPECT_INPUT_ERROR(import_llmc(dir / "bad.bin"), "bad.bin", "bad magic 20240327");
  with_int(1, 5);
  EXPECT_INPUT_ERROR(import_llmc(dir / "bad.bin"), "bad.bin", "unsupported version 5");
  with_int(6, 15);  // C not divisible by NH
  EXPECT_INPUT_ERROR(import_llmc(dir / "bad.bin"), "bad.bin", "bad header");
  with_int(4, 1 << 30);  // absurd L: caught by the size check without allocating
  EXPECT_INPUT_ERROR(import_llmc(dir / "bad.bin"), "bad.bin", "truncated");

  auto truncated = good;
  truncated.resize(truncated.size() - 4);
  write_bytes(dir / "bad.bin", truncated);
  EXPECT_INPUT_ERROR(import_llmc(dir / "bad.bin"), "bad.bin", "truncated");
  auto oversized = good;
  oversized.resize(oversized.size() + 4);
  write_bytes(dir / "bad.bin", oversized);
  EXPECT_INPUT_ERROR(import_llmc(dir / "bad.bin"), "bad.bin", "trailing bytes");
  write_bytes(dir / "bad.bin", std::vector<char>(good.begin(), good.begin() + 100));
  EXPECT_INPUT_ERROR(import_llmc(dir / "bad.bin"), "bad.bin", "shorter than the 1024-byte header");
}

}  // namespace
}  // namespace loom
