// TOML configs through loom's own validation (parse_run_config validates what it builds).
#include <string>

#include "fuzz_util.h"
#include "train/run_config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  loom::fuzz::expect_input_errors_only([&] {
    const loom::RunConfig c = loom::parse_run_config(text, "fuzz.toml", {});
    c.validate();
    (void)c.to_toml();
  });
  return 0;
}
