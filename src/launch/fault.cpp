#include "launch/fault.h"

#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "core/check.h"

namespace loom {
namespace {

constexpr const char* kForms =
    "kill:rank=R:step=S, kill:rank=R:every=N, hang:rank=R:step=S or "
    "exit-during-checkpoint:rank=R[:step=S], disk-full:step=S "
    "(R a world rank, S a 0-based step; for exit-during-checkpoint S names checkpoint step_S)";

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t begin = 0;
  for (size_t pos; (pos = s.find(sep, begin)) != std::string::npos; begin = pos + 1)
    out.push_back(s.substr(begin, pos - begin));
  out.push_back(s.substr(begin));
  return out;
}

// "key=N" with N a non-negative integer; -1 if the text is not of that form.
int parse_field(const std::string& field, const std::string& key) {
  if (field.rfind(key + "=", 0) != 0) return -1;
  const char* first = field.data() + key.size() + 1;
  const char* last = field.data() + field.size();
  int v = -1;
  const auto [end, ec] = std::from_chars(first, last, v);
  return ec == std::errc() && end == last && first != last && v >= 0 ? v : -1;
}

}  // namespace

FaultSpec parse_fault(const std::string& spec) {
  if (spec.empty()) return {};
  const std::vector<std::string> f = split(spec, ':');
  FaultSpec out;
  if (f[0] == "disk-full" && f.size() == 2 && parse_field(f[1], "step") >= 0)
    return {FaultSpec::Kind::kDiskFull, 0, parse_field(f[1], "step"), 0};
  if (f[0] == "kill") out.kind = FaultSpec::Kind::kKill;
  if (f[0] == "hang") out.kind = FaultSpec::Kind::kHang;
  if (f[0] == "exit-during-checkpoint") out.kind = FaultSpec::Kind::kExitDuringCheckpoint;
  const bool step_optional = out.kind == FaultSpec::Kind::kExitDuringCheckpoint;
  const bool shape_ok = f.size() == 3 || (step_optional && f.size() == 2);
  if (out.kind != FaultSpec::Kind::kNone && shape_ok) {
    out.rank = parse_field(f[1], "rank");
    if (out.kind == FaultSpec::Kind::kKill && f[2].rfind("every=", 0) == 0) {
      out.every = parse_field(f[2], "every");
      if (out.rank >= 0 && out.every > 0) return out;
    }
    out.step = f.size() == 3 ? parse_field(f[2], "step") : -1;
    if (out.rank >= 0 && (f.size() == 2 || out.step >= 0)) return out;
  }
  throw InputError(fmt::format("--inject-fault '{}' is not a fault: use {}", spec, kForms));
}

bool fault_armed_from_env() {
  const char* attempt = std::getenv("LOOM_ATTEMPT");
  return attempt == nullptr || std::string(attempt) == "0";
}

FaultInjector::FaultInjector(FaultSpec spec, int world_rank, bool armed)
    : spec_(spec), world_rank_(world_rank), armed_(armed) {
  const char* attempt = std::getenv("LOOM_ATTEMPT");
  if (attempt) attempt_ = std::atoi(attempt);
}

void FaultInjector::at_step(int step) const {
  last_step_.store(step);
  if (spec_.every > 0) {
    if (spec_.rank != world_rank_ || step != (attempt_ + 1) * spec_.every) return;
  } else if (!fires_here() || step != spec_.step) {
    return;
  }
  if (spec_.kind == FaultSpec::Kind::kKill) {
    std::fprintf(stderr, "loom: injected fault: rank %d kills itself at step %d\n", world_rank_,
                 step);
    std::fflush(stderr);
    std::raise(SIGKILL);
  }
  if (spec_.kind == FaultSpec::Kind::kHang) {
    std::fprintf(stderr, "loom: injected fault: rank %d hangs at step %d\n", world_rank_, step);
    std::fflush(stderr);
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
  }
}

int FaultInjector::disk_full_step() const {
  return fires_here() && spec_.kind == FaultSpec::Kind::kDiskFull ? spec_.step : -1;
}

void FaultInjector::during_checkpoint() const {
  if (!fires_here() || spec_.kind != FaultSpec::Kind::kExitDuringCheckpoint) return;
  const int saving = last_step_.load() + 1;  // checkpoint step_N is saved after N steps
  if (spec_.step >= 0 && saving != spec_.step) return;
  std::fprintf(stderr, "loom: injected fault: rank %d exits during the save of checkpoint %d\n",
               world_rank_, saving);
  std::fflush(stderr);
  std::_Exit(9);
}

}  // namespace loom
