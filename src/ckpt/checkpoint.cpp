#include "ckpt/checkpoint.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "ckpt/safetensors.h"
#include "ckpt/shards.h"
#include "core/check.h"
#include "core/file_io.h"

namespace loom {
namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

namespace {

constexpr const char* kManifest = "manifest.json";
constexpr const char* kTmpSuffix = ".tmp";

using namespace ckpt_detail;

struct Manifest {
  CheckpointState state;
  std::map<std::string, FileDigest> files;
  std::vector<ShardEntry> tensors;
};

// ---- manifest ---------------------------------------------------------------------------

Json manifest_json(const CheckpointState& s, const std::map<std::string, FileDigest>& files,
                   const std::vector<ShardEntry>& tensors) {
  Json j;
  j["magic"] = kCheckpointMagic;
  j["version"] = kCheckpointVersion;
  j["step"] = s.step;
  j["next_batch"] = s.next_batch;
  j["seed"] = s.seed;
  j["model"] = {{"n_layer", s.model.n_layer},
                {"n_head", s.model.n_head},
                {"n_embd", s.model.n_embd},
                {"block_size", s.model.block_size},
                {"vocab_size", s.model.vocab_size}};
  j["config_toml"] = s.config_toml;
  j["config_xxh64"] = fmt::format("{:016x}", xxh64_of(std::span<const uint8_t>(
                                                  reinterpret_cast<const uint8_t*>(s.config_toml.data()),
                                                  s.config_toml.size())));
  j["layout"] = s.layout;
  // The LR schedule's position is the step, the optimizer's step count the updates taken
  // (fewer when fp16 loss scaling skipped some); the RNG is Philox keyed by (seed, name,
  // index) and (seed, epoch): stateless, so the seed is all.
  j["optimizer_step"] = s.optimizer_step < 0 ? s.step : s.optimizer_step;
  if (s.loss_scale > 0)
    j["loss_scale"] = {{"scale", s.loss_scale}, {"growth_tracker", s.loss_scale_growth_tracker}};
  j["data"] = {{"next_micro_batch", s.next_batch}, {"order", "sequential or per-epoch Philox"}};
  Json fj = Json::object();
  for (const auto& [name, d] : files)
    fj[name] = {{"bytes", d.bytes}, {"xxh64", fmt::format("{:016x}", d.xxh64)}};
  j["files"] = fj;
  j["tensors"] = entries_json(tensors);
  return j;
}

// Typed field access with errors that name the manifest and the field.
const Json& field(const std::string& what, const Json& j, const char* key) {
  LOOM_REQUIRE(j.is_object() && j.contains(key), "{}: field '{}' is missing", what, key);
  return j[key];
}

uint64_t get_u64(const std::string& what, const Json& j, const char* key) {
  const Json& f = field(what, j, key);
  LOOM_REQUIRE(f.is_number_unsigned(), "{}: field '{}' must be a non-negative integer, found {}",
               what, key, f.dump());
  return f.get<uint64_t>();
}

int get_int(const std::string& what, const Json& j, const char* key) {
  uint64_t value = get_u64(what, j, key);
  LOOM_REQUIRE(value <= uint64_t(INT32_MAX), "{}: field '{}' = {} is too large", what, key, value);
  return int(value);
}

std::string get_string(const std::string& what, const Json& j, const char* key) {
  const Json& f = field(what, j, key);
  LOOM_REQUIRE(f.is_string(), "{}: field '{}' must be a string, found {}", what, key, f.dump());
  return f.get<std::string>();
}

uint64_t parse_hex64(const std::string& what, const std::string& name, const std::string& text) {
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, 16);
  LOOM_REQUIRE(text.size() == 16 && ec == std::errc() && end == text.data() + text.size(),
               "{}: files.{}.xxh64 '{}' is not 16 hex digits", what, name, text);
  return value;
}

GptConfig parse_model(const std::string& what, const Json& j) {
  const Json& m = field(what, j, "model");
  GptConfig cfg;
  cfg.n_layer = get_int(what, m, "n_layer");
  cfg.n_head = get_int(what, m, "n_head");
  cfg.n_embd = get_int(what, m, "n_embd");
  cfg.block_size = get_int(what, m, "block_size");
  cfg.vocab_size = get_int(what, m, "vocab_size");
  try {
    cfg.validate();
  } catch (const InputError& e) {
    throw InputError(fmt::format("{}: invalid model: {}", what, e.what()));
  }
  return cfg;
}

std::map<std::string, FileDigest> parse_files(const std::string& what, const Json& j) {
  const Json& files = field(what, j, "files");
  LOOM_REQUIRE(files.is_object(), "{}: field 'files' must be an object", what);
  std::map<std::string, FileDigest> out;
  for (const auto& [name, entry] : files.items()) {
    // Only the files loom writes: a manifest must never point outside its directory.
    LOOM_REQUIRE(is_shard_file_name(name),
                 "{}: unknown file '{}' in 'files' (expected model-NNNNN.safetensors and "
                 "optimizer-NNNNN.safetensors)", what, name);
    const std::string fw = fmt::format("{} (files.{})", what, name);
    out[name] = {get_u64(fw, entry, "bytes"),
                 parse_hex64(what, name, get_string(fw, entry, "xxh64"))};
  }
  LOOM_REQUIRE(!out.empty(), "{}: 'files' lists no shard", what);
  return out;
}

Manifest parse_manifest(const fs::path& dir) {
  const fs::path path = dir / kManifest;
  LOOM_REQUIRE(fs::is_regular_file(path),
               "checkpoint '{}': {} is missing (an incomplete save, or not a checkpoint "
               "directory)",
               dir.string(), kManifest);
  const std::string what = fmt::format("checkpoint manifest '{}'", path.string());
  Json j;
  try {
    j = Json::parse(read_file_text(path));
  } catch (const Json::exception& e) {  // parse_error, and out_of_range for 1e99999
    throw InputError(fmt::format("{}: not valid JSON: {}", what, e.what()));
  }
  LOOM_REQUIRE(j.is_object(), "{}: not a JSON object", what);
  const Json& magic = field(what, j, "magic");
  LOOM_REQUIRE(magic.is_string() && magic.get<std::string>() == kCheckpointMagic,
               "{}: bad magic {} (expected \"{}\"): not a loom checkpoint", what, magic.dump(),
               kCheckpointMagic);
  const Json& version = field(what, j, "version");
  LOOM_REQUIRE(version == kCheckpointVersion,
               "{}: unsupported version {} (this loom reads version {})", what, version.dump(),
               kCheckpointVersion);
  Manifest m;
  const uint64_t step = get_u64(what, j, "step");
  LOOM_REQUIRE(step <= uint64_t(INT64_MAX), "{}: step {} is too large", what, step);
  m.state.step = int64_t(step);
  m.state.next_batch = get_u64(what, j, "next_batch");
  m.state.seed = get_u64(what, j, "seed");
  m.state.config_toml = get_string(what, j, "config_toml");
  m.state.model = parse_model(what, j);
  m.files = parse_files(what, j);
  m.tensors = parse_entries(what, field(what, j, "tensors"));
  if (j.contains("layout") && j["layout"].is_string()) m.state.layout = j["layout"].get<std::string>();
  m.state.optimizer_step = m.state.step;
  if (j.contains("optimizer_step")) {
    const uint64_t os = get_u64(what, j, "optimizer_step");
    LOOM_REQUIRE(os <= step, "{}: optimizer_step {} is past step {}", what, os, step);
    m.state.optimizer_step = int64_t(os);
  }
  if (j.contains("loss_scale")) {
    const Json& ls = j["loss_scale"];
    LOOM_REQUIRE(ls.is_object() && ls.contains("scale") && ls["scale"].is_number() &&
                     ls.contains("growth_tracker") && ls["growth_tracker"].is_number_integer(),
                 "{}: 'loss_scale' must be an object with a number 'scale' and an integer "
                 "'growth_tracker'", what);
    m.state.loss_scale = ls["scale"].get<float>();
    m.state.loss_scale_growth_tracker = ls["growth_tracker"].get<int>();
    LOOM_REQUIRE(std::isfinite(m.state.loss_scale) && m.state.loss_scale > 0 &&
                     m.state.loss_scale_growth_tracker >= 0,
                 "{}: loss_scale {} / growth_tracker {} out of range", what, m.state.loss_scale,
                 m.state.loss_scale_growth_tracker);
  }
  m.state.has_optimizer = false;
  for (const auto& [name, d] : m.files) m.state.has_optimizer |= name.starts_with(kOptimizerPrefix);
  for (const ShardEntry& e : m.tensors) {
    LOOM_REQUIRE(m.files.count(e.file), "{}: tensor '{}' is in {}, which 'files' does not list",
                 what, e.name, e.file);
    LOOM_REQUIRE(!m.state.has_optimizer || m.files.count(optimizer_file_for(e.file)),
                 "{}: {} has no optimizer shard {}", what, e.file, optimizer_file_for(e.file));
  }
  return m;
}

// ---- files ------------------------------------------------------------------------------

// Presence and size first (cheap, and a clearer message than a parse error of a cut file).
void check_file_size(const fs::path& dir, const std::string& name, const FileDigest& want) {
  const fs::path path = dir / name;
  LOOM_REQUIRE(fs::is_regular_file(path), "checkpoint '{}': {} listed in the manifest is missing",
               dir.string(), name);
  const uint64_t size = fs::file_size(path);
  LOOM_REQUIRE(size == want.bytes, "checkpoint '{}': {} is {} bytes but the manifest says {} ({})",
               dir.string(), name, size, want.bytes,
               size < want.bytes ? "truncated" : "overwritten or appended");
}

void check_file_hash(const fs::path& dir, const std::string& name, const FileDigest& want,
                     std::span<const uint8_t> bytes) {
  const uint64_t got = xxh64_of(bytes);
  LOOM_REQUIRE(got == want.xxh64,
               "checkpoint '{}': checksum mismatch in {}: xxh64 {:016x}, manifest says {:016x} "
               "(the file is corrupt)",
               dir.string(), name, got, want.xxh64);
}

SafetensorsFile open_verified(const fs::path& dir, const std::string& name,
                              const std::map<std::string, FileDigest>& files) {
  const FileDigest& want = files.at(name);
  check_file_size(dir, name, want);
  SafetensorsFile f = SafetensorsFile::open(dir / name);
  check_file_hash(dir, name, want, f.file_bytes());
  return f;
}

// ---- tensors ----------------------------------------------------------------------------

// The model sizes the checkpoint was saved from against the specs to fill (any slicing of
// any subset of the model), field by field for a readable error.
void check_model(const fs::path& dir, const GptConfig& ckpt, const std::vector<ParamSpec>& specs) {
  auto mismatch = [&](const char* field, int64_t have, int64_t want) {
    LOOM_REQUIRE(have == want, "checkpoint '{}': checkpoint has {}={} but the model has {}={}",
                 dir.string(), field, have, field, want);
  };
  for (const ParamSpec& p : specs)
    if (p.name == "ln_f.weight") mismatch("n_layer", ckpt.n_layer, p.layer);
  for (const ParamSpec& p : specs) {
    if (p.name == "wte.weight") {
      mismatch("n_embd", ckpt.n_embd, p.global_shape.at(1));
      mismatch("vocab_size", ckpt.vocab_size, p.real_rows >= 0 ? p.real_rows : p.global_shape[0]);
    }
    if (p.name == "wpe.weight") mismatch("block_size", ckpt.block_size, p.global_shape.at(0));
    LOOM_REQUIRE(p.layer < ckpt.n_layer || p.name.starts_with("ln_f"),
                 "checkpoint '{}': the model has block {} but the checkpoint has n_layer={}",
                 dir.string(), p.layer, ckpt.n_layer);
    if (p.global_shape.size() == 1) mismatch("n_embd", ckpt.n_embd, p.name.ends_with("c_fc.bias")
                                                                  ? p.global_shape[0] / 4
                                                                  : p.name.ends_with("c_attn.bias")
                                                                        ? p.global_shape[0] / 3
                                                                        : p.global_shape[0]);
  }
}

// The stored pieces of every spec, validated (present, same global shape; wte may differ
// in padded rows) before anything is copied.
std::vector<std::vector<const ShardEntry*>> match_pieces(const fs::path& dir, const Manifest& man,
                                                         const std::vector<ParamSpec>& specs) {
  std::map<std::string, std::vector<const ShardEntry*>> by_name;
  for (const ShardEntry& e : man.tensors) by_name[e.name].push_back(&e);
  std::vector<std::vector<const ShardEntry*>> out;
  for (const ParamSpec& p : specs) {
    auto it = by_name.find(p.name);
    LOOM_REQUIRE(it != by_name.end(), "checkpoint '{}': no tensor '{}' (the manifest lists {})",
                 dir.string(), p.name, man.tensors.size());
    const std::vector<int64_t>& saved = it->second.front()->global_shape;
    const bool same = saved == p.global_shape;
    const bool vocab_padding = p.tied && saved.size() == 2 && saved[1] == p.global_shape.at(1) &&
                               saved[0] >= p.real_rows;
    LOOM_REQUIRE(same || vocab_padding, "checkpoint '{}': tensor '{}' is {} but the model expects {}",
                 dir.string(), p.name, shape_str(saved), shape_str(p.global_shape));
    out.push_back(it->second);
  }
  return out;
}

// ---- directories ------------------------------------------------------------------------

// Parses "step_<digits>" exactly (no suffix); nullopt for anything else.
std::optional<int64_t> parse_step_dir(const std::string& name) {
  if (!name.starts_with("step_") || name.size() == 5) return std::nullopt;
  int64_t step = 0;
  const char* first = name.data() + 5;
  const char* last = name.data() + name.size();
  auto [end, ec] = std::from_chars(first, last, step);
  if (ec != std::errc() || end != last || step < 0) return std::nullopt;
  return step;
}

struct Listing {
  std::vector<std::pair<int64_t, fs::path>> checkpoints;  // ascending step
  std::vector<std::pair<int64_t, fs::path>> temporaries;  // interrupted (or running) saves
};

Listing list_checkpoint_dirs(const fs::path& root) {
  Listing out;
  for (const fs::directory_entry& e : fs::directory_iterator(root)) {
    if (!e.is_directory()) continue;
    const std::string name = e.path().filename().string();
    if (auto step = parse_step_dir(name)) out.checkpoints.emplace_back(*step, e.path());
    if (name.ends_with(kTmpSuffix)) {
      if (auto step = parse_step_dir(name.substr(0, name.size() - 4)))
        out.temporaries.emplace_back(*step, e.path());
    }
  }
  std::sort(out.checkpoints.begin(), out.checkpoints.end());
  std::sort(out.temporaries.begin(), out.temporaries.end());
  return out;
}

// A failed removal wastes disk but loses nothing: warn rather than fail the run.
void remove_or_warn(const fs::path& dir) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec) fmt::print(stderr, "loom: cannot remove '{}': {}\n", dir.string(), ec.message());
}

// Removes all but the newest keep_last complete checkpoints (keep_last 0: none), and the
// temporary directories of saves older than `saved`: those were interrupted, since saves
// happen in step order.
void prune_checkpoints(const fs::path& root, int keep_last, int64_t saved) {
  const Listing listing = list_checkpoint_dirs(root);
  for (const auto& [step, dir] : listing.temporaries)
    if (step < saved) remove_or_warn(dir);
  if (keep_last <= 0) return;
  std::vector<fs::path> complete;
  for (const auto& [step, dir] : listing.checkpoints)
    if (fs::is_regular_file(dir / kManifest)) complete.push_back(dir);
  for (size_t i = 0; i + size_t(keep_last) < complete.size(); ++i) remove_or_warn(complete[i]);
}

}  // namespace

std::string checkpoint_dir_name(int64_t step) { return fmt::format("step_{:08d}", step); }

fs::path checkpoint_tmp_dir(const fs::path& run_dir, int64_t step) {
  fs::path tmp_dir = run_dir / "checkpoints" / checkpoint_dir_name(step);
  tmp_dir += kTmpSuffix;
  return tmp_dir;
}

fs::path begin_checkpoint(const fs::path& run_dir, int64_t step) {
  fs::create_directories(run_dir / "checkpoints");
  fsync_dir(run_dir);
  const fs::path tmp_dir = checkpoint_tmp_dir(run_dir, step);
  fs::remove_all(tmp_dir);  // the leftover of an interrupted save of this step
  fs::create_directory(tmp_dir);
  return tmp_dir;
}

void write_checkpoint_shard(const fs::path& tmp_dir, int shard,
                            const std::vector<ParamSpec>& specs, const float* weights,
                            const float* m, const float* v) {
  write_shard_files(tmp_dir, shard, specs, weights, m, v);
}

fs::path commit_checkpoint(const fs::path& run_dir, const CheckpointState& state, int keep_last) {
  LOOM_CHECK(state.step >= 0, "commit_checkpoint: negative step {}", state.step);
  const fs::path root = run_dir / "checkpoints";
  const fs::path final_dir = root / checkpoint_dir_name(state.step);
  const fs::path tmp_dir = checkpoint_tmp_dir(run_dir, state.step);
  std::map<std::string, FileDigest> files;
  const std::vector<ShardEntry> tensors = scan_shards(tmp_dir, files);
  LOOM_CHECK(!tensors.empty(), "commit_checkpoint: no shard in {}", tmp_dir.string());
  write_file_atomic(tmp_dir / kManifest, manifest_json(state, files, tensors).dump(2) + "\n");
  fsync_dir(tmp_dir);
  // rename() cannot replace a non-empty directory. Re-saving a step (a resumed run reaching
  // it again) removes the old one first; a crash in between loses only that step.
  if (fs::exists(final_dir)) fs::remove_all(final_dir);
  fs::rename(tmp_dir, final_dir);
  fsync_dir(root);
  prune_checkpoints(root, keep_last, state.step);
  return final_dir;
}

fs::path save_checkpoint(const fs::path& run_dir, const std::vector<ParamSpec>& specs,
                         const float* weights, const float* m, const float* v,
                         const CheckpointState& state, int keep_last,
                         const std::function<void()>& before_commit) {
  LOOM_CHECK((m == nullptr) == (v == nullptr),
             "save_checkpoint: m and v must both be given or both be null");
  try {
    check_model(run_dir, state.model, specs);
  } catch (const InputError& e) {
    LOOM_CHECK(false, "save_checkpoint: CheckpointState::model disagrees with the specs: {}",
               e.what());
  }
  const fs::path tmp = begin_checkpoint(run_dir, state.step);
  write_checkpoint_shard(tmp, 0, specs, weights, m, v);
  if (before_commit) before_commit();
  return commit_checkpoint(run_dir, state, keep_last);
}

CheckpointState read_checkpoint_manifest(const fs::path& ckpt_dir) {
  return parse_manifest(ckpt_dir).state;
}

CheckpointState verify_checkpoint(const fs::path& ckpt_dir) {
  Manifest man = parse_manifest(ckpt_dir);
  for (const auto& [name, digest] : man.files) check_file_size(ckpt_dir, name, digest);
  for (const auto& [name, digest] : man.files) {
    MappedFile f(ckpt_dir / name);
    check_file_hash(ckpt_dir, name, digest, f.bytes());
  }
  return man.state;
}

CheckpointState load_checkpoint(const fs::path& ckpt_dir, const std::vector<ParamSpec>& specs,
                                float* weights, float* m, float* v) {
  LOOM_CHECK((m == nullptr) == (v == nullptr),
             "load_checkpoint: m and v must both be given or both be null");
  Manifest man = parse_manifest(ckpt_dir);
  check_model(ckpt_dir, man.state.model, specs);
  const auto pieces = match_pieces(ckpt_dir, man, specs);
  for (const auto& [name, digest] : man.files) check_file_size(ckpt_dir, name, digest);
  // Open and verify every file a piece lives in, and check every tensor read below exists
  // with its stored shape, before the caller's buffers are touched.
  const bool moments = m != nullptr && man.state.has_optimizer;
  std::map<std::string, SafetensorsFile> open;
  for (const auto& list : pieces)
    for (const ShardEntry* e : list) {
      std::vector<std::string> names = {e->file};
      if (moments) names.push_back(optimizer_file_for(e->file));
      for (const std::string& f : names)
        if (!open.count(f)) open.emplace(f, open_verified(ckpt_dir, f, man.files));
      auto expect = [&](const std::string& file, const std::string& tensor) {
        const auto& t = open.at(file).tensor(tensor);
        LOOM_REQUIRE(t.dtype == "F32" && t.shape == e->local_shape,
                     "'{}': tensor '{}' is {} {} but the manifest says F32 {}",
                     (ckpt_dir / file).string(), tensor, t.dtype, shape_str(t.shape),
                     shape_str(e->local_shape));
      };
      expect(e->file, e->name);
      if (moments) {
        expect(optimizer_file_for(e->file), "exp_avg." + e->name);
        expect(optimizer_file_for(e->file), "exp_avg_sq." + e->name);
      }
    }
  // Everything validated: only now write into the caller's buffers.
  for (size_t i = 0; i < specs.size(); ++i) {
    const ParamSpec& p = specs[i];
    assemble(p, pieces[i], open, "", weights + p.offset);
    if (!moments) continue;
    assemble(p, pieces[i], open, "exp_avg.", m + p.offset);
    assemble(p, pieces[i], open, "exp_avg_sq.", v + p.offset);
  }
  return man.state;
}

fs::path resolve_checkpoint(const fs::path& path) {
  if (fs::is_regular_file(path / kManifest)) {
    verify_checkpoint(path);  // an explicitly named checkpoint must be valid: no fallback
    return path;
  }
  LOOM_REQUIRE(fs::is_directory(path), "'{}' is neither a checkpoint nor a run directory",
               path.string());
  const fs::path root = fs::is_directory(path / "checkpoints") ? path / "checkpoints" : path;
  const Listing listing = list_checkpoint_dirs(root);
  for (const auto& [step, tmp] : listing.temporaries)
    fmt::print(stderr, "loom: skipping '{}': an interrupted save (temporary directory)\n",
               tmp.string());
  for (auto it = listing.checkpoints.rbegin(); it != listing.checkpoints.rend(); ++it) {
    try {
      verify_checkpoint(it->second);
      return it->second;
    } catch (const InputError& e) {
      fmt::print(stderr, "loom: skipping '{}': {}\n", it->second.string(), e.what());
    }
  }
  throw InputError(
      fmt::format("no valid checkpoint under '{}' (looked for {}/step_*/{}; {} candidate(s), {} "
                  "interrupted save(s))",
                  path.string(), root.string(), kManifest, listing.checkpoints.size(),
                  listing.temporaries.size()));
}

}  // namespace loom
