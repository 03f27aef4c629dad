// Each subcommand lives in its own cmd_<name>.cpp and provides a setup function that
// declares its options on the CLI11 subcommand and returns what to run once parsed.
// The function returns the process exit code.
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace loom::cli {

using RunFn = std::function<int()>;

RunFn setup_prepare(CLI::App& sub);
RunFn setup_train(CLI::App& sub);
RunFn setup_eval(CLI::App& sub);
RunFn setup_generate(CLI::App& sub);
RunFn setup_export(CLI::App& sub);
RunFn setup_import(CLI::App& sub);
RunFn setup_bench(CLI::App& sub);
RunFn setup_plan(CLI::App& sub);
RunFn setup_report(CLI::App& sub);
RunFn setup_launch(CLI::App& sub);

}  // namespace loom::cli
