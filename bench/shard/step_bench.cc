// One decode step of the shard job, split into compute and each kind of communication (issue 4
// item 7). Run under mpirun with a plan (e.g. pp=2,tp=2): every rank wraps its world communicator
// in comm::ProfiledCommunicator, the leader drives prefill + decode steps through the real
// Pipeline (coordinator path: the last stage samples greedily, tokens go back to rank 0), and every
// rank records, per decode step, the time in each operation kind and the step period. Per rank it
// reports medians over steps; "compute" is the period minus all communication time of that step.
// Then, as the reference beside it, rank 0 alone runs the same batch through the whole model in
// one process (the other ranks sleep in a barrier) and reports its decode step time.
//
// Usage: mpirun -np N step_bench --model DIR --plan plan.json [--batch 1] [--prompt 32] [--steps 16]
//        [--reps 3] [--warmup 2] [--json-out FILE]
// Prints a table and one JSON line (prefixed "JSON ").
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "comm/mpi/mpi_comm.h"
#include "comm/mpi/mpi_runtime.h"
#include "comm/profile.h"
#include "common/logging.h"
#include "model/checkpoint.h"
#include "model/engine.h"
#include "shard_node/pipeline.h"

namespace {

namespace ds = deepshard;
namespace dc = deepshard::comm;
namespace dm = deepshard::model;
namespace dsn = deepshard::shard_node;
using Clock = std::chrono::steady_clock;

struct Args {
    std::string model, plan, json_out;
    int batch = 1, prompt = 32, steps = 16, reps = 3, warmup = 2;
};

// Operation kinds reported, in table order: (profile key, column label).
const std::vector<std::pair<std::string, std::string>> kKinds = {
    {"world.split.broadcast", "stage bcast"},  {"world.split.allreduce", "TP allreduce"},
    {"world.split.allgather", "vocab gather"}, {"world.split.alltoallv", "EP all2all"},
    {"world.send", "p2p send"},                {"world.recv", "p2p recv"},
};

[[noreturn]] void die(const std::string& msg) {
    std::fprintf(stderr, "step_bench: %s\n", msg.c_str());
    std::fflush(stderr);
    dc::MpiComm::abort_job(1);
    std::exit(1);
}

template <typename T>
T value_or_die(ds::StatusOr<T> v, const char* what) {
    if (!v.ok()) die(std::string(what) + ": " + v.status().to_string());
    return std::move(v).value();
}

void check(const ds::Status& s, const char* what) {
    if (!s.ok()) die(std::string(what) + ": " + s.to_string());
}

Args parse(int argc, char** argv) {
    Args a;
    for (int i = 1; i < argc; ++i) {
        const std::string k = argv[i];
        if (i + 1 >= argc) die(k + " needs a value");
        const std::string v = argv[++i];
        if (k == "--model") a.model = v;
        else if (k == "--plan") a.plan = v;
        else if (k == "--json-out") a.json_out = v;
        else if (k == "--batch") a.batch = std::stoi(v);
        else if (k == "--prompt") a.prompt = std::stoi(v);
        else if (k == "--steps") a.steps = std::stoi(v);
        else if (k == "--reps") a.reps = std::stoi(v);
        else if (k == "--warmup") a.warmup = std::stoi(v);
        else die("unknown flag " + k);
    }
    if (a.model.empty() || a.plan.empty()) die("--model and --plan are required");
    if (a.batch < 1 || a.prompt < 1 || a.steps < 1 || a.reps < 1 || a.warmup < 0) die("sizes must be positive");
    return a;
}

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// One decode step as one rank saw it: seconds per kind (kKinds order, then "other comm"), period.
struct StepSample {
    std::vector<double> seconds;
    std::vector<double> bytes;
    double period = 0;
};

StepSample sample_of(const std::map<std::string, dc::OpStats>& d, double period) {
    StepSample s;
    s.period = period;
    double other = 0;
    for (const auto& [key, label] : kKinds) {
        auto it = d.find(key);
        s.seconds.push_back(it == d.end() ? 0 : it->second.seconds);
        s.bytes.push_back(it == d.end() ? 0 : static_cast<double>(it->second.bytes));
    }
    for (const auto& [key, st] : d) {
        bool known = false;
        for (const auto& kind : kKinds) known = known || kind.first == key;
        if (!known) other += st.seconds;
    }
    s.seconds.push_back(other);
    return s;
}

bool is_decode(const dsn::PipelineStep& step) {
    if (step.kind != dsn::StepKind::kStep || step.batch.seqs.empty()) return false;
    for (const auto& w : step.batch.seqs) {
        if (w.tokens.size() != 1 || w.is_new) return false;
    }
    return true;
}

// Per-rank medians: [kind seconds..., other, compute, period, kind bytes...].
std::vector<double> summarize(const std::vector<StepSample>& samples) {
    const size_t K = kKinds.size();
    std::vector<double> out;
    for (size_t k = 0; k <= K; ++k) {
        std::vector<double> v;
        for (const auto& s : samples) v.push_back(s.seconds[k]);
        out.push_back(median(v));
    }
    std::vector<double> compute, period;
    for (const auto& s : samples) {
        double comm = 0;
        for (double x : s.seconds) comm += x;
        compute.push_back(std::max(0.0, s.period - comm));
        period.push_back(s.period);
    }
    out.push_back(median(compute));
    out.push_back(median(period));
    for (size_t k = 0; k < K; ++k) {
        std::vector<double> v;
        for (const auto& s : samples) v.push_back(s.bytes[k]);
        out.push_back(median(v));
    }
    return out;
}

dsn::PipelineStep make_step(uint64_t id, const std::vector<uint64_t>& seqs, const std::vector<int32_t>& tokens,
                            int prompt_len, int pos, bool prefill, std::vector<uint64_t> release) {
    dsn::PipelineStep step;
    step.batch.step_id = id;
    step.batch.release = std::move(release);
    for (size_t i = 0; i < seqs.size(); ++i) {
        deepshard::control::SeqWork w;
        w.seq_id = seqs[i];
        w.sample = 1;
        if (prefill) {
            w.is_new = 1;
            w.start_pos = 0;
            for (int t = 0; t < prompt_len; ++t) w.tokens.push_back((t * 7919 + static_cast<int>(i) * 31 + 3) % 1000);
            w.prompt = w.tokens;
        } else {
            w.start_pos = static_cast<uint32_t>(pos);
            w.tokens = {tokens[i]};
        }
        step.batch.seqs.push_back(std::move(w));
    }
    return step;
}

// Reference: the same batch through the whole model in this process.
double single_process_decode(const Args& a, std::shared_ptr<const dm::Checkpoint> ckpt) {
    dm::EngineOptions opt;
    opt.kv_budget_bytes = int64_t{256} << 20;
    auto model =
        value_or_die(dm::create_engine(dm::Device::kCpu, ckpt, dm::ShardSpec{}, opt), "single-process model");
    (void)model->prepare();
    std::vector<double> times;
    uint64_t next_seq = 1'000'000;
    for (int rep = 0; rep < a.reps; ++rep) {
        std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(a.batch));
        std::vector<dm::SeqChunk> chunks;
        std::vector<uint64_t> ids;
        for (int i = 0; i < a.batch; ++i) {
            for (int t = 0; t < a.prompt; ++t) prompts[i].push_back((t * 7919 + i * 31 + 3) % 1000);
            ids.push_back(next_seq++);
            chunks.push_back({ids.back(), prompts[i], a.prompt, 0, dm::LogitsMode::kLast});
        }
        check(model->step(chunks).status(), "single-process prefill");
        std::vector<int32_t> tok(static_cast<size_t>(a.batch), 1);
        for (int s = 0; s < a.steps; ++s) {
            std::vector<dm::SeqChunk> dec;
            for (int i = 0; i < a.batch; ++i) {
                dec.push_back({ids[i], std::span<const int32_t>(&tok[i], 1), 1, a.prompt + s, dm::LogitsMode::kLast});
            }
            const auto t0 = Clock::now();
            check(model->step(dec).status(), "single-process decode");
            if (s >= a.warmup) times.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        }
        for (uint64_t id : ids) model->release(id);
    }
    return median(times);
}

}  // namespace

int main(int argc, char** argv) {
    ds::init_logging();
    auto runtime = value_or_die(dc::MpiRuntime::create(&argc, &argv), "MPI");
    const Args a = parse(argc, argv);
    auto world = value_or_die(dc::MpiComm::world(), "MPI world");
    auto profile = std::make_shared<dc::CommProfile>();
    dc::ProfiledCommunicator pc(&world, profile, "world");

    std::shared_ptr<const dm::Checkpoint> ckpt = value_or_die(dm::Checkpoint::open(a.model), "checkpoint");
    std::ifstream in(a.plan);
    if (!in) die("cannot read " + a.plan);
    std::stringstream plan_text;
    plan_text << in.rdbuf();
    auto layout = value_or_die(dsn::Layout::from_plan_json(plan_text.str(), ckpt->config()), "plan");
    if (layout.world_size != pc.size()) die("the plan needs " + std::to_string(layout.world_size) + " ranks");
    dm::EngineOptions opt;
    opt.kv_budget_bytes = int64_t{256} << 20;
    auto pipeline = value_or_die(dsn::Pipeline::create(&pc, layout, ckpt, dm::Device::kCpu, opt), "pipeline");
    (void)pipeline->engine().prepare();
    check(pc.barrier(), "barrier after load");

    std::vector<StepSample> samples;
    if (!pipeline->is_leader()) {
        auto last = Clock::now();
        auto before = profile->snapshot();
        int decode_seen = 0;
        pipeline->set_step_observer([&](const dsn::PipelineStep& step) {
            const auto now = Clock::now();
            const auto snap = profile->snapshot();
            if (is_decode(step)) {
                if (decode_seen++ % a.steps >= a.warmup) {
                    samples.push_back(sample_of(dc::CommProfile::delta(snap, before),
                                                std::chrono::duration<double>(now - last).count()));
                }
            } else if (step.kind == dsn::StepKind::kStep) {
                decode_seen = 0;  // a prefill starts the next repetition
            }
            last = now;
            before = snap;
        });
        check(pipeline->serve(), "serve");
    } else {
        uint64_t next_step = 1, next_seq = 1;
        std::vector<uint64_t> release;
        for (int rep = 0; rep < a.reps; ++rep) {
            std::vector<uint64_t> seqs;
            for (int i = 0; i < a.batch; ++i) seqs.push_back(next_seq++);
            auto pre = value_or_die(
                pipeline->run(make_step(next_step++, seqs, {}, a.prompt, 0, true, std::move(release))), "prefill");
            release.clear();
            std::vector<int32_t> tokens;
            for (const auto& o : pre.result.outputs) tokens.push_back(o.token);
            if (tokens.size() != seqs.size()) die("prefill returned " + std::to_string(tokens.size()) + " tokens");
            for (int s = 0; s < a.steps; ++s) {
                const auto before = profile->snapshot();
                const auto t0 = Clock::now();
                auto rep_out = value_or_die(
                    pipeline->run(make_step(next_step++, seqs, tokens, a.prompt, a.prompt + s, false, {})), "decode");
                const double period = std::chrono::duration<double>(Clock::now() - t0).count();
                if (s >= a.warmup) samples.push_back(sample_of(dc::CommProfile::delta(profile->snapshot(), before), period));
                tokens.clear();
                for (const auto& o : rep_out.result.outputs) tokens.push_back(o.token);
            }
            release = seqs;
        }
        check(pipeline->shutdown(), "shutdown");
    }

    // Gather every rank's medians on all ranks (fixed-size rows).
    const std::vector<double> mine = summarize(samples);
    std::vector<double> all(mine.size() * static_cast<size_t>(pc.size()));
    check(world.allgather(mine.data(), all.data(), mine.size() * sizeof(double), dc::DataType::kByte), "gather");

    double reference = 0;
    if (pc.rank() == 0) reference = single_process_decode(a, ckpt);
    check(world.barrier(), "barrier after the reference");
    if (pc.rank() != 0) return 0;

    const size_t K = kKinds.size();
    nlohmann::json j = {{"bench", "step_bench"}, {"model", a.model},          {"ranks", pc.size()},
                        {"batch", a.batch},      {"prompt", a.prompt},        {"steps", a.steps},
                        {"reps", a.reps},        {"stages", layout.num_stages()}, {"ranks_per_stage", layout.ranks_per_stage},
                        {"single_process_decode_ms", reference * 1e3}};
    std::printf("decode step, batch %d after a %d-token prompt; medians over %d steps x %d reps (ms)\n", a.batch,
                a.prompt, a.steps - a.warmup, a.reps);
    std::printf("%-5s %-6s", "rank", "stage");
    for (const auto& [key, label] : kKinds) std::printf(" %13s", label.c_str());
    std::printf(" %11s %11s %11s\n", "other comm", "compute", "step");
    for (int r = 0; r < pc.size(); ++r) {
        const double* row = all.data() + static_cast<size_t>(r) * mine.size();
        std::printf("%-5d %-6d", r, layout.stage_of(r));
        nlohmann::json jr = {{"rank", r}, {"stage", layout.stage_of(r)}};
        for (size_t k = 0; k < K; ++k) {
            std::printf(" %13.3f", row[k] * 1e3);
            jr[kKinds[k].second + " ms"] = row[k] * 1e3;
            jr[kKinds[k].second + " bytes"] = row[K + 3 + k];
        }
        std::printf(" %11.3f %11.3f %11.3f\n", row[K] * 1e3, row[K + 1] * 1e3, row[K + 2] * 1e3);
        jr["other comm ms"] = row[K] * 1e3;
        jr["compute ms"] = row[K + 1] * 1e3;
        jr["step ms"] = row[K + 2] * 1e3;
        j["per_rank"].push_back(jr);
    }
    std::printf("bytes per step (rank 0):");
    for (size_t k = 0; k < K; ++k) std::printf(" %s %.0f;", kKinds[k].second.c_str(), all[K + 3 + k]);
    std::printf("\nsingle process, same batch, whole model: %.3f ms per decode step (distributed / single = %.2f)\n",
                reference * 1e3, all[K + 2] / reference);
    j["distributed_over_single"] = all[K + 2] / reference;
    std::printf("JSON %s\n", j.dump().c_str());
    if (!a.json_out.empty()) std::ofstream(a.json_out) << j.dump(2) << "\n";
    return 0;
}
