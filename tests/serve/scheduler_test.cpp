// The scheduler's admission, without HTTP or a running decode loop: at most slots +
// max_queue requests in the server, more refused with 503 naming both; none once draining.
#include "serve/scheduler.h"

#include <gtest/gtest.h>

#include "comm/process_grid.h"
#include "infer/decoder.h"
#include "model/param_spec.h"

namespace loom {
namespace {

TEST(Scheduler, RefusesPastSlotsPlusQueueAndWhileDraining) {
  const ProcessGrid grid = ProcessGrid::single();
  Gpt model(GptConfig{.n_layer = 1, .n_head = 2, .n_embd = 16, .block_size = 16,
                      .vocab_size = 97},
            grid);
  Decoder decoder(model, grid, DType::kF32, 2, 16, 16);
  Engine engine(decoder, nullptr);
  Metrics metrics;
  Scheduler s(engine, 2, 1, metrics);
  const Request r{{1, 2, 3}, {}};
  for (int i = 0; i < 3; ++i) EXPECT_NO_THROW(s.submit(r)) << i;
  try {
    s.submit(r);
    FAIL() << "a fourth request was taken";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 503);
    EXPECT_EQ(e.code, "queue_full");
    EXPECT_NE(std::string(e.what()).find("--slots 2, --max-queue 1"), std::string::npos)
        << e.what();
  }
  Scheduler quiet(engine, 2, 1, metrics);
  quiet.drain();
  try {
    quiet.submit(r);
    FAIL() << "a request was taken while draining";
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, 503);
    EXPECT_EQ(e.code, "draining");
  }
}

}  // namespace
}  // namespace loom
