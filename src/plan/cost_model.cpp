#include "plan/cost_model.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "core/check.h"
#include "core/dtype.h"
#include "kernels/bench_kernels.h"
#include "kernels/kernels.h"
#include "parallel/partition.h"
#include "parallel/schedule.h"
#include "parallel/schedule_sim.h"
#include "train/throughput.h"

namespace loom {

std::string to_string(const Layout& l) {
  return fmt::format("dp={},tp={},pp={},zero={},schedule={},m={},v={},mb={},{},recompute={},"
                     "sp={}",
                     l.dp, l.tp, l.pp, l.zero, l.schedule, l.microbatches, l.virtual_stages,
                     l.micro_batch, l.precision, l.recompute, int(l.sequence_parallel));
}

RunConfig with_layout(const RunConfig& base, const Layout& l) {
  RunConfig c = base;
  c.parallel.dp = l.dp;
  c.parallel.tp = l.tp;
  c.parallel.pp = l.pp;
  c.parallel.zero = l.zero;
  c.parallel.schedule = l.schedule;
  c.parallel.virtual_stages = l.virtual_stages;
  c.parallel.sequence_parallel = l.sequence_parallel;
  c.train.grad_accum = l.microbatches;
  c.train.micro_batch = l.micro_batch;
  c.train.precision = l.precision;
  c.train.recompute = l.recompute;
  c.train.global_batch = l.micro_batch * l.microbatches * l.dp;
  return c;
}

Layout layout_of(const RunConfig& c) {
  const ParallelConfig& p = c.parallel;
  return {p.dp, p.tp, p.pp, p.zero, p.schedule, c.train.grad_accum, p.virtual_stages,
          c.train.micro_batch, c.train.precision, c.train.recompute,
          p.sequence_parallel && p.tp > 1};
}

namespace {

constexpr double kUs = 1e-6;

double allreduce_s(double bytes, int g, const LinkSpec& l) {
  if (g <= 1) return 0;
  return 2.0 * (g - 1) * l.alpha_us * kUs +
         2.0 * (g - 1) / g * bytes / l.bytes_per_s(Collective::kAllReduce);
}
// All-gather or reduce-scatter (`c`) of `bytes` in all (each rank holding or ending with 1/g).
double gather_s(double bytes, int g, const LinkSpec& l, Collective c) {
  if (g <= 1) return 0;
  return (g - 1) * l.alpha_us * kUs + double(g - 1) / g * bytes / l.bytes_per_s(c);
}
double p2p_s(double bytes, const LinkSpec& l) {
  return l.alpha_us * kUs + bytes / l.bytes_per_s();
}

// Per-rank rates for one layout: GEMM seconds, FLOP/s of attention, bytes/s of elementwise
// work, and on a CPU host how much of the host a rank's work takes.
struct Rates {
  const GemmSweep* sweep = nullptr;  // a calibrated CPU host: GEMMs priced by their shape
  DType dtype = DType::kF32;
  double threads = 1, cores = 1;
  double gemm_flops = 0, attn = 0, mem = 0;
  double stream = 0;  // bytes/s of arrays beyond the caches
  // A CPU host whose ranks are all busy: the rank's work takes this times the host's
  // cores' time (ranks per host x a rank's GEMM seconds on the whole host / its seconds
  // alone); above 1, ranks wait for cores.
  double host_share = 0;

  double sweep_at(const std::map<DType, std::vector<double>>& table, double s) const {
    return GemmSweep::at(sweep->sizes, table.at(dtype), s);
  }
  // A GEMM as wide as w (its largest dimension) runs at the square sweep's rate times this:
  // the wide rows' ratio at w = wide_columns, none at the square sweep's 1024, log-linear
  // between (its output and gradient outgrow the caches).
  double wide_factor(double s, double w, const std::map<DType, std::vector<double>>& wide,
                     const std::map<DType, std::vector<double>>& square) const {
    if (sweep->wide_columns <= kernels::kGemmSweepM || !wide.count(dtype) ||
        w <= kernels::kGemmSweepM)
      return 1;
    const double f = std::min(1.0, std::log(w / kernels::kGemmSweepM) /
                                       std::log(sweep->wide_columns / kernels::kGemmSweepM));
    return 1 + f * (sweep_at(wide, s) / sweep_at(square, s) - 1);
  }
  // FLOP/s of a rank alone at smallest dimension s and largest w: its threads between the
  // sweep's one thread and the whole host.
  double sweep_rate(double s, double w) const {
    const double one = sweep_at(sweep->one, s), all = sweep_at(sweep->all, s);
    const double rate = cores > 1 ? one + (all - one) * (threads - 1) / (cores - 1) : one;
    return 1e9 * rate * wide_factor(s, w, sweep->wide_one, sweep->one);
  }
  // FLOP/s of the whole host with every core busy: one GEMM per core where measured, else
  // one process on all the threads.
  double host_rate(double s, double w) const {
    if (sweep->per_core.count(dtype))
      return 1e9 * sweep_at(sweep->per_core, s) *
             wide_factor(s, w, sweep->wide_per_core, sweep->per_core);
    return 1e9 * sweep_at(sweep->all, s) * wide_factor(s, w, sweep->wide_one, sweep->one);
  }
  // Seconds of an (M, N, K) GEMM.
  double gemm(double M, double N, double K) const {
    const double flops = 2 * M * N * K;
    return sweep ? flops / sweep_rate(std::min({M, N, K}), std::max({M, N, K}))
                 : flops / gemm_flops;
  }
};

// A block's four GEMMs (M, N, K) on one rank for N tokens: qkv, the attention projection,
// the MLP's two, each the rank's column or row slice of tp.
std::array<std::array<double, 3>, 4> block_gemms(double N, double C, double tp) {
  return {{{N, 3 * C / tp, C}, {N, C, C / tp}, {N, 4 * C / tp, C}, {N, C, 4 * C / tp}}};
}

Rates rates_of(const ClusterSpec& c, int rpn, const RunConfig& cfg) {
  const DType t = parse_dtype(cfg.train.precision);
  const double peak = c.peak_flops(t);
  Rates r;
  if (!c.cpu) {
    r.gemm_flops = peak * c.gemm_efficiency;
    r.attn = peak * c.attention_efficiency;
    r.mem = c.memory_bandwidth_bytes * c.memory_efficiency;
    r.stream = c.stream_bandwidth_bytes * c.memory_efficiency;
    return r;
  }
  r.cores = c.devices_per_node;
  r.threads = std::max(1, c.devices_per_node / rpn);
  r.gemm_flops = peak * c.gemm_efficiency * r.threads;
  r.attn = peak * c.attention_efficiency * r.threads;
  // The host's bandwidth, shared by the ranks running at once.
  r.mem = c.memory_bandwidth_bytes * c.memory_efficiency / std::min(rpn, c.devices_per_node);
  r.stream = c.memory_efficiency * std::min(c.stream_bandwidth_one_bytes * r.threads,
                                            c.stream_bandwidth_bytes /
                                                std::min(rpn, c.devices_per_node));
  r.host_share = rpn * r.threads / r.cores;
  if (c.sweep.empty()) return r;
  // Without a typed GEMM for the dtype (fp16 here), it runs as fp32.
  r.dtype = c.sweep.one.count(t) && c.sweep.all.count(t) ? t : DType::kF32;
  r.sweep = &c.sweep;
  // The layout's GEMM mix, one micro-batch through the model: every block's and the head's.
  const double N = double(cfg.train.micro_batch) * cfg.train.seq_len, C = cfg.model.n_embd,
               tp = cfg.parallel.tp, Vp = double(cfg.model.padded_vocab(cfg.parallel.tp));
  double alone = 0, host = 0;
  auto add = [&](const std::array<double, 3>& g, double times) {
    const auto [M, Nn, K] = g;
    const double s = std::min({M, Nn, K}), w = std::max({M, Nn, K}), flops = 2 * M * Nn * K;
    alone += times * flops / r.sweep_rate(s, w);
    host += times * flops / r.host_rate(s, w);
  };
  for (const std::array<double, 3>& g : block_gemms(N, C, tp)) add(g, cfg.model.n_layer);
  add({N, Vp / tp, C}, 1);
  r.host_share = rpn * host / alone;
  return r;
}

// Forward and backward seconds of one piece for one micro-batch: compute and communication.
struct Piece {
  double fwd = 0, bwd = 0, fwd_comm = 0, bwd_comm = 0;
};

struct Shapes {
  double N, T, C, Vp, tp;  // tokens per micro-batch, ...
  bool sp;
  double act_bytes;  // one (N, C) activation as the pipeline sends it
};

Piece block_piece(const Shapes& s, const Rates& r, const LinkSpec& tp_link,
                  const std::string& recompute) {
  double gemm = 0;
  for (const auto& [M, N, K] : block_gemms(s.N, s.C, s.tp)) gemm += r.gemm(M, N, K);
  const double attn = 2 * s.N * s.T * s.C / s.tp;  // causal Q K^T and P V
  const double rows = s.sp ? s.N / s.tp : s.N;
  // Two layernorms (read + write) and two residual adds (two reads, a write) on the rows,
  // the GELU (read + write) on the tp slice of the 4C hidden layer; 4 bytes each.
  const double ln_res = 4 * rows * s.C * (2 * 2 + 2 * 3), gelu = 4 * s.N * 4 * s.C / s.tp * 2;
  Piece p;
  p.fwd = gemm + attn / r.attn + (ln_res + gelu) / r.mem;
  // Backward: two GEMMs per forward GEMM (the same three dimensions); flash backward
  // recomputes the scores (2.5x the forward's attention FLOPs).
  p.bwd = 2 * gemm + 2.5 * attn / r.attn + 2 * (ln_res + gelu) / r.mem;
  // Two all-reduces of (N, C) fp32 per direction (with sequence parallelism a reduce-scatter
  // and an all-gather each: the same bytes on the wire).
  const double bytes = 4 * s.N * s.C;
  const double one = s.sp ? gather_s(bytes, int(s.tp), tp_link, Collective::kReduceScatter) +
                                gather_s(bytes, int(s.tp), tp_link, Collective::kAllGather)
                          : allreduce_s(bytes, int(s.tp), tp_link);
  const double comm = s.tp > 1 ? 2 * one : 0;
  p.fwd_comm = comm;
  p.bwd_comm = comm;
  if (recompute == "full") {
    p.bwd += p.fwd;
    p.bwd_comm += comm;
  } else if (recompute == "selective") {
    p.bwd += attn / r.attn + gelu / r.mem;
  }
  return p;
}

Piece embed_piece(const Shapes& s, const Rates& r, const LinkSpec& tp_link) {
  Piece p;
  p.fwd = 4 * s.N * s.C * 3 / r.mem;
  p.bwd = 4 * s.N * s.C * 3 / r.mem;
  p.fwd_comm = s.tp > 1 ? allreduce_s(4 * s.N * s.C, int(s.tp), tp_link) : 0;
  return p;
}

Piece head_piece(const Shapes& s, const Rates& r, const LinkSpec& tp_link) {
  const double gemm = r.gemm(s.N, s.Vp / s.tp, s.C), logits = 4 * s.N * s.Vp / s.tp;
  Piece p;
  // ln_f, the lm_head GEMM, and the fused loss: max, exp-sum and the gradient over the
  // logits, which outgrow the caches.
  p.fwd = gemm + 8 * s.N * s.C / r.mem + 3 * logits / r.stream;
  p.bwd = 2 * gemm + 8 * s.N * s.C / r.mem + logits / r.stream;
  p.fwd_comm = s.tp > 1 ? gather_s(12 * s.N * s.tp, int(s.tp), tp_link, Collective::kAllGather)
                        : 0;
  return p;
}

}  // namespace

namespace {

// Per virtual stage, per micro-batch: forward and backward seconds (communication included)
// and the communication part of each.
struct StageTimes {
  std::vector<double> fwd, bwd, comm;  // comm: forward + backward communication
};

StageTimes stage_times(const RunConfig& cfg, const CostModel& cm, const Rates& r) {
  const ParallelConfig& par = cfg.parallel;
  const int rpn = cm.ranks_per_node(), S = par.pp * par.virtual_stages;
  const LinkSpec& tp_link = par.tp > rpn ? cm.cluster.inter : cm.intra;
  const bool sp = par.sequence_parallel && par.tp > 1;
  const double N = double(cfg.train.micro_batch) * cfg.train.seq_len;
  const Shapes s{N, double(cfg.train.seq_len), double(cfg.model.n_embd),
                 double(cfg.model.padded_vocab(par.tp)), double(par.tp), sp,
                 4 * N * cfg.model.n_embd / (sp ? par.tp : 1)};
  const Piece block = block_piece(s, r, tp_link, cfg.train.recompute);
  const Piece embed = embed_piece(s, r, tp_link), head = head_piece(s, r, tp_link);
  const StagePartition& part = cm.partition(cfg);
  // The ranks of virtual stage s start at pp rank (s % pp) * dp * tp: a boundary crosses
  // hosts when the two stages' first ranks sit on different hosts.
  auto host = [&](int vs) { return (vs % par.pp) * par.dp * par.tp / rpn; };
  StageTimes t;
  for (int vs = 0; vs < S; ++vs) {
    Piece p{block.fwd * part.blocks(vs), block.bwd * part.blocks(vs),
            block.fwd_comm * part.blocks(vs), block.bwd_comm * part.blocks(vs)};
    for (const Piece* end : {vs == 0 ? &embed : nullptr, vs == S - 1 ? &head : nullptr}) {
      if (!end) continue;
      p.fwd += end->fwd;
      p.bwd += end->bwd;
      p.fwd_comm += end->fwd_comm;
      p.bwd_comm += end->bwd_comm;
    }
    auto link = [&](int a, int b) -> const LinkSpec& {
      return host(a) != host(b) ? cm.cluster.inter : cm.intra;
    };
    if (vs + 1 < S) p.fwd_comm += p2p_s(s.act_bytes, link(vs, vs + 1));
    if (vs > 0) p.bwd_comm += p2p_s(s.act_bytes, link(vs, vs - 1));
    t.fwd.push_back(p.fwd + p.fwd_comm);
    t.bwd.push_back(p.bwd + p.bwd_comm);
    t.comm.push_back(p.fwd_comm + p.bwd_comm);
  }
  return t;
}

// The pipeline: makespan of the step's forwards and backwards, and per pp rank its busy time.
struct PipeResult {
  double makespan = 0;
  std::vector<double> busy;
  bool simulated = false;
};

PipeResult run_pipeline(const RunConfig& cfg, const StageTimes& st, bool in_simulator) {
  const int p = cfg.parallel.pp, v = cfg.parallel.virtual_stages, m = cfg.train.grad_accum;
  PipeResult out;
  out.busy.assign(p, 0);
  for (size_t vs = 0; vs < st.fwd.size(); ++vs) out.busy[vs % p] += m * (st.fwd[vs] + st.bwd[vs]);
  const double worst = *std::max_element(out.busy.begin(), out.busy.end());
  if (p == 1) {
    out.makespan = worst;
    return out;
  }
  if (!in_simulator) {
    out.makespan = worst * (1 + double(p - 1) / v / m);
    return out;
  }
  const std::string& name = cfg.parallel.schedule;
  const Schedule compute = name == "gpipe"  ? build_gpipe(p, m)
                           : name == "1f1b" ? build_1f1b(p, m)
                                            : build_interleaved_1f1b(p, m, v);
  SimOptions opt;
  opt.stage_fwd = st.fwd;
  opt.stage_bwd = st.bwd;
  const SimResult r = simulate(lower(compute, p, v), m, v, opt);
  LOOM_CHECK(r.ok, "the {} schedule (pp={}, m={}, v={}) failed in simulation: {}", name, p, m, v,
             r.error);
  out.makespan = r.makespan;
  out.simulated = true;
  return out;
}

}  // namespace

CostModel::CostModel(const ClusterSpec& c, int ranks) : cluster(c), world(ranks), intra(c.intra) {
  for (size_t k = 0; k < intra.collective_gbs.size(); ++k)
    if (c.cpu && c.host_collective_bytes[k] > 0)
      intra.collective_gbs[k] =
          std::min(intra.bandwidth_gbs, c.host_collective_bytes[k] / 1e9 / ranks_per_node());
}

const StagePartition& CostModel::partition(const RunConfig& cfg) const {
  const ParallelConfig& par = cfg.parallel;
  const int S = par.pp * par.virtual_stages;
  const auto key = std::make_tuple(cfg.model.n_layer, cfg.train.seq_len, S, par.stage_layers);
  auto it = partitions.find(key);
  if (it != partitions.end()) return it->second;
  return partitions.emplace(key, stage_partition(cfg)).first->second;
}

int CostModel::ranks_per_node() const {
  if (!cluster.cpu) return std::min(world, cluster.devices_per_node);
  return std::max(1, (world + cluster.nodes - 1) / cluster.nodes);
}

double CostModel::world_peak_flops(const std::string& precision) const {
  const double peak = cluster.peak_flops(parse_dtype(precision));
  if (!cluster.cpu) return world * peak;
  return std::min(cluster.nodes, world) * double(cluster.devices_per_node) * peak;
}

namespace {

// Data-parallel gradient reduction and ZeRO's gathers, seconds per step: the part of the
// reduction the last micro-batch's backward (`overlap` seconds) does not hide, and the
// weight all-gathers, which nothing hides.
struct DpTimes {
  double exposed = 0, gathers = 0;
};

DpTimes dp_times(const RunConfig& cfg, const CostModel& cm, double overlap) {
  const ParallelConfig& par = cfg.parallel;
  DpTimes t;
  if (par.dp <= 1) return t;
  const LinkSpec& link = par.tp * par.dp > cm.ranks_per_node() ? cm.cluster.inter : cm.intra;
  const double P = most_rank_params(cfg, cm.partition(cfg));
  const double grad_bytes = P * (par.grad_reduce == "bf16" ? 2 : 4);
  // ZeRO 2 and 3 reduce each bucket to its owners only: about a reduce-scatter's bytes.
  auto reduce = [&](double bytes) {
    return par.zero >= 2 ? gather_s(bytes, par.dp, link, Collective::kReduceScatter)
                         : allreduce_s(bytes, par.dp, link);
  };
  const double all = reduce(grad_bytes);
  const double bucket = reduce(std::min(grad_bytes, par.bucket_mb * 1024 * 1024));
  t.exposed = std::max(all - overlap, bucket);
  const bool low = cfg.train.precision != "fp32";
  const double weight_bytes = P * (low ? 2 : 4);
  const double gather = gather_s(weight_bytes, par.dp, link, Collective::kAllGather);
  if (par.zero >= 1) t.gathers += gather;
  // ZeRO-3 gathers every block before its forward and again before its backward.
  if (par.zero == 3) t.gathers += 2.0 * cfg.train.grad_accum * gather;
  return t;
}

// AdamW over the rank's shard (7 floats read or written per parameter), the gradient norm
// (1) and zeroing the gradients (1), and the cast of the masters to the compute precision.
double optimizer_s(const RunConfig& cfg, const StagePartition& part, const Rates& r) {
  const double P = most_rank_params(cfg, part);
  const double shard = cfg.parallel.zero >= 1 ? P / cfg.parallel.dp : P;
  const double cast = cfg.train.precision != "fp32" ? 6 * P : 0;
  return (36 * shard + cast) / r.stream;
}

double model_params(const GptConfig& g) {
  const double C = g.n_embd;
  return g.n_layer * (12 * C * C + 13 * C) + double(g.vocab_size) * C + 2 * C;
}

}  // namespace

Prediction CostModel::price(const RunConfig& cfg, bool simulate) const {
  const ParallelConfig& par = cfg.parallel;
  LOOM_REQUIRE(par.dp * par.tp * par.pp == world, "layout dp={} x tp={} x pp={} is not the {} "
               "ranks of the world", par.dp, par.tp, par.pp, world);
  const int rpn = ranks_per_node();
  const Rates r = rates_of(cluster, rpn, cfg);
  const StageTimes st = stage_times(cfg, *this, r);
  const PipeResult pipe = run_pipeline(cfg, st, simulate);
  const int p = par.pp, m = cfg.train.grad_accum;
  int busiest = 0;
  for (int k = 0; k < p; ++k) busiest = pipe.busy[k] > pipe.busy[busiest] ? k : busiest;
  double comm = 0, last_bwd = 0;
  for (size_t vs = busiest; vs < st.fwd.size(); vs += p) {
    comm += m * st.comm[vs];
    last_bwd += st.bwd[vs];
  }
  Prediction out;
  out.layout = layout_of(cfg);
  out.simulated = pipe.simulated;
  out.stage_fwd = st.fwd;
  out.stage_bwd = st.bwd;
  out.compute_s = pipe.busy[busiest] - comm;
  out.bubble_s = pipe.makespan - pipe.busy[busiest];
  const DpTimes dpt = dp_times(cfg, *this, last_bwd);
  out.exposed_comm_s = comm + dpt.exposed + dpt.gathers;
  // Every rank steps at once: past a CPU host's cores they take turns.
  const double over = cluster.cpu ? std::max(1.0, double(rpn) / cluster.devices_per_node) : 1;
  out.optimizer_s = optimizer_s(cfg, partition(cfg), r) * over;
  // A CPU host with more ranks than cores: they take turns on the cores.
  double mean_busy = 0;
  for (double b : pipe.busy) mean_busy += b / p;
  const double shared = r.host_share > 1 ? mean_busy * r.host_share : 0;
  // And lose a measured part of their time to switching between ranks.
  const double eff = cluster.cpu && rpn > cluster.devices_per_node
                         ? cluster.oversubscribed.at(r.dtype, rpn) : 1.0;
  out.contention_s = std::max(pipe.makespan, shared) / eff - pipe.makespan;
  out.step_s = pipe.makespan + out.contention_s + dpt.exposed + dpt.gathers + out.optimizer_s;
  const double tokens = double(cfg.train.micro_batch) * m * par.dp * cfg.train.seq_len;
  out.tokens_per_s = tokens / out.step_s;
  out.mfu = out.tokens_per_s * model_flops_per_token(int64_t(model_params(cfg.model)), cfg.model,
                                                     cfg.train.seq_len) /
            world_peak_flops(cfg.train.precision);
  out.memory = estimate_rank_memory(cfg, partition(cfg));
  out.memory_limit = cluster.cpu ? cluster.device_memory_bytes / rpn : cluster.device_memory_bytes;
  out.fits = out.memory.total() <= out.memory_limit;
  return out;
}

}  // namespace loom
