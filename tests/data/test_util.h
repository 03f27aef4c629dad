// Helpers shared by the data layer's tests.
#pragma once

#include <fmt/core.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "data/tokenizer.h"

namespace loom::testing {

// The real GPT-2 tokenizer, loaded once. If its files are missing, load() throws an
// InputError saying how to fetch them and every test that needs it fails (never skips).
inline const Gpt2Tokenizer& gpt2() {
  static const Gpt2Tokenizer tokenizer = Gpt2Tokenizer::load(default_tokenizer_dir());
  return tokenizer;
}

// A fresh, empty folder under the system temp dir, removed when the object dies.
class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(std::filesystem::temp_directory_path() /
              fmt::format("loom_data_test_{}_{}", ::getpid(), name)) {
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace loom::testing
