#include <gtest/gtest.h>

#include <set>

#include "model/param_spec.h"

namespace loom {
namespace {

GptConfig tiny() { return GptConfig{.n_layer = 2, .n_head = 2, .n_embd = 16, .block_size = 8, .vocab_size = 50}; }

TEST(ParamSpec, HfNamesContiguousBlocksAndDecayFlags) {
  const auto specs = gpt2_param_specs(tiny());
  ASSERT_EQ(specs.size(), 2u + 12 * 2 + 2);
  EXPECT_EQ(specs[0].name, "wte.weight");
  EXPECT_EQ(specs[0].global_shape, (std::vector<int64_t>{128, 16}));
  EXPECT_TRUE(specs[0].tied);
  EXPECT_EQ(specs[2].name, "h.0.ln_1.weight");
  EXPECT_EQ(find_param(specs, "h.1.mlp.c_proj.weight").global_shape,
            (std::vector<int64_t>{16, 64}));
  size_t offset = 0;
  std::set<std::string> names;
  for (const ParamSpec& p : specs) {
    EXPECT_EQ(p.offset, offset) << p.name;
    offset += p.numel;
    EXPECT_TRUE(names.insert(p.name).second) << "duplicate " << p.name;
    EXPECT_EQ(p.decay, p.global_shape.size() == 2) << p.name;
  }
  EXPECT_EQ(flat_size(specs), offset);
  // A block's parameters are one contiguous range, in layer order.
  for (const ParamSpec& p : specs) {
    if (p.layer >= 0 && p.layer < 2) {
      EXPECT_EQ(p.name.substr(0, 4), "h." + std::to_string(p.layer) + ".");
    }
  }
}

TEST(ParamSpec, InitDependsOnlyOnSeedNameAndIndexAndPadsWithZeros) {
  const auto specs = gpt2_param_specs(tiny());
  std::vector<float> a(flat_size(specs)), b(flat_size(specs));
  init_params(specs, 7, a.data());
  init_params(specs, 7, b.data());
  EXPECT_EQ(a, b);
  const ParamSpec& wte = find_param(specs, "wte.weight");
  for (int64_t r = 50; r < 128; ++r)
    for (int c = 0; c < 16; ++c) ASSERT_EQ(a[wte.offset + r * 16 + c], 0.0f);
  EXPECT_NE(a[wte.offset], 0.0f);
  EXPECT_EQ(a[find_param(specs, "h.0.ln_1.weight").offset], 1.0f);
  EXPECT_EQ(a[find_param(specs, "h.0.attn.c_attn.bias").offset], 0.0f);

  // A row slice (as a tensor-parallel rank would hold) gets exactly the same values.
  ParamSpec slice = find_param(specs, "h.0.mlp.c_fc.weight");  // (64, 16)
  slice.split_dim = 0;
  slice.split_start = 32;
  slice.local_shape = {16, 16};
  slice.numel = 256;
  slice.offset = 0;
  std::vector<float> part(256);
  init_params({slice}, 7, part.data());
  const size_t full = find_param(specs, "h.0.mlp.c_fc.weight").offset;
  for (int i = 0; i < 256; ++i) ASSERT_EQ(part[i], a[full + 32 * 16 + i]);
}

}  // namespace
}  // namespace loom
