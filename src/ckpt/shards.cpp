#include "ckpt/shards.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/check.h"
#include "core/file_io.h"

namespace loom::ckpt_detail {
namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

namespace {

constexpr const char* kSuffix = ".safetensors";
constexpr const char* kSlicesKey = "loom.slices";
constexpr const char* kReceiptPrefix = "receipt-";  // a writer's files and slices, for the commit

int64_t numel(const std::vector<int64_t>& shape) {
  return std::accumulate(shape.begin(), shape.end(), int64_t{1}, std::multiplies<>());
}

Json slice_json(const ParamSpec& p) {
  return {{"global_shape", p.global_shape},
          {"split_dim", p.split_dim},
          {"split_start", p.split_start},
          {"split_parts", p.split_parts}};
}

// A ParamSpec describing a stored piece, for local_to_global.
ParamSpec piece_spec(const ShardEntry& e) {
  ParamSpec q;
  q.name = e.name;
  q.global_shape = e.global_shape;
  q.local_shape = e.local_shape;
  q.split_dim = e.split_dim;
  q.split_start = e.split_start;
  q.split_parts = e.split_parts;
  q.numel = size_t(numel(e.local_shape));
  return q;
}

std::vector<int64_t> int_list(const std::string& what, const Json& j) {
  LOOM_REQUIRE(j.is_array(), "{}: expected a list of integers, found {}", what, j.dump());
  std::vector<int64_t> out;
  for (const Json& x : j) {
    LOOM_REQUIRE(x.is_number_integer() && x.get<int64_t>() >= 0,
                 "{}: expected a list of non-negative integers, found {}", what, j.dump());
    out.push_back(x.get<int64_t>());
  }
  return out;
}

ShardEntry entry_from(const std::string& what, const std::string& name, const std::string& file,
                      const Json& j, std::vector<int64_t> local_shape) {
  LOOM_REQUIRE(j.is_object(), "{}: slice of '{}' must be an object", what, name);
  ShardEntry e;
  e.name = name;
  e.file = file;
  e.global_shape = int_list(what, j.value("global_shape", Json()));
  e.local_shape = std::move(local_shape);
  e.split_dim = j.value("split_dim", -1);
  e.split_start = j.value("split_start", int64_t{0});
  e.split_parts = j.value("split_parts", 1);
  const bool ok = e.global_shape.size() == e.local_shape.size() && e.split_parts >= 1 &&
                  e.split_dim >= -1 && e.split_dim < int(e.global_shape.size()) &&
                  e.split_start >= 0;
  LOOM_REQUIRE(ok, "{}: slice of '{}' is inconsistent: {}", what, name, j.dump());
  for (size_t d = 0; d < e.global_shape.size(); ++d) {
    const bool split = int(d) == e.split_dim;
    const int64_t part = e.global_shape[d] / e.split_parts;
    LOOM_REQUIRE(split ? e.split_start + e.local_shape[d] / e.split_parts <= part
                       : e.local_shape[d] == e.global_shape[d],
                 "{}: slice of '{}' {} does not fit its tensor {}", what, name,
                 shape_str(e.local_shape), shape_str(e.global_shape));
  }
  return e;
}

}  // namespace

std::string shard_file_name(const char* prefix, int shard) {
  return fmt::format("{}{:05d}{}", prefix, shard, kSuffix);
}

bool is_shard_file_name(const std::string& name) {
  for (const std::string prefix : {kModelPrefix, kOptimizerPrefix}) {
    if (!name.starts_with(prefix) || !name.ends_with(kSuffix)) continue;
    const std::string digits =
        name.substr(prefix.size(), name.size() - prefix.size() - std::strlen(kSuffix));
    if (digits.size() == 5 && std::all_of(digits.begin(), digits.end(), ::isdigit)) return true;
  }
  return false;
}

std::string optimizer_file_for(const std::string& model_file) {
  return kOptimizerPrefix + model_file.substr(std::strlen(kModelPrefix));
}

void write_shard_files(const fs::path& dir, int shard, const std::vector<ParamSpec>& specs,
                       const float* w, const float* m, const float* v) {
  LOOM_CHECK((m == nullptr) == (v == nullptr), "shard {}: m and v both or neither", shard);
  Json slices = Json::object();
  for (const ParamSpec& p : specs) slices[p.name] = slice_json(p);
  // The digests come from the writer, so the commit never reads a shard back; they and the
  // slices go to a small receipt the commit collects.
  const std::string model_name = shard_file_name(kModelPrefix, shard);
  SafetensorsWriter model;
  for (const ParamSpec& p : specs) model.add(p.name, p.local_shape, w + p.offset);
  model.set_metadata(kSlicesKey, slices.dump());
  Json files = Json::object();
  auto record = [&files](const std::string& name, const FileDigest& d) {
    files[name] = {{"bytes", d.bytes}, {"xxh64", d.xxh64}};
  };
  record(model_name, model.write(dir / model_name));
  if (m) {
    SafetensorsWriter optim;
    for (const ParamSpec& p : specs) optim.add("exp_avg." + p.name, p.local_shape, m + p.offset);
    for (const ParamSpec& p : specs)
      optim.add("exp_avg_sq." + p.name, p.local_shape, v + p.offset);
    const std::string optim_name = shard_file_name(kOptimizerPrefix, shard);
    record(optim_name, optim.write(dir / optim_name));
  }
  Json tensors = Json::array();
  for (const ParamSpec& p : specs) {
    Json t = slice_json(p);
    t["name"] = p.name;
    t["file"] = model_name;
    t["local_shape"] = p.local_shape;
    tensors.push_back(std::move(t));
  }
  const Json receipt = {{"files", files}, {"tensors", tensors}};
  write_file_atomic(dir / fmt::format("{}{:05d}.json", kReceiptPrefix, shard), receipt.dump());
}

std::vector<ShardEntry> scan_shards(const fs::path& dir, std::map<std::string, FileDigest>& files) {
  std::vector<ShardEntry> entries;
  std::vector<fs::path> receipts;
  for (const fs::directory_entry& f : fs::directory_iterator(dir))
    if (f.path().filename().string().starts_with(kReceiptPrefix)) receipts.push_back(f.path());
  std::sort(receipts.begin(), receipts.end());
  for (const fs::path& r : receipts) {
    const Json j = Json::parse(read_file_text(r));
    for (const auto& [name, d] : j.at("files").items())
      files[name] = FileDigest{d.at("bytes").get<uint64_t>(), d.at("xxh64").get<uint64_t>()};
    for (const ShardEntry& e : parse_entries(r.string(), j.at("tensors"))) entries.push_back(e);
    fs::remove(r);  // the manifest, written next, supersedes it
  }
  // Each tensor's slices cover it exactly once: equal element counts and equal shapes.
  std::map<std::string, int64_t> covered;
  std::map<std::string, std::vector<int64_t>> shape;
  for (const ShardEntry& e : entries) {
    covered[e.name] += numel(e.local_shape);
    LOOM_CHECK(!shape.count(e.name) || shape[e.name] == e.global_shape,
               "tensor '{}' saved with two global shapes", e.name);
    shape[e.name] = e.global_shape;
  }
  for (const auto& [name, n] : covered)
    LOOM_CHECK(n == numel(shape[name]), "tensor '{}': shards hold {} of its {} elements", name, n,
               numel(shape[name]));
  return entries;
}

Json entries_json(const std::vector<ShardEntry>& entries) {
  Json out = Json::array();
  for (const ShardEntry& e : entries)
    out.push_back({{"name", e.name},
                   {"file", e.file},
                   {"global_shape", e.global_shape},
                   {"local_shape", e.local_shape},
                   {"split_dim", e.split_dim},
                   {"split_start", e.split_start},
                   {"split_parts", e.split_parts}});
  return out;
}

std::vector<ShardEntry> parse_entries(const std::string& what, const Json& j) {
  LOOM_REQUIRE(j.is_array(), "{}: field 'tensors' must be a list", what);
  std::vector<ShardEntry> out;
  for (const Json& t : j) {
    LOOM_REQUIRE(t.is_object() && t.contains("name") && t["name"].is_string() &&
                     t.contains("file") && t["file"].is_string(),
                 "{}: a 'tensors' entry lacks its name or file: {}", what, t.dump());
    const std::string file = t["file"].get<std::string>();
    LOOM_REQUIRE(is_shard_file_name(file) && file.starts_with(kModelPrefix),
                 "{}: tensor entry names file '{}', not a model shard", what, file);
    out.push_back(entry_from(what, t["name"].get<std::string>(), file, t,
                             int_list(what, t.value("local_shape", Json()))));
  }
  return out;
}

void assemble(const ParamSpec& p, const std::vector<const ShardEntry*>& pieces,
              const std::map<std::string, SafetensorsFile>& open, const std::string& prefix,
              float* dst) {
  const std::vector<int64_t>& saved = pieces.front()->global_shape;
  std::vector<float> whole(size_t(numel(saved)), 0.0f), piece;
  for (const ShardEntry* e : pieces) {
    const std::string file = prefix.empty() ? e->file : optimizer_file_for(e->file);
    piece.resize(size_t(numel(e->local_shape)));
    open.at(file).read(prefix + e->name, piece.data(), e->local_shape);
    if (e->split_dim < 0)
      std::copy(piece.begin(), piece.end(), whole.begin());
    else
      local_to_global(piece_spec(*e), piece.data(), whole.data());
  }
  if (saved == p.global_shape) {
    if (p.split_dim < 0)
      std::copy(whole.begin(), whole.end(), dst);
    else
      slice_to_local(p, whole.data(), dst);
    return;
  }
  // wte padded to another Vp: the rows past the real vocabulary are zero either way.
  const int64_t row = saved.size() == 2 ? saved[1] : 1;
  std::vector<float> resized(size_t(p.global_numel()), 0.0f);
  std::copy_n(whole.begin(), std::min(whole.size(), resized.size()) / size_t(row) * size_t(row),
              resized.begin());
  slice_to_local(p, resized.data(), dst);
}

}  // namespace loom::ckpt_detail
