// deepshard: model tools (make-model, inspect, tokenize), single-process inference (generate),
// planning (plan, topo) and pre-flight checks.
#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "common/logging.h"
#include "common/version.h"

int main(int argc, char** argv) {
    deepshard::init_logging();
    CLI::App app{"deepshard: DeepSeek-V3 / R1 inference across GPU clusters"};
    app.set_version_flag("--version", DEEPSHARD_VERSION_STRING);
    app.require_subcommand(1);
    int exit_code = 0;
    deepshard::cli::register_make_model(app, &exit_code);
    deepshard::cli::register_inspect(app, &exit_code);
    deepshard::cli::register_tokenize(app, &exit_code);
    deepshard::cli::register_generate(app, &exit_code);
    deepshard::cli::register_plan(app, &exit_code);
    deepshard::cli::register_topo(app, &exit_code);
    deepshard::cli::register_doctor(app, &exit_code);
    CLI11_PARSE(app, argc, argv);
    return exit_code;
}
