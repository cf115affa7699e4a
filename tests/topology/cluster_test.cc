// Cluster descriptions: spec strings, Slurm nodelists and env, OpenMPI hostfiles, device lookup.
#include "topology/cluster.h"

#include <gtest/gtest.h>

#include <map>

#include "topology/hardware.h"

namespace deepshard::topology {
namespace {

TEST(ClusterSpec, NodesDevicesAndType) {
    auto c = parse_cluster_spec("2x8xH100-80G");
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    EXPECT_EQ(c->nodes.size(), 2u);
    EXPECT_EQ(c->world_size(), 16);
    EXPECT_EQ(c->device().name, "H100-80G");
    EXPECT_EQ(c->nodes[1].gpus, 8);
    EXPECT_TRUE(c->device().has_fp8());
    // Described nodes: 8 GPUs over 2 NUMA nodes, one NIC per GPU.
    const HostTopology& t = c->nodes[0].topo;
    ASSERT_EQ(t.gpus.size(), 8u);
    EXPECT_EQ(t.gpus[0].numa_node, 0);
    EXPECT_EQ(t.gpus[7].numa_node, 1);
    EXPECT_EQ(t.nic_for_gpu(5), "mlx5_5");
}

TEST(ClusterSpec, OneNodeFormAndAliases) {
    auto c = parse_cluster_spec("8xH200");
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    EXPECT_EQ(c->nodes.size(), 1u);
    EXPECT_EQ(c->device().name, "H200-141G");
    auto a = parse_cluster_spec("4X8Xa100-80g");
    ASSERT_TRUE(a.ok()) << a.status().to_string();
    EXPECT_EQ(a->device().name, "A100-80G");
    EXPECT_FALSE(a->device().has_fp8());
}

TEST(ClusterSpec, CpuNodes) {
    auto c = parse_cluster_spec("2x2xCPU-64G");
    ASSERT_TRUE(c.ok()) << c.status().to_string();
    EXPECT_EQ(c->world_size(), 4);
    EXPECT_FALSE(c->device().is_gpu());
    EXPECT_EQ(c->nodes[0].gpus, 0);
    EXPECT_EQ(c->nodes[0].rank_memory_bytes(), 32'000'000'000LL);  // 64 GB shared by 2 ranks
}

TEST(ClusterSpec, BadSpecsSayWhy) {
    for (const auto& [spec, needle] : std::map<std::string, std::string>{
             {"2x8xB300", "unknown device \"B300\""},
             {"2x8xA100", "ambiguous"},
             {"0x8xH100-80G", "at least 1"},
             {"H100-80G", "want NxGxTYPE"},
             {"1x2x3xH100", "want NxGxTYPE"},
             {"2x8x", "unknown device"},
             {"1xCPU-lots", "CPU-<RAM>G"},
         }) {
        auto c = parse_cluster_spec(spec);
        ASSERT_FALSE(c.ok()) << spec;
        EXPECT_NE(c.status().message().find(needle), std::string::npos) << spec << ": " << c.status().to_string();
    }
}

TEST(Nodelist, RangesPaddingAndGroups) {
    auto n = expand_nodelist("node[01-03,07],login1");
    ASSERT_TRUE(n.ok()) << n.status().to_string();
    EXPECT_EQ(*n, (std::vector<std::string>{"node01", "node02", "node03", "node07", "login1"}));
    auto m = expand_nodelist("gpu[8-10]");
    ASSERT_TRUE(m.ok());
    EXPECT_EQ(*m, (std::vector<std::string>{"gpu8", "gpu9", "gpu10"}));
    auto r = expand_nodelist("rack[1-2]-n[098-099]");
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, (std::vector<std::string>{"rack1-n098", "rack1-n099", "rack2-n098", "rack2-n099"}));
    auto single = expand_nodelist("a100-node-3");
    ASSERT_TRUE(single.ok());
    EXPECT_EQ(*single, std::vector<std::string>{"a100-node-3"});
}

TEST(Nodelist, Errors) {
    for (const char* bad : {"node[01-03", "node01-03]", "node[3-1]", "node[a-b]", "", "n1,,n2", "n[[1]]"}) {
        EXPECT_FALSE(expand_nodelist(bad).ok()) << bad;
    }
    EXPECT_NE(expand_nodelist("node[3-1]").status().message().find("backwards"), std::string::npos);
}

TEST(Slurm, TasksPerNodeForms) {
    auto t = expand_tasks_per_node("8(x2),4", 3);
    ASSERT_TRUE(t.ok()) << t.status().to_string();
    EXPECT_EQ(*t, (std::vector<int>{8, 8, 4}));
    EXPECT_FALSE(expand_tasks_per_node("8(x2)", 3).ok());
    EXPECT_FALSE(expand_tasks_per_node("8(x", 1).ok());
}

EnvLookup fake_env(std::map<std::string, std::string> vars) {
    return [vars](const std::string& k) -> std::optional<std::string> {
        auto it = vars.find(k);
        if (it == vars.end()) {
            return std::nullopt;
        }
        return it->second;
    };
}

TEST(Slurm, AllocationFromEnv) {
    std::string hint;
    auto h = hosts_from_slurm(fake_env({{"SLURM_JOB_NODELIST", "node[01-02]"},
                                        {"SLURM_JOB_NUM_NODES", "2"},
                                        {"SLURM_NTASKS_PER_NODE", "8"},
                                        {"SLURM_GPUS_PER_NODE", "h100:8"}}),
                              &hint);
    ASSERT_TRUE(h.ok()) << h.status().to_string();
    ASSERT_EQ(h->size(), 2u);
    EXPECT_EQ((*h)[1].host, "node02");
    EXPECT_EQ((*h)[1].slots, 8);
    EXPECT_EQ(hint, "h100");
    EXPECT_EQ(find_device(hint)->name, "H100-80G");

    auto g = hosts_from_slurm(fake_env({{"SLURM_JOB_NODELIST", "gpu[1-3]"}, {"SLURM_GPUS_ON_NODE", "4"}}));
    ASSERT_TRUE(g.ok());
    EXPECT_EQ((*g)[2].slots, 4);
    auto t = hosts_from_slurm(fake_env({{"SLURM_NODELIST", "a,b"}, {"SLURM_TASKS_PER_NODE", "2,1"}}));
    ASSERT_TRUE(t.ok());
    EXPECT_EQ((*t)[0].slots, 2);
    EXPECT_EQ((*t)[1].slots, 1);
}

TEST(Slurm, InconsistentEnvIsRefused) {
    auto none = hosts_from_slurm(fake_env({}));
    ASSERT_FALSE(none.ok());
    EXPECT_NE(none.status().message().find("SLURM_JOB_NODELIST"), std::string::npos);
    auto count = hosts_from_slurm(fake_env({{"SLURM_JOB_NODELIST", "n[1-3]"}, {"SLURM_JOB_NUM_NODES", "2"}}));
    ASSERT_FALSE(count.ok());
    EXPECT_NE(count.status().message().find("names 3 nodes"), std::string::npos);
    EXPECT_FALSE(hosts_from_slurm(fake_env({{"SLURM_JOB_NODELIST", "n[1-3]"}, {"SLURM_NTASKS", "4"}})).ok());
    EXPECT_FALSE(hosts_from_slurm(fake_env({{"SLURM_JOB_NODELIST", "n[1-"}})).ok());
}

TEST(Hostfile, OpenMpiFormat) {
    auto h = parse_hostfile("# cluster\nnode1 slots=8\nnode2 slots=8 max_slots=8  # spare\n\nnode3\nnode1 slots=2\n",
                            "hosts.txt");
    ASSERT_TRUE(h.ok()) << h.status().to_string();
    ASSERT_EQ(h->size(), 3u);
    EXPECT_EQ((*h)[0].slots, 10);  // repeated host adds its slots
    EXPECT_EQ((*h)[1].slots, 8);
    EXPECT_EQ((*h)[2].slots, 1);
    auto c = cluster_from_hosts(*h, *find_device("A100-80G"), "hostfile", "test");
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(c->world_size(), 19);
    EXPECT_FALSE(c->homogeneous());
}

TEST(Hostfile, ErrorsNameTheLine) {
    auto bad = parse_hostfile("node1 slots=8\nnode2 slots=eight\n", "hosts.txt");
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("hosts.txt:2"), std::string::npos) << bad.status().to_string();
    auto unknown = parse_hostfile("node1 cpus=8\n", "h");
    ASSERT_FALSE(unknown.ok());
    EXPECT_NE(unknown.status().message().find("cpus=8"), std::string::npos);
    EXPECT_FALSE(parse_hostfile("# nothing\n", "h").ok());
    EXPECT_FALSE(load_hostfile("/nonexistent/hostfile").ok());
}

TEST(Hardware, TableAndGpuNames) {
    EXPECT_EQ(device_from_gpu_name("NVIDIA H100 80GB HBM3", 85'000'000'000LL)->name, "H100-80G");
    EXPECT_EQ(device_from_gpu_name("NVIDIA A100-SXM4-40GB", 42'000'000'000LL)->name, "A100-40G");
    EXPECT_EQ(device_from_gpu_name("NVIDIA A100-SXM4-80GB", 85'000'000'000LL)->name, "A100-80G");
    EXPECT_FALSE(device_from_gpu_name("Tesla T4", 16'000'000'000LL).ok());
    for (const auto& d : hardware_table().devices) {
        EXPECT_GT(d.memory_bytes, 0) << d.name;
        EXPECT_GT(d.mem_bw_gbs, 0) << d.name;
        EXPECT_FALSE(d.source.empty()) << d.name;
    }
}

}  // namespace
}  // namespace deepshard::topology
