// The control fuzz target's committed seeds are exactly what the protocol's encoder writes today
// (no stale file, none missing), and every one of them decodes: seeds left over from an older
// protocol version would be refused by decode_header and leave the fuzzer starting from nothing.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include "tests/control/protocol_samples.h"

namespace deepshard::control {
namespace {

namespace fs = std::filesystem;
constexpr const char* kRegenerate =
    "; regenerate with build/tests/write_control_seeds tests/fuzz/seeds/control";

TEST(ControlFuzzSeeds, CommittedSeedsAreTheEncodersOutput) {
    const fs::path dir = fs::path(DS_TEST_SOURCE_DIR) / "tests/fuzz/seeds/control";
    std::map<std::string, std::string> committed;
    for (const auto& e : fs::directory_iterator(dir)) {
        std::ifstream in(e.path(), std::ios::binary);
        committed[e.path().filename().string()] =
            std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    const auto expected = samples::fuzz_seed_files();
    EXPECT_EQ(committed.size(), expected.size()) << "files in " << dir << kRegenerate;
    for (const auto& [name, bytes] : expected) {
        auto it = committed.find(name);
        ASSERT_NE(it, committed.end()) << name << " is missing" << kRegenerate;
        EXPECT_EQ(it->second, bytes) << name << " is stale" << kRegenerate;
    }
}

TEST(ControlFuzzSeeds, EverySeedFrameDecodes) {
    for (const auto& [name, bytes] : samples::fuzz_seed_files()) {
        if (name.ends_with(".payload")) continue;
        size_t pos = 0, frames = 0;
        while (pos < bytes.size()) {
            auto h = decode_header(reinterpret_cast<const uint8_t*>(bytes.data() + pos), bytes.size() - pos);
            ASSERT_TRUE(h.ok()) << name << ": " << h.status().to_string();
            pos += kFrameHeaderSize;
            ASSERT_LE(h->length, bytes.size() - pos) << name;
            const std::string payload = bytes.substr(pos, h->length);
            Status st = Status::ok_status();
            switch (h->type) {
                case MessageType::kHello: st = decode_hello(payload).status(); break;
                case MessageType::kHelloAck: st = decode_hello_ack(payload).status(); break;
                case MessageType::kRefuse: st = decode_refuse(payload).status(); break;
                case MessageType::kStepBatch: st = decode_step_batch(payload).status(); break;
                case MessageType::kStepResult: st = decode_step_result(payload).status(); break;
                case MessageType::kHeartbeat: st = decode_heartbeat(payload).status(); break;
                case MessageType::kShutdown: st = decode_shutdown(payload).status(); break;
                case MessageType::kAuthHello: st = decode_auth_hello(payload).status(); break;
                case MessageType::kAuthChallenge: st = decode_auth_challenge(payload).status(); break;
                case MessageType::kAuthProof: st = decode_auth_proof(payload).status(); break;
            }
            EXPECT_TRUE(st.ok()) << name << " (" << message_type_name(h->type) << "): " << st.to_string();
            pos += h->length;
            ++frames;
        }
        EXPECT_GE(frames, 1u) << name;
    }
}

}  // namespace
}  // namespace deepshard::control
