// A rank that sleeps past the deadline before an all-reduce makes the whole job exit
// non-zero within deadline + 10 s, with a message naming that rank and the operation; a
// rank that calls abort() ends the whole job within 10 s.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <string>

namespace {

struct Result {
  int code;
  std::string output;
  double seconds;
};

Result mpirun(int np, const std::string& args) {
  const std::string cmd = std::string(LOOM_MPIRUN) + " -np " + std::to_string(np) + " " +
                          LOOM_MPI_FAULT + " " + args + " 2>&1";
  const auto start = std::chrono::steady_clock::now();
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  const int status = pclose(p);
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return Result{WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out, s};
}

TEST(Fault, HungRankIsNamedAndTheJobEnds) {
  const double deadline = 3;
  const Result r = mpirun(4, "hang 2 60 " + std::to_string(deadline));
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_LT(r.seconds, deadline + 10) << r.output;
  EXPECT_NE(r.output.find("rank 2 (pp 0, dp 2, tp 0) never entered ALLREDUCE #6 of group "
                          "dp[0..3] at step 5"),
            std::string::npos)
      << r.output;
}

TEST(Fault, AbortingRankEndsTheJob) {
  const Result r = mpirun(4, "abort 1");
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_LT(r.seconds, 10.0) << r.output;
}

}  // namespace
