// deepshard-shard: one rank of the shard job (DESIGN §2), started by mpirun or srun --mpi=pmix.
// Every rank loads only its slice of the checkpoint (the byte ranges of its tensors). Rank 0 leads:
//  - driver mode (no --coordinator): runs generate's prompt/sampling/output flags through the
//    distributed model and prints exactly what `deepshard generate` prints;
//  - service mode (--coordinator HOST:PORT): registers with the coordinator and executes the step
//    batches it sends.
// The other ranks serve pipeline steps until rank 0 shuts the pipeline down.
//
// SIGTERM/SIGINT (mpirun forwards them to every rank, then SIGKILLs after
// odls_base_sigkill_timeout): in service mode an idle leader tells the coordinator it leaves
// (Shutdown, so that is no "shard job lost") and shuts the pipeline down, which ends the other
// ranks; a leader with steps in flight exits at once without a goodbye (they may never come back:
// mpirun also sends SIGTERM when it tears the job down after a rank died, and the coordinator must
// see that loss promptly; a leader stuck in such a step exits after kGoodbyeWithin); a rank that
// has not finished within kSignalExitAfter exits anyway. In driver mode a signal ends the rank at
// once.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <fstream>
#include <sstream>

#include <CLI/CLI.hpp>

#include "comm/mpi/mpi_comm.h"
#include "comm/mpi/mpi_runtime.h"
#include "common/logging.h"
#include "common/version.h"
#include "kernels/kernels.h"
#include "control/auth.h"
#include "model/checkpoint.h"
#include "model/generate_cli.h"
#include "shard_node/leader_loop.h"
#include "shard_node/load_barrier.h"
#include "shard_node/pipeline.h"

namespace deepshard::shard_node {
namespace {

// Set by the signal thread; read by the leader's loop.
std::atomic<bool> g_stop_requested{false};
// Service mode (--coordinator): a signal asks for a goodbye; otherwise it ends the rank at once.
std::atomic<bool> g_graceful_stop{false};
// Rank 0 in service mode; set by the leader once the coordinator was told that the job leaves.
std::atomic<bool> g_is_leader{false};
std::atomic<bool> g_said_goodbye{false};
// A leader that has not said goodbye by then is stuck in a step whose rank died: it exits, so that
// it does not delay the coordinator's view of the loss (mpirun SIGKILLs after about 1 s anyway).
constexpr auto kGoodbyeWithin = std::chrono::milliseconds(500);
constexpr auto kSignalExitAfter = std::chrono::seconds(5);

// Takes SIGTERM/SIGINT (blocked in every thread) synchronously: sets g_stop_requested, then ends
// the process if it has not finished on its own kSignalExitAfter later.
class SignalWatch {
public:
    SignalWatch() {
        sigemptyset(&sigs_);
        sigaddset(&sigs_, SIGTERM);
        sigaddset(&sigs_, SIGINT);
        pthread_sigmask(SIG_BLOCK, &sigs_, nullptr);
        // mpirun may close our output pipes while it stops the job: a log line written then must
        // not kill the leader before it said goodbye.
        std::signal(SIGPIPE, SIG_IGN);
        thread_ = std::thread([this] { run(); });
    }
    ~SignalWatch() {
        done_ = true;
        thread_.join();
    }
    SignalWatch(const SignalWatch&) = delete;
    SignalWatch& operator=(const SignalWatch&) = delete;

private:
    void run() {
        int sig = 0;
        while (!done_ && sig <= 0) {
            timespec ts{0, 100 * 1000 * 1000};
            sig = sigtimedwait(&sigs_, nullptr, &ts);
        }
        if (done_) return;
        if (!g_graceful_stop) std::_Exit(128 + sig);
        spdlog::info("signal {} ({}): stopping", sig, strsignal(sig));
        g_stop_requested = true;
        const auto t0 = std::chrono::steady_clock::now();
        while (!done_ && std::chrono::steady_clock::now() < t0 + kSignalExitAfter) {
            if (g_is_leader && !g_said_goodbye && std::chrono::steady_clock::now() >= t0 + kGoodbyeWithin) break;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        if (!done_) std::_Exit(128 + sig);
    }
    sigset_t sigs_;
    std::atomic<bool> done_{false};
    std::thread thread_;
};

// The KV pool of a rank whose plan names no budget (hand-written plans) and no --kv-budget-mb.
constexpr int64_t kDefaultKvBudgetMb = 512;

struct ShardArgs {
    std::string model;
    std::string plan;
    std::string coordinator;
    model::GenerateOptions options;
    int64_t kv_budget_mb = 0;  // 0: the plan's kv_budget_bytes, else kDefaultKvBudgetMb
    int64_t kv_block_size = 16;
    int64_t kv_blocks = 0;
    std::string kv_listen;            // disaggregation: serve KV exports on this IP (a prefill job)
    int64_t kv_export_mb = 1024;      // staged exports per rank at most
    int64_t kv_fetch_timeout_ms = 10000;
    int64_t timeout_ms = 0;
    int64_t connect_timeout_ms = 0;  // 0: DS_COMM_TIMEOUT_MS
    std::string device;    // empty: the plan's device for this rank
    std::string numerics;  // empty: the plan's numerics (fast when the plan names none)
    bool head_fp8 = false;
    std::string control_secret_file;
    control::TlsFiles tls;
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
    // The leader needs the control secret: a job started without it fails now, not after loading.
    std::string secret;
    if (world->rank() == 0 && !args.coordinator.empty()) {
        DS_ASSIGN_OR_RETURN(secret, control::load_control_secret(args.control_secret_file));
    }
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
    // --kv-budget-mb wins; else the plan's budget, which `deepshard plan` sized for this engine's
    // KV storage, so that what the plan printed is what this rank registers.
    std::string kv_from = "--kv-budget-mb";
    opt.kv_budget_bytes = args.kv_budget_mb << 20;
    if (args.kv_budget_mb <= 0) {
        opt.kv_budget_bytes = layout.kv_budget_bytes > 0 ? layout.kv_budget_bytes : kDefaultKvBudgetMb << 20;
        kv_from = layout.kv_budget_bytes > 0 ? "the plan" : "the default (the plan names no kv_budget_bytes)";
    }
    opt.kv_block_size = args.kv_block_size;
    opt.kv_max_blocks = args.kv_blocks;
    opt.device_ordinal = rd.ordinal;
    opt.numerics = layout.numerics;
    if (!args.numerics.empty() && !kernels::parse_numerics(args.numerics, &opt.numerics)) {
        return invalid_argument("--numerics must be exact or fast, got \"" + args.numerics + "\"");
    }
    opt.precision = model::precision_for(opt.numerics);  // the same choice for CUDA ranks
    opt.head_fp8 = args.head_fp8;
    DS_ASSIGN_OR_RETURN(auto pipeline, Pipeline::create(world, layout, ckpt, rd.device, opt));
    DS_ASSIGN_OR_RETURN(model::LoadStats ls, pipeline->engine().prepare());
    spdlog::info("rank {}: stage {} local {} on {} (numerics {}{}{}) loaded {:.1f} MB of weights in {:.2f} s ({:.2f} GB/s)",
                 world->rank(), layout.stage_of(world->rank()), layout.local_of(world->rank()),
                 model::device_name(rd.device), kernels::numerics_name(opt.numerics),
                 rd.device == model::Device::kCpu ? ", isa " : "",
                 rd.device == model::Device::kCpu ? kernels::isa_name(kernels::active_isa()) : "", ls.bytes / 1e6,
                 ls.seconds, ls.gb_per_s());
    const model::KvUsage kv = pipeline->engine().kv_usage();
    spdlog::info("rank {}: KV cache {} blocks x {} tokens = {} tokens ({:.1f} MB of a {:.1f} MB budget from {})",
                 world->rank(), kv.total_blocks, kv.block_size, kv.total_blocks * kv.block_size,
                 static_cast<double>(kv.total_blocks * kv.block_bytes) / 1e6,
                 static_cast<double>(opt.kv_budget_bytes) / 1e6, kv_from);
    // Loading takes as long as it takes on big models: wait for everyone as long as it plausibly can.
    DS_RETURN_IF_ERROR(wait_for_every_rank_loaded(world, *ckpt, ls));
    KvHandoffOptions ko;
    ko.listen_ip = args.kv_listen;
    ko.max_staged_bytes = static_cast<size_t>(std::max<int64_t>(0, args.kv_export_mb)) << 20;
    ko.fetch_timeout = std::chrono::milliseconds(std::max<int64_t>(1, args.kv_fetch_timeout_ms));
    if (!args.kv_listen.empty()) {
        DS_RETURN_IF_ERROR(pipeline->start_kv_export(ko).with_context("--kv-listen " + args.kv_listen));
    } else {
        DS_RETURN_IF_ERROR(pipeline->set_kv_fetch_options(ko));
    }

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
        lc.tls = args.tls;
        lc.secret = std::move(secret);
        if (args.connect_timeout_ms > 0) {
            lc.connect_timeout = std::chrono::milliseconds(args.connect_timeout_ms);
        }
        lc.stop = &g_stop_requested;
        lc.said_goodbye = &g_said_goodbye;
        g_is_leader = true;
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
    // Before MPI starts its threads, so that they inherit the blocked signals.
    shard_node::SignalWatch signals;
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
    app.add_option("--kv-budget-mb", args.kv_budget_mb,
                   "KV cache pool per rank in MiB (default: the plan's kv_budget_bytes, else 512)")
        ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
    app.add_option("--kv-block-size", args.kv_block_size, "tokens per KV block");
    app.add_option("--kv-listen", args.kv_listen,
                   "prefill/decode disaggregation: run as a prefill job and serve KV exports on this IP (each rank "
                   "listens on a free port); register with the coordinator's --prefill-control port");
    app.add_option("--kv-export-mb", args.kv_export_mb, "staged KV exports per rank at most, oldest dropped beyond (0: none, every prompt is computed by the decode job)")
        ->capture_default_str();
    app.add_option("--kv-fetch-timeout-ms", args.kv_fetch_timeout_ms,
                   "decode job: deadline to fetch one prompt's KV from the prefill job (then it is computed)")
        ->capture_default_str();
    app.add_option("--kv-blocks", args.kv_blocks, "cap the KV pool per rank at this many blocks (0: what the budget holds)")
        ->check(CLI::NonNegativeNumber);
    app.add_option("--device", args.device, "compute device of every rank, overriding the plan (cpu | cuda)")
        ->check(CLI::IsMember({"cpu", "cuda"}));
    app.add_flag("--head-fp8", args.head_fp8, model::kHeadFp8Help);
    app.add_option("--numerics", args.numerics,
                   "numerics of every rank (CPU and CUDA), overriding the plan: fast (BF16 dot products; the default) or exact "
                   "(float32, the reference)")
        ->check(CLI::IsMember({"exact", "fast"}));
    app.add_option("--timeout-ms", args.timeout_ms, "deadline of every communication (default DS_COMM_TIMEOUT_MS)");
    app.add_option("--connect-timeout-ms", args.connect_timeout_ms, "deadline to register with the coordinator (default DS_COMM_TIMEOUT_MS)");
    app.add_option("--control-secret-file", args.control_secret_file,
                   "file (mode 0600) with the control secret shared with the coordinator (default: "
                   "DS_CONTROL_SECRET_FILE, else the value of DS_CONTROL_SECRET)");
    app.add_flag("--control-tls", args.tls.client, "dial the coordinator's control port with TLS");
    app.add_option("--tls-ca", args.tls.ca,
                   "PEM CA (or the coordinator's certificate) to verify the control port's TLS certificate with "
                   "(implies --control-tls)");
    model::add_generate_options(&app, &args.options);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    shard_node::g_graceful_stop = !args.coordinator.empty();
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
    if (!s.ok() && shard_node::g_stop_requested) {
        std::fprintf(stderr, "rank %d: %s\n", rank, s.to_string().c_str());
        std::fflush(stderr);
        std::_Exit(128 + SIGTERM);  // stopped on purpose: no MPI abort on top
    }
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
