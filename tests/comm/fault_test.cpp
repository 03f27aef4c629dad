// A rank that sleeps past the deadline before an all-reduce makes the whole job exit
// non-zero, with a message naming that rank and the operation, after a wait (measured
// inside the job) of at least the deadline; a rank that calls abort() ends the whole job.
// What is asserted is what the job did, not how long the machine took: a wall-clock limit
// (timeout(1)) only guards against a real hang.
#include <gtest/gtest.h>

#include <cstdlib>
#include <regex>
#include <string>

#include "../shell_util.h"

namespace {

using loom::test::Result;

constexpr int kGuardSeconds = 240;  // far beyond any load; a job still running then hangs

Result mpirun(int np, const std::string& args) {
  return loom::test::shell("timeout -k 10 " + std::to_string(kGuardSeconds) + " " +
                           std::string(LOOM_MPIRUN) + " -np " + std::to_string(np) + " " +
                           LOOM_MPI_FAULT + " " + args);
}

TEST(Fault, HungRankIsNamedAndTheJobEnds) {
  const double deadline = 3;
  const Result r = mpirun(4, "hang 2 60 " + std::to_string(deadline));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 124) << "the job did not end within " << kGuardSeconds << " s\n" << r.output;
  EXPECT_NE(r.output.find("rank 2 (pp 0, dp 2, tp 0) never entered ALLREDUCE #6 of group "
                          "dp[0..3] at step 5"),
            std::string::npos)
      << r.output;
  // The rank that reported waited the deadline, as its own clock measured it.
  std::smatch m;
  const std::regex waited(
      R"(deadline of 3 s passed waiting for ALLREDUCE #6 .* \(waited ([0-9.]+) s\))");
  ASSERT_TRUE(std::regex_search(r.output, m, waited)) << r.output;
  EXPECT_GE(std::atof(m[1].str().c_str()), deadline) << r.output;
}

TEST(Fault, AbortingRankEndsTheJob) {
  const Result r = mpirun(4, "abort 1");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 124) << "the job did not end within " << kGuardSeconds << " s\n" << r.output;
  // mpirun names the rank that died and how.
  EXPECT_NE(r.output.find("rank 1"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("signal 6"), std::string::npos) << r.output;
}

}  // namespace
