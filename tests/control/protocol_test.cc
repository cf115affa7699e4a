// Control-protocol codec: round trips, and every kind of malformed frame is a kProtocol error
// naming the field (truncation at every byte, bad magic/version/type, oversized counts, trailing
// bytes, out-of-range values).
#include <gtest/gtest.h>

#include <cstring>
#include <random>

#include "control/auth.h"
#include "control/protocol.h"
#include "tests/control/protocol_samples.h"

namespace deepshard::control {
namespace {

// Splits an encoded frame into a checked header and its payload.
std::string payload_of(const std::string& frame, MessageType expect) {
    auto h = decode_header(reinterpret_cast<const uint8_t*>(frame.data()), frame.size());
    EXPECT_TRUE(h.ok()) << h.status().to_string();
    EXPECT_EQ(h->type, expect);
    EXPECT_EQ(h->length, frame.size() - kFrameHeaderSize);
    return frame.substr(kFrameHeaderSize);
}

StepBatch sample_batch() {
    return samples::step_batch();
}

StepResult sample_result() {
    return samples::step_result();
}

TEST(ProtocolTest, RoundTripsEveryMessage) {
    const Hello h = samples::hello();
    std::string f;
    encode(h, &f);
    auto h2 = decode_hello(payload_of(f, MessageType::kHello));
    ASSERT_TRUE(h2.ok()) << h2.status().to_string();
    EXPECT_EQ(h2->model_fingerprint, h.model_fingerprint);
    EXPECT_EQ(h2->plan_json, h.plan_json);
    EXPECT_EQ(h2->pipeline_stages, 2u);
    EXPECT_EQ(h2->job_id, "host:1");
    EXPECT_EQ(h2->kv_domains, 2u);
    ASSERT_EQ(h2->kv_exports.size(), 4u);
    EXPECT_EQ(h2->kv_exports[2].endpoint, "10.0.0.2:4000");
    EXPECT_EQ(h2->kv_exports[3].layer_end, 4u);

    f.clear();
    StepBatch b = sample_batch();
    encode(b, &f);
    auto b2 = decode_step_batch(payload_of(f, MessageType::kStepBatch));
    ASSERT_TRUE(b2.ok()) << b2.status().to_string();
    EXPECT_EQ(b2->step_id, 42u);
    EXPECT_EQ(b2->release, b.release);
    ASSERT_EQ(b2->seqs.size(), 5u);
    // Disaggregation: the export and the import with its sources.
    EXPECT_EQ(b2->seqs[3].has_export, 1);
    EXPECT_EQ(b2->seqs[3].kv_export.transfer_id, 3u);
    EXPECT_EQ(b2->seqs[3].kv_export.key, b.seqs[3].kv_export.key);
    EXPECT_EQ(b2->seqs[3].has_import, 0);
    EXPECT_EQ(b2->seqs[4].has_import, 1);
    EXPECT_EQ(b2->seqs[4].kv_import.key, b.seqs[4].kv_import.key);
    ASSERT_EQ(b2->seqs[4].kv_import.sources.size(), 2u);
    EXPECT_EQ(b2->seqs[4].kv_import.sources[1].layer_begin, 3u);
    EXPECT_EQ(b2->seqs[4].kv_import.sources[1].endpoint, "[fe80::1]:4001");
    EXPECT_EQ(b2->seqs[0].has_export + b2->seqs[0].has_import, 0);
    EXPECT_EQ(b2->seqs[0].tokens, b.seqs[0].tokens);
    EXPECT_EQ(b2->seqs[0].prompt, b.seqs[0].prompt);
    EXPECT_EQ(b2->seqs[0].sampling.seed, 1234u);
    EXPECT_FLOAT_EQ(b2->seqs[0].sampling.top_p, 0.9f);
    EXPECT_EQ(b2->seqs[1].start_pos, 17u);
    EXPECT_EQ(b2->seqs[1].is_new, 0);
    EXPECT_EQ(b2->seqs[1].num_draft, 2);
    EXPECT_EQ(b2->seqs[1].propose, 2);
    EXPECT_FLOAT_EQ(b2->seqs[0].sampling.presence_penalty, -0.5f);
    ASSERT_EQ(b2->kv.publish.size(), 1u);
    EXPECT_EQ(b2->kv.publish[0].entry, 500u);
    EXPECT_EQ(b2->kv.publish[0].block_index, 3u);
    EXPECT_EQ(b2->kv.publish[0].domain, 1u);
    EXPECT_EQ(b2->kv.preempt, (std::vector<uint64_t>{14}));
    ASSERT_EQ(b2->kv.evict.size(), 2u);
    EXPECT_EQ(b2->kv.evict[1].entry, 401u);
    ASSERT_EQ(b2->kv.start.size(), 2u);
    EXPECT_EQ(b2->kv.start[0].prefix, (std::vector<uint64_t>{300, 301}));
    EXPECT_EQ(b2->kv.start[0].domain, 1u);
    EXPECT_TRUE(b2->kv.start[1].prefix.empty());

    f.clear();
    encode(sample_result(), &f);
    auto r2 = decode_step_result(payload_of(f, MessageType::kStepResult));
    ASSERT_TRUE(r2.ok()) << r2.status().to_string();
    ASSERT_EQ(r2->outputs.size(), 3u);
    EXPECT_EQ(r2->outputs[0].top_ids, (std::vector<int32_t>{3, 4}));
    EXPECT_EQ(r2->outputs[0].drafts, (std::vector<int32_t>{8, 9}));
    EXPECT_EQ(r2->outputs[2].seq_id, 12u);
    EXPECT_EQ(r2->outputs[2].drafts, (std::vector<int32_t>{6, 7}));
    EXPECT_DOUBLE_EQ(r2->step_seconds, 0.25);
    ASSERT_EQ(r2->kv.size(), 2u);
    EXPECT_EQ(r2->kv[0].cached_blocks, 4u);
    EXPECT_EQ(r2->kv[1].domain, 1u);
    EXPECT_EQ(r2->import_failed, (std::vector<uint64_t>{16}));

    f.clear();
    encode(Refuse{"nope"}, &f);
    EXPECT_EQ(decode_refuse(payload_of(f, MessageType::kRefuse))->reason, "nope");
    f.clear();
    encode(Shutdown{"bye"}, &f);
    EXPECT_EQ(decode_shutdown(payload_of(f, MessageType::kShutdown))->reason, "bye");
    f.clear();
    encode(HelloAck{5}, &f);
    EXPECT_EQ(decode_hello_ack(payload_of(f, MessageType::kHelloAck))->session_id, 5u);
    f.clear();
    encode(Heartbeat{1, 2}, &f);
    EXPECT_EQ(decode_heartbeat(payload_of(f, MessageType::kHeartbeat))->unix_millis, 2u);
}

TEST(ProtocolTest, RoundTripsTheHandshakeAndResumeFields) {
    std::string f;
    AuthHello a;
    a.client_nonce = random_nonce();
    encode(a, &f);
    auto a2 = decode_auth_hello(payload_of(f, MessageType::kAuthHello));
    ASSERT_TRUE(a2.ok()) << a2.status().to_string();
    EXPECT_EQ(a2->client_nonce, a.client_nonce);
    EXPECT_LE(f.size() - kFrameHeaderSize, kMaxHandshakePayload);

    f.clear();
    AuthChallenge c;
    c.server_nonce = random_nonce();
    c.server_mac = auth_mac("k-k-k-k-k-k-k-k-k-k", AuthRole::kCoordinator, a.client_nonce, c.server_nonce, "");
    encode(c, &f);
    auto c2 = decode_auth_challenge(payload_of(f, MessageType::kAuthChallenge));
    ASSERT_TRUE(c2.ok());
    EXPECT_EQ(c2->server_nonce, c.server_nonce);
    EXPECT_EQ(c2->server_mac, c.server_mac);
    EXPECT_LE(f.size() - kFrameHeaderSize, kMaxHandshakePayload);

    f.clear();
    AuthProof p;
    p.client_mac = c.server_mac;
    encode(p, &f);
    EXPECT_EQ(decode_auth_proof(payload_of(f, MessageType::kAuthProof))->client_mac, p.client_mac);
    EXPECT_FALSE(decode_auth_proof(f.substr(kFrameHeaderSize, 31)).ok());
    EXPECT_FALSE(decode_auth_proof(f.substr(kFrameHeaderSize) + "x").ok());

    f.clear();
    Hello h;
    h.kv_blocks = 10;
    h.vocab_size = 100;
    h.resume_session = 9;
    h.received = 123;
    encode(h, &f);
    auto h2 = decode_hello(payload_of(f, MessageType::kHello));
    ASSERT_TRUE(h2.ok()) << h2.status().to_string();
    EXPECT_EQ(h2->resume_session, 9u);
    EXPECT_EQ(h2->received, 123u);

    f.clear();
    HelloAck ack;
    ack.session_id = 9;
    ack.resumed = 1;
    ack.received = 77;
    ack.resume_grace_ms = 5000;
    encode(ack, &f);
    auto ack2 = decode_hello_ack(payload_of(f, MessageType::kHelloAck));
    ASSERT_TRUE(ack2.ok());
    EXPECT_EQ(ack2->resumed, 1);
    EXPECT_EQ(ack2->received, 77u);
    EXPECT_EQ(ack2->resume_grace_ms, 5000u);

    f.clear();
    Heartbeat hb;
    hb.ack = 41;
    encode(hb, &f);
    EXPECT_EQ(decode_heartbeat(payload_of(f, MessageType::kHeartbeat))->ack, 41u);
}

TEST(ProtocolTest, HeaderRejectsBadMagicVersionTypeAndLength) {
    std::string f;
    encode(Heartbeat{}, &f);
    auto bytes = [&](const std::string& s) { return reinterpret_cast<const uint8_t*>(s.data()); };
    auto bad = f;
    bad[0] = 'X';
    auto s = decode_header(bytes(bad), bad.size());
    EXPECT_EQ(s.status().code(), StatusCode::kProtocol);
    EXPECT_NE(s.status().message().find("magic"), std::string::npos);
    bad = f;
    bad[4] = 9;
    s = decode_header(bytes(bad), bad.size());
    EXPECT_NE(s.status().message().find("version"), std::string::npos);
    bad = f;
    bad[6] = 77;
    s = decode_header(bytes(bad), bad.size());
    EXPECT_NE(s.status().message().find("type"), std::string::npos);
    bad = f;
    uint32_t huge = kMaxPayload + 1;
    std::memcpy(bad.data() + 8, &huge, 4);
    s = decode_header(bytes(bad), bad.size());
    EXPECT_NE(s.status().message().find("length"), std::string::npos);
    s = decode_header(bytes(f), 11);
    EXPECT_NE(s.status().message().find("truncated"), std::string::npos);
}

TEST(ProtocolTest, EveryTruncationAndTrailingByteIsRejected) {
    std::string f;
    encode(sample_batch(), &f);
    const std::string p = f.substr(kFrameHeaderSize);
    for (size_t n = 0; n < p.size(); ++n) {
        auto r = decode_step_batch(p.substr(0, n));
        ASSERT_FALSE(r.ok()) << "prefix " << n;
        EXPECT_EQ(r.status().code(), StatusCode::kProtocol);
        EXPECT_NE(r.status().message().find("StepBatch"), std::string::npos) << r.status().message();
    }
    auto r = decode_step_batch(p + "x");
    EXPECT_NE(r.status().message().find("trailing"), std::string::npos);

    f.clear();
    encode(sample_result(), &f);
    const std::string q = f.substr(kFrameHeaderSize);
    for (size_t n = 0; n < q.size(); ++n) {
        EXPECT_FALSE(decode_step_result(q.substr(0, n)).ok()) << "prefix " << n;
    }
    EXPECT_FALSE(decode_step_result(q + std::string(4, '\0')).ok());
}

TEST(ProtocolTest, OversizedCountsNameTheField) {
    // step_id, release count = 0xffffffff.
    std::string p(8, '\0');
    p += std::string("\xff\xff\xff\xff", 4);
    auto r = decode_step_batch(p);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.status().message().find("step_batch.release"), std::string::npos) << r.status().message();
    // A plausible count but larger than the bytes that follow.
    p = std::string(8, '\0') + std::string(4, '\0');
    uint32_t n = 1000;
    p.append(reinterpret_cast<const char*>(&n), 4);
    r = decode_step_batch(p);
    EXPECT_NE(r.status().message().find("step_batch.seqs"), std::string::npos) << r.status().message();
}

TEST(ProtocolTest, OutOfRangeValuesNameTheField) {
    auto check = [](StepBatch b, const std::string& field) {
        std::string f;
        encode(b, &f);
        auto r = decode_step_batch(f.substr(kFrameHeaderSize));
        ASSERT_FALSE(r.ok()) << field;
        EXPECT_NE(r.status().message().find(field), std::string::npos) << r.status().message();
    };
    StepBatch b = sample_batch();
    b.seqs[0].sampling.top_p = 1.5f;
    check(b, "top_p");
    b = sample_batch();
    b.seqs[0].sampling.temperature = -1;
    check(b, "temperature");
    b = sample_batch();
    b.seqs[0].sampling.logprobs = 50;
    check(b, "logprobs");
    b = sample_batch();
    b.seqs[1].sample = 3;
    check(b, "seq.sample");
    b = sample_batch();
    b.seqs[1].tokens = {};
    check(b, "seq.tokens");
    b = sample_batch();
    b.seqs[1].tokens = {-4};
    check(b, "negative");
    b = sample_batch();
    b.seqs[1].seq_id = 11;
    check(b, "twice");
    b = sample_batch();
    b.kv.start[0].prefix.clear();  // seq 13 is new at position 8 without a cached prefix
    check(b, "no cached prefix");
    b = sample_batch();
    b.kv.evict[0].domain = 70000;
    check(b, "kv.evict.domain");
    b = sample_batch();
    b.kv.start[1].domain = 1u << 20;
    check(b, "kv.start.domain");
    // Disaggregation: sources must cover the layers from 0 in order; transfers never sample.
    b = sample_batch();
    b.seqs[4].kv_import.sources[1].layer_begin = 2;  // overlaps [0, 3)
    check(b, "without gaps or overlaps");
    b = sample_batch();
    b.seqs[4].kv_import.sources.clear();
    check(b, "seq.kv_import.sources is empty");
    b = sample_batch();
    b.seqs[4].kv_import.sources[0].endpoint.clear();
    check(b, "empty endpoint");
    b = sample_batch();
    b.seqs[4].kv_import.sources[0].endpoint.assign(300, 'x');
    check(b, "kv_import.sources");
    b = sample_batch();
    b.seqs[3].sample = 1;
    check(b, "neither samples nor drafts");
    b = sample_batch();
    b.seqs[3].has_import = 1;
    b.seqs[3].kv_import = b.seqs[4].kv_import;
    check(b, "neither samples nor drafts");

    Hello h;
    h.pipeline_stages = 3;
    h.world_size = 2;
    h.kv_blocks = 1;
    h.vocab_size = 1;
    std::string f;
    encode(h, &f);
    auto hr = decode_hello(f.substr(kFrameHeaderSize));
    EXPECT_NE(hr.status().message().find("hello.pipeline_stages"), std::string::npos);
    h.pipeline_stages = 1;
    h.kv_domains = 3;  // more KV pools than ranks
    f.clear();
    encode(h, &f);
    hr = decode_hello(f.substr(kFrameHeaderSize));
    EXPECT_NE(hr.status().message().find("hello.kv_domains"), std::string::npos) << hr.status().message();
    // A prefill job's exports: the second KV domain must cover the same layers as the first.
    Hello pf = samples::hello();
    pf.kv_exports[3].layer_end = 5;
    f.clear();
    encode(pf, &f);
    hr = decode_hello(f.substr(kFrameHeaderSize));
    EXPECT_NE(hr.status().message().find("hello.kv_exports must cover the layers"), std::string::npos)
        << hr.status().message();
    pf = samples::hello();
    pf.kv_exports.pop_back();  // 3 sources for 2 domains
    f.clear();
    encode(pf, &f);
    hr = decode_hello(f.substr(kFrameHeaderSize));
    EXPECT_NE(hr.status().message().find("3 sources for 2 KV domains"), std::string::npos) << hr.status().message();
    StepResult res = sample_result();
    res.kv[0].used_blocks = 65;  // more than the pool
    f.clear();
    encode(res, &f);
    auto rr = decode_step_result(f.substr(kFrameHeaderSize));
    EXPECT_NE(rr.status().message().find("kv report"), std::string::npos) << rr.status().message();
}

TEST(ProtocolTest, RandomGarbageNeverCrashes) {
    std::mt19937 rng(7);
    std::string f;
    encode(sample_batch(), &f);
    const std::string p = f.substr(kFrameHeaderSize);
    for (int i = 0; i < 5000; ++i) {
        std::string q = p;
        const int flips = 1 + static_cast<int>(rng() % 4);
        for (int k = 0; k < flips; ++k) q[rng() % q.size()] = static_cast<char>(rng());
        (void)decode_step_batch(q).ok();
        (void)decode_step_result(q).ok();
        (void)decode_hello(q).ok();
    }
}

}  // namespace
}  // namespace deepshard::control
