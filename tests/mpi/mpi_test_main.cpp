// main() of the MPI test binaries, run by CTest under mpirun: every rank runs every test;
// the job fails if any rank failed, so a failure on one rank is never lost.
#include <gtest/gtest.h>
#include <mpi.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <vector>

#include "mpi_test_main.h"

namespace loom::test {
namespace {
MpiRuntime* g_runtime = nullptr;
std::unique_ptr<Comm> g_world;                 // for the barrier at each test's end
std::vector<std::filesystem::path> g_shared;  // shared_dir()s of the running test

// At each test's end every rank waits for the others, then rank 0 removes the test's shared
// directories: no rank is still reading them.
class SharedDirRemover : public ::testing::EmptyTestEventListener {
 public:
  void OnTestEnd(const ::testing::TestInfo&) override {
    g_world->barrier();
    if (g_world->rank() == 0)
      for (const auto& dir : g_shared) {
        std::error_code ec;
        std::filesystem::remove_all(dir, ec);
      }
    g_shared.clear();
  }
};

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

std::filesystem::path shared_dir(const ProcessGrid& grid, const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("loom_" + name + "_" + std::to_string(::getppid()));
  if (grid.rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  g_shared.push_back(dir);
  grid.world().barrier();
  return dir;
}
}  // namespace loom::test

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  loom::MpiOptions opt;
  opt.timeout_s = 120;
  loom::MpiRuntime runtime(opt);
  loom::test::g_runtime = &runtime;
  loom::test::g_world = runtime.world();
  ::testing::UnitTest::GetInstance()->listeners().Append(new loom::test::SharedDirRemover);
  if (runtime.world_rank() != 0) {
    // Keep rank 0's report readable: other ranks print only failures.
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new loom::test::FailurePrinter(runtime.world_rank()));
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  loom::test::g_world.reset();
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any && runtime.world_rank() == 0) std::fprintf(stderr, "a test failed on some rank\n");
  return any;
}
