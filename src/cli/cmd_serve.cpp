// loom serve --ckpt RUN [--host 127.0.0.1] [--port 8080] [--slots N] [--precision fp32|bf16]
//   [--max-queue Q]: the OpenAI completions API over HTTP. SIGTERM or SIGINT stops taking
// requests, lets the ones in flight finish, and exits 0.
#include <fmt/core.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <cstdio>
#include <filesystem>
#include <thread>

#include "cli/command.h"
#include "comm/mpi_comm.h"
#include "comm/process_grid.h"
#include "core/check.h"
#include "data/tokenizer.h"
#include "infer/generate.h"
#include "kernels/openblas.h"
#include "serve/server.h"

namespace loom::cli {
namespace {

struct Opts {
  std::string ckpt, tokenizer;
  ServeOptions serve;
  int threads = 0, tp = 1;
};

// SIGTERM and SIGINT write their number to a pipe (all a handler may safely do, whichever
// thread the signal lands on: OpenBLAS starts its threads before main) that one thread
// reads, asking the session to drain. Signals are process-wide, hence the file-scope pipe.
int stop_pipe[2] = {-1, -1};

void on_stop_signal(int sig) {
  const char c = char(sig);
  [[maybe_unused]] const ssize_t n = write(stop_pipe[1], &c, 1);
}

void catch_stop_signals() {
  LOOM_CHECK(pipe(stop_pipe) == 0, "serve: cannot make the signal pipe");
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
}

ServeOptions named(const Opts& o) {
  ServeOptions opt = o.serve;
  opt.model_name = std::filesystem::path(o.ckpt).lexically_normal().filename().string();
  if (opt.model_name.empty()) opt.model_name = "loom";
  parse_dtype(opt.precision);
  return opt;
}

// Rank 0 (or the only process): listens, loads, serves until a signal drains it.
int serve_rank0(const Opts& o, const ProcessGrid& grid) {
  const Gpt2Tokenizer tok = Gpt2Tokenizer::load(o.tokenizer);
  const ServeOptions opt = named(o);
  ServeSession session(opt, tok);
  fmt::print("loom serve: listening on http://{}:{} (model '{}' loading)\n", opt.host,
             session.port(), opt.model_name);
  std::fflush(stdout);
  LoadedModel loaded = load_model(o.ckpt, grid);  // a signal meanwhile waits in the pipe
  std::thread stopper([&session] {
    char sig = 0;
    while (read(stop_pipe[0], &sig, 1) < 0 && errno == EINTR) {
    }
    if (sig == 0) return;  // run() ended: nothing to stop
    fmt::print(stderr, "loom serve: {}: finishing the requests in flight\n",
               sig == SIGTERM ? "SIGTERM" : "SIGINT");
    session.shutdown();
  });
  const int rc = session.run(*loaded.model, grid, [&] {
    fmt::print("loom serve: ready ({} slots, {}, tp {})\n", opt.slots, opt.precision,
               grid.shape().tp);
    std::fflush(stdout);
  });
  const char none = 0;  // wakes the stopper if no signal did
  [[maybe_unused]] const ssize_t n = write(stop_pipe[1], &none, 1);
  stopper.join();
  fmt::print("loom serve: stopped\n");
  return rc;
}

int serve(const Opts& o) {
  catch_stop_signals();  // on every rank: mpirun forwards SIGTERM; rank 0 decides
  kernels::set_compute_threads(o.threads);
  if (!launched_under_mpi()) {
    LOOM_REQUIRE(o.tp == 1, "--tp {0} needs {0} processes: run under mpirun -np {0}", o.tp);
    return serve_rank0(o, ProcessGrid::single());
  }
  MpiRuntime mpi(MpiOptions{});
  try {
    const ProcessGrid grid = ProcessGrid::create(
        mpi.world(), GridShape{.pp = 1, .dp = 1, .tp = o.tp}, &mpi.progress());
    mpi.set_rank_describer([&grid](int r) { return grid.describe(r); });
    if (grid.rank() == 0) return serve_rank0(o, grid);
    const Gpt2Tokenizer tok = Gpt2Tokenizer::load(o.tokenizer);
    LoadedModel loaded = load_model(o.ckpt, grid);
    return serve_follower(*loaded.model, grid, named(o), tok);
  } catch (const Error& e) {
    fmt::print(stderr, "error (rank {}): {}\n", mpi.world_rank(), e.what());
    std::fflush(stderr);
    mpi.world()->abort(e.exit_code());
  }
  return 1;  // not reached: abort() ends the job
}

}  // namespace

RunFn setup_serve(CLI::App& sub) {
  auto o = std::make_shared<Opts>();
  o->tokenizer = default_tokenizer_dir().string();
  sub.add_option("--ckpt", o->ckpt, "run directory or checkpoint directory")->required();
  sub.add_option("--host", o->serve.host, "address to listen on")->capture_default_str();
  sub.add_option("--port", o->serve.port, "port (0: any free one, printed)")
      ->capture_default_str()
      ->check(in_range(0, 65535));
  sub.add_option("--slots", o->serve.slots, "sequences decoded together")
      ->capture_default_str()
      ->check(in_range(1, 4096));
  sub.add_option("--max-queue", o->serve.max_queue, "requests waiting for a slot before 503")
      ->capture_default_str()
      ->check(in_range(0, 1e6));
  sub.add_option("--precision", o->serve.precision, "fp32 | bf16 | fp16")->capture_default_str();
  sub.add_option("--max-body", o->serve.max_body_bytes, "largest request body, bytes (413 above)")
      ->capture_default_str()
      ->check(in_range(1, 1e9));
  sub.add_option("--tp", o->tp, "tensor-parallel ranks (under mpirun -np TP; rank 0 listens)")
      ->capture_default_str()
      ->check(in_range(1, 4096));
  sub.add_option("--tokenizer", o->tokenizer, "directory with encoder.json and vocab.bpe");
  sub.add_option("--threads", o->threads, "OpenMP threads (0 = this host's cores / its ranks)")
      ->check(in_range(0, 4096));
  return [o] { return serve(*o); };
}

}  // namespace loom::cli
