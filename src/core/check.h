// Errors. LOOM_CHECK reports file:line and the values involved and throws loom::Error;
// the binary's top level prints it and exits (in a multi-rank job it aborts the job, so
// a single rank never hangs the rest). Throwing rather than exiting keeps every failure
// testable with EXPECT_THROW.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace loom {

// A failure with a message a user can act on. exit_code follows the CLI's convention:
// 2 = bad input (config, layout, files), 1 = anything else.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, int exit_code = 1)
      : std::runtime_error(what), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

// Bad user input: a config, a layout, a file. Exit code 2.
class InputError : public Error {
 public:
  explicit InputError(const std::string& what) : Error(what, 2) {}
};

[[noreturn]] void fail_check(const char* file, int line, const char* cond, const std::string& msg);

}  // namespace loom

#define LOOM_CHECK(cond, ...)                                                   \
  do {                                                                          \
    if (!(cond)) [[unlikely]]                                                   \
      ::loom::fail_check(__FILE__, __LINE__, #cond, fmt::format(__VA_ARGS__));  \
  } while (0)

// For user input: throws InputError (exit code 2) with just the message.
#define LOOM_REQUIRE(cond, ...)                                   \
  do {                                                            \
    if (!(cond)) [[unlikely]]                                     \
      throw ::loom::InputError(fmt::format(__VA_ARGS__));         \
  } while (0)
