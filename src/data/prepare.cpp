#include "data/prepare.h"

#include <cmath>
#include <span>
#include <vector>

#include "core/check.h"
#include "core/file_io.h"
#include "core/timer.h"
#include "data/shard.h"

namespace loom {
namespace fs = std::filesystem;

PrepareStats prepare_corpus(const fs::path& text_file, const fs::path& out_dir,
                            double val_fraction, const Gpt2Tokenizer& tokenizer) {
  LOOM_REQUIRE(val_fraction >= 0.0 && val_fraction <= 0.5,
               "--val-fraction is {}, expected a value in [0, 0.5]", val_fraction);
  Timer total;
  PrepareStats stats;
  const std::string text = read_file_text(text_file);
  stats.text_bytes = text.size();

  Timer encode_timer;
  std::vector<int32_t> ids = tokenizer.encode(text);
  stats.encode_seconds = encode_timer.seconds();

  // GPT-2 ids are < 50257, so they fit the shards' uint16.
  std::vector<uint16_t> tokens;
  tokens.reserve(ids.size() + 1);
  tokens.push_back(uint16_t(Gpt2Tokenizer::kEndOfText));
  for (int32_t id : ids) tokens.push_back(uint16_t(id));

  const auto n_val = size_t(std::llround(val_fraction * double(tokens.size())));
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  LOOM_REQUIRE(!ec && fs::is_directory(out_dir), "cannot create output folder '{}': {}",
               out_dir.string(), ec.message());
  stats.val_path = out_dir / "val_000000.bin";
  stats.train_path = out_dir / "train_000000.bin";
  std::span<const uint16_t> all(tokens);
  write_shard(stats.val_path, all.first(n_val));
  write_shard(stats.train_path, all.subspan(n_val));

  stats.val_tokens = n_val;
  stats.train_tokens = tokens.size() - n_val;
  stats.val_bytes = kShardHeaderBytes + 2 * stats.val_tokens;
  stats.train_bytes = kShardHeaderBytes + 2 * stats.train_tokens;
  stats.total_seconds = total.seconds();
  return stats;
}

}  // namespace loom
