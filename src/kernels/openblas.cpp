#include "kernels/openblas.h"

#include <cblas.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

namespace loom::kernels {
namespace {

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return char(std::tolower(c)); });
  return out;
}

// OpenBLAS x86-64 cores whose kernels use AVX2 (its SkylakeX, Cooperlake and SapphireRapids
// kernels add AVX-512; Zen, Dhyana and Excavator run the Haswell kernels).
bool core_has_avx2(std::string_view core) {
  const std::string c = lower(core);
  for (const char* k : {"haswell", "zen", "dhyana", "excavator", "skylakex", "cooperlake",
                        "sapphirerapids"})
    if (c == k) return true;
  return false;
}

// This process's arguments as the kernel started it (so a re-exec needs no plumbing).
std::vector<std::string> own_arguments() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  const std::string all(std::istreambuf_iterator<char>(in), {});
  std::vector<std::string> args;
  for (size_t pos = 0; pos < all.size();) {
    const size_t end = all.find('\0', pos);
    args.push_back(all.substr(pos, end - pos));
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  return args;
}

// "OpenBLAS 0.3.21" (the header's macro has spaces around it).
std::string openblas_version() {
  std::string v = OPENBLAS_VERSION;
  v.erase(0, v.find_first_not_of(' '));
  v.erase(v.find_last_not_of(' ') + 1);
  return v;
}

}  // namespace

CpuIsa host_isa() {
  __builtin_cpu_init();
  CpuIsa isa;
  isa.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  isa.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512vl");
  return isa;
}

std::string cpu_summary() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, model = "unknown CPU", flags;
  while (std::getline(in, line) && (model == "unknown CPU" || flags.empty())) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = line.substr(0, line.find_last_not_of(" \t", colon - 1) + 1);
    const std::string value = colon + 2 <= line.size() ? line.substr(colon + 2) : "";
    if (key == "model name") model = value;
    if (key == "flags") flags = " " + value + " ";
  }
  std::vector<std::string> have, lacks;
  for (const char* f : {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    (flags.find(std::string(" ") + f + " ") != std::string::npos ? have : lacks).push_back(f);
  std::string out = model + " (" + fmt::format("{}", fmt::join(have, " "));
  if (!lacks.empty())
    out += fmt::format("{}no {}", have.empty() ? "" : "; ", fmt::join(lacks, " "));
  return out + ")";
}

std::string openblas_core() {
  const char* name = openblas_get_corename();
  return name ? std::string(name) : std::string("unknown");
}

std::string better_openblas_coretype(std::string_view core, const CpuIsa& isa) {
  if (core_has_avx2(core)) return "";
  if (isa.avx512) return "SKYLAKEX";
  if (isa.avx2) return "HASWELL";
  return "";
}

std::string use_best_openblas_core() {
  const std::string core = openblas_core();
  if (const char* set = std::getenv("OPENBLAS_CORETYPE")) {
    if (const char* from = std::getenv("LOOM_OPENBLAS_FALLBACK"))
      return fmt::format("OpenBLAS core {} (OPENBLAS_CORETYPE={}: {} fell back to {})", core, set,
                         openblas_version(), from);
    return fmt::format("OpenBLAS core {} (OPENBLAS_CORETYPE={} as set)", core, set);
  }
  const std::string better = better_openblas_coretype(core, host_isa());
  if (better.empty()) return fmt::format("OpenBLAS core {} (its own choice)", core);
  std::vector<std::string> args = own_arguments();
  if (!args.empty()) {
    ::setenv("OPENBLAS_CORETYPE", better.c_str(), 1);
    ::setenv("LOOM_OPENBLAS_FALLBACK", core.c_str(), 1);
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::fflush(stdout);
    ::execv("/proc/self/exe", argv.data());
    ::unsetenv("OPENBLAS_CORETYPE");  // exec failed: go on with the fallback, and say so
    ::unsetenv("LOOM_OPENBLAS_FALLBACK");
    return fmt::format("OpenBLAS core {} (a generic fallback; re-running with "
                       "OPENBLAS_CORETYPE={} failed: {})", core, better, std::strerror(errno));
  }
  return fmt::format("OpenBLAS core {} (a generic fallback; set OPENBLAS_CORETYPE={})", core,
                     better);
}

ThreadChoice set_compute_threads(int requested) {
  const ThreadChoice c = choose_threads(requested, host_share());
  omp_set_num_threads(c.threads);
  openblas_set_num_threads(c.threads);
  return c;
}

}  // namespace loom::kernels
