// How much memory this process may still allocate, so a run that cannot fit is refused with
// its need and the limit before it asks for the memory (and is OOM-killed printing nothing,
// or ends in std::bad_alloc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace loom {

struct MemoryLimit {
  double bytes = 0;  // what this rank may still allocate
  std::string why;   // which limit it is, e.g. "cgroup memory.max 8.0 GiB, 6.1 GiB free / 2 ranks"
};

// The tightest of: the cgroup's limit less its usage (v2 memory.max - memory.current up the
// hierarchy, or v1 memory.limit_in_bytes - memory.usage_in_bytes), the host's MemAvailable
// (both shared by the `local_ranks` ranks of this job on this host, so divided by them),
// this process's address-space limit (ulimit -v) less what it has mapped, and
// $LOOM_MEMORY_LIMIT (bytes per rank, with an optional K, M, G or T suffix: headroom for
// what else runs, or a bound where ulimit -v cannot be used, as under ASan). Throws
// InputError when LOOM_MEMORY_LIMIT is not such a size.
MemoryLimit available_memory(int local_ranks);

// The same from given readings, for tests; a missing reading is no limit.
struct MemoryReadings {
  std::optional<double> cgroup_free;  // limit - usage of the tightest cgroup level
  std::optional<double> cgroup_limit;
  std::optional<double> mem_available;
  std::optional<double> address_space_free;  // RLIMIT_AS - VmSize
  std::optional<double> address_space_limit;
  std::optional<double> env_limit;  // LOOM_MEMORY_LIMIT, per rank
};
MemoryReadings read_memory();
// "4G" -> 4 GiB, "512M", "1000"; nullopt when it is not a size.
std::optional<double> parse_size(const std::string& text);
MemoryLimit tightest_limit(const MemoryReadings& r, int local_ranks);

// This process's resident set and its peak since start or the last reset (VmRSS, VmHWM of
// /proc/self/status), bytes; 0 where unreadable. reset_peak_rss() restarts the peak at the
// current RSS (writing 5 to /proc/self/clear_refs) and says whether it could.
struct ProcessMemory {
  double rss = 0, peak = 0;
};
ProcessMemory read_process_memory();
bool reset_peak_rss();

// Bytes of the whole pages touching [p, p + bytes) that are resident in memory now
// (mincore); `bytes` rounded up to pages where the kernel cannot say.
size_t resident_bytes(const void* p, size_t bytes);

// "1.5 GiB", "512.0 MiB", "3.2 TiB": sizes in messages.
std::string format_bytes(double bytes);

}  // namespace loom
