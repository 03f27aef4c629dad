#include "plan/search.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <functional>
#include <map>

#include "core/check.h"

namespace loom {

bool LayoutFilter::admits(const Layout& l) const {
  return (!dp || *dp == l.dp) && (!tp || *tp == l.tp) && (!pp || *pp == l.pp) &&
         (!zero || *zero == l.zero) && (!microbatches || *microbatches == l.microbatches) &&
         (!virtual_stages || *virtual_stages == l.virtual_stages) &&
         (!micro_batch || *micro_batch == l.micro_batch) &&
         (!schedule || *schedule == l.schedule) && (!precision || *precision == l.precision) &&
         (!recompute || *recompute == l.recompute) &&
         (!sequence_parallel || *sequence_parallel == l.sequence_parallel);
}

namespace {

int parse_int(const std::string& key, const std::string& value) {
  int v = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  LOOM_REQUIRE(ec == std::errc() && end == value.data() + value.size() && v >= 0,
               "--layout {}={}: not a whole number >= 0", key, value);
  return v;
}

void set_field(LayoutFilter& f, const std::string& key, const std::string& value) {
  using Int = std::optional<int> LayoutFilter::*;
  static const std::map<std::string, Int> ints = {
      {"dp", &LayoutFilter::dp},
      {"tp", &LayoutFilter::tp},
      {"pp", &LayoutFilter::pp},
      {"zero", &LayoutFilter::zero},
      {"m", &LayoutFilter::microbatches},
      {"microbatches", &LayoutFilter::microbatches},
      {"v", &LayoutFilter::virtual_stages},
      {"virtual_stages", &LayoutFilter::virtual_stages},
      {"mb", &LayoutFilter::micro_batch},
      {"micro_batch", &LayoutFilter::micro_batch}};
  if (auto it = ints.find(key); it != ints.end()) {
    f.*(it->second) = parse_int(key, value);
  } else if (key == "schedule") {
    f.schedule = value;
  } else if (key == "precision") {
    f.precision = value;
  } else if (key == "recompute") {
    f.recompute = value;
  } else if (key == "sp" || key == "sequence_parallel") {
    LOOM_REQUIRE(value == "0" || value == "1" || value == "true" || value == "false",
                 "--layout {}={}: use 0/1 or true/false", key, value);
    f.sequence_parallel = value == "1" || value == "true";
  } else {
    LOOM_REQUIRE(false, "--layout: unknown field '{}' (dp, tp, pp, zero, schedule, m, v, mb, "
                 "precision, recompute, sp)", key);
  }
}

std::vector<int> divisors(int64_t n) {
  std::vector<int> lo, hi;
  for (int64_t k = 1; k * k <= n; ++k) {
    if (n % k) continue;
    lo.push_back(int(k));
    if (k * k != n) hi.push_back(int(n / k));
  }
  lo.insert(lo.end(), hi.rbegin(), hi.rend());
  return lo;
}

}  // namespace

LayoutFilter parse_layout_filter(const std::string& spec) {
  LayoutFilter f;
  size_t at = 0;
  while (at < spec.size()) {
    size_t end = spec.find(',', at);
    if (end == std::string::npos) end = spec.size();
    const std::string item = spec.substr(at, end - at);
    at = end + 1;
    if (item == "bf16" || item == "fp16" || item == "fp32") {
      f.precision = item;
      continue;
    }
    const size_t eq = item.find('=');
    LOOM_REQUIRE(eq != std::string::npos && eq > 0 && eq + 1 < item.size(),
                 "--layout '{}': '{}' is not field=value", spec, item);
    set_field(f, item.substr(0, eq), item.substr(eq + 1));
  }
  return f;
}

namespace {

// The pipeline shapes of pp ranks and m micro-batches: (schedule, virtual stages).
std::vector<std::pair<std::string, int>> pipelines(int pp, int m, int L) {
  if (pp == 1) return {{"1f1b", 1}};
  std::vector<std::pair<std::string, int>> out = {{"gpipe", 1}, {"1f1b", 1}};
  if (m % pp == 0)
    for (int v = 2; pp * v <= L; ++v) out.emplace_back("interleaved", v);
  return out;
}

// Calls `emit` with every layout of one (dp, tp, pp, micro_batch, microbatches).
void expand(const RunConfig& base, Layout l, const std::function<void(const Layout&)>& emit) {
  static const char* const kPrecisions[] = {"bf16", "fp16", "fp32"};
  static const char* const kRecompute[] = {"none", "selective", "full"};
  for (const auto& [schedule, v] : pipelines(l.pp, l.microbatches, base.model.n_layer)) {
    l.schedule = schedule;
    l.virtual_stages = v;
    for (int zero = 0; zero <= (l.dp > 1 ? 3 : 0); ++zero) {
      if (zero == 3 && l.pp > 1) continue;
      l.zero = zero;
      for (const char* precision : kPrecisions)
        for (const char* recompute : kRecompute)
          for (int sp = 0; sp <= (l.tp > 1 ? 1 : 0); ++sp) {
            l.precision = precision;
            l.recompute = recompute;
            l.sequence_parallel = sp;
            emit(l);
          }
    }
  }
}

bool valid(const RunConfig& base, const Layout& l) {
  try {
    with_layout(base, l).validate();
    return true;
  } catch (const InputError&) {
    return false;
  }
}

}  // namespace

int64_t global_batch_of(const RunConfig& cfg) {
  return cfg.train.global_batch > 0
             ? cfg.train.global_batch
             : int64_t(cfg.train.micro_batch) * cfg.train.grad_accum * cfg.parallel.dp;
}

std::vector<Layout> enumerate_layouts(const RunConfig& base, int world, int64_t global_batch,
                                      const LayoutFilter& filter) {
  LOOM_REQUIRE(world >= 1 && global_batch >= 1, "plan: need --world >= 1 and a global batch "
               ">= 1 (got {} and {})", world, global_batch);
  std::vector<Layout> out;
  for (int tp : divisors(world)) {
    if (base.model.n_head % tp) continue;
    for (int pp : divisors(world / tp)) {
      if (pp > base.model.n_layer) continue;
      const int dp = world / tp / pp;
      if (global_batch % dp) continue;
      for (int mb : divisors(global_batch / dp)) {
        Layout l;
        l.dp = dp;
        l.tp = tp;
        l.pp = pp;
        l.micro_batch = mb;
        l.microbatches = int(global_batch / dp / mb);
        expand(base, l, [&](const Layout& x) {
          if (filter.admits(x) && valid(base, x)) out.push_back(x);
        });
      }
    }
  }
  return out;
}

namespace {

bool better(const Prediction& a, const Prediction& b) {
  if (a.tokens_per_s != b.tokens_per_s) return a.tokens_per_s > b.tokens_per_s;
  return a.memory.total() < b.memory.total();
}

}  // namespace

SearchResult search_layouts(const RunConfig& base, const CostModel& model, int64_t global_batch,
                            const LayoutFilter& filter, int simulate_top) {
  const auto t0 = std::chrono::steady_clock::now();
  SearchResult r;
  for (const Layout& l : enumerate_layouts(base, model.world, global_batch, filter)) {
    Prediction p = model.price(with_layout(base, l), false);
    ++r.priced;
    (p.fits ? r.ranked : r.too_big).push_back(std::move(p));
  }
  std::stable_sort(r.ranked.begin(), r.ranked.end(), better);
  const size_t top = std::min(r.ranked.size(), size_t(std::max(0, simulate_top)));
  for (size_t i = 0; i < top; ++i) {
    if (r.ranked[i].layout.pp == 1) continue;
    r.ranked[i] = model.price(with_layout(base, r.ranked[i].layout), true);
    ++r.simulated;
  }
  std::stable_sort(r.ranked.begin(), r.ranked.begin() + long(top), better);
  std::stable_sort(r.too_big.begin(), r.too_big.end(), [](const Prediction& a,
                                                          const Prediction& b) {
    return a.memory.total() - a.memory_limit < b.memory.total() - b.memory_limit;
  });
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

std::string why_first(const Prediction& best, const Prediction& runner_up) {
  struct Term {
    const char* name;
    double a, b;
  };
  const Term terms[] = {{"compute", best.compute_s, runner_up.compute_s},
                        {"exposed communication", best.exposed_comm_s, runner_up.exposed_comm_s},
                        {"pipeline bubble", best.bubble_s, runner_up.bubble_s},
                        {"optimizer", best.optimizer_s, runner_up.optimizer_s},
                        {"core sharing", best.contention_s, runner_up.contention_s}};
  const Term* most = &terms[0];
  for (const Term& t : terms)
    if (std::abs(t.b - t.a) > std::abs(most->b - most->a)) most = &t;
  return fmt::format("the winner is {:.1f}% faster than the runner-up ({}): its {} is {:.4g} s "
                     "per step against {:.4g} s",
                     100 * (best.tokens_per_s / runner_up.tokens_per_s - 1),
                     to_string(runner_up.layout), most->name, most->a, most->b);
}

}  // namespace loom
