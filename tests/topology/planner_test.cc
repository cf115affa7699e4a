// Planner: model accounting against MODEL_SPEC §7, layout strings, valid plans, memory accounting,
// refusals with their numbers, and the 671B decisions the issue asks for:
//   1x8xH100-80G  refused (FP8 weights 673 GB > 8 x 77 GB usable)
//   1x8xH200-141G fits (FP8)           2x8xH100-80G fits (FP8)
//   4x8xA100-80G  fits (FP8 weights dequantized on the fly; BF16 would fit too)
//   2x8xA100-80G  fits only with FP8 weight-only; --dtype bf16 (1342 GB) is refused
//   1x8xH800-80G and 2x8xA100-40G refused (673 GB > 616 / 618 GB usable); 4x8xA100-40G fits in FP8 weight-only
#include "topology/planner.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <set>

#include "model/config.h"
#include "tests/util/subprocess.h"

namespace deepshard::topology {
namespace {

model::ModelConfig load_config(const std::string& rel) {
    auto c = model::ModelConfig::load(testing_util::source_path(rel));
    EXPECT_TRUE(c.ok()) << c.status().to_string();
    return c.ok() ? *c : model::ModelConfig{};
}

model::ModelConfig v3() { return load_config("configs/deepseek-v3-671b.json"); }

Cluster cluster(const std::string& spec) {
    auto c = parse_cluster_spec(spec);
    EXPECT_TRUE(c.ok()) << c.status().to_string();
    return *c;
}

Cluster local_cpu(int ranks) {
    return *cluster_from_hosts({{"localhost", ranks}}, cpu_device(16'000'000'000LL), "local", "test host");
}

TEST(ModelStats, MatchesModelSpecMemoryMath) {
    const model::ModelConfig c = v3();
    const ModelStats fp8(c, true), bf16(c, false);
    EXPECT_EQ(fp8.total_params(), 671'026'419'200LL);  // MODEL_SPEC §7
    EXPECT_NEAR(fp8.active_params() / 1e9, 37.55, 0.01);
    EXPECT_NEAR(fp8.total_bytes() / 1e9, 673.2, 0.1);  // FP8 + BF16 rest + FP32 scales
    EXPECT_NEAR(bf16.total_bytes() / 1e9, 1342.0, 0.2);
    EXPECT_EQ(fp8.kv_bytes_per_token_layer(), 1152);  // (512 + 64) x 2 B
    EXPECT_EQ(fp8.attention_params(), 187'105'280LL);
    EXPECT_EQ(fp8.expert_params(), 44'040'192LL);
    EXPECT_EQ(fp8.num_moe_layers(), 58);
}

TEST(Layout, EveryFormTheShardTestsUse) {
    struct Want {
        const char* text;
        int pp, s;
        Attention a;
    };
    for (const Want& w :
         {Want{"pp=1,tp=1", 1, 1, Attention::kTp}, Want{"pp=2,tp=1", 2, 1, Attention::kTp},
          Want{"pp=1,tp=2", 1, 2, Attention::kTp}, Want{"pp=1,tp=4", 1, 4, Attention::kTp},
          Want{"pp=2,tp=2", 2, 2, Attention::kTp}, Want{"tp=4", 1, 4, Attention::kTp},
          Want{"pp=2", 2, 1, Attention::kTp}, Want{"attn=dp,ep=4", 1, 4, Attention::kDp},
          Want{"pp=1,tp=4,attn=dp,ep=4", 1, 4, Attention::kDp}, Want{"pp=2,tp=2,attn=dp,ep=2", 2, 2, Attention::kDp},
          Want{"pp=2,dp=4,attn=dp", 2, 4, Attention::kDp}}) {
        auto l = parse_layout(w.text);
        ASSERT_TRUE(l.ok()) << w.text << ": " << l.status().to_string();
        EXPECT_EQ(l->pp, w.pp) << w.text;
        EXPECT_EQ(l->ranks_per_stage, w.s) << w.text;
        EXPECT_EQ(l->attention, w.a) << w.text;
    }
    for (const char* bad : {"", "pp=0", "tp=two", "pp=2,tp=2,ep=4", "attn=sp", "zz=1", "pp"}) {
        EXPECT_FALSE(parse_layout(bad).ok()) << bad;
    }
    EXPECT_NE(parse_layout("tp=2,ep=4").status().message().find("disagree"), std::string::npos);
}

// The fields shard_node::Layout::from_plan_json reads, checked the way Layout::validate checks them.
void expect_valid_plan_json(const nlohmann::json& j, const model::ModelConfig& c, int pp, int s, const char* attn) {
    ASSERT_EQ(j.at("world_size").get<int>(), pp * s);
    ASSERT_EQ(j.at("ranks_per_stage").get<int>(), s);
    EXPECT_EQ(j.at("attention").get<std::string>(), attn);
    const auto& stages = j.at("stages");
    ASSERT_EQ(static_cast<int>(stages.size()), pp);
    int64_t next = 0;
    for (const auto& st : stages) {
        EXPECT_EQ(st.at("first_layer").get<int64_t>(), next);
        EXPECT_GT(st.at("last_layer").get<int64_t>(), next);
        next = st.at("last_layer").get<int64_t>();
    }
    EXPECT_EQ(next, c.num_hidden_layers);
    const auto owners = j.at("expert_placement").get<std::vector<int>>();
    ASSERT_EQ(static_cast<int64_t>(owners.size()), c.n_routed_experts);
    std::set<int> used;
    for (int o : owners) {
        EXPECT_GE(o, 0);
        EXPECT_LT(o, s);
        used.insert(o);
    }
    EXPECT_EQ(static_cast<int>(used.size()), std::min<int>(s, static_cast<int>(c.n_routed_experts)));
    ASSERT_EQ(static_cast<int>(j.at("ranks").size()), pp * s);
    EXPECT_GT(j.at("kv_budget_bytes").get<int64_t>(), 0);
}

TEST(Planner, FixedLayoutsOnThisHostGiveValidPlans) {
    for (const char* golden : {"testdata/golden/tiny-bf16", "testdata/golden/small-fp8"}) {
        const model::ModelConfig c = load_config(golden);
        for (const char* text : {"pp=1,tp=1", "pp=2,tp=1", "pp=1,tp=2", "pp=1,tp=4", "pp=2,tp=2",
                                 "pp=1,tp=4,attn=dp,ep=4", "pp=2,tp=2,attn=dp,ep=2"}) {
            PlanOptions o;
            o.layout = *parse_layout(text);
            const int world = o.layout->pp * o.layout->ranks_per_stage;
            auto p = make_plan(c, local_cpu(world), o);
            ASSERT_TRUE(p.ok()) << golden << " " << text << ": " << p.status().to_string();
            expect_valid_plan_json(p->to_json(), c, o.layout->pp, o.layout->ranks_per_stage,
                                   o.layout->attention == Attention::kDp ? "dp" : "tp");
            EXPECT_EQ(p->dtype, c.quantization.fp8 ? DtypePath::kFp8WeightOnly : DtypePath::kBf16) << text;
        }
    }
}

TEST(Planner, LayoutThatDoesNotDivideIsRejected) {
    const model::ModelConfig c = load_config("testdata/golden/tiny-bf16");  // 8 heads, 4 layers
    PlanOptions o;
    o.layout = *parse_layout("tp=3");
    auto p = make_plan(c, local_cpu(3), o);
    ASSERT_FALSE(p.ok());
    EXPECT_NE(p.status().message().find("heads do not divide by tp 3"), std::string::npos) << p.status().to_string();
    o.layout = *parse_layout("pp=5");
    EXPECT_FALSE(make_plan(c, local_cpu(5), o).ok());  // 5 stages for 4 layers
    o.layout = *parse_layout("pp=2,tp=2");
    auto wrong_world = make_plan(c, local_cpu(3), o);
    ASSERT_FALSE(wrong_world.ok());
    EXPECT_NE(wrong_world.status().message().find("has 3"), std::string::npos);
}

TEST(Planner, WeightsAreAccountedExactlyOnce) {
    // With one rank per stage nothing is replicated or split: the stages' weights add up to the model.
    const model::ModelConfig c = v3();
    PlanOptions o;
    o.layout = *parse_layout("pp=16,tp=1");
    o.min_kv_tokens = 1;
    auto p = make_plan(c, cluster("2x8xH100-80G"), o);
    ASSERT_TRUE(p.ok()) << p.status().to_string();
    double sum = 0;
    for (const auto& m : p->stage_memory) {
        sum += m.weights;
        EXPECT_NEAR(m.weights + m.activations + m.comm + m.kv_room, m.usable, 1.0);
        EXPECT_LE(m.kv, m.kv_room);
        EXPECT_NEAR(m.usable, 0.9 * m.capacity, 1.0);
        // KV tokens fit in the KV bytes.
        const double layers = static_cast<double>(p->stages[static_cast<size_t>(m.stage)].second -
                                                  p->stages[static_cast<size_t>(m.stage)].first);
        EXPECT_LE(static_cast<double>(m.kv_tokens) * layers * 1152, m.kv);
    }
    EXPECT_NEAR(sum, p->total_weight_bytes, 1.0);
    EXPECT_NEAR(p->total_weight_bytes / 1e9, 673.2, 0.1);
    // Balanced: no stage holds more than ~1.5 MoE layers above the mean.
    double worst = 0;
    for (const auto& m : p->stage_memory) {
        worst = std::max(worst, m.weights);
    }
    EXPECT_LT(worst, sum / 16 + 1.5 * 11.3e9);
}

TEST(Planner, Refuses671BOnOneH100Node) {
    auto p = make_plan(v3(), cluster("1x8xH100-80G"), PlanOptions{});
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), StatusCode::kResourceExhausted);
    const std::string& m = p.status().message();
    std::printf("refusal: %s\n", m.c_str());
    EXPECT_NE(m.find("673.2 GB"), std::string::npos) << m;  // what the weights need
    EXPECT_NE(m.find("615.7 GB"), std::string::npos) << m;  // 8 x 90% x 85.5 GB
    EXPECT_NE(m.find("684.2 GB"), std::string::npos) << m;  // physical total, still too small
}

struct Expect {
    const char* spec;
    const char* dtype_flag;
    bool fits;
    DtypePath path;
};

TEST(Planner, Plans671BOnTheIssueClusters) {
    for (const Expect& e :
         {Expect{"1x8xH200-141G", "auto", true, DtypePath::kFp8}, Expect{"2x8xH100-80G", "auto", true, DtypePath::kFp8},
          Expect{"4x8xA100-80G", "auto", true, DtypePath::kFp8WeightOnly},
          Expect{"4x8xA100-80G", "bf16", true, DtypePath::kBf16},
          Expect{"2x8xA100-80G", "auto", true, DtypePath::kFp8WeightOnly},
          Expect{"2x8xA100-80G", "bf16", false, DtypePath::kBf16},
          Expect{"1x8xH800-80G", "auto", false, DtypePath::kFp8},
          Expect{"4x8xA100-40G", "auto", true, DtypePath::kFp8WeightOnly},
          Expect{"2x8xA100-40G", "auto", false, DtypePath::kFp8WeightOnly}}) {
        PlanOptions o;
        o.dtype = e.dtype_flag;
        auto p = make_plan(v3(), cluster(e.spec), o);
        ASSERT_EQ(p.ok(), e.fits) << e.spec << " " << e.dtype_flag << ": "
                                  << (p.ok() ? p->summary() : p.status().to_string());
        if (!p.ok()) {
            EXPECT_EQ(p.status().code(), StatusCode::kResourceExhausted);
            EXPECT_NE(p.status().message().find(" GB"), std::string::npos) << p.status().message();
            std::printf("%s --dtype %s refused: %s\n", e.spec, e.dtype_flag, p.status().message().c_str());
            continue;
        }
        EXPECT_EQ(p->dtype, e.path) << e.spec;
        EXPECT_GE(p->max_tokens_per_sequence, 3000) << e.spec;
        const auto j = p->to_json();
        expect_valid_plan_json(j, v3(), static_cast<int>(p->stages.size()), p->ranks_per_stage,
                               attention_name(p->attention));
        EXPECT_GT(p->decode.tokens_per_s, 0);
        EXPECT_GT(p->prefill.tokens_per_s, 0);
        std::printf(
            "%s --dtype %s: %zu stage(s) x %d %s, %.1f GB/rank weights, KV %lld tokens, decode %.0f tok/s, "
            "bs1 %.1f ms\n",
            e.spec, e.dtype_flag, p->stages.size(), p->ranks_per_stage, attention_name(p->attention),
            p->stage_memory[0].weights / 1e9, static_cast<long long>(p->kv_capacity_tokens), p->decode.tokens_per_s,
            p->decode_bs1.tpot_ms);
    }
}

TEST(Planner, DtypeRules) {
    PlanOptions o;
    o.dtype = "fp8";
    auto a100 = make_plan(v3(), cluster("4x8xA100-80G"), o);
    ASSERT_FALSE(a100.ok());
    EXPECT_EQ(a100.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(a100.status().message().find("no FP8 tensor cores"), std::string::npos);
    const model::ModelConfig bf16 = load_config("testdata/golden/tiny-bf16");
    o.layout = *parse_layout("tp=1");
    EXPECT_FALSE(make_plan(bf16, local_cpu(1), o).ok());  // cannot quantize a BF16 checkpoint
    o.dtype = "fp16";
    EXPECT_FALSE(make_plan(bf16, local_cpu(1), o).ok());
}

TEST(Planner, BindsEveryRankToItsGpuNumaAndNic) {
    auto p = make_plan(v3(), cluster("2x8xH100-80G"), PlanOptions{});
    ASSERT_TRUE(p.ok()) << p.status().to_string();
    ASSERT_EQ(p->ranks.size(), 16u);
    std::set<std::pair<std::string, int>> gpus;
    for (const auto& r : p->ranks) {
        EXPECT_EQ(r.host, "node" + std::to_string(r.rank / 8));
        EXPECT_EQ(r.gpu, r.rank % 8);
        EXPECT_EQ(r.numa, (r.rank % 8) / 4);  // GPUs 0-3 on NUMA 0, 4-7 on NUMA 1
        EXPECT_EQ(r.nic, "mlx5_" + std::to_string(r.gpu));
        EXPECT_FALSE(r.cpus.empty());
        EXPECT_EQ(r.stage, r.rank / p->ranks_per_stage);
        gpus.insert({r.host, r.gpu});
    }
    EXPECT_EQ(gpus.size(), 16u);
    // The first GPU of a node gets the first cores of NUMA 0.
    EXPECT_EQ(p->ranks[0].cpus, "0-13");
    const auto j = p->to_json();
    EXPECT_TRUE(j.contains("transports"));
    EXPECT_TRUE(j["predictions"]["decode"].contains("tokens_per_s"));
    EXPECT_FALSE(p->explanation.empty());
    std::printf("%s", p->summary().c_str());
}

// CPU ranks share their NUMA node's CPUs without overlap: disjoint equal ranges when there are enough
// CPUs, and one CPU each, round robin, when ranks outnumber CPUs (an oversubscribed test host).
TEST(Planner, CpuRanksGetDisjointOrEvenlySpreadCpus) {
    const model::ModelConfig tiny = load_config("testdata/golden/tiny-bf16");
    PlanOptions o;
    o.layout = *parse_layout("pp=2,tp=2");
    for (int ncpu : {8, 2, 3}) {
        Cluster c = local_cpu(4);
        NumaNode numa;
        numa.os_index = 0;
        for (int i = 0; i < ncpu; ++i) numa.cpus.push_back(i);
        c.nodes[0].topo.numa_nodes = {numa};
        auto p = make_plan(tiny, c, o);
        ASSERT_TRUE(p.ok()) << p.status().to_string();
        std::vector<std::string> got;
        for (const auto& r : p->ranks) got.push_back(r.cpus);
        if (ncpu == 8) {
            EXPECT_EQ(got, (std::vector<std::string>{"0-1", "2-3", "4-5", "6-7"}));
        } else if (ncpu == 2) {
            EXPECT_EQ(got, (std::vector<std::string>{"0", "1", "0", "1"}));
        } else {
            EXPECT_EQ(got, (std::vector<std::string>{"0", "1", "2", "0"}));
        }
    }
}

TEST(Planner, LatencyObjectivePrefersFewerHops) {
    PlanOptions o;
    o.objective = Objective::kLatency;
    auto lat = make_plan(v3(), cluster("2x8xH100-80G"), o);
    auto thr = make_plan(v3(), cluster("2x8xH100-80G"), PlanOptions{});
    ASSERT_TRUE(lat.ok() && thr.ok());
    EXPECT_LE(lat->decode_bs1.tpot_ms, thr->decode_bs1.tpot_ms);
    EXPECT_GE(thr->decode.tokens_per_s, lat->decode.tokens_per_s);
}

// The KV budget is sized in the storage of the engine that runs the plan (model/kv_format.h): the
// CPU engine's float32 cache, the CUDA engine's BF16 under fast numerics and float32 under exact.
TEST(Planner, KvIsSizedInTheEnginesStorage) {
    const model::ModelConfig c = load_config("testdata/golden/small-fp8");
    const int64_t values = c.kv_lora_rank + c.qk_rope_head_dim;
    PlanOptions o;
    o.layout = *parse_layout("pp=2,tp=1");
    o.min_kv_tokens = 1;
    auto cpu = make_plan(c, cluster("2xCPU-64G"), o);
    ASSERT_TRUE(cpu.ok()) << cpu.status().to_string();
    EXPECT_EQ(cpu->kv_bytes_per_token_layer, values * 4);
    EXPECT_EQ(cpu->to_json().at("dtype").at("kv_cache"), "float32");
    auto gpu_fast = make_plan(c, cluster("2xH100-80G"), o);
    ASSERT_TRUE(gpu_fast.ok()) << gpu_fast.status().to_string();
    EXPECT_EQ(gpu_fast->kv_bytes_per_token_layer, values * 2);
    EXPECT_EQ(gpu_fast->to_json().at("kv_cache").at("dtype"), "bf16");
    o.numerics = "exact";
    auto gpu_exact = make_plan(c, cluster("2xH100-80G"), o);
    ASSERT_TRUE(gpu_exact.ok()) << gpu_exact.status().to_string();
    EXPECT_EQ(gpu_exact->kv_bytes_per_token_layer, values * 4);
}

// One budget for every rank, what the plan file carries: the smallest room, capped at what the
// workload keeps resident; or fixed by --kv-budget-mb, refused when it does not fit. The tokens
// each stage holds are that budget over its layers.
TEST(Planner, KvBudgetIsTheRoomCappedAtTheWorkload) {
    const model::ModelConfig c = load_config("testdata/golden/small-fp8");
    PlanOptions o;
    o.layout = *parse_layout("pp=2,tp=1");
    o.min_kv_tokens = 1;
    auto check_stages = [](const Plan& p) {
        int64_t capacity = INT64_MAX;
        for (const auto& m : p.stage_memory) {
            EXPECT_EQ(m.kv, static_cast<double>(p.kv_budget_bytes));
            EXPECT_LE(m.kv, m.kv_room);
            const int64_t layers = p.stages[static_cast<size_t>(m.stage)].second -
                                   p.stages[static_cast<size_t>(m.stage)].first;
            EXPECT_EQ(m.kv_tokens, p.kv_budget_bytes / (layers * p.kv_bytes_per_token_layer));
            capacity = std::min(capacity, m.kv_tokens);
        }
        EXPECT_EQ(p.kv_capacity_tokens, capacity);
        EXPECT_EQ(p.file().kv_budget_bytes, p.kv_budget_bytes);
    };
    // Default workload on a big host: the workload's need, 2 batches x 256 x 3000 tokens.
    auto big = make_plan(c, cluster("2xCPU-512G"), o);
    ASSERT_TRUE(big.ok()) << big.status().to_string();
    check_stages(*big);
    int64_t max_layers = 0;
    for (const auto& [first, last] : big->stages) max_layers = std::max(max_layers, last - first);
    EXPECT_EQ(big->kv_budget_bytes, 2 * 256 * 3000 * max_layers * big->kv_bytes_per_token_layer);
    EXPECT_NE(big->kv_budget_reason.find("workload"), std::string::npos) << big->kv_budget_reason;
    EXPECT_LT(big->kv_budget_bytes, big->stage_memory[0].kv_room);
    // A small host: the room of the fullest rank.
    auto small = make_plan(c, cluster("2xCPU-4G"), o);
    ASSERT_TRUE(small.ok()) << small.status().to_string();
    check_stages(*small);
    double room = INFINITY;
    for (const auto& m : small->stage_memory) room = std::min(room, m.kv_room);
    EXPECT_EQ(small->kv_budget_bytes, static_cast<int64_t>(room));
    // Fixed.
    o.kv_budget_bytes = int64_t{100} << 20;
    auto fixed = make_plan(c, cluster("2xCPU-4G"), o);
    ASSERT_TRUE(fixed.ok()) << fixed.status().to_string();
    check_stages(*fixed);
    EXPECT_EQ(fixed->kv_budget_bytes, int64_t{100} << 20);
    o.kv_budget_bytes = int64_t{64} << 30;
    auto too_big = make_plan(c, cluster("2xCPU-4G"), o);
    ASSERT_FALSE(too_big.ok());
    EXPECT_NE(too_big.status().message().find("KV budget"), std::string::npos) << too_big.status().to_string();
}

// The CPU engine loads the checkpoint's MTP module on the last stage (speculative decoding or not)
// and keeps its latent cache in one more layer slot; the CUDA engine holds neither yet. The plan
// counts exactly what each holds, so its KV tokens are what the job registers.
TEST(Planner, TheMtpModuleIsCountedWhereTheEngineHoldsIt) {
    model::ModelConfig c = v3();
    ASSERT_EQ(c.num_nextn_predict_layers, 1);
    PlanOptions o;
    o.layout = *parse_layout("pp=2,tp=1");
    o.min_kv_tokens = 1;
    o.kv_budget_bytes = int64_t{8} << 30;
    auto cpu = make_plan(c, cluster("2xCPU-1024G"), o);
    ASSERT_TRUE(cpu.ok()) << cpu.status().to_string();
    double sum = 0;
    for (const auto& m : cpu->stage_memory) sum += m.weights;
    EXPECT_NEAR(sum, cpu->total_weight_bytes, 1.0);
    EXPECT_NEAR(cpu->total_weight_bytes / 1e9, 673.2 + 15.4, 0.1);
    // Same budget on both stages; the last one divides it by one more layer slot.
    const auto& st = cpu->stages;
    const auto& mem = cpu->stage_memory;
    ASSERT_EQ(mem.size(), 2u);
    const double per_token_layer = static_cast<double>(cpu->kv_bytes_per_token_layer);
    EXPECT_EQ(mem[1].kv_tokens, static_cast<int64_t>(mem[1].kv / ((st[1].second - st[1].first + 1) * per_token_layer)));
    EXPECT_EQ(mem[0].kv_tokens, static_cast<int64_t>(mem[0].kv / ((st[0].second - st[0].first) * per_token_layer)));

    c.num_nextn_predict_layers = 0;
    auto plain = make_plan(c, cluster("2xCPU-1024G"), o);
    ASSERT_TRUE(plain.ok()) << plain.status().to_string();
    EXPECT_NEAR(plain->total_weight_bytes / 1e9, 673.2, 0.1);
    EXPECT_EQ(plain->stage_memory[1].kv_tokens,
              static_cast<int64_t>(plain->stage_memory[1].kv /
                                   ((plain->stages[1].second - plain->stages[1].first) * per_token_layer)));
}

}  // namespace
}  // namespace deepshard::topology
