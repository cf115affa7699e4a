// The control protocol between the coordinator and the shard job's leader (rank 0), DESIGN §2-3.
// Framing: every message is [u32 magic 'DSCP'][u16 version][u16 type][u32 payload length][payload],
// little-endian; payloads are the structs below, serialized field by field (no pointers, no
// padding). Every field is validated on receipt (lengths, counts, ranges) before use; a malformed
// frame is a kProtocol error that names the field, and the connection is dropped.
//
// Sequence of a session:
//   leader -> AuthHello{client nonce}
//   coordinator -> AuthChallenge{server nonce, MAC_K("coordinator", nonces, channel)} | Refuse
//   leader -> AuthProof{MAC_K("leader", nonces, channel)}   (after checking the coordinator's MAC)
//   leader -> Hello{version, fingerprint, plan, capacity, resume_session, received}
//   coordinator -> HelloAck | Refuse{reason}          (bad proof, fingerprint or plan mismatch)
//   coordinator -> StepBatch ...      leader -> StepResult (same step_id; up to P batches in flight)
//   both ways   -> Heartbeat{ack} every DS_HEARTBEAT_MS; silence for several periods = link lost
//   either      -> Shutdown{reason}
// K is the job's shared secret (auth.h); "channel" is the TLS exporter value when the link is TLS
// (so a man in the middle terminating TLS cannot relay the proofs), empty otherwise. Until the
// proof checks out a peer may send only the few bytes of the handshake (kMaxHandshakePayload).
//
// Resume: StepBatch and StepResult are the session's data frames; each side numbers the ones it
// sends (1, 2, ...), keeps them until the peer acknowledges them (Heartbeat.ack = data frames
// received so far) and, after a reconnect within the coordinator's grace period, resends the ones
// the peer has not received (Hello.received / HelloAck.received). A network blip therefore loses
// and duplicates nothing.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "common/request_limits.h"
#include "common/status.h"

namespace deepshard::control {

inline constexpr uint32_t kMagic = 0x50435344;  // "DSCP"
// 2: kv_domains, StepBatch.kv, StepResult.kv; authentication; resume.
// 3: speculative decoding (SeqWork.num_draft / propose, SeqOutput.drafts, several outputs per sequence).
// 4: prefill/decode disaggregation (Hello.kv_endpoints, SeqWork.kv_export / kv_import,
//    StepResult.import_failed).
inline constexpr uint16_t kVersion = 4;
// Most draft tokens a sequence may verify or ask for in one step (--draft-tokens).
inline constexpr uint32_t kMaxDraftTokens = static_cast<uint32_t>(limits::kMaxDraftTokens);
// Payload limits per connection state (a peer's budget grows only as it proves who it is).
inline constexpr uint32_t kMaxHandshakePayload = 96;   // AuthHello / AuthChallenge / AuthProof
inline constexpr uint32_t kMaxRefusePayload = 64u << 10;
inline constexpr uint32_t kMaxHelloPayload = (16u << 20) + (64u << 10);  // plan JSON + job id
inline constexpr uint32_t kMaxPayload = 256u << 20;    // session frames (StepBatch / StepResult)
inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kMacBytes = 32;  // HMAC-SHA256
using Nonce = std::array<uint8_t, kNonceBytes>;
using Mac = std::array<uint8_t, kMacBytes>;

enum class MessageType : uint16_t {
    kHello = 1,
    kHelloAck = 2,
    kRefuse = 3,
    kStepBatch = 4,
    kStepResult = 5,
    kHeartbeat = 6,
    kShutdown = 7,
    kAuthHello = 8,
    kAuthChallenge = 9,
    kAuthProof = 10,
};
inline constexpr uint16_t kMaxMessageType = 10;

// Bit of a message type in a set of allowed types (FramedConnection's read policy).
constexpr uint32_t type_bit(MessageType t) {
    return 1u << static_cast<uint16_t>(t);
}

struct AuthHello {
    Nonce client_nonce{};
};

struct AuthChallenge {
    Nonce server_nonce{};
    Mac server_mac{};  // proves the coordinator holds the secret
};

struct AuthProof {
    Mac client_mac{};  // proves the leader holds the secret
};

// Prefill/decode disaggregation (coordinator/engine.h "Disaggregation"). A capability key is
// random per transfer and known to the coordinator and the two jobs only: an exporter serves rows
// only to a fetch that presents it.
using KvKey = std::array<uint8_t, 16>;
struct KvExport {                     // prefill job: stage this sequence's KV after the chunk
    uint64_t transfer_id = 0;
    KvKey key{};
};
struct KvSource {                     // the exporter rank serving layers [layer_begin, layer_end)
    uint32_t layer_begin = 0;
    uint32_t layer_end = 0;
    std::string endpoint;             // "IP:PORT" (Hello.kv_endpoints of the prefill job)
};
struct KvImport {                     // decode job: fetch this chunk's KV instead of computing it
    uint64_t transfer_id = 0;
    KvKey key{};
    std::vector<KvSource> sources;    // sorted, disjoint, together every layer of the model
};

struct Hello {
    uint16_t version = kVersion;
    uint64_t model_fingerprint = 0;   // Checkpoint::fingerprint()
    std::string plan_json;            // the plan the job runs (compared by content)
    uint32_t world_size = 1;
    uint32_t pipeline_stages = 1;     // P: batches the coordinator may keep in flight
    uint32_t kv_block_size = 16;
    uint64_t kv_blocks = 0;           // capacity of the smallest KV pool in the job
    uint32_t max_batch_tokens = 0;
    uint32_t max_sequences = 0;
    uint32_t vocab_size = 0;
    std::string job_id;               // e.g. hostname:pid of the leader
    // Independent KV pools: 1 with tensor-parallel attention (every rank holds every sequence's
    // cache), ranks_per_stage with data-parallel attention (each local rank its own sequences).
    // kv_blocks is per domain.
    uint32_t kv_domains = 1;
    uint64_t resume_session = 0;      // non-zero: continue this session after a reconnect
    uint64_t received = 0;            // data frames received in that session so far
    // Prefill/decode disaggregation: where a prefill job's KV exports are served, per KV domain
    // (kv_domains groups in domain order, each covering every layer in order; the ranks holding a
    // domain's sequences, comm/ucx/kv_transfer.h). Empty when the job exports nothing.
    std::vector<KvSource> kv_exports;
};

struct HelloAck {
    uint64_t session_id = 0;
    uint8_t resumed = 0;              // 1: the session continues (see Hello.resume_session)
    uint64_t received = 0;            // data frames the coordinator received in the session
    uint32_t resume_grace_ms = 0;     // how long the coordinator keeps a session whose link broke
};

struct Refuse {
    std::string reason;
};

struct SamplingSpec {
    float temperature = 0;
    int32_t top_k = 0;
    float top_p = 1;
    float min_p = 0;
    float repetition_penalty = 1;
    float frequency_penalty = 0;
    float presence_penalty = 0;
    uint64_t seed = 0;
    uint8_t has_seed = 0;
    uint8_t logprobs = 0;             // top-n logprobs to return (0..20)
};

// The spec's knobs for the request-limits table (common/request_limits.h), which every decoder,
// front end and the sampler check against.
inline limits::SamplingValues sampling_values(const SamplingSpec& s) {
    return {s.temperature, s.top_k, s.top_p, s.min_p, s.repetition_penalty, s.frequency_penalty,
            s.presence_penalty, s.logprobs};
}

// One sequence's part of a step.
struct SeqWork {
    uint64_t seq_id = 0;
    uint32_t start_pos = 0;           // absolute position of tokens[0]
    std::vector<int32_t> tokens;      // prefill chunk or the one decode token
    uint8_t sample = 0;               // 1: this chunk ends the known tokens; sample the next one
    uint8_t is_new = 0;               // 1: first chunk of a sequence: (re)create its sampler state
    SamplingSpec sampling;            // used when is_new
    std::vector<int32_t> prompt;      // when is_new: the full prompt (penalties need it); may be empty
    // Speculative decoding (MTP drafts, shard_node/speculative.h). The last `num_draft` tokens are
    // drafts to verify (needs sample; fewer than tokens.size()): the result holds 1..num_draft+1
    // outputs for this sequence, the accepted drafts and the token after them. `propose` > 0: the
    // last stage runs the MTP module over this chunk (its cache) and, when it samples, drafts that
    // many tokens for the next step (SeqOutput.drafts). Both are at most kMaxDraftTokens.
    uint8_t num_draft = 0;
    uint8_t propose = 0;
    // Disaggregation (never with sample, drafts or each other). kv_export: a prefill job's last chunk
    // of a prompt: after computing it, the ranks that serve the sequence stage rows [0, start_pos +
    // tokens) of their layers under the transfer. kv_import: a decode job's chunk whose KV (positions
    // [start_pos, start_pos + tokens)) is fetched from the prefill job instead of computed; a
    // sequence whose fetch fails anywhere is listed in StepResult.import_failed and the coordinator
    // has those positions computed instead (same KV, so the output is the same either way).
    uint8_t has_export = 0;
    KvExport kv_export;
    uint8_t has_import = 0;
    KvImport kv_import;
};

// Prefix caching and preemption (coordinator/kv_pool.h decides, model/kv_blocks.h executes).
// Cache entry ids are the coordinator's, unique over the session; `domain` is the KV pool (the
// local rank of a data-parallel-attention stage; 0 with tensor-parallel attention).
struct KvPublish {                    // the full block `block_index` of seq becomes cache `entry`
    uint64_t entry = 0;
    uint64_t seq_id = 0;
    uint32_t block_index = 0;
    uint32_t domain = 0;
};
struct KvEvict {                      // the cache drops `entry`
    uint64_t entry = 0;
    uint32_t domain = 0;
};
struct KvStart {                      // seq (re)starts on `domain` from the cached blocks `prefix`
    uint64_t seq_id = 0;
    uint32_t domain = 0;
    std::vector<uint64_t> prefix;     // chain of entries; the first chunk starts at prefix.size() * block size
};
// Applied by every rank before the batch's work, in this order: publish, release (StepBatch),
// preempt, evict, start.
struct KvOps {
    std::vector<KvPublish> publish;
    std::vector<uint64_t> preempt;    // drop the sequence's KV but keep its sampler (it is recomputed)
    std::vector<KvEvict> evict;
    std::vector<KvStart> start;
    bool empty() const { return publish.empty() && preempt.empty() && evict.empty() && start.empty(); }
};

struct StepBatch {
    uint64_t step_id = 0;
    std::vector<SeqWork> seqs;
    std::vector<uint64_t> release;    // sequences whose KV blocks and sampler state to drop first
    KvOps kv;
};

// The KV pool of one domain after a step, as the last stage sees it: the coordinator compares it
// with its own accounting (the two views must agree exactly).
struct KvReport {
    uint32_t domain = 0;
    uint64_t used_blocks = 0;
    uint64_t cached_blocks = 0;
    uint64_t total_blocks = 0;
};

struct SeqOutput {
    uint64_t seq_id = 0;
    int32_t token = -1;               // sampled token (-1 when sample == 0)
    float logprob = 0;
    std::vector<int32_t> top_ids;     // top-n logprobs when asked
    std::vector<float> top_logprobs;
    // Speculative decoding: on the last output of a sequence with SeqWork.propose, the drafts for its
    // next step (at most propose; fewer near the end of the context).
    std::vector<int32_t> drafts;
};

struct StepResult {
    uint64_t step_id = 0;
    uint8_t ok = 1;
    std::string error;                // when !ok: why the step failed (the job stays up)
    // Per SeqWork with sample == 1, in batch order: one output, or with num_draft > 0 one to
    // num_draft + 1 consecutive outputs of that sequence (the tokens it emits, in order).
    std::vector<SeqOutput> outputs;
    double step_seconds = 0;          // time the shard job spent on the step
    std::vector<KvReport> kv;         // one per domain (when ok)
    std::vector<uint64_t> import_failed;  // sequences whose kv_import did not complete (their KV is reserved, not valid)
};

struct Heartbeat {
    uint64_t sequence = 0;
    uint64_t unix_millis = 0;
    uint64_t ack = 0;                 // data frames received in the session so far
};

struct Shutdown {
    std::string reason;
};

// A decoded frame header.
struct FrameHeader {
    uint16_t version = 0;
    MessageType type = MessageType::kHeartbeat;
    uint32_t length = 0;
};
inline constexpr size_t kFrameHeaderSize = 12;

// Encoders append a complete frame (header + payload) to `out`.
void encode(const AuthHello& m, std::string* out);
void encode(const AuthChallenge& m, std::string* out);
void encode(const AuthProof& m, std::string* out);
void encode(const Hello& m, std::string* out);
void encode(const HelloAck& m, std::string* out);
void encode(const Refuse& m, std::string* out);
void encode(const StepBatch& m, std::string* out);
void encode(const StepResult& m, std::string* out);
void encode(const Heartbeat& m, std::string* out);
void encode(const Shutdown& m, std::string* out);

// Parses and validates a 12-byte header (magic, version, known type, length <= kMaxPayload).
StatusOr<FrameHeader> decode_header(const uint8_t* data, size_t size);
// Decoders validate every field of the payload; trailing bytes are an error.
StatusOr<AuthHello> decode_auth_hello(const std::string& payload);
StatusOr<AuthChallenge> decode_auth_challenge(const std::string& payload);
StatusOr<AuthProof> decode_auth_proof(const std::string& payload);
StatusOr<Hello> decode_hello(const std::string& payload);
StatusOr<HelloAck> decode_hello_ack(const std::string& payload);
StatusOr<Refuse> decode_refuse(const std::string& payload);
StatusOr<StepBatch> decode_step_batch(const std::string& payload);
StatusOr<StepResult> decode_step_result(const std::string& payload);
StatusOr<Heartbeat> decode_heartbeat(const std::string& payload);
StatusOr<Shutdown> decode_shutdown(const std::string& payload);

// "Hello", "StepBatch", ... for messages.
const char* message_type_name(MessageType type);

}  // namespace deepshard::control
