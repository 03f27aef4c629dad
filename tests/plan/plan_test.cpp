// The planner (issue 16): cluster files parse or are refused naming the key; the enumerator
// yields exactly the valid layouts (against a brute-force filter over every combination of
// a small world) and never one the trainer's checks reject; the cost model's terms behave
// as the model says (no bubble without a pipeline, the simulator and the closed form agree
// on balanced stages, a slower link costs more, memory is the start-up line's); the
// calibration fit recovers a known α-β; and a 1T-parameter search on 4,096 GPUs ranks.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <set>
#include <string>

#include "core/check.h"
#include "plan/calibrate.h"
#include "plan/plan_report.h"
#include "plan/search.h"
#include "plan/verify.h"

namespace loom {
namespace {

const char* kCluster = R"(
[cluster]
name = "test"
kind = "gpu"
nodes = 2
devices_per_node = 4
device_memory_gib = 16
[compute]
peak_tflops_fp32 = 20
peak_tflops_bf16 = 300
peak_tflops_fp16 = 300
gemm_efficiency = 0.7
attention_efficiency = 0.5
memory_bandwidth_gbs = 2000
memory_efficiency = 0.8
[network]
intra_bandwidth_gbs = 300
intra_alpha_us = 5
intra_efficiency = 0.8
inter_bandwidth_gbs = 25
inter_alpha_us = 10
inter_efficiency = 0.9
)";

ClusterSpec test_cluster() { return parse_cluster(kCluster, "test.toml"); }

RunConfig small_run() {
  RunConfig c;
  c.model = GptConfig{.n_layer = 4, .n_head = 4, .n_embd = 64, .block_size = 64,
                      .vocab_size = 1000};
  c.train.micro_batch = 1;
  c.train.seq_len = 32;
  c.data.train = "x.bin";
  return c;
}

TEST(Cluster, ParsesAFileAndRefusesBadOnesNamingTheKey) {
  const ClusterSpec c = test_cluster();
  EXPECT_EQ(c.world(), 8);
  EXPECT_DOUBLE_EQ(c.peak_flops(DType::kBF16), 300e12);
  EXPECT_DOUBLE_EQ(c.device_memory_bytes, 16.0 * 1024 * 1024 * 1024);
  EXPECT_DOUBLE_EQ(c.inter.bytes_per_s(), 25e9 * 0.9);
  auto refused = [](const std::string& text, const std::string& says) {
    try {
      parse_cluster(text, "bad.toml");
      ADD_FAILURE() << "accepted; wanted: " << says;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  std::string text = kCluster;
  refused(text + "bogus = 1\n", "unknown key [network] bogus");
  refused(std::string(kCluster).replace(text.find("nodes = 2"), 9, "nodes = 0"),
          "[cluster] nodes = 0 is outside");
  refused(std::string(kCluster).replace(text.find("kind = \"gpu\""), 12, "kind = \"tpu\""),
          "must be 'gpu' or 'cpu'");
  refused(std::string(kCluster).replace(text.find("gemm_efficiency = 0.7"), 21, ""),
          "[compute] gemm_efficiency is missing");
  refused("[cluster\n", "invalid TOML");
}

// Every combination of every field over ranges wider than any valid value, kept when it is
// canonical (the enumerator's forms), multiplies to the world, makes the global batch and
// passes the trainer's checks.
std::set<std::string> brute_force(const RunConfig& base, int world, int global) {
  std::set<std::string> out;
  const char* const schedules[] = {"gpipe", "1f1b", "interleaved"};
  const char* const precisions[] = {"fp32", "bf16", "fp16"};
  const char* const recomputes[] = {"none", "selective", "full"};
  Layout l;
  for (l.dp = 1; l.dp <= world; ++l.dp)
  for (l.tp = 1; l.tp <= world; ++l.tp)
  for (l.pp = 1; l.pp <= world; ++l.pp) {
    if (l.world() != world) continue;
    for (l.zero = 0; l.zero <= 3; ++l.zero)
    for (const char* s : schedules)
    for (l.virtual_stages = 1; l.virtual_stages <= 5; ++l.virtual_stages)
    for (l.micro_batch = 1; l.micro_batch <= global; ++l.micro_batch)
    for (l.microbatches = 1; l.microbatches <= global; ++l.microbatches)
    for (const char* p : precisions)
    for (const char* r : recomputes)
    for (int sp = 0; sp <= 1; ++sp) {
      l.schedule = s;
      l.precision = p;
      l.recompute = r;
      l.sequence_parallel = sp;
      if (l.micro_batch * l.microbatches * l.dp != global) continue;
      if (l.pp == 1 && (l.schedule != "1f1b" || l.virtual_stages != 1)) continue;
      if (l.dp == 1 && l.zero != 0) continue;
      if (l.tp == 1 && sp) continue;
      try {
        with_layout(base, l).validate();
      } catch (const InputError&) {
        continue;
      }
      out.insert(to_string(l));
    }
  }
  return out;
}

TEST(Enumerate, YieldsExactlyTheValidLayoutsOnce) {
  RunConfig base = small_run();
  for (int world : {1, 2, 4, 6}) {
    for (int global : {1, 4, 6}) {
      const std::vector<Layout> got = enumerate_layouts(base, world, global);
      std::set<std::string> names;
      for (const Layout& l : got) {
        EXPECT_TRUE(names.insert(to_string(l)).second) << "twice: " << to_string(l);
        EXPECT_NO_THROW(with_layout(base, l).validate()) << to_string(l);
      }
      EXPECT_EQ(names, brute_force(base, world, global)) << "world " << world << " global "
                                                         << global;
    }
  }
}

TEST(Enumerate, AFilterFixesFieldsAndABadOneIsNamed) {
  const RunConfig base = small_run();
  const LayoutFilter f = parse_layout_filter("pp=2,bf16,recompute=none,sp=0");
  const std::vector<Layout> got = enumerate_layouts(base, 4, 8, f);
  ASSERT_FALSE(got.empty());
  for (const Layout& l : got) {
    EXPECT_EQ(l.pp, 2);
    EXPECT_EQ(l.precision, "bf16");
    EXPECT_EQ(l.recompute, "none");
  }
  EXPECT_THROW(parse_layout_filter("dq=2"), InputError);
  EXPECT_THROW(parse_layout_filter("dp=two"), InputError);
  EXPECT_THROW(parse_layout_filter("dp"), InputError);
}

TEST(CostModel, NoBubbleWithoutAPipelineAndTheSimulatorAgreesOnEvenStages) {
  const ClusterSpec cluster = test_cluster();
  const CostModel model(cluster, 4);
  RunConfig base = small_run();
  Layout l;
  l.dp = 4;
  l.microbatches = 2;
  const Prediction flat = model.price(with_layout(base, l));
  EXPECT_EQ(flat.bubble_s, 0);
  EXPECT_GT(flat.exposed_comm_s, 0);  // the gradient all-reduce's last bucket at least
  EXPECT_NEAR(flat.step_s, flat.compute_s + flat.exposed_comm_s + flat.optimizer_s,
              1e-9 * flat.step_s);
  // Four stages of one block each: the ends cost more, so the simulator's bubble is at
  // least the closed form's lower bound on the textbook (p-1)/(m+p-1).
  l = Layout{.dp = 1, .tp = 1, .pp = 4, .microbatches = 8};
  const Prediction sim = model.price(with_layout(base, l), true);
  const Prediction closed = model.price(with_layout(base, l), false);
  EXPECT_TRUE(sim.simulated);
  EXPECT_FALSE(closed.simulated);
  EXPECT_GT(sim.bubble_s, 0);
  EXPECT_NEAR(sim.step_s, closed.step_s, 0.25 * closed.step_s);
  EXPECT_EQ(sim.stage_fwd.size(), 4u);
}

TEST(CostModel, ASlowerLinkCostsMoreAndMemoryIsTheStartUpLines) {
  ClusterSpec cluster = test_cluster();
  RunConfig base = small_run();
  const Layout l{.dp = 8, .microbatches = 1, .micro_batch = 1};
  const Prediction across = CostModel(cluster, 8).price(with_layout(base, l));
  cluster.devices_per_node = 8;  // the same 8 ranks on one host: NVLink instead of IB
  cluster.nodes = 1;
  const Prediction within = CostModel(cluster, 8).price(with_layout(base, l));
  EXPECT_GT(across.exposed_comm_s, within.exposed_comm_s);
  EXPECT_GT(within.tokens_per_s, across.tokens_per_s);
  const RunConfig cfg = with_layout(base, l);
  EXPECT_EQ(within.memory.total(), estimate_rank_memory(cfg).total());
  EXPECT_EQ(within.memory_limit, cluster.device_memory_bytes);
}

TEST(CostModel, ACpuHostsRanksShareItsCores) {
  ClusterSpec cpu = test_cluster();
  cpu.cpu = true;
  cpu.nodes = 1;
  cpu.devices_per_node = 2;  // cores
  RunConfig base = small_run();
  // Data parallelism over more ranks than cores does not buy compute: the host's work over
  // its cores bounds the step.
  const Prediction two = CostModel(cpu, 2).price(with_layout(base, {.dp = 2, .microbatches = 4}));
  const Prediction eight =
      CostModel(cpu, 8).price(with_layout(base, {.dp = 8, .microbatches = 1}));
  EXPECT_EQ(two.contention_s, 0);
  EXPECT_GT(eight.contention_s, 0);
  EXPECT_LT(eight.tokens_per_s, 1.2 * two.tokens_per_s);
  EXPECT_EQ(eight.memory_limit, cpu.device_memory_bytes / 8);
}

// A calibrated 2-core host: the square sweep, and what the tests below add to it.
ClusterSpec calibrated_host(const std::string& more) {
  std::string text = kCluster;
  text.replace(text.find("kind = \"gpu\""), 12, "kind = \"cpu\"");
  text.replace(text.find("nodes = 2"), 9, "nodes = 1");
  text.replace(text.find("devices_per_node = 4"), 20, "devices_per_node = 2");
  return parse_cluster(text + "[gemm_sweep]\nsizes = [32, 1024]\n"
                              "fp32_one_thread = [100, 100]\nfp32_all_threads = [100, 100]\n" +
                           more,
                       "host.toml");
}

TEST(CostModel, ACalibratedHostPricesWideGemmsProcessesPerCoreAndStreaming) {
  RunConfig base = small_run();
  base.model.vocab_size = 50257;  // a head as wide as the wide rows
  const Layout two{.dp = 2, .microbatches = 4};
  // Two threads in one process do no better than one here; two processes do twice as well:
  // with that measured, two ranks on two cores do not wait for cores.
  const ClusterSpec threads_only = calibrated_host("");
  const ClusterSpec per_core = calibrated_host("fp32_one_per_core = [200, 200]\n");
  EXPECT_GT(CostModel(threads_only, 2).price(with_layout(base, two)).contention_s, 0);
  EXPECT_EQ(CostModel(per_core, 2).price(with_layout(base, two)).contention_s, 0);
  // A wide GEMM (the head) runs at the wide rows' rate: half the square one costs more.
  const ClusterSpec wide = calibrated_host(
      "wide_columns = 50304\nfp32_wide_one_thread = [50, 50]\n"
      "fp32_one_per_core = [200, 200]\nfp32_wide_one_per_core = [100, 100]\n");
  const Layout one{.dp = 1, .microbatches = 8};
  const Prediction square_p = CostModel(per_core, 1).price(with_layout(base, one));
  const Prediction wide_p = CostModel(wide, 1).price(with_layout(base, one));
  EXPECT_GT(wide_p.compute_s, 1.5 * square_p.compute_s);
  // Arrays beyond the caches move at the streaming bandwidth: the optimizer slows with it.
  ClusterSpec slow = per_core;
  slow.stream_bandwidth_bytes = slow.stream_bandwidth_one_bytes = slow.memory_bandwidth_bytes / 4;
  EXPECT_NEAR(CostModel(slow, 1).price(with_layout(base, one)).optimizer_s,
              4 * square_p.optimizer_s, 1e-9 * square_p.optimizer_s);
  // The wide rows come with their width, and only known tables are read.
  EXPECT_THROW(calibrated_host("fp32_wide_one_thread = [50, 50]\n"), InputError);
  EXPECT_THROW(calibrated_host("fp32_two_per_core = [50, 50]\n"), InputError);
}

TEST(CostModel, RanksBeyondTheCoresLoseTheMeasuredOversubscribedEfficiency) {
  const RunConfig base = small_run();
  const std::string sweep = "fp32_one_per_core = [200, 200]\n";
  const ClusterSpec plain = calibrated_host(sweep);
  const ClusterSpec half = calibrated_host(
      sweep + "[oversubscribed]\nranks = [4, 8]\nfp32_efficiency = [0.5, 0.25]\n");
  EXPECT_DOUBLE_EQ(half.oversubscribed.at(DType::kF32, 4), 0.5);
  EXPECT_DOUBLE_EQ(half.oversubscribed.at(DType::kBF16, 8), 0.25);  // fp32's, without its own
  EXPECT_NEAR(half.oversubscribed.at(DType::kF32, std::sqrt(32.0)), 0.375, 1e-12);
  EXPECT_DOUBLE_EQ(plain.oversubscribed.at(DType::kF32, 8), 1.0);
  // Two ranks on two cores are not oversubscribed; four are, and take twice as long.
  const Layout two{.dp = 2, .microbatches = 4}, four{.dp = 4, .microbatches = 2};
  EXPECT_EQ(CostModel(half, 2).price(with_layout(base, two)).step_s,
            CostModel(plain, 2).price(with_layout(base, two)).step_s);
  const Prediction p = CostModel(plain, 4).price(with_layout(base, four));
  const Prediction h = CostModel(half, 4).price(with_layout(base, four));
  const double shared = p.step_s - p.optimizer_s - p.exposed_comm_s + p.bubble_s;
  EXPECT_NEAR(h.step_s - p.step_s, shared, 1e-9 * shared);
  // Bad sections are named.
  auto refused = [&](const std::string& section, const std::string& says) {
    try {
      calibrated_host(sweep + "[oversubscribed]\n" + section);
      ADD_FAILURE() << "accepted: " << section;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  refused("ranks = [4]\nfp32_efficiency = [1.5]\n", "outside (0, 1]");
  refused("ranks = [4]\nbf16_efficiency = [0.5]\n", "needs fp32_efficiency");
  refused("ranks = [4, 2]\nfp32_efficiency = [0.5, 0.5]\n", "ascend");
  refused("ranks = [4]\nfp32_waits = [0.5]\n", "unknown key");
}

TEST(Calibrate, TheFitRecoversAKnownAlphaAndBeta) {
  const double alpha = 7, gbs = 3;  // us, GB/s
  std::vector<nlohmann::json> files;
  for (int g : {2, 4, 8}) {
    nlohmann::json rows = nlohmann::json::array();
    for (double bytes = 4096; bytes <= 64e6; bytes *= 4) {
      for (const char* op : {"allreduce", "allgather", "reduce_scatter"}) {
        const double k = std::string(op) == "allreduce" ? 2 : 1;
        const double t = k * (g - 1) * alpha + k * (g - 1.0) / g * bytes / (gbs * 1e3);
        rows.push_back({{"op", op}, {"impl", "loom"}, {"bytes", bytes}, {"time_us", t}});
        rows.push_back({{"op", op}, {"impl", "mpi"}, {"bytes", bytes}, {"time_us", 1.0}});
      }
    }
    files.push_back({{"ranks", g}, {"rows", rows}});
  }
  const LinkFit fit = fit_collectives(files);
  EXPECT_NEAR(fit.alpha_us, alpha, 1e-6 * alpha);
  EXPECT_NEAR(fit.bandwidth_gbs, gbs, 1e-6 * gbs);
  EXPECT_EQ(fit.rows, 3 * 3 * 7);  // 3 rank counts, 3 ops, 7 sizes of 4 KiB..16 MiB x 4
}

// Ranks that share a host's bus: each rank's bytes take as long as all the ranks' bytes
// at the host's bandwidth, one per collective.
TEST(Calibrate, TheFitRecoversEachCollectivesHostBandwidth) {
  const double alpha = 7;
  const std::map<std::string, double> host = {
      {"allreduce", 6}, {"reduce_scatter", 4}, {"allgather", 10}};  // GB/s
  std::vector<nlohmann::json> files;
  for (int g : {2, 4, 8}) {
    nlohmann::json rows = nlohmann::json::array();
    for (double bytes = 4096; bytes <= 64e6; bytes *= 4)
      for (const auto& [op, gbs] : host) {
        const double k = op == "allreduce" ? 2 : 1;
        const double t = k * (g - 1) * alpha + k * (g - 1.0) / g * bytes * g / (gbs * 1e3);
        rows.push_back({{"op", op}, {"impl", "loom"}, {"bytes", bytes}, {"time_us", t}});
      }
    files.push_back({{"ranks", g}, {"rows", rows}});
  }
  const LinkFit fit = fit_collectives(files);
  EXPECT_NEAR(fit.host_gbs[0], 6, 1e-6);
  EXPECT_NEAR(fit.host_gbs[1], 4, 1e-6);
  EXPECT_NEAR(fit.host_gbs[2], 10, 1e-6);
  // The cost model gives each of a host's ranks its share: 8 ranks a quarter of what 2 get;
  // without the host's figures, the link's per-rank bandwidth.
  ClusterSpec c = test_cluster();
  c.cpu = true;
  c.nodes = 1;
  c.devices_per_node = 2;
  c.intra.bandwidth_gbs = 100;
  c.intra.efficiency = 1;
  c.host_collective_bytes = {6e9, 4e9, 10e9};
  EXPECT_NEAR(CostModel(c, 2).intra.bytes_per_s(Collective::kAllReduce), 3e9, 1);
  EXPECT_NEAR(CostModel(c, 8).intra.bytes_per_s(Collective::kReduceScatter), 0.5e9, 1);
  EXPECT_NEAR(CostModel(c, 8).intra.bytes_per_s(Collective::kAllGather), 1.25e9, 1);
  c.host_collective_bytes = {};
  EXPECT_NEAR(CostModel(c, 8).intra.bytes_per_s(Collective::kAllGather), 100e9, 1);
}

TEST(Verify, TheSampleIsTheTopAndAnEvenSpreadToTheLast) {
  EXPECT_EQ(verify_selection(5, 2, 12), (std::vector<int>{0, 1, 2, 3, 4}));
  EXPECT_EQ(verify_selection(108, 2, 3), (std::vector<int>{0, 1, 107}));
  EXPECT_EQ(verify_selection(102, 2, 6), (std::vector<int>{0, 1, 27, 52, 76, 101}));
  EXPECT_EQ(verify_selection(3, 4, 12), (std::vector<int>{0, 1, 2}));
  EXPECT_NEAR(spearman({1, 2, 3, 4}, {10, 20, 30, 40}), 1, 1e-12);
  EXPECT_NEAR(spearman({1, 2, 3, 4}, {4, 3, 2, 1}), -1, 1e-12);
  EXPECT_NEAR(spearman({1, 2, 3}, {1, 1, 2}), std::sqrt(3.0) / 2, 1e-12);  // a tie: mean ranks
}

TEST(Search, RanksBestFirstAndSaysWhyAndWhatDoesNotFit) {
  const ClusterSpec cluster = test_cluster();
  const CostModel model(cluster, 8);
  RunConfig base = small_run();
  const SearchResult r = search_layouts(base, model, 16);
  ASSERT_GT(r.ranked.size(), 10u);
  EXPECT_EQ(r.priced, int64_t(r.ranked.size() + r.too_big.size()));
  for (size_t i = 1; i < r.ranked.size() && i < 64; ++i)
    EXPECT_GE(r.ranked[i - 1].tokens_per_s, r.ranked[i].tokens_per_s);
  for (const Prediction& p : r.ranked) EXPECT_TRUE(p.fits);
  const std::string text = format_plan(r, model, 16, 5);
  EXPECT_NE(text.find("priced"), std::string::npos) << text;
  EXPECT_NE(text.find("why: the winner is"), std::string::npos) << text;
  // A host too small for any layout: each is refused with its overshoot.
  ClusterSpec tiny = cluster;
  tiny.device_memory_bytes = 1024;
  const CostModel small(tiny, 8);
  const SearchResult none = search_layouts(base, small, 16);
  EXPECT_TRUE(none.ranked.empty());
  EXPECT_NE(format_plan(none, small, 16, 5).find("do not fit in memory; the closest"),
            std::string::npos);
}

}  // namespace
}  // namespace loom
