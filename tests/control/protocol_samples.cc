#include "tests/control/protocol_samples.h"

namespace deepshard::control::samples {
namespace {

template <size_t N>
std::array<uint8_t, N> counting_bytes(uint8_t first) {
    std::array<uint8_t, N> a{};
    for (size_t i = 0; i < N; ++i) a[i] = static_cast<uint8_t>(first + i);
    return a;
}

template <typename Msg>
std::string frame(const Msg& m) {
    std::string f;
    encode(m, &f);
    return f;
}

}  // namespace

Hello hello() {
    Hello h;
    h.model_fingerprint = 0xdeadbeefcafef00dull;
    h.plan_json = R"({"stages":2})";
    h.world_size = 4;
    h.pipeline_stages = 2;
    h.kv_blocks = 1000;
    h.max_batch_tokens = 512;
    h.max_sequences = 64;
    h.vocab_size = 1024;
    h.job_id = "host:1";
    h.kv_domains = 2;
    h.resume_session = 9;
    h.received = 123;
    // A prefill job's exports: per KV domain, its two stages' layers and where they are served.
    h.kv_exports = {{.layer_begin = 0, .layer_end = 2, .endpoint = "10.0.0.1:4000"},
                    {.layer_begin = 2, .layer_end = 4, .endpoint = "10.0.0.3:4000"},
                    {.layer_begin = 0, .layer_end = 2, .endpoint = "10.0.0.2:4000"},
                    {.layer_begin = 2, .layer_end = 4, .endpoint = "10.0.0.4:4000"}};
    return h;
}

HelloAck hello_ack() {
    HelloAck a;
    a.session_id = 9;
    a.resumed = 1;
    a.received = 77;
    a.resume_grace_ms = 5000;
    return a;
}

StepBatch step_batch() {
    StepBatch b;
    b.step_id = 42;
    b.release = {7, 9};
    SeqWork a;  // a new sampled sequence with every sampling knob and a prompt
    a.seq_id = 11;
    a.start_pos = 0;
    a.tokens = {0, 5, 6, 7};
    a.sample = 1;
    a.is_new = 1;
    a.sampling.temperature = 0.7f;
    a.sampling.top_k = 40;
    a.sampling.top_p = 0.9f;
    a.sampling.min_p = 0.05f;
    a.sampling.repetition_penalty = 1.1f;
    a.sampling.frequency_penalty = 0.5f;
    a.sampling.presence_penalty = -0.5f;
    a.sampling.seed = 1234;
    a.sampling.has_seed = 1;
    a.sampling.logprobs = 3;
    a.prompt = {0, 5, 6, 7};
    a.propose = 2;
    SeqWork d;  // a decode step verifying two MTP drafts and asking for two more
    d.seq_id = 12;
    d.start_pos = 17;
    d.tokens = {99, 100, 101};
    d.sample = 1;
    d.num_draft = 2;
    d.propose = 2;
    SeqWork f;  // a new sequence starting from two cached blocks (start_pos 8 with blocks of 4)
    f.seq_id = 13;
    f.start_pos = 8;
    f.tokens = {4, 4};
    f.is_new = 1;
    f.prompt = {1, 2, 3, 4, 5, 6, 7, 8, 4, 4};
    SeqWork e;  // a prefill leg's last chunk: stage the KV of positions [0, 6) for export
    e.seq_id = 15;
    e.start_pos = 4;
    e.tokens = {9, 9};
    e.has_export = 1;
    e.kv_export.transfer_id = 3;
    e.kv_export.key = counting_bytes<16>(7);
    SeqWork m;  // a decode job's import of positions [0, 8) from two exporters
    m.seq_id = 16;
    m.tokens = {1, 2, 3, 4, 5, 6, 7, 8};
    m.is_new = 1;
    m.prompt = {1, 2, 3, 4, 5, 6, 7, 8, 9};
    m.has_import = 1;
    m.kv_import.transfer_id = 4;
    m.kv_import.key = counting_bytes<16>(9);
    m.kv_import.sources = {{.layer_begin = 0, .layer_end = 3, .endpoint = "10.0.0.1:4000"},
                           {.layer_begin = 3, .layer_end = 4, .endpoint = "[fe80::1]:4001"}};
    b.seqs = {a, d, f, e, m};
    b.kv.publish = {{.entry = 500, .seq_id = 12, .block_index = 3, .domain = 1}};
    b.kv.preempt = {14};
    b.kv.evict = {{.entry = 400, .domain = 0}, {.entry = 401, .domain = 1}};
    b.kv.start = {{.seq_id = 13, .domain = 1, .prefix = {300, 301}}, {.seq_id = 11, .domain = 0, .prefix = {}}};
    return b;
}

StepResult step_result() {
    StepResult r;
    r.step_id = 42;
    r.step_seconds = 0.25;
    SeqOutput o;
    o.seq_id = 11;
    o.token = 3;
    o.logprob = -0.5f;
    o.top_ids = {3, 4};
    o.top_logprobs = {-0.5f, -1.5f};
    o.drafts = {8, 9};
    SeqOutput accepted;  // two outputs of one sequence: an accepted draft and the token after it
    accepted.seq_id = 12;
    accepted.token = 100;
    SeqOutput next = accepted;
    next.token = 5;
    next.drafts = {6, 7};
    r.outputs = {o, accepted, next};
    r.kv = {{.domain = 0, .used_blocks = 10, .cached_blocks = 4, .total_blocks = 64},
            {.domain = 1, .used_blocks = 3, .cached_blocks = 0, .total_blocks = 64}};
    r.import_failed = {16};
    return r;
}

Heartbeat heartbeat() {
    return Heartbeat{.sequence = 1, .unix_millis = 1700000000000ull, .ack = 41};
}

AuthHello auth_hello() {
    return AuthHello{.client_nonce = counting_bytes<kNonceBytes>(1)};
}

AuthChallenge auth_challenge() {
    return AuthChallenge{.server_nonce = counting_bytes<kNonceBytes>(64), .server_mac = counting_bytes<kMacBytes>(128)};
}

AuthProof auth_proof() {
    return AuthProof{.client_mac = counting_bytes<kMacBytes>(192)};
}

uint8_t fuzz_selector(MessageType type) {
    // fuzz_control.cc's kTypes lists the types in protocol order, 1-based.
    return static_cast<uint8_t>(static_cast<uint16_t>(type) - 1);
}

std::vector<std::pair<std::string, std::string>> fuzz_seed_files() {
    const std::vector<std::pair<std::string, std::string>> frames = {
        {"auth_hello", frame(auth_hello())},
        {"auth_challenge", frame(auth_challenge())},
        {"auth_proof", frame(auth_proof())},
        {"hello", frame(hello())},
        {"hello_ack", frame(hello_ack())},
        {"refuse", frame(Refuse{"model fingerprint differs"})},
        {"step_batch", frame(step_batch())},
        {"step_result", frame(step_result())},
        {"heartbeat", frame(heartbeat())},
        {"shutdown", frame(Shutdown{"bye"})},
    };
    std::vector<std::pair<std::string, std::string>> files;
    std::string session;
    for (const auto& [name, f] : frames) {
        files.emplace_back(name + ".frame", f);
        auto h = decode_header(reinterpret_cast<const uint8_t*>(f.data()), kFrameHeaderSize);
        const char selector = static_cast<char>(fuzz_selector(h->type));
        files.emplace_back(name + ".payload", selector + f.substr(kFrameHeaderSize));
        session += f;
    }
    files.emplace_back("session.frames", session);
    return files;
}

}  // namespace deepshard::control::samples
