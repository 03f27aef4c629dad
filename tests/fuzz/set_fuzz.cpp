// `--set section.key=value` expressions, applied over a valid config and validated.
#include <string>

#include "fuzz_util.h"
#include "train/run_config.h"

namespace {
const char* kBase =
    "[model]\nn_layer = 2\nn_head = 2\nn_embd = 16\nblock_size = 32\n"
    "[train]\nseq_len = 16\n[data]\ntrain = \"x.bin\"\n";
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string set(reinterpret_cast<const char*>(data), size);
  loom::fuzz::expect_input_errors_only([&] {
    loom::parse_run_config(kBase, "base.toml", {set}).validate();
  });
  return 0;
}
