// TOML text to a table, with a parse error as an InputError naming source:line:column: the
// run config, the planner's cluster files and its published runs all read TOML this way.
#pragma once

#include <toml++/toml.h>

#include <string>

namespace loom {

toml::table parse_toml(const std::string& text, const std::string& source);

}  // namespace loom
