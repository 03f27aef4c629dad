// Trace::write. loom_core does not link nlohmann_json (only the layers from data up do),
// so the Chrome trace JSON is written by hand; strings go through json_quote.
#include "core/trace.h"

#include <fmt/format.h>

#include <cmath>

#include "core/file_io.h"

namespace loom {
namespace {

constexpr const char* kLaneNames[] = {"compute", "p2p", "collectives", "steps"};

// `s` as a JSON string literal: quotes, backslashes and control characters escaped.
// Bytes >= 0x80 pass through (the names are UTF-8).
std::string json_quote(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 2);
  out += '"';
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) out += fmt::format("\\u{:04x}", unsigned(c));
        else out += ch;
    }
  }
  out += '"';
  return out;
}

// Microseconds with nanosecond resolution; JSON has no inf/nan, so those become 0.
std::string json_us(double us) { return fmt::format("{:.3f}", std::isfinite(us) ? us : 0.0); }

std::string event_json(const TraceEvent& e, int pid) {
  std::string args;
  auto arg = [&](const char* key, int64_t v) {
    if (v < 0) return;
    args += fmt::format("{}\"{}\":{}", args.empty() ? "" : ",", key, v);
  };
  arg("bytes", e.bytes);
  arg("step", e.step);
  arg("mb", e.microbatch);
  return fmt::format(
      R"({{"name":{},"cat":{},"ph":"X","ts":{},"dur":{},"pid":{},"tid":{}{}}})",
      json_quote(e.name), json_quote(e.cat), json_us(e.ts_us), json_us(e.dur_us), pid, e.lane,
      args.empty() ? "" : fmt::format(R"(,"args":{{{}}})", args));
}

std::string metadata_json(const char* what, int pid, int tid, const std::string& name) {
  return fmt::format(R"({{"name":"{}","ph":"M","pid":{},"tid":{},"args":{{"name":{}}}}})", what,
                     pid, tid, json_quote(name));
}

}  // namespace

void Trace::write(const std::filesystem::path& file, const std::string& process_name) const {
  const std::vector<TraceEvent> evs = events();
  std::string out = "{\"traceEvents\":[\n";
  out += metadata_json("process_name", rank_, 0, process_name);
  for (int lane = 0; lane < int(std::size(kLaneNames)); ++lane)
    out += ",\n" + metadata_json("thread_name", rank_, lane, kLaneNames[lane]);
  for (const TraceEvent& e : evs) out += ",\n" + event_json(e, rank_);
  out += "\n],\"displayTimeUnit\":\"ms\"}\n";
  if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path());
  write_file_atomic(file, std::string_view(out));
}

}  // namespace loom
