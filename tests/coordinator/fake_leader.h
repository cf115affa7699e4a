// Test helper: a shard job's leader without a model (the real LeaderClient), for tests of the
// coordinator's control plane.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "control/leader_client.h"

namespace deepshard::testing_util {

using namespace std::chrono_literals;

// A shard job's leader that answers every step with token (seq_id + position) % 97 + 3, in order.
// `stall`: receives steps and never answers. `hold_first`: answers step 1 only after step 2 arrived,
// then step 2 `gap` later (so that the engine works on step 1's result when step 2's arrives).
class FakeLeader {
public:
    struct Options {
        bool stall = false;
        bool hold_first = false;
        std::chrono::milliseconds gap{100};
        std::chrono::milliseconds delay{0};  // before each answer
        uint32_t stages = 2;
    };
    FakeLeader(uint16_t port, const std::string& secret, uint64_t fingerprint, Options o) : o_(o) {
        control::LeaderOptions lo;
        lo.coordinator = "127.0.0.1:" + std::to_string(port);
        lo.secret = secret;
        lo.connect_timeout = 10s;
        control::Hello h;
        h.model_fingerprint = fingerprint;
        h.world_size = o.stages;
        h.pipeline_stages = o.stages;
        h.kv_blocks = 1000;
        h.kv_block_size = 16;
        h.max_batch_tokens = 2048;
        h.max_sequences = 64;
        h.vocab_size = 1000;
        h.job_id = "fake";
        auto c = control::LeaderClient::connect(lo, h);
        if (!c.ok()) {
            error_ = c.status().to_string();
            return;
        }
        client_ = std::move(c).value();
        thread_ = std::thread([this] { run(); });
    }
    ~FakeLeader() {
        stop_ = true;
        if (thread_.joinable()) thread_.join();
    }
    const std::string& error() const { return error_; }
    control::LeaderClient& client() { return *client_; }
    int steps_received() const { return received_.load(); }
    // Distinct sequences the steps so far carried.
    size_t seqs_seen() const {
        std::lock_guard lock(mu_);
        return seen_.size();
    }
    // Why next_batch() stopped the answering thread (kOk while it runs): kCancelled when the
    // coordinator sent Shutdown, kUnavailable when the link was lost.
    StatusCode ended_with() const { return ended_with_.load(); }

private:
    control::StepResult answer(const control::StepBatch& b) {
        control::StepResult r;
        r.step_id = b.step_id;
        for (const auto& w : b.seqs) {
            if (!w.sample) continue;
            const uint32_t pos = w.start_pos + static_cast<uint32_t>(w.tokens.size());
            r.outputs.push_back({w.seq_id, static_cast<int32_t>((w.seq_id + pos) % 97 + 3), -0.25f, {}, {}});
        }
        return r;
    }
    void run() {
        std::vector<control::StepBatch> held;
        while (!stop_) {
            auto b = client_->next_batch(50ms);
            if (!b.ok()) {
                if (b.status().code() == StatusCode::kDeadlineExceeded) continue;
                ended_with_ = b.status().code();  // shut down or lost
                return;
            }
            received_++;
            {
                std::lock_guard lock(mu_);
                for (const auto& w : b->seqs) seen_.insert(w.seq_id);
            }
            if (o_.stall) continue;
            if (o_.hold_first && held.size() < 2) {
                held.push_back(*b);
                if (held.size() < 2) continue;
                (void)client_->send_result(answer(held[0]));
                std::this_thread::sleep_for(o_.gap);
                (void)client_->send_result(answer(held[1]));
                continue;
            }
            if (o_.delay.count() > 0) std::this_thread::sleep_for(o_.delay);
            (void)client_->send_result(answer(*b));
        }
    }
    Options o_;
    std::string error_;
    std::unique_ptr<control::LeaderClient> client_;
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<int> received_{0};
    mutable std::mutex mu_;
    std::set<uint64_t> seen_;
    std::atomic<StatusCode> ended_with_{StatusCode::kOk};
};

}  // namespace deepshard::testing_util
