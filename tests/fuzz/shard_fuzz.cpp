// Token shards (llm.c's format): the 256-int header and the token count, read directly and
// through the loader that training uses.
#include "data/loader.h"
#include "data/shard.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = loom::fuzz::as_file(data, size, "s.bin");
  loom::fuzz::expect_input_errors_only([&] { loom::read_shard(path); });
  loom::fuzz::expect_input_errors_only([&] { loom::TokenLoader(path, 1, 4); });
  return 0;
}
