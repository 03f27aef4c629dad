// A checkpoint's manifest.json: read_checkpoint_manifest validates magic, version and fields;
// verify_checkpoint then checks the files it lists (none exist here, so each is an error).
#include <filesystem>

#include "ckpt/checkpoint.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::filesystem::path dir = loom::fuzz::scratch() / "step_00000001";
  std::filesystem::create_directories(dir);
  loom::fuzz::as_file(data, size, "step_00000001/manifest.json");
  loom::fuzz::expect_input_errors_only([&] { loom::read_checkpoint_manifest(dir); });
  loom::fuzz::expect_input_errors_only([&] { loom::verify_checkpoint(dir); });
  return 0;
}
