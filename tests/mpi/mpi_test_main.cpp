// main() of the MPI test binaries, run by CTest under mpirun: every rank runs every test;
// the job fails if any rank failed, so a failure on one rank is never lost.
#include <gtest/gtest.h>
#include <mpi.h>

#include "mpi_test_main.h"

namespace loom::test {
namespace {
MpiRuntime* g_runtime = nullptr;

// On ranks other than 0: print only failures, prefixed with the rank.
class FailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit FailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::fprintf(stderr, "[rank %d] %s:%d: Failure\n%s\n", rank_,
                   r.file_name() ? r.file_name() : "?", r.line_number(), r.summary());
  }

 private:
  int rank_;
};
}
MpiRuntime& mpi() { return *g_runtime; }
}  // namespace loom::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  loom::MpiOptions opt;
  opt.timeout_s = 120;
  loom::MpiRuntime runtime(opt);
  loom::test::g_runtime = &runtime;
  if (runtime.world_rank() != 0) {
    // Keep rank 0's report readable: other ranks print only failures.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new loom::test::FailurePrinter(runtime.world_rank()));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any && runtime.world_rank() == 0) std::fprintf(stderr, "a test failed on some rank\n");
  return any;
}
