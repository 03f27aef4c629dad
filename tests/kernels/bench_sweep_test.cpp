// The GEMM sweep the planner's calibration reads (bench kernels): one row per dtype, size
// and shape at each thread count asked for, each validated before it is timed.
#include <gtest/gtest.h>

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
  ASSERT_EQ(rows.size(), size_t(dtypes) * (sizes * 2 - 1));  // the square size once
  std::set<std::tuple<std::string, int, int, int>> seen;
  for (const KernelBenchRow& r : rows) {
    EXPECT_EQ(r.threads, 1);
    EXPECT_GT(r.gflops, 0);
    EXPECT_EQ(r.M, kGemmSweepM);
    EXPECT_TRUE(r.N == kGemmSweepM || r.K == kGemmSweepM) << r.N << " " << r.K;
    EXPECT_TRUE(seen.insert({r.dtype, r.M, r.N, r.K}).second) << "twice: " << r.N << "x" << r.K;
  }
}

}  // namespace
}  // namespace loom::kernels
