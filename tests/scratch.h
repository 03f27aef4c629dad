// Scratch directories for tests that clean up after themselves, pass or fail.
#pragma once

#include <filesystem>
#include <string>

namespace loom::test {

// A fresh, empty `$TMPDIR/loom_<tag>_<pid>`, removed with everything in it when the current
// test ends, or, when made outside a test body (SetUpTestSuite), when its test suite ends;
// also when the test fails. Only a crash leaves it behind.
std::filesystem::path scratch_dir(const std::string& tag);

// Removes `path` (recursively) when the current test, else the current test suite, ends.
void remove_at_end(const std::filesystem::path& path);

// scratch_dir() as an object, removed when it goes out of scope (and at the test's end in
// any case); the tag defaults to the test's suite and name.
class ScratchDir {
 public:
  explicit ScratchDir(const std::string& tag = current_test_tag()) : path_(scratch_dir(tag)) {}
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

  // "<suite>_<test>" of the running test, "suite" outside one.
  static std::string current_test_tag();

 private:
  std::filesystem::path path_;
};

}  // namespace loom::test
