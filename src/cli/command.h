// Each subcommand lives in its own cmd_<name>.cpp and provides a setup function that
// declares its options on the CLI11 subcommand and returns what to run once parsed.
// The function returns the process exit code.
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cmath>
#include <functional>
#include <string>

namespace loom::cli {

using RunFn = std::function<int()>;

// A CLI11 check: the value is a finite number in [lo, hi] (CLI::Range lets NaN through).
// CLI11 prefixes the option's name: "--temperature: -1 is not a number in [0, 100]".
inline CLI::Validator in_range(double lo, double hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) -> std::string {
        double v = 0;
        if (CLI::detail::lexical_cast(text, v) && std::isfinite(v) && v >= lo && v <= hi)
          return {};
        return fmt::format("{} is not a number in [{}, {}]", text, lo, hi);
      },
      fmt::format("in [{}, {}]", lo, hi));
}

RunFn setup_prepare(CLI::App& sub);
RunFn setup_train(CLI::App& sub);
RunFn setup_eval(CLI::App& sub);
RunFn setup_generate(CLI::App& sub);
RunFn setup_serve(CLI::App& sub);
RunFn setup_export(CLI::App& sub);
RunFn setup_import(CLI::App& sub);
RunFn setup_bench(CLI::App& sub);
RunFn setup_plan(CLI::App& sub);
RunFn setup_report(CLI::App& sub);
RunFn setup_launch(CLI::App& sub);

}  // namespace loom::cli
