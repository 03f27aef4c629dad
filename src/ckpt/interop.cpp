#include "ckpt/interop.h"

#include <fmt/format.h>

#include <array>
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <deque>
#include <map>
#include <regex>

#include "ckpt/mapped_file.h"
#include "ckpt/safetensors.h"
#include "core/check.h"
#include "core/file_io.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

// HF's Conv1D weights: stored (in, out) by HF, (out, in) by loom.
bool is_conv1d_weight(const std::string& name) {
  for (const char* suffix :
       {".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"})
    if (name.ends_with(suffix)) return true;
  return false;
}

// dst (cols, rows) = src (rows, cols)^T, copying bits (memcpy never touches a NaN payload).
void transpose(const float* src, float* dst, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      std::memcpy(dst + c * rows + r, src + r * cols + c, sizeof(float));
}

// The shape a parameter has in an HF file.
std::vector<int64_t> hf_shape(const ParamSpec& p, const GptConfig& cfg) {
  if (p.name == "wte.weight") return {cfg.vocab_size, cfg.n_embd};
  if (is_conv1d_weight(p.name)) return {p.global_shape[1], p.global_shape[0]};
  return p.global_shape;
}

void check_specs(const GptConfig& cfg, const std::vector<ParamSpec>& specs) {
  const std::vector<ParamSpec> want = gpt2_param_specs(cfg);
  LOOM_CHECK(want.size() == specs.size(), "specs have {} parameters, the config {}", specs.size(),
             want.size());
  for (size_t i = 0; i < specs.size(); ++i)
    LOOM_CHECK(specs[i].name == want[i].name && specs[i].global_shape == want[i].global_shape &&
                   specs[i].local_shape == specs[i].global_shape,
               "export needs whole tensors of gpt2_param_specs(cfg); parameter {} is '{}' {}", i,
               specs[i].name, shape_str(specs[i].local_shape));
}

int parse_positive_int(const std::string& what, const std::string& text) {
  int value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  LOOM_REQUIRE(ec == std::errc() && end == text.data() + text.size() && value > 0,
               "{} '{}' is not a positive integer", what, text);
  return value;
}

}  // namespace

// ---- Hugging Face safetensors -----------------------------------------------------------

void export_hf_safetensors(const fs::path& path, const GptConfig& cfg,
                           const std::vector<ParamSpec>& specs, const float* weights) {
  check_specs(cfg, specs);
  SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.set_metadata("n_head", std::to_string(cfg.n_head));
  w.set_metadata("n_layer", std::to_string(cfg.n_layer));
  w.set_metadata("n_embd", std::to_string(cfg.n_embd));
  w.set_metadata("n_ctx", std::to_string(cfg.block_size));
  w.set_metadata("vocab_size", std::to_string(cfg.vocab_size));
  std::deque<std::vector<float>> transposed;  // deque: earlier buffers never move
  for (const ParamSpec& p : specs) {
    const float* src = weights + p.offset;
    if (is_conv1d_weight(p.name)) {
      auto& t = transposed.emplace_back(p.numel);
      transpose(src, t.data(), p.global_shape[0], p.global_shape[1]);
      src = t.data();
    }
    // wte's first V rows are contiguous: the padding rows are simply not written.
    w.add(p.name, hf_shape(p, cfg), src);
  }
  w.write(path);
}

namespace {

// Maps loom names to the file's names, dropping the "transformer." prefix and the tensors
// loom does not keep; fills lm_head with the file's lm_head name if present.
std::map<std::string, std::string> hf_names(const SafetensorsFile& f, std::string& lm_head) {
  static const std::regex kBuffer(R"(h\.\d+\.attn\.(bias|masked_bias))");
  std::map<std::string, std::string> names;
  for (const std::string& file_name : f.names()) {
    std::string name = file_name;
    if (name.starts_with("transformer.")) name = name.substr(12);
    if (name == "lm_head.weight") {
      lm_head = file_name;
      continue;
    }
    if (std::regex_match(name, kBuffer)) continue;  // the causal mask, not a parameter
    LOOM_REQUIRE(names.emplace(name, file_name).second,
                 "safetensors file '{}': '{}' and '{}' are the same parameter", f.path().string(),
                 names[name], file_name);
  }
  return names;
}

GptConfig infer_hf_config(const SafetensorsFile& f, const std::map<std::string, std::string>& names,
                          std::optional<int> n_head) {
  const std::string what = fmt::format("safetensors file '{}'", f.path().string());
  for (const char* need : {"wte.weight", "wpe.weight", "h.0.ln_1.weight"})
    LOOM_REQUIRE(names.count(need), "{}: no tensor '{}': not a GPT-2 model", what, need);
  const auto& wte = f.shape(names.at("wte.weight"));
  const auto& wpe = f.shape(names.at("wpe.weight"));
  LOOM_REQUIRE(wte.size() == 2 && wpe.size() == 2 && wte[1] == wpe[1],
               "{}: wte.weight {} and wpe.weight {} must be (V, C) and (block_size, C)", what,
               shape_str(wte), shape_str(wpe));
  GptConfig cfg;
  cfg.vocab_size = int(wte[0]);
  cfg.n_embd = int(wte[1]);
  cfg.block_size = int(wpe[0]);
  cfg.n_layer = 0;
  while (names.count(fmt::format("h.{}.ln_1.weight", cfg.n_layer))) ++cfg.n_layer;
  if (n_head) {
    cfg.n_head = *n_head;
  } else {
    auto it = f.metadata().find("n_head");
    LOOM_REQUIRE(it != f.metadata().end(),
                 "{}: the file does not record the number of heads (no 'n_head' metadata); "
                 "pass --n-head (12 for GPT-2 small, 16 medium, 20 large, 25 xl)",
                 what);
    cfg.n_head = parse_positive_int(what + ": metadata n_head", it->second);
  }
  try {
    cfg.validate();
  } catch (const InputError& e) {
    throw InputError(fmt::format("{}: {}", what, e.what()));
  }
  return cfg;
}

}  // namespace

ImportedModel import_hf_safetensors(const fs::path& path, std::optional<int> n_head) {
  const SafetensorsFile f = SafetensorsFile::open(path);
  std::string lm_head;
  std::map<std::string, std::string> names = hf_names(f, lm_head);
  ImportedModel out;
  out.config = infer_hf_config(f, names, n_head);
  const GptConfig& cfg = out.config;
  const std::vector<ParamSpec> specs = gpt2_param_specs(cfg);
  // Names and shapes first, so every problem is reported before any copying.
  for (const ParamSpec& p : specs) {
    auto it = names.find(p.name);
    LOOM_REQUIRE(it != names.end(), "safetensors file '{}': missing tensor '{}'", path.string(),
                 p.name);
    const auto want = hf_shape(p, cfg);
    LOOM_REQUIRE(f.shape(it->second) == want,
                 "safetensors file '{}': tensor '{}' has shape {} but {} was expected",
                 path.string(), it->second, shape_str(f.shape(it->second)), shape_str(want));
  }
  LOOM_REQUIRE(names.size() == specs.size(),
               "safetensors file '{}': {} tensors but a GPT-2 with n_layer={} has {} (unexpected "
               "names, e.g. h.{}.*?)",
               path.string(), names.size(), cfg.n_layer, specs.size(), cfg.n_layer);
  if (!lm_head.empty()) {
    // loom ties lm_head to wte; an untied model cannot be represented, so refuse it.
    LOOM_REQUIRE(f.shape(lm_head) == f.shape(names.at("wte.weight")) &&
                     std::ranges::equal(f.data(lm_head), f.data(names.at("wte.weight"))),
                 "safetensors file '{}': '{}' differs from wte.weight; loom ties them",
                 path.string(), lm_head);
  }
  out.weights.assign(flat_size(specs), 0.0f);  // zeros: wte's padding rows
  std::vector<float> scratch;
  for (const ParamSpec& p : specs) {
    const std::string& name = names.at(p.name);
    float* dst = out.weights.data() + p.offset;
    if (is_conv1d_weight(p.name)) {
      scratch.resize(p.numel);
      f.read(name, scratch.data(), hf_shape(p, cfg));
      transpose(scratch.data(), dst, p.global_shape[1], p.global_shape[0]);
    } else {
      f.read(name, dst, hf_shape(p, cfg));
    }
  }
  return out;
}

// ---- llm.c ------------------------------------------------------------------------------

namespace {

constexpr size_t kLlmcHeaderInts = 256;
constexpr size_t kLlmcHeaderBytes = kLlmcHeaderInts * sizeof(int32_t);

// The parameters in llm.c's file order: wte, wpe, then each per-layer tensor over all
// layers (ln1w for layers 0..L-1, ln1b for 0..L-1, ...), then lnfw, lnfb.
std::vector<const ParamSpec*> llmc_order(const std::vector<ParamSpec>& specs, int n_layer) {
  static const char* kPerLayer[] = {"ln_1.weight",      "ln_1.bias",          "attn.c_attn.weight",
                                    "attn.c_attn.bias", "attn.c_proj.weight", "attn.c_proj.bias",
                                    "ln_2.weight",      "ln_2.bias",          "mlp.c_fc.weight",
                                    "mlp.c_fc.bias",    "mlp.c_proj.weight",  "mlp.c_proj.bias"};
  std::map<std::string, const ParamSpec*> by_name;
  for (const ParamSpec& p : specs) by_name[p.name] = &p;
  std::vector<const ParamSpec*> order = {by_name.at("wte.weight"), by_name.at("wpe.weight")};
  for (const char* suffix : kPerLayer)
    for (int l = 0; l < n_layer; ++l)
      order.push_back(by_name.at(fmt::format("h.{}.{}", l, suffix)));
  order.push_back(by_name.at("ln_f.weight"));
  order.push_back(by_name.at("ln_f.bias"));
  return order;
}

struct LlmcHeader {
  GptConfig cfg;
  int64_t padded_vocab = 0;  // Vp as the file has it
};

LlmcHeader parse_llmc_header(const MappedFile& file) {
  const std::string what = fmt::format("llm.c model file '{}'", file.path().string());
  LOOM_REQUIRE(file.size() >= kLlmcHeaderBytes,
               "{}: file is {} bytes, shorter than the {}-byte header (truncated?)", what,
               file.size(), kLlmcHeaderBytes);
  std::array<int32_t, kLlmcHeaderInts> h{};
  std::memcpy(h.data(), file.bytes().data(), kLlmcHeaderBytes);
  LOOM_REQUIRE(h[0] == kLlmcMagic, "{}: bad magic {} (expected {}): not an llm.c model file", what,
               h[0], kLlmcMagic);
  LOOM_REQUIRE(h[1] == kLlmcVersion,
               "{}: unsupported version {} (loom reads version {}, fp32; version 5 is bf16)", what,
               h[1], kLlmcVersion);
  LlmcHeader out;
  out.cfg.block_size = h[2];
  out.cfg.vocab_size = h[3];
  out.cfg.n_layer = h[4];
  out.cfg.n_head = h[5];
  out.cfg.n_embd = h[6];
  out.padded_vocab = h[7];
  try {
    out.cfg.validate();
  } catch (const InputError& e) {
    throw InputError(fmt::format("{}: bad header: {}", what, e.what()));
  }
  LOOM_REQUIRE(out.padded_vocab >= out.cfg.vocab_size,
               "{}: bad header: padded vocab Vp={} is smaller than V={}", what, out.padded_vocab,
               out.cfg.vocab_size);
  return out;
}

}  // namespace

void export_llmc(const fs::path& path, const GptConfig& cfg, const std::vector<ParamSpec>& specs,
                 const float* weights) {
  check_specs(cfg, specs);
  std::array<int32_t, kLlmcHeaderInts> header{};
  header[0] = kLlmcMagic;
  header[1] = kLlmcVersion;
  header[2] = cfg.block_size;
  header[3] = cfg.vocab_size;
  header[4] = cfg.n_layer;
  header[5] = cfg.n_head;
  header[6] = cfg.n_embd;
  header[7] = cfg.padded_vocab();
  AtomicFile out(path);
  out.write(header.data(), kLlmcHeaderBytes);
  for (const ParamSpec* p : llmc_order(specs, cfg.n_layer))
    out.write(weights + p->offset, p->numel * sizeof(float));
  out.commit();
}

ImportedModel import_llmc(const fs::path& path) {
  const MappedFile file(path);
  const LlmcHeader header = parse_llmc_header(file);
  ImportedModel out;
  out.config = header.cfg;
  const GptConfig& cfg = out.config;
  // Size check from the header alone, before allocating anything it describes. 128-bit
  // because a corrupt header's C*C*L can overflow 64 bits.
  using u128 = unsigned __int128;
  const u128 C = u128(cfg.n_embd), L = u128(cfg.n_layer);
  const u128 numel =
      u128(header.padded_vocab) * C + u128(cfg.block_size) * C + L * (12 * C * C + 13 * C) + 2 * C;
  const u128 expected = kLlmcHeaderBytes + numel * sizeof(float);
  LOOM_REQUIRE(u128(file.size()) == expected,
               "llm.c model file '{}': file is {} bytes but its header (L={} C={} V={} Vp={} "
               "maxT={}) needs {} ({})",
               path.string(), file.size(), cfg.n_layer, cfg.n_embd, cfg.vocab_size,
               header.padded_vocab, cfg.block_size, uint64_t(std::min(expected, u128(UINT64_MAX))),
               u128(file.size()) < expected ? "truncated" : "trailing bytes");
  const std::vector<ParamSpec> specs = gpt2_param_specs(cfg);
  // The file's wte has its own Vp rows; every other tensor has loom's shape.
  auto file_numel = [&](const ParamSpec* p) {
    return p->name == "wte.weight" ? uint64_t(header.padded_vocab) * uint64_t(cfg.n_embd)
                                   : uint64_t(p->numel);
  };
  out.weights.assign(flat_size(specs), 0.0f);
  const uint8_t* src = file.bytes().data() + kLlmcHeaderBytes;
  for (const ParamSpec* p : llmc_order(specs, cfg.n_layer)) {
    // A different Vp only moves where the padding ends; copy the rows both sides have.
    const uint64_t copy = std::min<uint64_t>(file_numel(p), p->numel);
    float* dst = out.weights.data() + p->offset;
    std::memcpy(dst, src, copy * sizeof(float));
    const float* bad = std::find_if(dst, dst + copy, [](float v) { return !std::isfinite(v); });
    LOOM_REQUIRE(bad == dst + copy,
                 "llm.c model file '{}': tensor '{}' holds a non-finite value ({} at element {} "
                 "of {}); refusing to load it",
                 path.string(), p->name, *bad, bad - dst, copy);
    src += file_numel(p) * sizeof(float);
  }
  return out;
}

void write_reference_model(const std::filesystem::path& dir, const GptConfig& cfg,
                           const std::vector<ParamSpec>& specs, const float* weights,
                           size_t weight_floats, nlohmann::json spec) {
  spec["config"] = {{"n_layer", cfg.n_layer}, {"n_head", cfg.n_head}, {"n_embd", cfg.n_embd},
                    {"block_size", cfg.block_size}, {"vocab_size", cfg.vocab_size}};
  spec["params"] = nlohmann::json::array();
  for (const ParamSpec& p : specs)
    spec["params"].push_back({{"name", p.name}, {"shape", p.global_shape}, {"offset", p.offset},
                              {"decay", p.decay}});
  write_file_atomic(dir / "spec.json", spec.dump(1));
  AtomicFile f(dir / "weights.bin");
  f.write(weights, weight_floats * sizeof(float));
  f.commit();
}

}  // namespace loom
