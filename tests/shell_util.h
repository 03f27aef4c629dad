// Shared by the tests that run the `loom` binary: a shell command's exit code and output,
// and small string/file helpers.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>

#include "scratch.h"

namespace loom::test {

struct Result {
  int code;
  std::string output;  // stdout + stderr
};

// Runs `cmd` through /bin/sh, stderr folded into stdout, in a process group of its own. No
// test can hang on it: past `limit_s` the whole group is killed (SIGKILL) and the result is
// code 124 with the output so far and a line saying so. Background processes the command
// leaves (with their output redirected) live on; the wait ends when the shell has exited
// and its output is closed, or 5 s after the shell exits.
Result shell(const std::string& cmd, double limit_s = 600);

inline bool contains(const std::string& s, const std::string& what) {
  return s.find(what) != std::string::npos;
}

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A small English corpus for `loom prepare` (400 numbered verses).
inline void write_corpus(const std::filesystem::path& path) {
  std::ofstream text(path);
  for (int i = 0; i < 400; ++i)
    text << "In the beginning God created the heaven and the earth. Verse " << i << ".\n";
}

}  // namespace loom::test
