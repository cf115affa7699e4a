// `deepshard plan` and `deepshard topo` as the shard tests and operators run them: every layout the
// shard equivalence test uses writes a plan whose layout fields are what
// shard_node::Layout::from_plan_json reads; refusals exit 1 with the numbers; --json parses.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using testing_util::binary_path;
using testing_util::run_command;
using testing_util::source_path;

// ctest hands gtest-discovered tests only the first ENVIRONMENT entry (DS_SOURCE_DIR); find the build
// directory from this executable (<build>/tests/topology_cli_test) when DS_BINARY_DIR is missing.
class BinaryDirEnv : public testing::Environment {
public:
    void SetUp() override {
        if (std::getenv("DS_BINARY_DIR") == nullptr) {
            std::error_code ec;
            const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
            if (!ec) {
                setenv("DS_BINARY_DIR", exe.parent_path().parent_path().c_str(), 1);
            }
        }
    }
};
const auto* const kBinaryDirEnv = testing::AddGlobalTestEnvironment(new BinaryDirEnv);

nlohmann::json read_json(const std::string& path) {
    std::ifstream in(path);
    return nlohmann::json::parse(in);
}

TEST(PlanCli, EveryShardTestLayoutWritesAValidPlan) {
    const std::string dir = testing_util::make_temp_dir("ds_plan_");
    for (const char* golden : {"tiny-bf16", "small-fp8"}) {
        const std::string model = source_path(std::string("testdata/golden/") + golden);
        const auto cfg = read_json(model + "/config.json");
        for (const char* layout : {"pp=1,tp=1", "pp=2,tp=1", "pp=1,tp=2", "pp=1,tp=4", "pp=2,tp=2",
                                   "pp=1,tp=4,attn=dp,ep=4", "pp=2,tp=2,attn=dp,ep=2"}) {
            const std::string out = dir + "/plan.json";
            auto r = run_command({binary_path("deepshard"), "plan", "--model", model, "--layout", layout, "--out", out},
                                 std::chrono::seconds(60));
            ASSERT_EQ(r.exit_code, 0) << layout << "\n" << r.out << r.err;
            const auto j = read_json(out);
            const int s = j.at("ranks_per_stage").get<int>();
            EXPECT_EQ(j.at("world_size").get<int>(), s * static_cast<int>(j.at("stages").size())) << layout;
            EXPECT_EQ(j.at("attention").get<std::string>(),
                      std::string(layout).find("attn=dp") != std::string::npos ? "dp" : "tp");
            int64_t next = 0;
            for (const auto& st : j.at("stages")) {
                EXPECT_EQ(st.at("first_layer").get<int64_t>(), next);
                next = st.at("last_layer").get<int64_t>();
            }
            EXPECT_EQ(next, cfg.at("num_hidden_layers").get<int64_t>());
            const auto owners = j.at("expert_placement").get<std::vector<int>>();
            EXPECT_EQ(static_cast<int64_t>(owners.size()), cfg.at("n_routed_experts").get<int64_t>());
            for (int o : owners) {
                EXPECT_TRUE(o >= 0 && o < s) << layout;
            }
            EXPECT_EQ(j.at("ranks").size(), static_cast<size_t>(j.at("world_size").get<int>()));
            for (const auto& r : j.at("ranks")) {  // a --layout plan on this (CPU) host
                EXPECT_EQ(r.at("device"), "cpu") << layout;
            }
        }
    }
}

// `deepshard plan --layout` on this (CPU) host: memory is what the host has free now, the KV cache is
// the CPU engine's float32 one, the summary prints the budget the plan file carries, and nothing
// speaks of GPUs or NVLink.
TEST(PlanCli, ThisHostsPlanSpeaksOfCpusAndItsFreeMemory) {
    const std::string model = source_path("testdata/golden/tiny-bf16");
    const std::string out = testing_util::make_temp_dir("ds_plan_cpu") + "/plan.json";
    auto r = run_command({binary_path("deepshard"), "plan", "--model", model, "--layout", "pp=2", "--out", out},
                         std::chrono::seconds(60));
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    for (const char* gpu_word : {"GPU", "NVLink", "HBM", "tensor peak"}) {
        EXPECT_EQ(r.out.find(gpu_word), std::string::npos) << gpu_word << " in:\n" << r.out;
    }
    EXPECT_NE(r.out.find("free on this host now"), std::string::npos) << r.out;
    EXPECT_NE(r.out.find("float32"), std::string::npos) << r.out;
    const auto j = read_json(out);
    EXPECT_EQ(j.at("kv_cache").at("dtype"), "float32");
    EXPECT_EQ(j.at("kv_cache").at("bytes_per_token_per_layer").get<int64_t>(), (64 + 16) * 4);
    const int64_t budget = j.at("kv_budget_bytes").get<int64_t>();
    EXPECT_GT(budget, 0);
    for (const auto& m : j.at("memory")) {
        EXPECT_EQ(m.at("kv_bytes").get<double>(), static_cast<double>(budget));
        EXPECT_LE(m.at("kv_bytes").get<double>(), m.at("kv_room_bytes").get<double>());
        // The RAM the host has (not a table entry), shared by the 2 ranks.
        EXPECT_LE(m.at("capacity_bytes").get<double>() * 2, static_cast<double>(sysconf(_SC_PHYS_PAGES)) *
                                                                static_cast<double>(sysconf(_SC_PAGESIZE)));
    }
    // A fixed budget is written as given; one that does not fit is refused with the numbers.
    auto fixed = run_command({binary_path("deepshard"), "plan", "--model", model, "--layout", "pp=2", "--kv-budget-mb",
                              "7", "--json"},
                             std::chrono::seconds(60));
    ASSERT_EQ(fixed.exit_code, 0) << fixed.err;
    EXPECT_EQ(nlohmann::json::parse(fixed.out).at("kv_budget_bytes").get<int64_t>(), int64_t{7} << 20);
    auto huge = run_command({binary_path("deepshard"), "plan", "--model", model, "--layout", "pp=2", "--kv-budget-mb",
                             "100000000"},
                            std::chrono::seconds(60));
    EXPECT_EQ(huge.exit_code, 1);
    EXPECT_NE(huge.err.find("KV budget"), std::string::npos) << huge.err;
}

TEST(PlanCli, JsonAndSummaryAndConfigFile) {
    const std::string cfg = source_path("configs/deepseek-v3-671b.json");
    auto r = run_command({binary_path("deepshard"), "plan", "--model", cfg, "--cluster", "2x8xH100-80G", "--json"},
                         std::chrono::seconds(60));
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["world_size"], 16);
    EXPECT_EQ(j["dtype"]["path"], "fp8");
    EXPECT_GT(j["predictions"]["decode"]["tokens_per_s"].get<double>(), 0);
    auto s = run_command({binary_path("deepshard"), "plan", "--model", cfg, "--cluster", "4x8xA100-80G"},
                         std::chrono::seconds(60));
    ASSERT_EQ(s.exit_code, 0) << s.out << s.err;
    EXPECT_NE(s.out.find("fp8-weight-only"), std::string::npos) << s.out;
    EXPECT_NE(s.out.find("no FP8 tensor cores"), std::string::npos) << s.out;
    std::printf("%s", s.out.c_str());
}

TEST(PlanCli, RefusalsAndBadInputExitNonZeroWithReasons) {
    const std::string cfg = source_path("configs/deepseek-v3-671b.json");
    auto r = run_command({binary_path("deepshard"), "plan", "--model", cfg, "--cluster", "1x8xH100-80G"},
                         std::chrono::seconds(60));
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("673.2 GB"), std::string::npos) << r.err;
    auto bad = run_command({binary_path("deepshard"), "plan", "--model", cfg, "--cluster", "2x8xB300"},
                           std::chrono::seconds(60));
    EXPECT_EQ(bad.exit_code, 1);
    EXPECT_NE(bad.err.find("unknown device"), std::string::npos) << bad.err;
    auto nothing = run_command({binary_path("deepshard"), "plan", "--model", cfg}, std::chrono::seconds(60),
                               {"SLURM_JOB_NODELIST="});
    EXPECT_EQ(nothing.exit_code, 1);
    auto layout = run_command({binary_path("deepshard"), "plan", "--model", cfg, "--layout", "tp=2,ep=4"},
                              std::chrono::seconds(60));
    EXPECT_EQ(layout.exit_code, 1);
    EXPECT_NE(layout.err.find("disagree"), std::string::npos) << layout.err;
}

TEST(PlanCli, HostfileAndSlurm) {
    const std::string dir = testing_util::make_temp_dir("ds_plan_");
    const std::string hosts = dir + "/hosts";
    std::ofstream(hosts) << "# two H100 nodes\nnodeA slots=8\nnodeB slots=8\n";
    const std::string cfg = source_path("configs/deepseek-v3-671b.json");
    auto h = run_command(
        {binary_path("deepshard"), "plan", "--model", cfg, "--hostfile", hosts, "--gpu-type", "H100-80G", "--json"},
        std::chrono::seconds(60));
    ASSERT_EQ(h.exit_code, 0) << h.out << h.err;
    const auto j = nlohmann::json::parse(h.out);
    EXPECT_EQ(j["ranks"][8]["host"], "nodeB");
    EXPECT_EQ(j["ranks"][8]["device"], "cuda");  // GPU ranks run the CUDA engine, on their GPU ordinal
    EXPECT_EQ(j["ranks"][9]["gpu"], 1);
    auto s =
        run_command({binary_path("deepshard"), "plan", "--model", cfg, "--slurm", "--json"}, std::chrono::seconds(60),
                    {"SLURM_JOB_NODELIST=gpu[07-08]", "SLURM_NTASKS_PER_NODE=8", "SLURM_GPUS_PER_NODE=h200:8"});
    ASSERT_EQ(s.exit_code, 0) << s.out << s.err;
    const auto k = nlohmann::json::parse(s.out);
    EXPECT_EQ(k["ranks"][15]["host"], "gpu08");
    EXPECT_EQ(k["cluster"]["nodes"][0]["device"], "H200-141G");
}

TEST(TopoCli, JsonDescribesThisHost) {
    auto r = run_command({binary_path("deepshard"), "topo", "--json"}, std::chrono::seconds(60));
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const auto j = nlohmann::json::parse(r.out);
    EXPECT_GE(j["cores"].get<int>(), 1);
    EXPECT_GE(j["numa_nodes"].size(), 1u);
    // The CPU kernels' ISA: what the dispatcher took (all the CPU offers, unless DS_ISA says less).
    const std::string detected = j.at("cpu_kernels").at("detected_isa").get<std::string>();
    if (std::getenv("DS_ISA") == nullptr) {
        EXPECT_EQ(j.at("cpu_kernels").at("isa"), detected);
    }
    auto t = run_command({binary_path("deepshard"), "topo"}, std::chrono::seconds(60));
    ASSERT_EQ(t.exit_code, 0);
    EXPECT_NE(t.out.find("NUMA node(s)"), std::string::npos) << t.out;
    EXPECT_NE(t.out.find("CPU kernels: isa "), std::string::npos) << t.out;
    // Forced down to scalar, it says so, and that fast computes what exact does there.
    auto s = run_command({"/usr/bin/env", "DS_ISA=scalar", binary_path("deepshard"), "topo", "--json"},
                         std::chrono::seconds(60));
    ASSERT_EQ(s.exit_code, 0) << s.err;
    const auto js = nlohmann::json::parse(s.out);
    EXPECT_EQ(js.at("cpu_kernels").at("isa"), "scalar");
    EXPECT_EQ(js.at("cpu_kernels").at("detected_isa"), detected);
    EXPECT_TRUE(js.at("cpu_kernels").at("fast_is_exact").get<bool>());
}

}  // namespace
}  // namespace deepshard
