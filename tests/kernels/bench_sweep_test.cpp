// The GEMM sweep the planner's calibration reads (bench kernels): one row per dtype, size
// and shape at each thread count asked for, each validated before it is timed.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "kernels/bench_kernels.h"
#include "kernels/kernels.h"

namespace loom::kernels {
namespace {

TEST(BenchSweep, EveryDtypeSizeAndShapeAtEachThreadCount) {
  const std::vector<KernelBenchRow> rows = bench_gemm_sweep(1, {1});
  int dtypes = 0;
  for (DType t : {DType::kF32, DType::kBF16, DType::kF16}) dtypes += gemm_typed_available(t);
  const size_t sizes = std::size(kGemmSweepSizes);
  // Square: (M,M,s) and (M,s,M), the square size once; wide: one linear layer per size.
  ASSERT_EQ(rows.size(), size_t(dtypes) * (sizes * 2 - 1 + sizes));
  std::set<std::tuple<std::string, int, int, int>> seen;
  size_t wide = 0;
  for (const KernelBenchRow& r : rows) {
    EXPECT_EQ(r.threads, 1);
    EXPECT_GT(r.gflops, 0);
    EXPECT_TRUE(seen.insert({r.dtype, r.M, r.N, r.K}).second) << "twice: " << r.N << "x" << r.K;
    if (r.impl == "wide") {
      ++wide;
      EXPECT_EQ(r.M, kWideRows);
      EXPECT_EQ(r.N, 50304);  // GPT-2's padded vocabulary
      EXPECT_NE(std::find(std::begin(kGemmSweepSizes), std::end(kGemmSweepSizes), r.K),
                std::end(kGemmSweepSizes));
      continue;
    }
    EXPECT_EQ(r.M, kGemmSweepM);
    EXPECT_TRUE(r.N == kGemmSweepM || r.K == kGemmSweepM) << r.N << " " << r.K;
  }
  EXPECT_EQ(wide, size_t(dtypes) * sizes);
}

}  // namespace
}  // namespace loom::kernels
