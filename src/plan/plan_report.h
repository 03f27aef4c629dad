// What `loom plan` prints and writes: the ranked table, the layouts that do not fit, and
// the JSON ({"layouts": [...]} best first, each with its layout fields and predictions).
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "plan/search.h"

namespace loom {

nlohmann::json to_json(const Prediction& p);

// The header (what was searched, how many layouts were priced and how long it took), the top
// `top` layouts as a table, why the first beats the second, and what did not fit.
std::string format_plan(const SearchResult& r, const CostModel& model, int64_t global_batch,
                        int top);

}  // namespace loom
