// `deepshard inspect --model DIR`: parameter and byte counts by kind, dtype and layer, the model
// fingerprint, and full validation against config.json; exits non-zero with the reason on a defect.
#include <cstdio>
#include <iostream>

#include "cli/commands.h"
#include "model/inspect.h"

namespace deepshard::cli {

void register_inspect(CLI::App& app, int* exit_code) {
    auto model_dir = std::make_shared<std::string>();
    auto* cmd = app.add_subcommand("inspect", "Summarize and validate a checkpoint");
    cmd->add_option("--model", *model_dir, "model directory")->required();
    cmd->callback([model_dir, exit_code] {
        Status s = model::inspect_model(*model_dir, std::cout);
        std::cout.flush();
        if (!s.ok()) {
            std::fprintf(stderr, "error: %s\n", s.to_string().c_str());
            *exit_code = 1;
        }
    });
}

}  // namespace deepshard::cli
