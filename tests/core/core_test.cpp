#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <set>

#include "core/check.h"
#include "core/file_io.h"
#include "core/philox.h"
#include "scratch.h"

namespace loom {
namespace {

TEST(Philox, MatchesTheRandom123KnownAnswer) {
  // Known-answer vectors of Philox4x32-10 from Random123's kat_vectors.
  EXPECT_EQ(philox4x32_10({0, 0, 0, 0}, {0, 0}),
            (PhiloxBlock{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(philox4x32_10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
                          {0xffffffff, 0xffffffff}),
            (PhiloxBlock{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
                          {0xa4093822, 0x299f31d0}),
            (PhiloxBlock{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(Philox, NormalsHaveUnitMomentsAndDependOnlyOnIndex) {
  const Philox rng(1234, name_hash("h.0.attn.c_attn.weight"));
  double sum = 0, sq = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const float x = rng.normal(uint64_t(i));
    ASSERT_TRUE(std::isfinite(x));
    sum += x;
    sq += double(x) * x;
  }
  EXPECT_NEAR(sum / n, 0.0, 0.01);
  EXPECT_NEAR(sq / n, 1.0, 0.01);
  EXPECT_EQ(rng.normal(777), Philox(1234, name_hash("h.0.attn.c_attn.weight")).normal(777));
  EXPECT_NE(rng.normal(777), Philox(1234, name_hash("h.1.attn.c_attn.weight")).normal(777));
  EXPECT_NE(rng.normal(777), Philox(1235, name_hash("h.0.attn.c_attn.weight")).normal(777));
}

TEST(FileIo, AtomicWriteReplacesAndLeavesNoTemporaries) {
  const auto dir = test::scratch_dir("core_fileio");
  write_file_atomic(dir / "a.txt", std::string_view("first"));
  write_file_atomic(dir / "a.txt", std::string_view("second"));
  EXPECT_EQ(read_file_text(dir / "a.txt"), "second");
  {
    AtomicFile f(dir / "b.txt");
    f.write("never committed", 15);
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "b.txt"));
  int files = 0;
  for (auto& e : std::filesystem::directory_iterator(dir)) files += e.is_regular_file();
  EXPECT_EQ(files, 1);
  EXPECT_THROW(read_file_bytes(dir / "missing.bin"), InputError);
}

TEST(Check, ReportsFileLineAndValues) {
  try {
    int got = 3;
    LOOM_CHECK(got == 4, "got {} expected {}", got, 4);
    FAIL() << "LOOM_CHECK did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("core_test.cpp"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("got 3 expected 4"), std::string::npos);
    EXPECT_EQ(e.exit_code(), 1);
  }
}

}  // namespace
}  // namespace loom
