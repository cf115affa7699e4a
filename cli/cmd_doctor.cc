// TEMPORARY placeholder until the owning work lands; replaced by the real command.
#include "cli/commands.h"

namespace deepshard::cli {
void register_doctor(CLI::App& app, int* exit_code) {
    auto* cmd = app.add_subcommand("doctor", "(not yet built)");
    cmd->allow_extras();
    cmd->callback([exit_code] { *exit_code = 2; });
}
}  // namespace deepshard::cli
