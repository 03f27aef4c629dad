#include "core/memory.h"

#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include "core/check.h"

namespace loom {
namespace fs = std::filesystem;

namespace {

// The first number in a file ("max" and absent files are no number).
std::optional<double> read_number(const fs::path& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "max") return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(word.c_str(), &end);
  return *end == '\0' && v >= 0 ? std::optional<double>(v) : std::nullopt;
}

// "Key:   123 kB" from a /proc file, in bytes.
std::optional<double> proc_kb(const char* file, const std::string& key) {
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) != 0) continue;
    std::istringstream fields(line.substr(key.size() + 1));
    double kb = 0;
    if (fields >> kb) return kb * 1024.0;
  }
  return std::nullopt;
}

struct CgroupReading {
  std::optional<double> free, limit;
};

// The tightest level of this process's memory cgroup: v2 (one "0::/path" line) walks from
// its own group up to the root; v1 reads the memory controller's group.
CgroupReading read_cgroup() {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  CgroupReading best;
  auto consider = [&](std::optional<double> limit, std::optional<double> used) {
    if (!limit || !used || *limit >= 1e18) return;  // v1 writes "no limit" as ~2^63
    const double free = std::max(0.0, *limit - *used);
    if (!best.free || free < *best.free) best = {free, limit};
  };
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) == 0) {
      for (fs::path p = fs::path("/sys/fs/cgroup") / line.substr(4);; p = p.parent_path()) {
        consider(read_number(p / "memory.max"), read_number(p / "memory.current"));
        if (p == "/sys/fs/cgroup" || p == p.parent_path()) break;
      }
    } else if (const size_t at = line.find(":memory:"); at != std::string::npos) {
      const fs::path p = fs::path("/sys/fs/cgroup/memory") / line.substr(at + 9);
      consider(read_number(p / "memory.limit_in_bytes"), read_number(p / "memory.usage_in_bytes"));
    }
  }
  return best;
}

}  // namespace

std::optional<double> parse_size(const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || !std::isfinite(v) || v <= 0) return std::nullopt;
  const std::string unit(end);
  static const std::pair<const char*, double> units[] = {
      {"", 1.0}, {"K", 1024.0}, {"M", 1024.0 * 1024}, {"G", 1024.0 * 1024 * 1024},
      {"T", 1024.0 * 1024 * 1024 * 1024}};
  for (const auto& [name, scale] : units)
    if (unit == name) return v * scale;
  return std::nullopt;
}

MemoryReadings read_memory() {
  MemoryReadings r;
  if (const char* env = std::getenv("LOOM_MEMORY_LIMIT"); env && *env) {
    r.env_limit = parse_size(env);
    LOOM_REQUIRE(r.env_limit.has_value(),
                 "LOOM_MEMORY_LIMIT='{}' is not a size (bytes, or a number with K, M, G or T)",
                 env);
  }
  const CgroupReading cg = read_cgroup();
  r.cgroup_free = cg.free;
  r.cgroup_limit = cg.limit;
  r.mem_available = proc_kb("/proc/meminfo", "MemAvailable");
  rlimit as{};
  if (::getrlimit(RLIMIT_AS, &as) == 0 && as.rlim_cur != RLIM_INFINITY) {
    r.address_space_limit = double(as.rlim_cur);
    r.address_space_free =
        std::max(0.0, double(as.rlim_cur) - proc_kb("/proc/self/status", "VmSize").value_or(0));
  }
  return r;
}

MemoryLimit tightest_limit(const MemoryReadings& r, int local_ranks) {
  const double ranks = std::max(1, local_ranks);
  const std::string per = local_ranks > 1 ? fmt::format(" / {} ranks on this host", local_ranks)
                                          : std::string();
  MemoryLimit best{INFINITY, "no memory limit found"};
  auto consider = [&](double bytes, std::string why) {
    if (bytes < best.bytes) best = {bytes, std::move(why)};
  };
  if (r.cgroup_free)
    consider(*r.cgroup_free / ranks,
             fmt::format("cgroup limit {} with {} free{}", format_bytes(r.cgroup_limit.value_or(0)),
                         format_bytes(*r.cgroup_free), per));
  if (r.mem_available)
    consider(*r.mem_available / ranks,
             fmt::format("MemAvailable {}{}", format_bytes(*r.mem_available), per));
  if (r.address_space_free)
    consider(*r.address_space_free,
             fmt::format("address-space limit (ulimit -v) {} with {} unmapped",
                         format_bytes(r.address_space_limit.value_or(0)),
                         format_bytes(*r.address_space_free)));
  if (r.env_limit)
    consider(*r.env_limit, fmt::format("LOOM_MEMORY_LIMIT {}", format_bytes(*r.env_limit)));
  return best;
}

MemoryLimit available_memory(int local_ranks) { return tightest_limit(read_memory(), local_ranks); }

std::string format_bytes(double bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (std::fabs(bytes) >= 1024.0 && u < 6) {
    bytes /= 1024.0;
    ++u;
  }
  if (u == 6 && bytes >= 1024.0) return fmt::format("{:.3g} EiB", bytes);
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.1f} {}", bytes, units[u]);
}

ProcessMemory read_process_memory() {
  ProcessMemory m;
  std::ifstream in("/proc/self/status");
  std::string key;
  double kb = 0;
  while (in >> key) {
    if (key == "VmRSS:" && in >> kb) m.rss = kb * 1024;
    if (key == "VmHWM:" && in >> kb) m.peak = kb * 1024;
  }
  return m;
}

bool reset_peak_rss() {
  std::ofstream out("/proc/self/clear_refs");
  out << "5";
  out.flush();
  return bool(out);
}

size_t resident_bytes(const void* p, size_t bytes) {
  if (bytes == 0) return 0;
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t a = uintptr_t(p) / page * page, b = uintptr_t(p) + bytes;
  std::vector<unsigned char> vec((b - a + page - 1) / page);
  if (mincore(reinterpret_cast<void*>(a), b - a, vec.data()) != 0) return vec.size() * page;
  size_t pages = 0;
  for (unsigned char v : vec) pages += v & 1;
  return pages * page;
}

}  // namespace loom
