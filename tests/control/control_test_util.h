// Shared pieces of the control transport tests: a listener that records what the server reports,
// and hand-written frames over a raw socket (what an attacker or a broken peer sends).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <string>
#include <utility>  // Boost 1.74 asio/awaitable.hpp uses std::exchange without it
#include <vector>

#include <boost/asio.hpp>

#include "control/auth.h"
#include "control/control_server.h"
#include "control/protocol.h"

namespace deepshard::control::test {

using namespace std::chrono_literals;
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

inline const std::string kSecret = "0123456789abcdef0123456789abcdef-test-secret";

class RecordingListener : public ControlListener {
public:
    void on_registered(const LeaderInfo& l) override {
        std::lock_guard lock(mu_);
        registered_.push_back(l);
        cv_.notify_all();
    }
    void on_result(uint64_t, StepResult r) override {
        std::lock_guard lock(mu_);
        results_.push_back(std::move(r));
        cv_.notify_all();
    }
    void on_lost(uint64_t session, const Status& s) override {
        std::lock_guard lock(mu_);
        lost_.emplace_back(session, s);
        cv_.notify_all();
    }
    void on_link(uint64_t session, bool connected, const Status& why) override {
        std::lock_guard lock(mu_);
        links_.push_back({session, connected, why});
        cv_.notify_all();
    }
    template <typename P>
    bool wait(P pred, std::chrono::milliseconds d = 10s) {
        std::unique_lock lock(mu_);
        return cv_.wait_for(lock, d, [&] { return pred(); });
    }
    size_t registered() {
        std::lock_guard lock(mu_);
        return registered_.size();
    }
    size_t lost() {
        std::lock_guard lock(mu_);
        return lost_.size();
    }
    struct Link {
        uint64_t session;
        bool connected;
        Status why;
    };
    std::mutex mu_;
    std::condition_variable cv_;
    std::vector<LeaderInfo> registered_;
    std::vector<StepResult> results_;
    std::vector<std::pair<uint64_t, Status>> lost_;
    std::vector<Link> links_;
};

inline Hello test_hello() {
    Hello h;
    h.model_fingerprint = 77;
    h.plan_json = R"({"mode":"tp","stages":[1,2]})";
    h.world_size = 2;
    h.pipeline_stages = 2;
    h.kv_blocks = 100;
    h.vocab_size = 1000;
    h.job_id = "test";
    return h;
}

inline ControlServerOptions test_server_options() {
    ControlServerOptions o;
    o.listen = "127.0.0.1:0";
    o.model_fingerprint = 77;
    o.plan_json = R"({"stages": [1, 2], "mode": "tp"})";
    o.secret = kSecret;
    o.handshake_timeout = 2s;
    o.resume_grace = 0ms;
    return o;
}

// A raw TCP client (plain POSIX socket, every read bounded by poll()), for hand-written frames.
class RawPeer {
public:
    explicit RawPeer(uint16_t port, std::chrono::milliseconds timeout = 5s) : timeout_(timeout) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in a{};
        a.sin_family = AF_INET;
        a.sin_port = htons(port);
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
    }
    ~RawPeer() {
        if (fd_ >= 0) ::close(fd_);
    }
    RawPeer(const RawPeer&) = delete;
    RawPeer& operator=(const RawPeer&) = delete;
    bool connected() const { return connected_; }

    void send(const std::string& bytes) {
        size_t done = 0;
        while (done < bytes.size()) {
            const ssize_t n = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
            if (n <= 0) return;  // the server may close while we write; the reads tell
            done += static_cast<size_t>(n);
        }
    }
    // Reads exactly n bytes; false on EOF / error / timeout.
    bool read_exact(void* buf, size_t n) {
        auto* p = static_cast<char*>(buf);
        size_t got = 0;
        while (got < n) {
            const int r = wait_readable();
            if (r <= 0) return false;
            const ssize_t k = ::recv(fd_, p + got, n - got, 0);
            if (k <= 0) return false;
            got += static_cast<size_t>(k);
        }
        return true;
    }
    // Reads one frame; false on EOF / error / timeout.
    bool read_frame(FrameHeader* h, std::string* payload) {
        uint8_t hb[kFrameHeaderSize];
        if (!read_exact(hb, sizeof(hb))) return false;
        auto dh = decode_header(hb, sizeof(hb));
        if (!dh.ok()) return false;
        *h = *dh;
        payload->assign(h->length, '\0');
        return read_exact(payload->data(), payload->size());
    }
    // True when the server closed the connection (EOF or reset) within the timeout, discarding
    // whatever frames come before; false on timeout.
    bool closed_by_peer() {
        char buf[4096];
        for (;;) {
            const int r = wait_readable();
            if (r <= 0) return false;
            const ssize_t k = ::recv(fd_, buf, sizeof(buf), 0);
            if (k <= 0) return true;
        }
    }
    // Authenticates by hand (as a leader holding `secret` would, without checking the server).
    bool authenticate(const std::string& secret) {
        AuthHello a;
        a.client_nonce = random_nonce();
        std::string f;
        encode(a, &f);
        send(f);
        FrameHeader h;
        std::string p;
        if (!read_frame(&h, &p) || h.type != MessageType::kAuthChallenge) return false;
        auto ch = decode_auth_challenge(p);
        if (!ch.ok()) return false;
        AuthProof proof;
        proof.client_mac = auth_mac(secret, AuthRole::kLeader, a.client_nonce, ch->server_nonce, "");
        f.clear();
        encode(proof, &f);
        send(f);
        return true;
    }

private:
    int wait_readable() {
        pollfd pfd{fd_, POLLIN, 0};
        return ::poll(&pfd, 1, static_cast<int>(timeout_.count()));
    }
    int fd_ = -1;
    bool connected_ = false;
    std::chrono::milliseconds timeout_;
};

// A 12-byte frame header announcing `length` bytes of `type`.
inline std::string raw_header(MessageType type, uint32_t length) {
    std::string h(kFrameHeaderSize, '\0');
    const uint32_t magic = kMagic;
    const uint16_t version = kVersion;
    const uint16_t t = static_cast<uint16_t>(type);
    std::memcpy(h.data(), &magic, 4);
    std::memcpy(h.data() + 4, &version, 2);
    std::memcpy(h.data() + 6, &t, 2);
    std::memcpy(h.data() + 8, &length, 4);
    return h;
}

// Peak resident memory of this process (VmHWM), in bytes.
inline uint64_t peak_rss_bytes(const std::string& pid = "self") {
    std::ifstream in("/proc/" + pid + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    }
    return 0;
}

}  // namespace deepshard::control::test
