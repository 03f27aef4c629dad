#include "core/philox.h"

#include <xxhash.h>

namespace loom {

uint64_t name_hash(std::string_view name) { return XXH64(name.data(), name.size(), 0); }

}  // namespace loom
