#include "serve/bench_serve.h"

#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <regex>
#include <thread>

#include "core/check.h"
#include "core/file_io.h"
#include "core/philox.h"
#include "core/timer.h"

namespace loom {
namespace {

using nlohmann::json;

struct Target {
  std::string host;
  int port = 0;
};

Target parse_url(const std::string& url) {
  static const std::regex re(R"(^http://(localhost|127\.0\.0\.1|\[::1\]):([0-9]{1,5})/?$)");
  std::smatch m;
  LOOM_REQUIRE(std::regex_match(url, m, re), "--url '{}': bench serve loads a server on this "
               "host's loopback only: http://127.0.0.1:PORT (or localhost, [::1])", url);
  return {m[1].str() == "[::1]" ? "::1" : m[1].str(), std::stoi(m[2].str())};
}

// One streamed request as a client sees it.
struct Sample {
  double ttft = 0, latency = 0;
  int tokens = 0;
  std::vector<double> itl;  // between consecutive token events
  std::string error;        // empty when it succeeded
};

Sample one_request(const Target& t, const json& body) {
  httplib::Client c(t.host, t.port);
  c.set_read_timeout(600, 0);
  Sample s;
  std::string buffer;
  bool done = false;
  double last = -1;
  Timer clock;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    buffer.append(data, n);
    for (size_t cut; (cut = buffer.find("\n\n")) != std::string::npos; buffer.erase(0, cut + 2)) {
      const std::string event = buffer.substr(0, cut).substr(6);  // after "data: "
      if (event == "[DONE]") {
        done = true;
        continue;
      }
      const json j = json::parse(event, nullptr, false);
      if (j.is_discarded() || j.contains("error")) {
        s.error = event;
        continue;
      }
      if (j.contains("usage")) s.tokens = j["usage"]["completion_tokens"];
      if (j["choices"].empty() || j["choices"][0]["text"].get<std::string>().empty()) continue;
      const double now = clock.seconds();
      if (last < 0) s.ttft = now;
      else s.itl.push_back(now - last);
      last = now;
    }
    return true;
  };
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  const bool sent = c.send(req, res, err);
  s.latency = clock.seconds();
  if (!sent) s.error = fmt::format("no response ({})", httplib::to_string(err));
  else if (res.status != 200) s.error = fmt::format("HTTP {}: {}", res.status, res.body);
  else if (!done && s.error.empty()) s.error = "the stream ended without [DONE]";
  return s;
}

json request_body(const ServeBenchOptions& opt, uint64_t n) {
  const Philox rng(17, name_hash("bench.serve"));
  std::vector<int32_t> prompt(size_t(opt.prompt_tokens), 0);
  for (int i = 0; i < opt.prompt_tokens; ++i)
    prompt[size_t(i)] = int32_t(rng.block(n * 4096 + uint64_t(i))[0] % 50257);
  return {{"prompt", prompt}, {"max_tokens", opt.max_tokens}, {"temperature", 1.0},
          {"seed", n}, {"ignore_eos", true}, {"stream", true},
          {"stream_options", {{"include_usage", true}}}};
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p / 100 * double(v.size())))];
}

struct Level {
  int concurrency = 0;
  std::vector<Sample> samples;
  double wall_s = 0;
};

Level run_level(const Target& t, const ServeBenchOptions& opt, int concurrency) {
  Level lv;
  lv.concurrency = concurrency;
  std::atomic<int> started{0};
  std::mutex mu;
  Timer wall;
  std::vector<std::thread> clients;
  for (int c = 0; c < concurrency; ++c)
    clients.emplace_back([&] {
      for (int n; (n = started++) < opt.requests && wall.seconds() < opt.duration_s;) {
        Sample s = one_request(t, request_body(opt, uint64_t(n)));
        std::lock_guard<std::mutex> lock(mu);
        lv.samples.push_back(std::move(s));
      }
    });
  for (std::thread& th : clients) th.join();
  lv.wall_s = wall.seconds();
  return lv;
}

}  // namespace

int bench_serve(const ServeBenchOptions& opt) {
  const Target t = parse_url(opt.url);
  LOOM_REQUIRE(opt.requests >= 1 && opt.max_tokens >= 2 && opt.prompt_tokens >= 1 &&
                   !opt.concurrency.empty(),
               "bench serve: --requests, --prompt-tokens >= 1, --max-tokens >= 2 and a "
               "--concurrency list");
  // Validate first: the server answers, and a streamed request delivers every token.
  const Sample check = one_request(t, request_body(opt, 1u << 30));
  LOOM_REQUIRE(check.error.empty() && check.tokens == opt.max_tokens,
               "bench serve: the check request to {} failed ({}; {} of {} tokens)", opt.url,
               check.error.empty() ? "no error" : check.error, check.tokens, opt.max_tokens);
  fmt::print("bench serve: {} , {} prompt tokens, {} new tokens, at most {} requests or {} s "
             "per level\n{:>5} {:>6} {:>6} {:>8} {:>10} {:>27} {:>27} {:>27}\n",
             opt.url, opt.prompt_tokens, opt.max_tokens, opt.requests, opt.duration_s, "conc",
             "reqs", "errors", "req/s", "tok/s", "TTFT ms p50/p90/p99", "TPOT ms p50/p90/p99",
             "ITL ms p50/p90/p99");
  json out = {{"url", opt.url}, {"prompt_tokens", opt.prompt_tokens},
              {"max_tokens", opt.max_tokens}, {"levels", json::array()}};
  int errors = 0;
  double first_tps = 0;
  for (int c : opt.concurrency) {
    const Level lv = run_level(t, opt, c);
    std::vector<double> ttft, tpot, itl;
    int failed = 0, tokens = 0;
    for (const Sample& s : lv.samples) {
      if (!s.error.empty()) {
        ++failed;
        if (failed == 1) fmt::print(stderr, "first error: {}\n", s.error);
        continue;
      }
      tokens += s.tokens;
      ttft.push_back(s.ttft * 1e3);
      if (s.tokens > 1) tpot.push_back((s.latency - s.ttft) / (s.tokens - 1) * 1e3);
      for (double d : s.itl) itl.push_back(d * 1e3);
    }
    errors += failed;
    const double tps = tokens / lv.wall_s;
    if (first_tps == 0) first_tps = tps;
    auto p3 = [](const std::vector<double>& v) {
      return fmt::format("{:.1f}/{:.1f}/{:.1f}", percentile(v, 50), percentile(v, 90),
                         percentile(v, 99));
    };
    fmt::print("{:>5} {:>6} {:>6} {:>8.2f} {:>10.1f} {:>27} {:>27} {:>27}   {:.2f}x level 1\n", c,
               lv.samples.size(), failed, double(lv.samples.size()) / lv.wall_s, tps, p3(ttft),
               p3(tpot), p3(itl), tps / first_tps);
    auto pct = [](const std::vector<double>& v) {
      return json{{"p50", percentile(v, 50)}, {"p90", percentile(v, 90)},
                  {"p99", percentile(v, 99)}};
    };
    out["levels"].push_back({{"concurrency", c}, {"requests", lv.samples.size()},
                             {"errors", failed}, {"wall_s", lv.wall_s},
                             {"requests_per_s", double(lv.samples.size()) / lv.wall_s},
                             {"tokens_per_s", tps}, {"ttft_ms", pct(ttft)},
                             {"tpot_ms", pct(tpot)}, {"itl_ms", pct(itl)},
                             {"tokens_per_s_over_first", tps / first_tps}});
  }
  write_file_atomic(opt.json_out, out.dump(1));
  fmt::print("wrote {}\n", opt.json_out.string());
  return errors == 0 ? 0 : 1;
}

}  // namespace loom
