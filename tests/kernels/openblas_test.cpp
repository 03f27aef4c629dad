// OpenBLAS's core: a generic fallback on a CPU with AVX2 / AVX-512 is replaced by the
// matching OPENBLAS_CORETYPE for benchmarks; a core OpenBLAS chose itself, or one set in
// OPENBLAS_CORETYPE, is kept.
#include "kernels/openblas.h"

#include <gtest/gtest.h>

#include <string>

#include "../shell_util.h"

namespace loom::kernels {
namespace {

TEST(OpenBlasCore, AGenericFallbackGetsTheCoreOfTheCpusIsa) {
  const CpuIsa avx512{.avx2 = true, .avx512 = true}, avx2{.avx2 = true}, sse{};
  EXPECT_EQ(better_openblas_coretype("Prescott", avx512), "SKYLAKEX");
  EXPECT_EQ(better_openblas_coretype("Prescott", avx2), "HASWELL");
  EXPECT_EQ(better_openblas_coretype("Nehalem", avx2), "HASWELL");
  EXPECT_EQ(better_openblas_coretype("Sandybridge", avx512), "SKYLAKEX");
  EXPECT_EQ(better_openblas_coretype("Prescott", sse), "");  // nothing better to run
  // OpenBLAS's own choices with AVX2 or AVX-512 kernels stay, whatever the CPU has.
  for (const char* own : {"Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids"}) {
    EXPECT_EQ(better_openblas_coretype(own, avx512), "") << own;
    EXPECT_EQ(better_openblas_coretype(own, avx2), "") << own;
  }
}

std::string run(const std::string& cmd) {
  const test::Result r = test::shell(cmd);
  EXPECT_EQ(r.code, 0) << cmd << "\n" << r.output;
  return r.output;
}

TEST(OpenBlasCore, ABenchmarkReExecutesItselfWithTheMatchingCore) {
  const std::string out = run("OPENBLAS_CORETYPE=Prescott " LOOM_OPENBLAS_PROBE);
  const std::string better = better_openblas_coretype("Prescott", host_isa());
  if (better.empty()) {  // a CPU without AVX2: Prescott is the right core
    EXPECT_NE(out.find("OpenBLAS core Prescott (its own choice)"), std::string::npos) << out;
    return;
  }
  const std::string core = better == "SKYLAKEX" ? "SkylakeX" : "Haswell";
  EXPECT_NE(out.find("OpenBLAS core " + core + " (OPENBLAS_CORETYPE=" + better +
                     ": OpenBLAS "),
            std::string::npos)
      << out;
  EXPECT_NE(out.find(" fell back to Prescott)\ncore=" + core + "\n"), std::string::npos) << out;
}

TEST(OpenBlasCore, ACoreTypeSetByTheUserIsKept) {
  const std::string out = run("OPENBLAS_CORETYPE=Prescott " LOOM_OPENBLAS_PROBE " keep");
  EXPECT_NE(out.find("OpenBLAS core Prescott (OPENBLAS_CORETYPE=Prescott as set)\ncore=Prescott"),
            std::string::npos)
      << out;
}

}  // namespace
}  // namespace loom::kernels
