#include "train/toml_text.h"

#include <fmt/format.h>

#include "core/check.h"

namespace loom {

toml::table parse_toml(const std::string& text, const std::string& source) {
  try {
    return toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    const auto& b = e.source().begin;
    throw InputError(fmt::format("{}:{}:{}: invalid TOML: {}", source, b.line, b.column,
                                 e.description()));
  }
}

}  // namespace loom
