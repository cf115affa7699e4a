// Thrift GenerateRequest -> GenerateParams: the Thrift front end's half of request validation (the
// other half, shared with HTTP, is validate_params). Separate from the server so that it can be
// tested and fuzzed without sockets. Thrift has typed fields, so what is left to check are presence,
// counts and ranges, all against the request-limits table (common/request_limits.h).
#pragma once

#include "common/status.h"
#include "coordinator/params.h"
#include "coordinator/thrift/deepshard_types.h"
#include "model/tokenizer/tokenizer.h"

namespace deepshard::coordinator {

// kInvalidArgument whose message starts with the offending field ("messages[2].role: required").
// `tokenizer` may be null (token-id prompts only).
StatusOr<GenerateParams> params_from_thrift(const rpc::GenerateRequest& r, const ModelInfo& model,
                                            const model::Tokenizer* tokenizer);

// The field an InvalidArgument message names (its text before the first ':'), or "".
std::string field_of(const Status& s);

}  // namespace deepshard::coordinator
