// The `loom` binary: one subcommand per file (cmd_*.cpp).
#include <fmt/core.h>

#include <cstdlib>
#include <map>
#include <string>

#include "cli/command.h"
#include "core/check.h"
#include "core/failure.h"
#include "launch/heartbeat.h"

namespace {

// Under `loom launch`, a rank that fails before its training loop (a flag or a config it
// rejects) still tells the supervisor why, so a bad input is not restarted.
int failed(int exit_code, const std::string& message) {
  fmt::print(stderr, "error: {}\n", message);
  std::fflush(stderr);
  const char* rank = nullptr;
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"})
    if (!rank) rank = std::getenv(v);
  if (rank != nullptr && std::getenv("LOOM_SUPERVISOR") != nullptr) {
    loom::FailureRecord r;
    r.kind = loom::failure_kind_for_exit(exit_code);
    r.rank = std::atoi(rank);
    r.exit_code = exit_code;
    r.message = message;
    loom::send_failure_record(r);
  }
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace loom::cli;
  CLI::App app{"loom: train and run GPT-style language models"};
  app.require_subcommand(1);
  struct Entry {
    const char* name;
    const char* help;
    RunFn (*setup)(CLI::App&);
  };
  const Entry entries[] = {
      {"prepare", "tokenize a text file into GPT-2 token shards", setup_prepare},
      {"train", "train a GPT from a TOML config", setup_train},
      {"eval", "mean cross-entropy of a checkpoint on a token shard", setup_eval},
      {"generate", "sample text from a checkpoint", setup_generate},
      {"serve", "the OpenAI completions API over HTTP", setup_serve},
      {"export", "write a checkpoint as HF safetensors or an llm.c model file", setup_export},
      {"import", "make a run directory from HF safetensors or an llm.c model file",
       setup_import},
      {"bench", "benchmarks: kernels | train | collectives", setup_bench},
      {"plan", "pipeline schedules: simulate and print the timeline", setup_plan},
      {"report", "merge rank traces, print the bubble per rank, plot metrics", setup_report},
      {"launch", "run training under mpirun; restart it from checkpoints on failure", setup_launch},
  };
  std::map<CLI::App*, RunFn> runs;
  for (const Entry& e : entries) {
    CLI::App* sub = app.add_subcommand(e.name, e.help);
    runs[sub] = e.setup(*sub);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    if (rc != 0 && std::getenv("LOOM_SUPERVISOR") != nullptr) return failed(2, e.what());
    return rc == 0 ? 0 : 2;
  }
  try {
    for (auto& [sub, run] : runs) {
      if (sub->parsed()) return run();
    }
  } catch (const loom::Error& e) {
    return failed(e.exit_code(), e.what());
  } catch (const std::exception& e) {
    return failed(1, e.what());
  }
  return 1;
}
