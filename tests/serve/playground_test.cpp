// The playground page in a real browser: headless Chromium (Debian's chromium, driven through
// chromedriver's WebDriver HTTP API) loads GET / from an in-process server on loopback,
// types a prompt, sets greedy decoding, clicks Generate, and the streamed text that appears
// equals the same request made over HTTP directly. No browser means a failure, not a skip:
// ./scripts/test installs chromium and chromium-driver.
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <nlohmann/json.hpp>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <thread>

#include "comm/process_grid.h"
#include "model/param_spec.h"
#include "scratch.h"
#include "serve/server.h"

extern char** environ;

namespace loom {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// A port nobody listens on now (the kernel's pick for a socket bound to port 0).
int free_port() {
  const int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t n = sizeof a;
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &n);
  close(s);
  return ntohs(a.sin_port);
}

// chromedriver in a process group of its own, killed (with its browsers) at the end.
class Chromedriver {
 public:
  explicit Chromedriver(int port) {
    const std::string arg = "--port=" + std::to_string(port);
    char* argv[] = {const_cast<char*>("/usr/bin/chromedriver"), const_cast<char*>(arg.c_str()),
                    nullptr};
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
    posix_spawnattr_setpgroup(&attr, 0);
    spawned_ = posix_spawn(&pid_, argv[0], nullptr, &attr, argv, environ) == 0;
    posix_spawnattr_destroy(&attr);
  }
  ~Chromedriver() {
    if (!spawned_) return;
    kill(-pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  bool spawned() const { return spawned_; }

 private:
  pid_t pid_ = 0;
  bool spawned_ = false;
};

// WebDriver commands of one session.
class Browser {
 public:
  explicit Browser(int port) : http_("127.0.0.1", port) { http_.set_read_timeout(120, 0); }
  json call(const std::string& method, const std::string& path, const json& body = json::object()) {
    const std::string p = path.empty() || path[0] != '/' ? "/session/" + session_ + "/" + path
                                                         : path;
    auto r = method == "GET" ? http_.Get(p)
             : method == "DELETE" ? http_.Delete(p)
                                  : http_.Post(p, body.dump(), "application/json");
    if (!r) return json{{"error", "no response from chromedriver"}};
    return json::parse(r->body, nullptr, false);
  }
  bool start(const fs::path& profile) {
    const json caps = {{"capabilities",
                        {{"alwaysMatch",
                          {{"browserName", "chrome"},
                           {"goog:chromeOptions",
                            {{"binary", "/usr/bin/chromium"},
                             {"args",
                              {"--headless", "--no-sandbox", "--disable-gpu",
                               "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                               "--disable-background-networking", "--disable-component-update",
                               "--disable-sync", "--user-data-dir=" + profile.string(),
                               // chromedriver talks to the browser over a pipe, not a
                               // DevTools port it reaches as "localhost": a root without
                               // /etc/hosts (debootstrap's minbase) could not resolve it.
                               "--remote-debugging-pipe"}}}}}}}}};
    for (int i = 0; i < 100; ++i) {  // chromedriver needs a moment to listen
      if (auto r = http_.Get("/status"); r && r->status == 200) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    const json j = call("POST", "/session", caps);
    if (!j.contains("value") || !j["value"].contains("sessionId")) {
      std::fprintf(stderr, "WebDriver session failed: %s\n", j.dump().c_str());
      return false;
    }
    session_ = j["value"]["sessionId"];
    return true;
  }
  std::string element(const std::string& css) {
    const json j = call("POST", "element", {{"using", "css selector"}, {"value", css}});
    return j["value"].begin().value().get<std::string>();
  }
  void type(const std::string& css, const std::string& text) {
    const std::string e = element(css);
    call("POST", "element/" + e + "/clear");
    call("POST", "element/" + e + "/value", {{"text", text}});
  }
  json script(const std::string& js) {
    return call("POST", "execute/sync", {{"script", js}, {"args", json::array()}})["value"];
  }
  ~Browser() {
    if (!session_.empty()) call("DELETE", "/session/" + session_);
  }

 private:
  httplib::Client http_;
  std::string session_;
};

TEST(Playground, StreamsTheSameTextAsTheApiInHeadlessChromium) {
  ASSERT_TRUE(fs::exists("/usr/bin/chromium") && fs::exists("/usr/bin/chromedriver"))
      << "the playground test needs Debian's chromium and chromium-driver (./scripts/test "
         "installs them)";
  const ProcessGrid grid = ProcessGrid::single();
  Gpt model(GptConfig{.n_layer = 2, .n_head = 2, .n_embd = 64, .block_size = 128,
                      .vocab_size = 50257},
            grid);
  init_params(model.params(), 3, model.weights().data());
  for (float& w : model.weights()) w *= 4.0f;
  const Gpt2Tokenizer tok = Gpt2Tokenizer::load(default_tokenizer_dir());
  ServeOptions opt;
  opt.port = 0;
  ServeSession session(opt, tok);
  std::thread runner([&] { session.run(model, grid); });
  // Whatever assertion ends the test, the server drains and its thread is joined (a joinable
  // thread's destructor would abort the whole test binary).
  struct Stop {
    ServeSession& session;
    std::thread& runner;
    ~Stop() {
      session.shutdown();
      runner.join();
    }
  } stop{session, runner};
  const int driver_port = free_port();
  Chromedriver driver(driver_port);
  ASSERT_TRUE(driver.spawned());
  test::ScratchDir profile("playground_profile");
  {
    Browser b(driver_port);
    ASSERT_TRUE(b.start(profile.path()));
    b.call("POST", "url", {{"url", "http://127.0.0.1:" + std::to_string(session.port()) + "/"}});
    b.type("#prompt", "In the beginning");
    b.type("#max_tokens", "12");
    b.type("#temperature", "0");
    b.call("POST", "element/" + b.element("#generate") + "/click");
    std::string done;
    for (int i = 0; i < 600 && done != "1"; ++i) {  // bounded: a few ms of tokens
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      done = b.script("return document.getElementById('stats').dataset.done || ''");
    }
    ASSERT_EQ(done, "1") << b.script("return document.getElementById('stats').textContent");
    const std::string shown = b.script("return document.getElementById('completion').textContent");
    httplib::Client c("127.0.0.1", session.port());
    const json body = {{"prompt", "In the beginning"}, {"max_tokens", 12}, {"temperature", 0},
                       {"seed", 42}};
    auto r = c.Post("/v1/completions", body.dump(), "application/json");
    ASSERT_TRUE(r);
    const std::string want = json::parse(r->body)["choices"][0]["text"];
    EXPECT_FALSE(shown.empty());
    EXPECT_EQ(shown, want);
    const std::string stats = b.script("return document.getElementById('stats').textContent");
    EXPECT_NE(stats.find("12 tokens"), std::string::npos) << stats;
    EXPECT_NE(stats.find("tokens/s"), std::string::npos) << stats;
  }
}

}  // namespace
}  // namespace loom
