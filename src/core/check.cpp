#include "core/check.h"

namespace loom {

void fail_check(const char* file, int line, const char* cond, const std::string& msg) {
  throw Error(fmt::format("{}:{}: check failed: {}: {}", file, line, cond, msg));
}

}  // namespace loom
