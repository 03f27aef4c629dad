#include "ckpt/safetensors.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/file_io.h"

namespace loom {
namespace fs = std::filesystem;

// The format is little-endian; loom writes and reads it with plain memcpy.
static_assert(std::endian::native == std::endian::little, "loom assumes a little-endian host");

namespace {

constexpr uint64_t kHeaderLenBytes = 8;

// Bytes per element of every dtype the format defines. Others are rejected as unknown; known
// but non-F32 dtypes parse (so the file validates) and fail only when read.
int dtype_size(const std::string& dtype) {
  static const std::map<std::string, int> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

}  // namespace

std::string shape_str(std::span<const int64_t> shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

// ---------------------------------------------------------------------------------------
// Writer

void SafetensorsWriter::add(std::string name, std::vector<int64_t> shape, const float* data) {
  LOOM_CHECK(name != "__metadata__", "'__metadata__' is reserved");
  for (const Entry& e : entries_) LOOM_CHECK(e.name != name, "tensor '{}' added twice", name);
  uint64_t numel = 1;
  for (int64_t d : shape) {
    LOOM_CHECK(d >= 0, "tensor '{}' has negative dim in {}", name, shape_str(shape));
    numel *= uint64_t(d);
  }
  entries_.push_back({std::move(name), std::move(shape), data, numel * sizeof(float)});
}

void SafetensorsWriter::set_metadata(std::string key, std::string value) {
  for (auto& [k, v] : metadata_) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  metadata_.emplace_back(std::move(key), std::move(value));
}

std::string SafetensorsWriter::header_json() const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata_) meta[k] = v;
    header["__metadata__"] = meta;
  }
  uint64_t offset = 0;
  for (const Entry& e : entries_) {
    header[e.name] = {
        {"dtype", "F32"}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes}}};
    offset += e.bytes;
  }
  std::string text = header.dump();
  // Pad to a multiple of 8 so the data section (and every fp32 tensor) is 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

FileDigest SafetensorsWriter::write(const fs::path& path) const {
  const std::string header = header_json();
  const uint64_t header_len = header.size();
  std::unique_ptr<XXH64_state_t, decltype(&XXH64_freeState)> hash(XXH64_createState(),
                                                                  &XXH64_freeState);
  XXH64_reset(hash.get(), 0);
  FileDigest digest;
  AtomicFile out(path);
  auto put = [&](const void* p, size_t n) {
    // Chunked so a multi-GiB tensor is hashed while it is still in cache.
    constexpr size_t kChunk = size_t{64} << 20;
    const char* c = static_cast<const char*>(p);
    for (size_t done = 0; done < n; done += kChunk) {
      size_t len = std::min(kChunk, n - done);
      out.write(c + done, len);
      XXH64_update(hash.get(), c + done, len);
    }
    digest.bytes += n;
  };
  put(&header_len, kHeaderLenBytes);
  put(header.data(), header.size());
  for (const Entry& e : entries_) put(e.data, e.bytes);
  out.commit();
  digest.xxh64 = XXH64_digest(hash.get());
  return digest;
}

// ---------------------------------------------------------------------------------------
// Reader

SafetensorsFile SafetensorsFile::open(const fs::path& path) {
  SafetensorsFile f{MappedFile(path)};
  f.parse();
  return f;
}

namespace {

using Json = nlohmann::json;

// Parses one tensor entry of the header; `what` prefixes every error.
SafetensorsFile::Tensor parse_entry(const std::string& what, const std::string& name,
                                    const Json& j) {
  const std::string where = fmt::format("{}: tensor '{}'", what, name);
  LOOM_REQUIRE(j.is_object(), "{}: entry is not a JSON object", where);
  LOOM_REQUIRE(j.contains("dtype") && j["dtype"].is_string(), "{}: missing string 'dtype'", where);
  LOOM_REQUIRE(j.contains("shape") && j["shape"].is_array(), "{}: missing array 'shape'", where);
  LOOM_REQUIRE(j.contains("data_offsets") && j["data_offsets"].is_array() &&
                   j["data_offsets"].size() == 2 && j["data_offsets"][0].is_number_unsigned() &&
                   j["data_offsets"][1].is_number_unsigned(),
               "{}: 'data_offsets' must be two non-negative integers", where);
  SafetensorsFile::Tensor t;
  t.name = name;
  t.dtype = j["dtype"].get<std::string>();
  const int elem = dtype_size(t.dtype);
  LOOM_REQUIRE(elem > 0, "{}: unknown dtype '{}'", where, t.dtype);
  // Element counts are bounded by the file size, so a product past 2^62 is already wrong.
  uint64_t bytes = uint64_t(elem);
  for (const Json& d : j["shape"]) {
    LOOM_REQUIRE(d.is_number_unsigned(), "{}: shape {} has a non-integer or negative dim", where,
                 j["shape"].dump());
    const uint64_t dim = d.get<uint64_t>();
    LOOM_REQUIRE(dim == 0 || bytes <= (uint64_t{1} << 62) / dim, "{}: shape {} is too large", where,
                 j["shape"].dump());
    bytes *= dim;
    t.shape.push_back(int64_t(dim));
  }
  t.begin = j["data_offsets"][0].get<uint64_t>();
  t.end = j["data_offsets"][1].get<uint64_t>();
  LOOM_REQUIRE(t.begin <= t.end, "{}: data_offsets [{}, {}] end before they begin", where, t.begin,
               t.end);
  LOOM_REQUIRE(t.end - t.begin == bytes,
               "{}: data_offsets [{}, {}] span {} bytes but dtype {} with shape {} needs {}", where,
               t.begin, t.end, t.end - t.begin, t.dtype, shape_str(t.shape), bytes);
  return t;
}

std::map<std::string, std::string> parse_metadata(const std::string& what, const Json& j) {
  LOOM_REQUIRE(j.is_object(), "{}: '__metadata__' is not a JSON object", what);
  std::map<std::string, std::string> meta;
  for (const auto& [k, v] : j.items()) {
    LOOM_REQUIRE(v.is_string(), "{}: '__metadata__' value of '{}' is not a string", what, k);
    meta[k] = v.get<std::string>();
  }
  return meta;
}

}  // namespace

void SafetensorsFile::parse() {
  const std::string what = fmt::format("safetensors file '{}'", path().string());
  const std::span<const uint8_t> bytes = file_.bytes();
  LOOM_REQUIRE(bytes.size() >= kHeaderLenBytes,
               "{}: file is {} bytes, shorter than the 8-byte header length", what, bytes.size());
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), kHeaderLenBytes);
  LOOM_REQUIRE(header_len <= bytes.size() - kHeaderLenBytes,
               "{}: header length {} is larger than the {} bytes after it (truncated file?)", what,
               header_len, bytes.size() - kHeaderLenBytes);
  data_start_ = kHeaderLenBytes + header_len;
  const char* text = reinterpret_cast<const char*>(bytes.data() + kHeaderLenBytes);
  Json header;
  try {
    header = Json::parse(text, text + header_len);
  } catch (const Json::exception& e) {  // parse_error, and out_of_range for 1e99999
    throw InputError(fmt::format("{}: header is not valid JSON: {}", what, e.what()));
  }
  LOOM_REQUIRE(header.is_object(), "{}: header is not a JSON object", what);
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      metadata_ = parse_metadata(what, entry);
    } else {
      tensors_.push_back(parse_entry(what, name, entry));
    }
  }
  // The tensors must tile the data section exactly: no overlap, no hole, nothing after.
  std::sort(tensors_.begin(), tensors_.end(), [](const Tensor& a, const Tensor& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  const uint64_t data_size = bytes.size() - data_start_;
  // Checked for every tensor before the tiling, so a tensor whose offsets point far past the
  // end is named itself, not as the hole it leaves before its neighbour.
  for (const Tensor& t : tensors_) {
    LOOM_REQUIRE(t.end <= data_size,
                 "{}: tensor '{}' data_offsets [{}, {}] run past the {}-byte data section "
                 "(wrong offsets, or a truncated file)",
                 what, t.name, t.begin, t.end, data_size);
  }
  uint64_t cursor = 0;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    const Tensor& t = tensors_[i];
    LOOM_REQUIRE(t.begin >= cursor, "{}: tensor '{}' [{}, {}] overlaps tensor '{}' [{}, {}]", what,
                 t.name, t.begin, t.end, tensors_[i - 1].name, tensors_[i - 1].begin,
                 tensors_[i - 1].end);
    LOOM_REQUIRE(t.begin == cursor,
                 "{}: {} unused bytes at data offset {}, before tensor '{}' [{}, {}]", what,
                 t.begin - cursor, cursor, t.name, t.begin, t.end);
    cursor = t.end;
    index_[t.name] = i;
  }
  LOOM_REQUIRE(cursor == data_size,
               "{}: tensors cover {} bytes but the data section is {} bytes (file size {} != "
               "{} expected from the header)",
               what, cursor, data_size, bytes.size(), data_start_ + cursor);
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const Tensor& t : tensors_) out.push_back(t.name);
  return out;
}

const SafetensorsFile::Tensor& SafetensorsFile::tensor(const std::string& name) const {
  auto it = index_.find(name);
  LOOM_REQUIRE(it != index_.end(), "safetensors file '{}': no tensor named '{}'", path().string(),
               name);
  return tensors_[it->second];
}

std::span<const uint8_t> SafetensorsFile::data(const std::string& name) const {
  const Tensor& t = tensor(name);
  return file_.bytes().subspan(data_start_ + t.begin, t.end - t.begin);
}

void SafetensorsFile::read(const std::string& name, float* dst,
                           std::span<const int64_t> expected_shape) const {
  const Tensor& t = tensor(name);
  LOOM_REQUIRE(t.dtype == "F32", "safetensors file '{}': tensor '{}' has dtype {}; loom reads F32",
               path().string(), name, t.dtype);
  LOOM_REQUIRE(
      std::equal(t.shape.begin(), t.shape.end(), expected_shape.begin(), expected_shape.end()),
      "safetensors file '{}': tensor '{}' has shape {} but {} was expected", path().string(), name,
      shape_str(t.shape), shape_str(expected_shape));
  std::span<const uint8_t> src = data(name);
  if (!src.empty()) std::memcpy(dst, src.data(), src.size());
  // A NaN or inf weight evaluates to a NaN loss and generates garbage without a word, so it
  // is refused here, where every import and checkpoint load passes.
  const size_t numel = src.size() / sizeof(float);
  const float* bad = std::find_if(dst, dst + numel, [](float v) { return !std::isfinite(v); });
  LOOM_REQUIRE(bad == dst + numel,
               "safetensors file '{}': tensor '{}' holds a non-finite value ({} at element {} of "
               "{}); refusing to load it",
               path().string(), name, *bad, bad - dst, numel);
}

}  // namespace loom
