// deepshard coordinator RPC (DESIGN §2-3, §7). Generated code lives only in the build tree
// (${CMAKE_BINARY_DIR}/gen/thrift/{cpp,py}); the C++ server adapts these types to the Engine's own.
//
// Every call that takes `api_key` checks it when the coordinator was started with --api-key.
// Errors are typed exceptions carrying a reason:
//   InvalidRequest  - the request is malformed or out of range (`field` names the culprit)
//   Overloaded      - the queue is full; retry later
//   Unavailable     - no shard job is serving the model, or it was lost while the request ran
//   NotFound        - unknown request id (Poll / Cancel)
//   Unauthorized    - missing or wrong api_key
//   GenerationFailed - the request was accepted but ended in an error (deadline, shard failure)

namespace cpp deepshard.rpc
namespace py deepshard_rpc

exception InvalidRequest {
  1: string message,
  2: string field,
}
exception Overloaded {
  1: string message,
}
exception Unavailable {
  1: string message,
}
exception NotFound {
  1: string message,
}
exception Unauthorized {
  1: string message,
}
exception GenerationFailed {
  1: string message,
  2: string code,       // "deadline_exceeded", "cancelled", "internal", ...
}

struct ChatMessage {
  1: optional string role,       // system, user, assistant, tool (required; checked by the server so
                                 // that a missing one is an InvalidRequest naming it)
  2: optional string content,    // required, like role
}

struct SamplingParams {
  1: optional double temperature,        // default 1.0; 0 = greedy
  2: optional i32 top_k,                 // 0 = off
  3: optional double top_p,              // (0, 1]
  4: optional double min_p,
  5: optional double repetition_penalty,
  6: optional double frequency_penalty,
  7: optional double presence_penalty,
  8: optional i64 seed,
}

// Exactly one of prompt / prompt_tokens / messages.
struct GenerateRequest {
  1: optional string prompt,             // plain text (BOS added per the tokenizer config)
  2: optional list<i32> prompt_tokens,   // token ids, used as given
  3: optional list<ChatMessage> messages,// rendered with the model's chat template
  4: optional i32 max_tokens = 16,
  5: optional SamplingParams sampling,
  6: optional list<string> stop,
  7: optional list<i32> stop_token_ids,
  8: optional bool ignore_eos = false,
  9: optional i32 logprobs,              // top-n alternatives per token (0..20); absent = none
  10: optional i32 timeout_ms,           // per-request deadline
  11: optional string api_key,
}

struct TokenLogprob {
  1: i32 token,
  2: double logprob,
  3: list<i32> top_ids,
  4: list<double> top_logprobs,
}

struct GenerateResponse {
  1: string text,
  2: list<i32> tokens,
  3: string finish_reason,       // "stop" | "length"
  4: i32 prompt_tokens,
  5: i32 completion_tokens,
  6: optional list<TokenLogprob> logprobs,
}

// Streaming by polling: everything produced after `offset`; pass next_offset to the next Poll.
struct PollResponse {
  1: string text,
  2: list<i32> tokens,
  3: i64 next_offset,
  4: bool finished,
  5: string finish_reason,       // set when finished
  6: i32 prompt_tokens,
  7: i32 completion_tokens,
  8: optional list<TokenLogprob> logprobs,
}

struct ModelInfo {
  1: string name,
  2: i64 max_context,
  3: i64 vocab_size,
  4: i32 bos_id,
  5: i32 eos_id,
  6: string fingerprint,         // 16 hex digits
  7: bool has_tokenizer,
}

struct HealthStatus {
  1: bool available,
  2: string reason,              // why not, when unavailable
  3: string shard_job,
  4: i64 session_id,
}

struct Stats {
  1: i64 queued,
  2: i64 running,
  3: i64 in_flight_batches,
  4: i64 kv_blocks_total,
  5: i64 kv_blocks_used,
  6: i64 prompt_tokens,
  7: i64 generated_tokens,
  8: i64 requests_total,
  9: i64 steps_total,
  10: double ttft_p50_s,
  11: double ttft_p99_s,
  12: double itl_p50_s,
  13: double itl_p99_s,
  14: double step_mean_s,
  15: double overhead_mean_s,
}

service Deepshard {
  // Blocks until the request finishes.
  GenerateResponse Generate(1: GenerateRequest request)
      throws (1: InvalidRequest invalid, 2: Overloaded overloaded, 3: Unavailable unavailable,
              4: Unauthorized unauthorized, 5: GenerationFailed failed),

  // Queues a request and returns its id at once; read it with Poll, stop it with Cancel.
  i64 Submit(1: GenerateRequest request)
      throws (1: InvalidRequest invalid, 2: Overloaded overloaded, 3: Unavailable unavailable,
              4: Unauthorized unauthorized),

  // Output after `offset`, waiting up to wait_ms for something new. Once the request ended in an
  // error and everything before it was read, throws Unavailable / GenerationFailed.
  PollResponse Poll(1: i64 request_id, 2: i64 offset, 3: i32 wait_ms, 4: string api_key)
      throws (1: NotFound not_found, 2: Unavailable unavailable, 3: Unauthorized unauthorized,
              4: GenerationFailed failed),

  void Cancel(1: i64 request_id, 2: string api_key)
      throws (1: NotFound not_found, 2: Unauthorized unauthorized),

  list<i32> Tokenize(1: string text, 2: bool add_bos, 3: string api_key)
      throws (1: InvalidRequest invalid, 2: Unauthorized unauthorized),

  string Detokenize(1: list<i32> tokens, 2: string api_key)
      throws (1: InvalidRequest invalid, 2: Unauthorized unauthorized),

  ModelInfo GetModelInfo(),
  HealthStatus Health(),
  Stats GetStats(),
}
