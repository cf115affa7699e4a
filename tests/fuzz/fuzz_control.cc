// libFuzzer target: the control protocol's decoders, which see every byte a peer sends to the
// control port, before and after it authenticated. The input is taken two ways: as frames (each
// 12-byte header through decode_header, its payload through the decoder of the announced type,
// until the input runs out), and as one payload for the decoder picked by the first byte, so the
// fuzzer reaches every message type without having to spell a header. Whatever decodes must
// re-encode to a frame that decodes to the same encoding (the codec is a bijection on what it
// accepts). Any sanitizer report or uncaught exception is a finding.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "control/protocol.h"

namespace {

using namespace deepshard::control;

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "fuzz_control: %s\n", what.c_str());
    std::abort();
}

// decode(payload) ok -> encode -> decode_header + decode again -> the same bytes.
template <typename Msg, typename Decode>
void roundtrip(const std::string& payload, Decode decode) {
    auto m = decode(payload);
    if (!m.ok()) return;
    std::string frame;
    encode(*m, &frame);
    if (frame.size() < kFrameHeaderSize) fail("short frame");
    auto h = decode_header(reinterpret_cast<const uint8_t*>(frame.data()), kFrameHeaderSize);
    if (!h.ok()) fail("re-encoded header does not decode: " + h.status().to_string());
    if (h->length != frame.size() - kFrameHeaderSize) fail("re-encoded length mismatch");
    auto again = decode(frame.substr(kFrameHeaderSize));
    if (!again.ok()) fail("re-encoded payload does not decode: " + again.status().to_string());
    std::string frame2;
    encode(*again, &frame2);
    if (frame2 != frame) fail("decode/encode is not stable");
}

void decode_as(MessageType type, const std::string& payload) {
    switch (type) {
        case MessageType::kHello: return roundtrip<Hello>(payload, decode_hello);
        case MessageType::kHelloAck: return roundtrip<HelloAck>(payload, decode_hello_ack);
        case MessageType::kRefuse: return roundtrip<Refuse>(payload, decode_refuse);
        case MessageType::kStepBatch: return roundtrip<StepBatch>(payload, decode_step_batch);
        case MessageType::kStepResult: return roundtrip<StepResult>(payload, decode_step_result);
        case MessageType::kHeartbeat: return roundtrip<Heartbeat>(payload, decode_heartbeat);
        case MessageType::kShutdown: return roundtrip<Shutdown>(payload, decode_shutdown);
        case MessageType::kAuthHello: return roundtrip<AuthHello>(payload, decode_auth_hello);
        case MessageType::kAuthChallenge: return roundtrip<AuthChallenge>(payload, decode_auth_challenge);
        case MessageType::kAuthProof: return roundtrip<AuthProof>(payload, decode_auth_proof);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    // As one payload of the type the first byte picks.
    // Types are numbered 1..kMaxMessageType; the seed writer (tests/control/protocol_samples.cc)
    // uses the same mapping.
    decode_as(static_cast<MessageType>(1 + data[0] % kMaxMessageType),
              std::string(reinterpret_cast<const char*>(data + 1), size - 1));
    // As a stream of frames, the way a connection reads them.
    size_t pos = 0;
    while (size - pos >= kFrameHeaderSize) {
        auto h = decode_header(data + pos, kFrameHeaderSize);
        if (!h.ok()) break;
        pos += kFrameHeaderSize;
        if (h->length > size - pos) break;  // a connection would wait for the rest (bounded by kMaxPayload)
        decode_as(h->type, std::string(reinterpret_cast<const char*>(data + pos), h->length));
        pos += h->length;
    }
    return 0;
}
