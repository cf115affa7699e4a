// Subcommands of the `deepshard` binary. Each register_* adds one CLI11 subcommand whose callback
// sets *exit_code; main() runs the parsed one.
#pragma once

#include <CLI/CLI.hpp>

namespace deepshard::cli {

void register_make_model(CLI::App& app, int* exit_code);
void register_inspect(CLI::App& app, int* exit_code);
void register_tokenize(CLI::App& app, int* exit_code);
void register_generate(CLI::App& app, int* exit_code);
void register_plan(CLI::App& app, int* exit_code);
void register_topo(CLI::App& app, int* exit_code);
void register_doctor(CLI::App& app, int* exit_code);

}  // namespace deepshard::cli
