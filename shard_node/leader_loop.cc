#include "shard_node/leader_loop.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>

#include "control/leader_client.h"
#include "common/env.h"
#include "common/logging.h"

namespace deepshard::shard_node {

namespace ctl = deepshard::control;
using std::chrono::milliseconds;

Status run_leader(const LeaderConfig& config, const model::Checkpoint& checkpoint, Pipeline* pipeline) {
    const Layout& layout = pipeline->layout();
    const model::ModelConfig& cfg = checkpoint.config();
    ctl::Hello hello;
    hello.model_fingerprint = checkpoint.fingerprint();
    hello.plan_json = config.plan_json;
    hello.world_size = static_cast<uint32_t>(layout.world_size);
    hello.pipeline_stages = static_cast<uint32_t>(layout.num_stages());
    hello.kv_block_size = static_cast<uint32_t>(pipeline->engine().kv_usage().block_size);
    hello.kv_blocks = static_cast<uint64_t>(pipeline->min_kv_blocks());
    hello.max_batch_tokens = 2048;
    hello.max_sequences = 256;
    hello.vocab_size = static_cast<uint32_t>(cfg.vocab_size);
    hello.kv_domains = static_cast<uint32_t>(pipeline->kv_domains());
    hello.kv_exports = pipeline->kv_exports();
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    hello.job_id = std::string(host) + ":" + std::to_string(getpid());

    ctl::LeaderOptions lo;
    lo.coordinator = config.coordinator;
    lo.secret = config.secret;
    lo.tls = config.tls;
    lo.connect_timeout = config.connect_timeout;
    DS_ASSIGN_OR_RETURN(auto client, ctl::LeaderClient::connect(lo, hello));
    spdlog::info("registered with the coordinator at {} ({} stages, {} KV blocks of {} tokens)", config.coordinator,
                 hello.pipeline_stages, hello.kv_blocks, hello.kv_block_size);

    // Idle ticks keep every rank's receive inside its deadline while no request arrives.
    const auto tick_every = std::max(milliseconds(50), comm_timeout() / 4);
    const size_t max_in_flight = static_cast<size_t>(layout.num_stages());
    std::map<uint64_t, std::chrono::steady_clock::time_point> started;
    auto last_activity = std::chrono::steady_clock::now();
    // Idle waits stay short so that a stop request is seen promptly (mpirun SIGKILLs soon after
    // forwarding SIGTERM); the idle ticks still go out every tick_every (from last_activity).
    const auto idle_wait = std::min(tick_every, milliseconds(100));
    for (;;) {
        const bool stopping = config.stop != nullptr && config.stop->load();
        // Hand finished steps back first (when stopping, wait for every step in flight).
        for (;;) {
            bool ready = false;
            StepReply reply;
            const int64_t in_flight = pipeline->in_flight();
            const bool block = in_flight >= static_cast<int64_t>(max_in_flight) || (stopping && in_flight > 0);
            DS_RETURN_IF_ERROR(pipeline->collect(block, &ready, &reply));
            if (!ready) break;
            reply.result.step_seconds =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - started[reply.step_id]).count();
            started.erase(reply.step_id);
            DS_RETURN_IF_ERROR(client->send_result(reply.result));
        }
        const bool idle = pipeline->in_flight() == 0;
        if (stopping && idle) {
            // A goodbye, so that the coordinator reports a departure, not a lost job.
            spdlog::info("stopping: telling the coordinator that the shard job leaves");
            client->shutdown("the shard job was stopped by a signal");
            if (config.said_goodbye != nullptr) *config.said_goodbye = true;
            return ok_status();
        }
        auto batch = client->next_batch(idle ? idle_wait : milliseconds(1));
        if (batch.ok()) {
            PipelineStep step;
            step.batch = std::move(batch).value();
            started[step.batch.step_id] = std::chrono::steady_clock::now();
            DS_RETURN_IF_ERROR(pipeline->submit(step));
            last_activity = std::chrono::steady_clock::now();
            continue;
        }
        const Status& s = batch.status();
        if (s.code() == StatusCode::kDeadlineExceeded) {
            if (idle && std::chrono::steady_clock::now() - last_activity >= tick_every) {
                PipelineStep tick;
                tick.kind = StepKind::kTick;
                DS_RETURN_IF_ERROR(pipeline->submit(tick));
                last_activity = std::chrono::steady_clock::now();
            }
            continue;
        }
        if (s.code() == StatusCode::kCancelled) {
            spdlog::info("the coordinator shut the shard job down: {}", s.message());
            return ok_status();
        }
        return s.with_context("coordinator connection");
    }
}

}  // namespace deepshard::shard_node
