#include "ckpt/safetensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "test_util.h"

namespace loom {
namespace {

using test::file_bytes;
using test::TempDir;
using test::write_bytes;

// Writes a safetensors file by hand: u64 header length, `header`, `data_bytes` zero bytes.
void write_raw(const std::filesystem::path& path, const std::string& header, size_t data_bytes) {
  std::vector<char> bytes(8 + header.size() + data_bytes, 0);
  const uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  std::memcpy(bytes.data() + 8, header.data(), header.size());
  write_bytes(path, bytes);
}

struct Sample {
  std::vector<float> a{1.0f, -2.5f, 3.25f, 0.0f, -0.0f, 1e-40f};  // (2, 3), with a denormal
  std::vector<float> b{std::numeric_limits<float>::quiet_NaN(), INFINITY, 7.0f};  // (3)
  FileDigest write(const std::filesystem::path& path) const {
    SafetensorsWriter w;
    w.set_metadata("format", "pt");
    w.set_metadata("note", "hello \"world\"");
    w.add("layer.a", {2, 3}, a.data());
    w.add("b", {3}, b.data());
    w.add("empty", {0, 4}, nullptr);
    return w.write(path);
  }
};

TEST(Safetensors, RoundTripIsBitwise) {
  TempDir dir;
  Sample s;
  const FileDigest digest = s.write(dir / "t.safetensors");
  const auto bytes = file_bytes(dir / "t.safetensors");
  EXPECT_EQ(digest.bytes, bytes.size());
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u) << "header must be padded to a multiple of 8";

  const SafetensorsFile f = SafetensorsFile::open(dir / "t.safetensors");
  EXPECT_EQ(xxh64_of(f.file_bytes()), digest.xxh64);
  EXPECT_EQ(f.names(), (std::vector<std::string>{"layer.a", "b", "empty"}));  // data order
  EXPECT_EQ(f.shape("layer.a"), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f.shape("empty"), (std::vector<int64_t>{0, 4}));
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "hello \"world\"");
  EXPECT_EQ(f.tensor("b").begin, 24u);
  EXPECT_EQ(f.tensor("b").end, 36u);

  std::vector<float> a(6), b(3);
  f.read("layer.a", a.data(), std::vector<int64_t>{2, 3});
  EXPECT_TRUE(test::same_bits(a, s.a));
  // read() refuses b's NaN (below); its raw bytes still round-trip.
  std::memcpy(b.data(), f.data("b").data(), f.data("b").size());
  EXPECT_TRUE(test::same_bits(b, s.b));
}

TEST(Safetensors, ReadRejectsNonFiniteNamingTheTensor) {
  TempDir dir;
  Sample s;
  s.write(dir / "t.safetensors");
  const SafetensorsFile f = SafetensorsFile::open(dir / "t.safetensors");
  std::vector<float> b(3);
  EXPECT_INPUT_ERROR(f.read("b", b.data(), std::vector<int64_t>{3}), "t.safetensors", "'b'",
                     "non-finite value (nan at element 0 of 3)");
}

TEST(Safetensors, OffsetsFarPastTheEndNameThatTensor) {
  TempDir dir;
  // 'a' points far past the data; the hole it leaves is before 'b', but 'a' is the culprit.
  write_raw(dir / "f.safetensors",
            R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4096,4100]},)"
            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
            8);
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "f.safetensors"), "f.safetensors",
                     "tensor 'a' data_offsets [4096, 4100] run past the 8-byte data section");
}

TEST(Safetensors, WritingIsDeterministic) {
  TempDir dir;
  Sample s;
  s.write(dir / "1.safetensors");
  s.write(dir / "2.safetensors");
  EXPECT_EQ(file_bytes(dir / "1.safetensors"), file_bytes(dir / "2.safetensors"));
  // Nothing but the file itself is left in the directory (no temporary).
  int entries = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir.path())) ++entries;
  EXPECT_EQ(entries, 2);
}

TEST(Safetensors, ReadChecksShapeNameAndDtype) {
  TempDir dir;
  Sample s;
  s.write(dir / "t.safetensors");
  const SafetensorsFile f = SafetensorsFile::open(dir / "t.safetensors");
  std::vector<float> buf(6);
  EXPECT_INPUT_ERROR(f.read("layer.a", buf.data(), std::vector<int64_t>{3, 2}), "t.safetensors",
                     "'layer.a'", "has shape [2, 3] but [3, 2] was expected");
  EXPECT_INPUT_ERROR(f.read("nope", buf.data(), std::vector<int64_t>{1}), "no tensor named 'nope'");

  write_raw(dir / "f16.safetensors", R"({"h":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}})",
            4);
  const SafetensorsFile g = SafetensorsFile::open(dir / "f16.safetensors");  // valid file
  EXPECT_INPUT_ERROR(g.read("h", buf.data(), std::vector<int64_t>{2}), "'h'", "dtype F16");
}

TEST(Safetensors, RejectsShortFile) {
  TempDir dir;
  write_bytes(dir / "s.safetensors", {1, 2, 3});
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "s.safetensors"), "s.safetensors",
                     "3 bytes, shorter than the 8-byte header length");
}

TEST(Safetensors, RejectsHeaderLongerThanFile) {
  TempDir dir;
  Sample s;
  s.write(dir / "t.safetensors");
  auto bytes = file_bytes(dir / "t.safetensors");
  const uint64_t huge = 1u << 30;
  std::memcpy(bytes.data(), &huge, 8);
  write_bytes(dir / "t.safetensors", bytes);
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "t.safetensors"), "t.safetensors",
                     "header length 1073741824 is larger than");
}

TEST(Safetensors, RejectsBadJson) {
  TempDir dir;
  write_raw(dir / "j.safetensors", R"({"a": {"dtype": "F32",)", 0);
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "j.safetensors"), "j.safetensors",
                     "not valid JSON");
  write_raw(dir / "k.safetensors", R"([1, 2])", 0);
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "k.safetensors"), "not a JSON object");
  write_raw(dir / "m.safetensors", R"({"__metadata__": {"n": 3}})", 0);
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "m.safetensors"), "'__metadata__'", "'n'",
                     "not a string");
}

TEST(Safetensors, RejectsUnknownDtype) {
  TempDir dir;
  write_raw(dir / "d.safetensors", R"({"a":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", 4);
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "d.safetensors"), "d.safetensors", "'a'",
                     "unknown dtype 'F33'");
}

TEST(Safetensors, RejectsOffsetsNotMatchingShape) {
  TempDir dir;
  write_raw(dir / "o.safetensors", R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,12]}})",
            12);
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "o.safetensors"), "o.safetensors", "'a'",
                     "span 12 bytes", "shape [2, 2] needs 16");
}

TEST(Safetensors, RejectsOffsetsOutOfRange) {
  TempDir dir;
  Sample s;
  s.write(dir / "t.safetensors");
  auto bytes = file_bytes(dir / "t.safetensors");
  bytes.resize(bytes.size() - 4);  // cut the last float
  write_bytes(dir / "t.safetensors", bytes);
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "t.safetensors"), "t.safetensors", "'b'",
                     "run past", "truncated");
}

TEST(Safetensors, RejectsOverlapAndHoles) {
  TempDir dir;
  write_raw(dir / "o.safetensors",
            R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
            R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
            12);
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "o.safetensors"), "o.safetensors",
                     "'b' [4, 12] overlaps tensor 'a' [0, 8]");
  write_raw(dir / "h.safetensors",
            R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
            12);
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "h.safetensors"), "h.safetensors",
                     "4 unused bytes at data offset 4, before tensor 'b' [8, 12]");
}

TEST(Safetensors, RejectsDataSizeDifferentFromFileSize) {
  TempDir dir;
  Sample s;
  s.write(dir / "t.safetensors");
  auto bytes = file_bytes(dir / "t.safetensors");
  bytes.insert(bytes.end(), {0, 0, 0, 0});
  write_bytes(dir / "t.safetensors", bytes);
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "t.safetensors"), "t.safetensors",
                     "tensors cover 36 bytes but the data section is 40 bytes");
}

// Found by the safetensors fuzzer (issue 12): a number past double's range made
// nlohmann::json throw out_of_range, not parse_error, and it escaped as an uncaught exception.
TEST(Safetensors, ANumberOutOfRangeIsBadJsonNotACrash) {
  TempDir dir;
  write_raw(dir / "n.safetensors",
            R"({"a":{"dtype":"F32","shape":[1e99999],"data_offsets":[0,4]}})", 4);
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "n.safetensors"), "n.safetensors",
                     "header is not valid JSON");
}

TEST(Safetensors, RejectsMissingFile) {
  TempDir dir;
  EXPECT_INPUT_ERROR(SafetensorsFile::open(dir / "absent.safetensors"), "absent.safetensors");
}

}  // namespace
}  // namespace loom
