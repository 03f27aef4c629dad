#include "core/threads.h"

#include <fmt/format.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <regex>
#include <utility>
#include <vector>

namespace loom {
namespace {

int env_int(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return 0;
  char* end = nullptr;
  const long n = std::strtol(v, &end, 10);
  return *end == '\0' && n > 0 && n < (1 << 20) ? int(n) : 0;
}

int local_ranks_from_env() {
  for (const char* v : {"OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS"})
    if (const int n = env_int(v); n > 0) return n;
  if (const char* list = std::getenv("SLURM_STEP_TASKS_PER_NODE"))
    if (const int n = slurm_tasks_on_node(list, env_int("SLURM_NODEID")); n > 0) return n;
  return 1;
}

}  // namespace

int slurm_tasks_on_node(const std::string& list, int node) {
  // Entries "N" or "N(xR)" separated by commas; the whole list must parse.
  static const std::regex entry(R"((\d+)(?:\(x(\d+)\))?)");
  std::vector<std::pair<int, int>> counts;  // (tasks, nodes)
  size_t pos = 0;
  while (pos <= list.size()) {
    const size_t comma = std::min(list.find(',', pos), list.size());
    std::smatch m;
    const std::string item = list.substr(pos, comma - pos);
    if (!std::regex_match(item, m, entry) || m[1].length() > 6 || m[2].length() > 6) return 0;
    const int tasks = std::stoi(m[1]), nodes = m[2].matched ? std::stoi(m[2]) : 1;
    if (tasks <= 0 || nodes <= 0) return 0;
    counts.emplace_back(tasks, nodes);
    pos = comma + 1;
  }
  for (const auto& [tasks, nodes] : counts) {
    if (node < nodes) return tasks;
    node -= nodes;
  }
  return 0;
}

HostShare host_share() {
  HostShare h;
  cpu_set_t set;
  CPU_ZERO(&set);
  h.host_cores = std::max(1, int(::sysconf(_SC_NPROCESSORS_ONLN)));
  h.cores = sched_getaffinity(0, sizeof(set), &set) == 0 ? std::max(1, CPU_COUNT(&set))
                                                         : h.host_cores;
  h.local_ranks = local_ranks_from_env();
  // OMP_NUM_THREADS="4,2" (nested levels): 4.
  if (const char* v = std::getenv("OMP_NUM_THREADS")) h.omp_env = std::max(0, std::atoi(v));
  return h;
}

ThreadChoice choose_threads(int requested, const HostShare& host) {
  if (requested > 0) return {requested, "set explicitly"};
  if (host.omp_env > 0) return {host.omp_env, "OMP_NUM_THREADS"};
  if (host.cores < host.host_cores)
    return {host.cores, fmt::format("the {} cores this rank is bound to", host.cores)};
  const int share = std::max(1, host.cores / std::max(1, host.local_ranks));
  return {share, fmt::format("{} cores / {} rank{} on this host", host.cores, host.local_ranks,
                             host.local_ranks == 1 ? "" : "s")};
}

}  // namespace loom
