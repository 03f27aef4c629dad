#include "parallel/schedule_sim.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <tuple>

namespace loom {
namespace {

class Simulator {
 public:
  Simulator(const Schedule& s, int m, int v, const SimOptions& opt)
      : s_(s), p_(static_cast<int>(s.size())), m_(m), v_(v), opt_(opt),
        pc_(p_, 0), clock_(p_, 0), inflight_(p_, 0) {
    r_.busy.assign(p_, 0);
    r_.peak_inflight.assign(p_, 0);
    r_.ran.resize(p_);
  }

  SimResult run() {
    bool progress = true;
    while (progress && r_.error.empty()) {
      progress = false;
      for (int rank = 0; rank < p_ && r_.error.empty(); ++rank)
        while (pc_[rank] < s_[rank].size() && r_.error.empty() && step(rank)) progress = true;
    }
    if (r_.error.empty()) check_deadlock();
    if (r_.error.empty()) check_complete();
    r_.makespan = *std::max_element(clock_.begin(), clock_.end());
    double total = 0;
    for (double b : r_.busy) total += b;
    r_.bubble_fraction = r_.makespan > 0 ? 1.0 - total / (p_ * r_.makespan) : 0.0;
    r_.ok = r_.error.empty();
    return r_;
  }

 private:
  void fail(const std::string& msg) {
    if (r_.error.empty()) r_.error = msg;
  }

  // Executes the next action of `rank`; false if it must wait for a send.
  bool step(int rank) {
    const Action& a = s_[rank][pc_[rank]];
    const int vs = virtual_stage(a, p_);
    if (a.stage != rank || vs < 0 || vs >= p_ * v_ || a.microbatch < 0 || a.microbatch >= m_) {
      fail(fmt::format("rank {} step {}: action {} out of range for pp={} m={} v={}", rank,
                       pc_[rank], to_string(a, v_), p_, m_, v_));
      return false;
    }
    if (is_send(a.op)) {
      send(a);
    } else if (is_recv(a.op)) {
      auto it = sent_.find(msg_key(a, p_));
      if (it == sent_.end()) return false;
      if (!received_.insert(it->first).second)
        fail(fmt::format("receive {} matches a send that was already received", to_string(a, v_)));
      clock_[rank] = std::max(clock_[rank], it->second);
    } else {
      compute(rank, a, vs);
    }
    ++pc_[rank];
    return true;
  }

  void send(const Action& a) {
    const MsgKey key = msg_key(a, p_);
    const int to_vs = std::get<3>(key);
    if (to_vs < 0 || to_vs >= p_ * v_ || a.peer != to_vs % p_)
      fail(fmt::format("send {} goes to no stage or the wrong rank", to_string(a, v_)));
    else if (!sent_.emplace(key, clock_[a.stage]).second)
      fail(fmt::format("send {} issued twice", to_string(a, v_)));
  }

  void compute(int rank, const Action& a, int vs) {
    const bool fwd = a.op == OpKind::kForward;
    const auto key = std::pair{a.microbatch, vs};
    auto& done = fwd ? forwarded_ : backwarded_;
    if (!done.insert(key).second)
      fail(fmt::format("{} runs twice", to_string(a, v_)));
    if (!fwd && !forwarded_.count(key))
      fail(fmt::format("backward {} runs before its forward", to_string(a, v_)));
    const std::vector<double>& per_stage = fwd ? opt_.stage_fwd : opt_.stage_bwd;
    const double cost = per_stage.empty() ? (fwd ? opt_.t_fwd : opt_.t_bwd)
                                          : per_stage.at(size_t(vs));
    r_.ran[rank].push_back({clock_[rank], clock_[rank] + cost, a});
    clock_[rank] += cost;
    r_.busy[rank] += cost;
    inflight_[rank] += fwd ? 1 : -1;
    r_.peak_inflight[rank] = std::max(r_.peak_inflight[rank], inflight_[rank]);
  }

  void check_deadlock() {
    bool stuck = false;
    for (int rank = 0; rank < p_; ++rank) stuck |= pc_[rank] < s_[rank].size();
    if (!stuck) return;
    std::string grid = "deadlock: no rank can progress\n";
    size_t rows = 0, width = 6;
    for (const auto& list : s_) {
      rows = std::max(rows, list.size());
      for (const Action& a : list) width = std::max(width, to_string(a, v_).size());
    }
    const std::string marker = " <-- ERROR HERE";
    width += marker.size() + 1;
    grid += fmt::format("{:>8}", "step");
    for (int rank = 0; rank < p_; ++rank) grid += fmt::format(" {:<{}}", fmt::format("rank {}", rank), width);
    for (size_t i = 0; i < rows; ++i) {
      grid += fmt::format("\n{:>8}", i);
      for (int rank = 0; rank < p_; ++rank) {
        std::string cell = i < s_[rank].size() ? to_string(s_[rank][i], v_) : "";
        if (i == pc_[rank]) cell += marker;
        grid += fmt::format(" {:<{}}", cell, width);
      }
    }
    fail(grid);
  }

  void check_complete() {
    for (const auto& [key, t] : sent_)
      if (!received_.count(key))
        return fail(fmt::format("{} of micro-batch {} from virtual stage {} to {} is never received",
                                std::get<0>(key) ? "gradient" : "activation", std::get<1>(key),
                                std::get<2>(key), std::get<3>(key)));
    for (int mb = 0; mb < m_; ++mb)
      for (int vs = 0; vs < p_ * v_; ++vs)
        if (!forwarded_.count({mb, vs}) || !backwarded_.count({mb, vs}))
          return fail(fmt::format("micro-batch {} at virtual stage {} is missing its {}", mb, vs,
                                  forwarded_.count({mb, vs}) ? "backward" : "forward"));
  }

  const Schedule& s_;
  int p_, m_, v_;
  SimOptions opt_;
  std::vector<size_t> pc_;
  std::vector<double> clock_;
  std::vector<int> inflight_;
  std::map<MsgKey, double> sent_;  // send -> time issued
  std::set<MsgKey> received_;
  std::set<std::pair<int, int>> forwarded_, backwarded_;  // (mb, virtual stage)
  SimResult r_;
};

}  // namespace

SimResult simulate(const Schedule& s, int m, int v, const SimOptions& opt) {
  if (s.empty()) {
    SimResult r;
    r.error = "empty schedule";
    return r;
  }
  return Simulator(s, m, v, opt).run();
}

std::string timeline(const Schedule& s, const SimResult& r, int v) {
  const int p = static_cast<int>(r.ran.size());
  const int cols = static_cast<int>(std::ceil(r.makespan));
  std::vector<std::vector<std::string>> cells(p, std::vector<std::string>(cols, "."));
  size_t width = 1;
  for (int rank = 0; rank < p; ++rank)
    for (const SimInterval& iv : r.ran[rank]) {
      // The rank prefix is the row label, so drop it from the cell ("2F0" -> "F0").
      std::string label = fmt::format("{}{}", iv.action.op == OpKind::kForward ? "F" : "B",
                                      iv.action.microbatch);
      if (v > 1) label += fmt::format("c{}", iv.action.chunk);
      width = std::max(width, label.size());
      for (int t = static_cast<int>(std::floor(iv.start)); t < std::ceil(iv.end) && t < cols; ++t)
        cells[rank][t] = label;
    }
  std::string out;
  for (int rank = 0; rank < p; ++rank) {
    out += fmt::format("rank {}:", rank);
    for (const std::string& c : cells[rank]) out += fmt::format(" {:<{}}", c, width);
    out += "\n";
  }
  return out;
}

}  // namespace loom
