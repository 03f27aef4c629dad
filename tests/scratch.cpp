#include "scratch.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <mutex>
#include <vector>

namespace loom::test {
namespace {

namespace fs = std::filesystem;

// Owned by GoogleTest's listener list once appended (it deletes it at exit).
class Remover : public ::testing::EmptyTestEventListener {
 public:
  void add(const fs::path& p) {
    std::lock_guard lock(mu_);
    (::testing::UnitTest::GetInstance()->current_test_info() ? test_ : suite_).push_back(p);
  }
  void OnTestEnd(const ::testing::TestInfo&) override { remove(test_); }
  void OnTestSuiteEnd(const ::testing::TestSuite&) override { remove(suite_); }
  void OnTestProgramEnd(const ::testing::UnitTest&) override {
    remove(test_);
    remove(suite_);
  }

 private:
  void remove(std::vector<fs::path>& paths) {
    std::lock_guard lock(mu_);
    for (const fs::path& p : paths) {
      std::error_code ec;
      fs::remove_all(p, ec);
    }
    paths.clear();
  }
  std::mutex mu_;
  std::vector<fs::path> test_, suite_;
};

Remover& remover() {
  static Remover* r = [] {
    auto* created = new Remover;
    ::testing::UnitTest::GetInstance()->listeners().Append(created);
    return created;
  }();
  return *r;
}

// Listening from the start, before any test runs.
[[maybe_unused]] const bool kInstalled = (remover(), true);

}  // namespace

void remove_at_end(const fs::path& path) { remover().add(path); }

fs::path scratch_dir(const std::string& tag) {
  const fs::path dir =
      fs::temp_directory_path() / ("loom_" + tag + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  remove_at_end(dir);
  return dir;
}

std::string ScratchDir::current_test_tag() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  return info ? std::string(info->test_suite_name()) + "_" + info->name() : std::string("suite");
}

}  // namespace loom::test
