// `loom prepare --text corpus.txt --out data/kjv`: text -> GPT-2 BPE token shards.
#include <fmt/core.h>

#include <memory>
#include <string>

#include "cli/command.h"
#include "data/prepare.h"
#include "data/tokenizer.h"

namespace loom::cli {

namespace {

struct PrepareOptions {
  std::string text;
  std::string out;
  double val_fraction = 0.01;
  std::string tokenizer;
  bool binary_ok = false;
};

int run_prepare(const PrepareOptions& o) {
  const Gpt2Tokenizer tokenizer = Gpt2Tokenizer::load(o.tokenizer);
  const PrepareStats s = prepare_corpus(o.text, o.out, o.val_fraction, tokenizer, o.binary_ok);
  const double mb = double(s.text_bytes) / 1e6;
  fmt::print("prepared {} ({:.2f} MB of text) in {:.2f} s\n", o.text, mb, s.total_seconds);
  fmt::print("  train  {:>10} tokens  {}\n", s.train_tokens, s.train_path.string());
  fmt::print("  val    {:>10} tokens  {}\n", s.val_tokens, s.val_path.string());
  fmt::print("  tokenizer: {:.2f} MB in {:.2f} s = {:.1f} MB/s (one thread)\n", mb,
             s.encode_seconds, s.encode_seconds > 0 ? mb / s.encode_seconds : 0.0);
  return 0;
}

}  // namespace

RunFn setup_prepare(CLI::App& sub) {
  auto o = std::make_shared<PrepareOptions>();
  o->tokenizer = default_tokenizer_dir().string();
  sub.add_option("--text", o->text, "UTF-8 text file to tokenize (one document)")
      ->required();
  sub.add_option("--out", o->out, "output folder for train_000000.bin and val_000000.bin")
      ->required();
  sub.add_option("--val-fraction", o->val_fraction,
                 "fraction of tokens, taken from the start, for the val shard, in [0, 0.5]")
      ->capture_default_str();
  sub.add_option("--tokenizer", o->tokenizer,
                 "folder with GPT-2's encoder.json and vocab.bpe ($LOOM_TOKENIZER_DIR, else "
                 "~/.cache/loom/gpt2)")
      ->capture_default_str();
  sub.add_flag("--binary-ok", o->binary_ok,
               "tokenize input that looks binary (NUL bytes, or over 1% invalid UTF-8)");
  return [o] { return run_prepare(*o); };
}

}  // namespace loom::cli
