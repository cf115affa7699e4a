// One message of every control-protocol type with every field set (speculative drafts, KV ops,
// resume and authentication included). Shared by the codec's tests and by the control fuzz
// target's seed corpus, so the seeds are written by the real encoder and follow the protocol as it
// changes (ControlFuzzSeeds.CommittedSeedsAreTheEncodersOutput fails while they are stale).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "control/protocol.h"

namespace deepshard::control::samples {

Hello hello();
HelloAck hello_ack();
StepBatch step_batch();
StepResult step_result();
Heartbeat heartbeat();
AuthHello auth_hello();
AuthChallenge auth_challenge();
AuthProof auth_proof();

// The control fuzz target's seed corpus as (file name, bytes): every message as one encoded frame
// ("<name>.frame"), as a bare payload behind the byte that makes the target pick its decoder
// ("<name>.payload", see tests/fuzz/fuzz_control.cc), and a whole session as one stream of frames.
std::vector<std::pair<std::string, std::string>> fuzz_seed_files();

// The index of `type` in fuzz_control.cc's decoder table (its first input byte picks a decoder).
uint8_t fuzz_selector(MessageType type);

}  // namespace deepshard::control::samples
