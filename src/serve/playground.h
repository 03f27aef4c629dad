// The browser playground `loom serve` answers GET / with: one self-contained page (no build
// step, no external assets) that streams a completion from /v1/completions as it arrives.
#pragma once

#include <string>

namespace loom {

const std::string& playground_html();

}  // namespace loom
