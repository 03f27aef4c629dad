// Shared by the tests that run the `loom` binary: a shell command's exit code and output,
// and small string/file helpers.
#pragma once

#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "scratch.h"

namespace loom::test {

struct Result {
  int code;
  std::string output;  // stdout + stderr
};

// Runs `cmd` through the shell with stderr folded into stdout.
inline Result shell(const std::string& cmd) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::string out;
  std::array<char, 4096> buf;
  while (size_t n = fread(buf.data(), 1, buf.size(), p)) out.append(buf.data(), n);
  const int status = pclose(p);
  return Result{WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out};
}

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
