// Shared helpers for the checkpoint tests: a scratch directory per test, a tiny GPT-2, and
// checks on InputError messages.
#pragma once

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/check.h"
#include "model/config.h"
#include "model/param_spec.h"
#include "scratch.h"

namespace loom::test {

// A fresh directory per test, removed when the test ends.
using TempDir = ScratchDir;

// L=2, NH=2, C=16, maxT=8, V=50 (Vp=128), initialised from `seed`.
struct TinyModel {
  GptConfig cfg;
  std::vector<ParamSpec> specs;
  std::vector<float> weights;

  explicit TinyModel(uint64_t seed = 1, int n_layer = 2) {
    cfg.n_layer = n_layer;
    cfg.n_head = 2;
    cfg.n_embd = 16;
    cfg.block_size = 8;
    cfg.vocab_size = 50;
    specs = gpt2_param_specs(cfg);
    weights.resize(flat_size(specs));
    init_params(specs, seed, weights.data());
  }
};

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

inline std::vector<char> file_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(in), {});
}

inline void write_bytes(const std::filesystem::path& path, const std::vector<char>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), std::streamsize(bytes.size()));
}

// Runs f, which must throw InputError; returns its message ("" and a failure otherwise).
template <class F>
std::string input_error(F&& f) {
  try {
    f();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected InputError, got: " << e.what();
    return "";
  }
  ADD_FAILURE() << "expected InputError, nothing was thrown";
  return "";
}

}  // namespace loom::test

// The message of an InputError thrown by `stmt` contains every one of the strings.
#define EXPECT_INPUT_ERROR(stmt, ...)                                          \
  do {                                                                         \
    const std::string loom_msg_ = ::loom::test::input_error([&] { stmt; });    \
    for (const std::string& loom_sub_ : std::vector<std::string>{__VA_ARGS__}) \
      EXPECT_NE(loom_msg_.find(loom_sub_), std::string::npos)                  \
          << "message lacks '" << loom_sub_ << "': " << loom_msg_;             \
  } while (0)
