// The prompt, sampling and output flags shared by `deepshard generate` (one process) and
// `deepshard-shard` driver mode (the distributed model): one definition, so both accept exactly the
// same flags (DESIGN §7) and print exactly the same output for the same model.
#pragma once

#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/status.h"
#include "model/checkpoint.h"
#include "model/generate.h"

namespace deepshard::model {

struct GenerateOptions {
    std::string prompt;
    std::string tokens;
    bool chat = false;
    int64_t max_tokens = 64;
    float temperature = 0.0f;
    int top_k = 0;
    float top_p = 1.0f;
    float min_p = 0.0f;
    float repetition_penalty = 1.0f;
    float frequency_penalty = 0.0f;
    float presence_penalty = 0.0f;
    int64_t seed = -1;
    bool ignore_eos = false;
    bool json = false;
    int logprobs = 0;
    std::vector<std::string> stop;
    std::string dump_logits;
    int64_t prefill_chunk = 512;
    // Speculative decoding: "" (off) or "mtp" (the checkpoint's MTP module drafts), draft_tokens per
    // step (0: the default, 1), the same flags as deepshard-coordinator.
    std::string speculative;
    int draft_tokens = 0;
};

// Adds --prompt/--tokens/--chat/--max-tokens/--temperature/... to `cmd`.
void add_generate_options(CLI::App* cmd, GenerateOptions* options);

// Tokenizes the prompt (through the chat template with --chat), runs generate() over `step`,
// streams the text (or prints one JSON object with --json) to stdout, writes --dump-logits. With
// --speculative mtp, `draft` runs the MTP module (only a process holding the whole model has it:
// without one the session refuses the flag).
Status run_generate_session(const GenerateOptions& options, const Checkpoint& checkpoint, const StepFn& step,
                            const DraftFn& draft = {});

}  // namespace deepshard::model
