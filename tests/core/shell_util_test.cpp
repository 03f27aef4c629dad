// The tests' command runner bounds every wait (issue 12): a command that hangs is killed
// with its whole process group, and the test gets code 124 instead of hanging.
#include "../shell_util.h"

#include <gtest/gtest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

namespace {

// Processes of group `pgid` that are not zombies (a killed orphan stays a zombie until PID 1
// reaps it), from /proc/PID/stat: "pid (comm) state ppid pgrp ...".
int live_in_group(int pgid) {
  int live = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    std::ifstream in(e.path() / "stat");
    std::string stat;
    if (!std::getline(in, stat)) continue;
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(stat.substr(close + 2));
    char state = 0;
    int ppid = 0, pgrp = 0;
    if (rest >> state >> ppid >> pgrp && pgrp == pgid && state != 'Z') ++live;
  }
  return live;
}

TEST(ShellUtil, RunsACommandWithItsOutputAndCode) {
  const loom::test::Result r = loom::test::shell("echo out; echo err >&2; exit 3");
  EXPECT_EQ(r.code, 3);
  EXPECT_EQ(r.output, "out\nerr\n");
}

TEST(ShellUtil, KillsAHangingCommandsProcessGroup) {
  // $$ is the shell, the leader of the group both sleeps are in.
  const loom::test::Result r = loom::test::shell("echo $$; sleep 300 & sleep 300", 1);
  EXPECT_EQ(r.code, 124) << r.output;
  EXPECT_NE(r.output.find("killed the command's process group after 1 s"), std::string::npos)
      << r.output;
  // SIGKILL is delivered when the process next runs: on a loaded machine a killed sleep can
  // still show as running for a moment. Give the kernel up to 10 s to finish them.
  const int group = std::stoi(r.output);
  for (int i = 0; i < 1000 && live_in_group(group) > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(live_in_group(group), 0) << "a process of the group outlived it";
}

}  // namespace
