// llm.c's model file: the 256-int header, the size it implies, the weights (finite).
#include "ckpt/interop.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = loom::fuzz::as_file(data, size, "m.bin");
  loom::fuzz::expect_input_errors_only([&] { loom::import_llmc(path); });
  return 0;
}
