#include "train/run_config.h"

#include <toml++/toml.h>

#include <cmath>
#include <limits>
#include <sstream>
#include <utility>
#include <variant>

#include "core/check.h"
#include "core/file_io.h"
#include "train/toml_text.h"

namespace loom {
namespace {

using FieldPtr = std::variant<int*, int64_t*, uint64_t*, double*, bool*, std::string*>;
struct Field {
  const char* section;
  const char* key;
  FieldPtr ptr;
};

std::vector<Field> fields(RunConfig& c) {
  GptConfig& m = c.model;
  TrainConfig& t = c.train;
  return {
      {"model", "n_layer", &m.n_layer},       {"model", "n_head", &m.n_head},
      {"model", "n_embd", &m.n_embd},         {"model", "block_size", &m.block_size},
      {"model", "vocab_size", &m.vocab_size}, {"train", "micro_batch", &t.micro_batch},
      {"train", "seq_len", &t.seq_len},       {"train", "grad_accum", &t.grad_accum},
      {"train", "steps", &t.steps},           {"train", "lr", &t.lr},
      {"train", "min_lr", &t.min_lr},         {"train", "warmup_steps", &t.warmup_steps},
      {"train", "lr_schedule", &t.lr_schedule}, {"train", "weight_decay", &t.weight_decay},
      {"train", "beta1", &t.beta1},           {"train", "beta2", &t.beta2},
      {"train", "eps", &t.eps},               {"train", "grad_clip", &t.grad_clip},
      {"train", "seed", &t.seed},             {"train", "shuffle", &t.shuffle},
      {"train", "eval_every", &t.eval_every}, {"train", "eval_tokens", &t.eval_tokens},
      {"train", "checkpoint_every", &t.checkpoint_every},
      {"train", "recompute", &t.recompute},   {"train", "attention", &t.attention},
      {"train", "precision", &t.precision},
      {"data", "train", &c.data.train},       {"data", "val", &c.data.val},
      {"run", "dir", &c.run.dir},             {"run", "threads", &c.run.threads},
      {"run", "keep_last", &c.run.keep_last}, {"run", "gemm", &c.run.gemm},
      {"run", "trace", &c.run.trace},
      {"train", "global_batch", &t.global_batch},
      {"parallel", "dp", &c.parallel.dp},     {"parallel", "tp", &c.parallel.tp},
      {"parallel", "pp", &c.parallel.pp},     {"parallel", "zero", &c.parallel.zero},
      {"parallel", "bucket_mb", &c.parallel.bucket_mb},
      {"parallel", "schedule", &c.parallel.schedule},
      {"parallel", "virtual_stages", &c.parallel.virtual_stages},
      {"parallel", "stage_layers", &c.parallel.stage_layers},
      {"parallel", "sequence_parallel", &c.parallel.sequence_parallel},
      {"parallel", "grad_reduce", &c.parallel.grad_reduce},
      {"parallel", "grad_compression", &c.parallel.grad_compression},
      {"parallel", "powersgd_rank", &c.parallel.powersgd_rank},
      {"parallel", "powersgd_start", &c.parallel.powersgd_start},
      {"comm", "timeout_s", &c.comm.timeout_s},
      {"checkpoint", "async", &c.checkpoint.async},
  };
}

std::string where(const std::string& source, const char* section, const char* key) {
  return fmt::format("{}: [{}] {}", source, section, key);
}

void assign(const Field& f, const toml::node& node, const std::string& source) {
  const std::string at = where(source, f.section, f.key);
  std::visit(
      [&](auto* p) {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, std::string>) {
          auto v = node.value<std::string>();
          LOOM_REQUIRE(v.has_value(), "{} must be a string", at);
          *p = *v;
        } else if constexpr (std::is_same_v<T, bool>) {
          LOOM_REQUIRE(node.is_boolean(), "{} must be true or false", at);
          *p = *node.value<bool>();
        } else if constexpr (std::is_same_v<T, double>) {
          LOOM_REQUIRE(node.is_number(), "{} must be a number", at);
          *p = *node.value<double>();
          LOOM_REQUIRE(std::isfinite(*p), "{} must be a finite number, got {}", at, *p);
        } else {
          LOOM_REQUIRE(node.is_integer(), "{} must be an integer", at);
          int64_t v = *node.value<int64_t>();
          LOOM_REQUIRE(std::is_signed_v<T> || v >= 0, "{} must be >= 0, got {}", at, v);
          // 99999999999 into an int would wrap to 1215752191 layers without a word.
          LOOM_REQUIRE(std::in_range<T>(v), "{} = {} is out of range (at most {})", at, v,
                       std::numeric_limits<T>::max());
          *p = T(v);
        }
      },
      f.ptr);
}

std::string known_keys(std::vector<Field>& fs, const std::string& section) {
  std::string out;
  for (const Field& f : fs)
    if (section == f.section) out += (out.empty() ? "" : ", ") + std::string(f.key);
  return out;
}

void apply_table(RunConfig& c, const toml::table& root, const std::string& source) {
  std::vector<Field> fs = fields(c);
  for (auto&& [section_key, section_node] : root) {
    const std::string section(section_key.str());
    std::string keys = known_keys(fs, section);
    LOOM_REQUIRE(!keys.empty(), "{}: unknown section [{}] (known: model, train, data, run, parallel, comm, checkpoint)",
                 source, section);
    const toml::table* tbl = section_node.as_table();
    LOOM_REQUIRE(tbl != nullptr, "{}: [{}] must be a table", source, section);
    for (auto&& [key, node] : *tbl) {
      const Field* field = nullptr;
      for (const Field& f : fs)
        if (section == f.section && key.str() == f.key) field = &f;
      LOOM_REQUIRE(field != nullptr, "{}: unknown key '{}' in [{}] (known: {})", source,
                   key.str(), section, keys);
      assign(*field, node, source);
    }
  }
}

// "section.key=value" as a table of that one key: the value is parsed as TOML, or taken as
// a bare string.
toml::table override_table(const std::string& text) {
  const size_t eq = text.find('='), dot = text.find('.');
  LOOM_REQUIRE(eq != std::string::npos && dot != std::string::npos && dot < eq,
               "--set '{}' must look like section.key=value", text);
  const std::string section = text.substr(0, dot), key = text.substr(dot + 1, eq - dot - 1);
  const std::string value = text.substr(eq + 1);
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + value);
  } catch (const toml::parse_error&) {
    parsed = toml::table{{"v", value}};
  }
  toml::table one;
  one.insert(section, toml::table{});
  one[section].as_table()->insert_or_assign(key, *parsed.get("v"));
  return one;
}

}  // namespace

void validate_model_parallel(const RunConfig& c);
void validate_grad_compression(const ParallelConfig& p);

void RunConfig::validate() const {
  model.validate();
  const TrainConfig& t = train;
  LOOM_REQUIRE(t.micro_batch >= 1, "[train] micro_batch={} must be >= 1", t.micro_batch);
  LOOM_REQUIRE(t.seq_len >= 1 && t.seq_len <= model.block_size,
               "[train] seq_len={} must be in [1, block_size={}]", t.seq_len, model.block_size);
  LOOM_REQUIRE(t.grad_accum >= 1, "[train] grad_accum={} must be >= 1", t.grad_accum);
  LOOM_REQUIRE(t.steps >= 0, "[train] steps={} must be >= 0", t.steps);
  LOOM_REQUIRE(t.lr > 0 && t.min_lr >= 0 && t.min_lr <= t.lr,
               "[train] need 0 <= min_lr <= lr and lr > 0 (lr={}, min_lr={})", t.lr, t.min_lr);
  LOOM_REQUIRE(t.warmup_steps >= 0, "[train] warmup_steps={} must be >= 0", t.warmup_steps);
  LOOM_REQUIRE(t.lr_schedule == "cosine" || t.lr_schedule == "constant",
               "[train] lr_schedule='{}' must be 'cosine' or 'constant'", t.lr_schedule);
  LOOM_REQUIRE(t.beta1 >= 0 && t.beta1 < 1 && t.beta2 >= 0 && t.beta2 < 1,
               "[train] beta1={} and beta2={} must be in [0, 1)", t.beta1, t.beta2);
  LOOM_REQUIRE(t.eps > 0 && t.weight_decay >= 0 && t.grad_clip >= 0,
               "[train] eps={} must be > 0, weight_decay={} and grad_clip={} >= 0", t.eps,
               t.weight_decay, t.grad_clip);
  LOOM_REQUIRE(t.eval_every >= 0 && t.checkpoint_every >= 0 && t.eval_tokens >= 0,
               "[train] eval_every, eval_tokens and checkpoint_every must be >= 0");
  LOOM_REQUIRE(t.recompute == "none" || t.recompute == "selective" || t.recompute == "full",
               "[train] recompute='{}' must be 'none', 'selective' or 'full'", t.recompute);
  LOOM_REQUIRE(t.attention == "flash" || t.attention == "materialized",
               "[train] attention='{}' must be 'flash' or 'materialized'", t.attention);
  LOOM_REQUIRE(t.precision == "fp32" || t.precision == "bf16" || t.precision == "fp16",
               "[train] precision='{}' must be 'fp32', 'bf16' or 'fp16'", t.precision);
  LOOM_REQUIRE(parallel.grad_reduce == "fp32" || parallel.grad_reduce == "bf16",
               "[parallel] grad_reduce='{}' must be 'fp32' or 'bf16'", parallel.grad_reduce);
  LOOM_REQUIRE(!data.train.empty(), "[data] train: the path of the train shard is required");
  LOOM_REQUIRE(run.threads >= 0 && run.keep_last >= 0,
               "[run] threads={} and keep_last={} must be >= 0", run.threads, run.keep_last);
  const ParallelConfig& p = parallel;
  LOOM_REQUIRE(p.dp >= 1 && p.tp >= 1 && p.pp >= 1,
               "[parallel] dp={} tp={} pp={} must all be >= 1", p.dp, p.tp, p.pp);
  validate_model_parallel(*this);
  LOOM_REQUIRE(p.zero >= 0 && p.zero <= 3, "[parallel] zero={} is not a ZeRO stage: use 0-3",
               p.zero);
  LOOM_REQUIRE(p.bucket_mb > 0, "[parallel] bucket_mb={} must be > 0", p.bucket_mb);
  validate_grad_compression(p);
  LOOM_REQUIRE(comm.timeout_s > 0, "[comm] timeout_s={} must be > 0", comm.timeout_s);
  const int64_t derived = int64_t(t.micro_batch) * t.grad_accum * p.dp;
  LOOM_REQUIRE(t.global_batch == 0 || t.global_batch == derived,
               "[train] global_batch={} but micro_batch={} x grad_accum={} x dp={} = {}; set "
               "global_batch = 0 to derive it, or change one of the factors",
               t.global_batch, t.micro_batch, t.grad_accum, p.dp, derived);
  LOOM_REQUIRE(run.gemm == "onednn" || run.gemm == "openblas",
               "[run] gemm='{}' must be 'onednn' or 'openblas'", run.gemm);
}

// Compressed gradients: what does not combine, and why.
void validate_grad_compression(const ParallelConfig& p) {
  const std::string& c = p.grad_compression;
  LOOM_REQUIRE(c == "none" || c == "bf16" || c == "int8" || c == "powersgd",
               "[parallel] grad_compression='{}' must be none, bf16, int8 or powersgd", c);
  if (c != "int8" && c != "powersgd") return;
  LOOM_REQUIRE(p.zero <= 1,
               "[parallel] grad_compression='{}' needs zero 0 or 1, not {}: it reduces the whole "
               "gradient on every rank, while ZeRO {} reduces each bucket only to its owner", c,
               p.zero, p.zero);
  LOOM_REQUIRE(p.grad_reduce == "fp32",
               "[parallel] grad_compression='{}' compresses fp32 gradients itself: leave "
               "grad_reduce='fp32' (grad_compression='bf16' is the bf16 reduction)", c);
  LOOM_REQUIRE(p.powersgd_rank >= 1 && p.powersgd_start >= 0,
               "[parallel] powersgd_rank={} must be >= 1 and powersgd_start={} >= 0",
               p.powersgd_rank, p.powersgd_start);
}

// Tensor and pipeline parallelism: everything that does not combine is rejected here,
// before any process allocates or communicates.
void validate_model_parallel(const RunConfig& c) {
  const ParallelConfig& p = c.parallel;
  const TrainConfig& t = c.train;
  const int L = c.model.n_layer, v = p.virtual_stages;
  LOOM_REQUIRE(c.model.n_head % p.tp == 0,
               "[parallel] tp={} does not divide [model] n_head={}: tensor parallelism splits "
               "whole attention heads", p.tp, c.model.n_head);
  LOOM_REQUIRE(p.schedule == "gpipe" || p.schedule == "1f1b" || p.schedule == "interleaved",
               "[parallel] schedule='{}' must be 'gpipe', '1f1b' or 'interleaved'", p.schedule);
  LOOM_REQUIRE(v >= 1, "[parallel] virtual_stages={} must be >= 1", v);
  if (p.schedule == "interleaved") {
    LOOM_REQUIRE(v >= 2, "[parallel] schedule='interleaved' needs virtual_stages >= 2 (got {})",
                 v);
    LOOM_REQUIRE(t.grad_accum % p.pp == 0,
                 "[parallel] the interleaved schedule needs the micro-batches ([train] "
                 "grad_accum={}) to be a multiple of pp={}", t.grad_accum, p.pp);
  } else {
    LOOM_REQUIRE(v == 1, "[parallel] virtual_stages={} needs schedule='interleaved' (got '{}')",
                 v, p.schedule);
  }
  LOOM_REQUIRE(L >= p.pp * v,
               "[model] n_layer={} cannot fill pp={} x virtual_stages={} = {} pipeline stages",
               L, p.pp, v, p.pp * v);
  LOOM_REQUIRE(!(p.zero == 3 && p.pp > 1),
               "[parallel] zero=3 with pp={} is not supported (ZeRO-3 gathers weights per "
               "micro-batch, which pipelining would repeat per stage); use zero 1 or 2 with "
               "pipeline parallelism", p.pp);
  LOOM_REQUIRE(!p.sequence_parallel || (int64_t(t.micro_batch) * t.seq_len) % p.tp == 0,
               "[parallel] sequence_parallel splits micro_batch x seq_len = {} token rows over "
               "tp={}: they must divide", int64_t(t.micro_batch) * t.seq_len, p.tp);
}

std::string RunConfig::to_toml() const {
  RunConfig copy = *this;
  toml::table root;
  for (const Field& f : fields(copy)) {
    if (!root.contains(f.section)) root.insert(f.section, toml::table{});
    toml::table& t = *root[f.section].as_table();
    std::visit(
        [&](auto* p) {
          using T = std::remove_pointer_t<decltype(p)>;
          if constexpr (std::is_same_v<T, uint64_t>) t.insert(f.key, int64_t(*p));
          else t.insert(f.key, *p);
        },
        f.ptr);
  }
  std::ostringstream out;
  out << root << "\n";
  return out.str();
}

RunConfig parse_run_config(const std::string& toml_text, const std::string& source,
                           const std::vector<std::string>& overrides) {
  const toml::table root = parse_toml(toml_text, source);
  RunConfig c;
  apply_table(c, root, source);
  // Each --set after the file, named as the source of its own errors.
  for (const std::string& o : overrides) apply_table(c, override_table(o), "--set '" + o + "'");
  c.validate();
  return c;
}

RunConfig load_run_config(const std::string& path, const std::vector<std::string>& overrides) {
  return parse_run_config(read_file_text(path), path, overrides);
}

}  // namespace loom
