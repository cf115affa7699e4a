// deepshard-shard: one rank of the shard job (DESIGN §2), started by mpirun or srun --mpi=pmix.
// Every rank loads only its slice of the checkpoint (the byte ranges of its tensors). Rank 0 leads:
//  - driver mode (no --coordinator): runs generate's prompt/sampling/output flags through the
//    distributed model and prints exactly what `deepshard generate` prints;
//  - service mode (--coordinator HOST:PORT): registers with the coordinator and executes the step
//    batches it sends.
// The other ranks serve pipeline steps until rank 0 shuts the pipeline down.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <sstream>

#include <CLI/CLI.hpp>

#include "comm/mpi/mpi_comm.h"
#include "comm/mpi/mpi_runtime.h"
#include "common/logging.h"
#include "common/version.h"
#include "model/checkpoint.h"
#include "model/generate_cli.h"
#include "shard_node/leader_loop.h"
#include "shard_node/pipeline.h"

namespace deepshard::shard_node {
namespace {

struct ShardArgs {
    std::string model;
    std::string plan;
    std::string coordinator;
    model::GenerateOptions options;
    int64_t kv_budget_mb = 512;
    int64_t kv_block_size = 16;
    int64_t kv_blocks = 0;
    int64_t timeout_ms = 0;
    int64_t connect_timeout_ms = 0;  // 0: DS_COMM_TIMEOUT_MS
    std::string device;  // empty: the plan's device for this rank
};

// Steps of the distributed model as a model::StepFn: one batch through the pipeline, logits back.
model::StepFn driver_step(Pipeline* pipeline) {
    auto next_id = std::make_shared<uint64_t>(1);
    return [pipeline, next_id](std::span<const model::SeqChunk> chunks) -> StatusOr<model::StepOutput> {
        PipelineStep step;
        step.return_logits = true;
        step.batch.step_id = (*next_id)++;
        for (const auto& c : chunks) {
            control::SeqWork w;
            w.seq_id = c.seq_id;
            w.start_pos = static_cast<uint32_t>(c.start_pos);
            w.tokens.assign(c.tokens.begin(), c.tokens.end());
            step.batch.seqs.push_back(std::move(w));
            step.logits_mode.push_back(c.logits);
        }
        DS_ASSIGN_OR_RETURN(StepReply reply, pipeline->run(step));
        model::StepOutput out;
        out.logits = std::move(reply.logits);
        out.rows = reply.rows;
        out.vocab = reply.vocab;
        return out;
    };
}

Status run_rank(const ShardArgs& args, comm::Communicator* world) {
    DS_ASSIGN_OR_RETURN(auto ckpt_ptr, model::Checkpoint::open(args.model));
    std::shared_ptr<const model::Checkpoint> ckpt(std::move(ckpt_ptr));
    std::ifstream in(args.plan);
    if (!in) {
        return invalid_argument("cannot read the plan file " + args.plan);
    }
    std::stringstream plan_text;
    plan_text << in.rdbuf();
    DS_ASSIGN_OR_RETURN(Layout layout, Layout::from_plan_json(plan_text.str(), ckpt->config()));

    RankDevice rd = layout.device_of(world->rank());
    if (!args.device.empty()) {
        DS_ASSIGN_OR_RETURN(rd.device, model::parse_device(args.device));
    }
    model::EngineOptions opt;
    opt.kv_budget_bytes = args.kv_budget_mb << 20;
    opt.kv_block_size = args.kv_block_size;
    opt.kv_max_blocks = args.kv_blocks;
    opt.device_ordinal = rd.ordinal;
    DS_ASSIGN_OR_RETURN(auto pipeline, Pipeline::create(world, layout, ckpt, rd.device, opt));
    DS_ASSIGN_OR_RETURN(model::LoadStats ls, pipeline->engine().prepare());
    spdlog::info("rank {}: stage {} local {} on {} loaded {:.1f} MB of weights in {:.2f} s ({:.2f} GB/s)",
                 world->rank(), layout.stage_of(world->rank()), layout.local_of(world->rank()),
                 model::device_name(rd.device), ls.bytes / 1e6, ls.seconds, ls.gb_per_s());
    // Loading can take long on big models: wait for everyone with a generous deadline.
    DS_RETURN_IF_ERROR(world->barrier().with_context("waiting for every rank to load its shard"));

    if (!pipeline->is_leader()) {
        return pipeline->serve();
    }
    Status s;
    if (args.coordinator.empty()) {
        s = model::run_generate_session(args.options, *ckpt, driver_step(pipeline.get()));
    } else {
        LeaderConfig lc;
        lc.coordinator = args.coordinator;
        lc.plan_json = plan_text.str();
        if (args.connect_timeout_ms > 0) {
            lc.connect_timeout = std::chrono::milliseconds(args.connect_timeout_ms);
        }
        s = run_leader(lc, *ckpt, pipeline.get());
    }
    Status down = pipeline->shutdown();
    return s.ok() ? down : s;
}

}  // namespace
}  // namespace deepshard::shard_node

int main(int argc, char** argv) {
    using namespace deepshard;
    init_logging();
    auto runtime = comm::MpiRuntime::create(&argc, &argv);
    if (!runtime.ok()) {
        std::fprintf(stderr, "error: %s\n", runtime.status().to_string().c_str());
        return 1;
    }
    shard_node::ShardArgs args;
    CLI::App app{"deepshard-shard: one rank of the deepshard shard job (run under mpirun or srun)"};
    app.set_version_flag("--version", DEEPSHARD_VERSION_STRING);
    app.add_option("--model", args.model, "model directory (every rank reads only its own byte ranges)")->required();
    app.add_option("--plan", args.plan, "plan file from `deepshard plan`")->required();
    app.add_option("--coordinator", args.coordinator, "HOST:PORT of the coordinator's control port");
    app.add_option("--kv-budget-mb", args.kv_budget_mb, "KV cache pool per rank in MiB");
    app.add_option("--kv-block-size", args.kv_block_size, "tokens per KV block");
    app.add_option("--kv-blocks", args.kv_blocks, "cap the KV pool per rank at this many blocks (0: what the budget holds)")
        ->check(CLI::NonNegativeNumber);
    app.add_option("--device", args.device, "compute device of every rank, overriding the plan (cpu | cuda)")
        ->check(CLI::IsMember({"cpu", "cuda"}));
    app.add_option("--timeout-ms", args.timeout_ms, "deadline of every communication (default DS_COMM_TIMEOUT_MS)");
    app.add_option("--connect-timeout-ms", args.connect_timeout_ms, "deadline to register with the coordinator (default DS_COMM_TIMEOUT_MS)");
    model::add_generate_options(&app, &args.options);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    auto world = comm::MpiComm::world();
    if (!world.ok()) {
        std::fprintf(stderr, "error: %s\n", world.status().to_string().c_str());
        return 1;
    }
    if (args.timeout_ms > 0) {
        world->set_timeout(std::chrono::milliseconds(args.timeout_ms));
    }
    const int rank = world->rank();
    Status s = shard_node::run_rank(args, &world.value());
    if (!s.ok()) {
        char host[256] = {0};
        gethostname(host, sizeof(host) - 1);
        std::fprintf(stderr, "error: rank %d on %s: %s\n", rank, host, s.to_string().c_str());
        std::fflush(stderr);
        // The other ranks may be blocked in a collective with us: end the job now rather than
        // letting each of them run into its own deadline.
        comm::MpiComm::abort_job(1);
        return 1;
    }
    return 0;
}
