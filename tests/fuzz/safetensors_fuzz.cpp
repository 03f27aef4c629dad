// The safetensors header and tensor table: parse, then read every F32 tensor (which checks
// shapes and refuses non-finite values).
#include <vector>

#include "ckpt/safetensors.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = loom::fuzz::as_file(data, size, "t.safetensors");
  loom::fuzz::expect_input_errors_only([&] {
    const loom::SafetensorsFile f = loom::SafetensorsFile::open(path);
    for (const auto& t : f.tensors()) {
      if (t.dtype != "F32") continue;
      std::vector<float> dst((t.end - t.begin) / sizeof(float));
      f.read(t.name, dst.data(), t.shape);
    }
  });
  return 0;
}
