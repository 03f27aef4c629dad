// `loom serve` as a user runs it: a greedy completion over HTTP equals `loom generate` on the
// same checkpoint; SIGTERM lets the server drain and exit 0; a port in use is refused.
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <fstream>
#include <regex>
#include <thread>

#include "../shell_util.h"

namespace {
namespace fs = std::filesystem;
using loom::test::contains;
using loom::test::Result;
using loom::test::slurp;

Result loom_cmd(const std::string& args) { return loom::test::shell(LOOM_BINARY " " + args); }

class ServeCli : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = loom::test::scratch_dir("serve_cli");
    loom::test::write_corpus(dir_ / "corpus.txt");
    std::ofstream(dir_ / "tiny.toml")
        << "[model]\nn_layer = 2\nn_head = 2\nn_embd = 16\nblock_size = 32\n"
        << "[train]\nmicro_batch = 2\nseq_len = 16\nsteps = 2\n"
        << "[data]\ntrain = \"" << (dir_ / "data/train_000000.bin").string() << "\"\n"
        << "[run]\ndir = \"" << (dir_ / "run").string() << "\"\nthreads = 1\n";
    Result r = loom_cmd("prepare --text " + (dir_ / "corpus.txt").string() + " --out " +
                        (dir_ / "data").string() + " --val-fraction 0.1");
    ASSERT_EQ(r.code, 0) << r.output;
    r = loom_cmd("train --config " + (dir_ / "tiny.toml").string());
    ASSERT_EQ(r.code, 0) << r.output;
  }
  void TearDown() override {
    if (pid_ > 0) kill(pid_, SIGKILL);  // a failed test leaves no server behind
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  // Starts loom serve in the background (its exit code lands in the log) and returns its
  // port once it is ready; 0 if it is not within a minute.
  int start(const std::string& args = "") {
    const fs::path log = dir_ / "serve.log";
    const Result r = loom::test::shell(
        "(" LOOM_BINARY " serve --ckpt " + (dir_ / "run").string() + " --port 0 " + args +
        " > " + log.string() + " 2>&1 & echo $! > " + (dir_ / "pid").string() +
        "; wait $!; echo \"rc=$?\" >> " + log.string() + ") > /dev/null 2>&1 &");
    EXPECT_EQ(r.code, 0) << r.output;
    const std::regex listening(R"(listening on http://127\.0\.0\.1:([0-9]+))");
    for (int i = 0; i < 600; ++i) {
      const std::string text = slurp(log), pid = slurp(dir_ / "pid");
      std::smatch m;
      // The shell may write the pid file after the server has printed "ready".
      if (contains(text, "ready") && std::regex_search(text, m, listening) &&
          contains(pid, "\n")) {
        pid_ = std::stoi(pid);
        return std::stoi(m[1].str());
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ADD_FAILURE() << "loom serve did not get ready:\n" << slurp(log);
    return 0;
  }
  // The log once the server has exited (bounded).
  std::string log_when_exited() {
    for (int i = 0; i < 600 && !contains(slurp(dir_ / "serve.log"), "rc="); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    pid_ = 0;
    return slurp(dir_ / "serve.log");
  }
  fs::path dir_;
  pid_t pid_ = 0;
};

TEST_F(ServeCli, AGreedyCompletionEqualsGenerateAndSigtermDrains) {
  const int port = start("--slots 2");
  ASSERT_GT(port, 0);
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(120, 0);
  const nlohmann::json body = {{"prompt", "In the beginning"}, {"max_tokens", 8},
                               {"temperature", 0}};
  auto res = c.Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  const std::string text = nlohmann::json::parse(res->body)["choices"][0]["text"];
  const Result gen = loom_cmd("generate --ckpt " + (dir_ / "run").string() +
                              " --prompt 'In the beginning' --max-tokens 8 --temperature 0");
  ASSERT_EQ(gen.code, 0) << gen.output;
  std::string out = gen.output;
#ifdef LOOM_SANITIZED
  // Under ./scripts/test --tsan, LLVM's Archer prints one line to stdout as it loads, asking
  // for ignore_noninstrumented_modules=1, which would hide races reported through libstdc++.
  const std::string archer = "Warning: please export TSAN_OPTIONS=";
  if (out.starts_with(archer)) out.erase(0, out.find('\n') + 1);
#endif
  // As JSON carries it: bytes that are not UTF-8 would be U+FFFD over HTTP.
  const std::string printed = nlohmann::json::parse(nlohmann::json(out).dump(
      -1, ' ', false, nlohmann::json::error_handler_t::replace));
  EXPECT_EQ(printed, "In the beginning" + text + "\n");
  ASSERT_EQ(kill(pid_, SIGTERM), 0);
  const std::string log = log_when_exited();
  EXPECT_TRUE(contains(log, "SIGTERM: finishing the requests in flight")) << log;
  EXPECT_TRUE(contains(log, "stopped")) << log;
  EXPECT_TRUE(contains(log, "rc=0")) << log;
}

TEST_F(ServeCli, APortInUseIsRefusedWithExitCode2) {
  const int port = start();
  ASSERT_GT(port, 0);
  const Result r = loom_cmd("serve --ckpt " + (dir_ / "run").string() + " --port " +
                            std::to_string(port));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "cannot listen on 127.0.0.1:" + std::to_string(port)))
      << r.output;
  kill(pid_, SIGTERM);
  EXPECT_TRUE(contains(log_when_exited(), "rc=0"));
}

}  // namespace
