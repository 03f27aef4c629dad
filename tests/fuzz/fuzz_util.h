// Shared by the libFuzzer harnesses (tests/fuzz/*_fuzz.cpp): untrusted bytes as a file, and
// the rule every harness checks. Bad input must end in loom::InputError (a message, exit
// 2); any other exception, a crash or a sanitizer report is a finding.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/check.h"

namespace loom::fuzz {

// A folder of this process's own in /dev/shm (memory: a million writes cost no disk).
inline const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path base = std::filesystem::exists("/dev/shm") ? "/dev/shm" : "/tmp";
    std::filesystem::path d = base / ("loom_fuzz_" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

// Writes the input to scratch()/name and returns its path.
inline std::filesystem::path as_file(const uint8_t* data, size_t size, const std::string& name) {
  const std::filesystem::path p = scratch() / name;
  std::ofstream(p, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), std::streamsize(size));
  return p;
}

// Runs `f`; an InputError is the expected answer to bad input, anything else propagates.
template <typename F>
void expect_input_errors_only(F&& f) {
  try {
    f();
  } catch (const InputError&) {
  }
}

}  // namespace loom::fuzz
