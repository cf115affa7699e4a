// deepshard-launch's file and environment writing (launch/launch_config.h): the RoCE GID index
// chosen from a fake sysfs GID table, hostfile/rankfile contents for a 2-host plan, default CPU
// binding, interface choice, the generated MPI/UCX/NCCL settings and the mpirun command line.
#include "launch/launch_config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "launch/launcher.h"

namespace deepshard::launch {
namespace {

namespace fs = std::filesystem;

class FakeSysfs {
public:
    FakeSysfs() {
        std::string tmpl = (fs::temp_directory_path() / "ds_fake_sysfs.XXXXXX").string();
        root_ = mkdtemp(tmpl.data());
    }
    ~FakeSysfs() {
        std::error_code ec;
        fs::remove_all(root_, ec);
    }
    void put(const std::string& rel, const std::string& text) {
        const fs::path p = fs::path(root_) / rel;
        fs::create_directories(p.parent_path());
        std::ofstream(p) << text << "\n";
    }
    // One GID table entry of DEV port P (what the kernel shows under ports/P/gids and gid_attrs).
    void gid(const std::string& dev,
             int port,
             int index,
             const std::string& gid,
             const std::string& type,
             const std::string& ndev) {
        const std::string base = "class/infiniband/" + dev + "/ports/" + std::to_string(port) + "/";
        put(base + "gids/" + std::to_string(index), gid);
        put(base + "gid_attrs/types/" + std::to_string(index), type);
        put(base + "gid_attrs/ndevs/" + std::to_string(index), ndev);
    }
    void port(const std::string& dev, int port, const std::string& state, const std::string& link) {
        const std::string base = "class/infiniband/" + dev + "/ports/" + std::to_string(port) + "/";
        put(base + "state", state);
        put(base + "link_layer", link);
    }
    void netdev(const std::string& name, const std::string& oper, int type = 1) {
        put("class/net/" + name + "/operstate", oper);
        put("class/net/" + name + "/type", std::to_string(type));
        put("class/net/" + name + "/carrier", "1");
    }
    const std::string& root() const { return root_; }

private:
    std::string root_;
};

const char* kLinkLocal = "fe80:0000:0000:0000:0a42:a1ff:fe00:0001";
const char* kV4 = "0000:0000:0000:0000:0000:ffff:0a00:0001";  // ::ffff:10.0.0.1
const char* kV4b = "0000:0000:0000:0000:0000:ffff:0a00:0101";
const char* kV6 = "2001:0db8:0000:0000:0000:0000:0000:0001";

// The usual mlx5 RoCE layout: v1/v2 pairs for the link-local address, then for the IPv4 one.
TEST(RoceGid, PicksTheRoceV2Ipv4MappedEntryFromTheTable) {
    FakeSysfs fs;
    fs.port("mlx5_0", 1, "4: ACTIVE", "Ethernet");
    fs.put("class/infiniband/mlx5_0/device/numa_node", "1");
    fs.gid("mlx5_0", 1, 0, kLinkLocal, "IB/RoCE v1", "eth2");
    fs.gid("mlx5_0", 1, 1, kLinkLocal, "RoCE v2", "eth2");
    fs.gid("mlx5_0", 1, 2, kV4, "IB/RoCE v1", "eth2");
    fs.gid("mlx5_0", 1, 3, kV4, "RoCE v2", "eth2");
    fs.gid("mlx5_0", 1, 4, "0000:0000:0000:0000:0000:0000:0000:0000", "RoCE v2", "");  // unused slot
    const auto devs = read_rdma_sysfs(fs.root());
    ASSERT_EQ(devs.size(), 1u);
    EXPECT_EQ(devs[0].name, "mlx5_0");
    EXPECT_EQ(devs[0].numa_node, 1);
    ASSERT_EQ(devs[0].ports.size(), 1u);
    const auto& p = devs[0].ports[0];
    EXPECT_EQ(p.state, "ACTIVE");
    EXPECT_EQ(p.link_layer, "Ethernet");
    EXPECT_EQ(p.gids.size(), 4u);  // the all-zero entry is skipped
    EXPECT_EQ(p.gids[2].type, "RoCE v1");
    EXPECT_EQ(p.roce_gid_index, 3);
}

// Not index 3 here: the IPv4 address was configured after an IPv6 one, so its v2 entry is 5.
TEST(RoceGid, FollowsTheTableNotTheUsualIndex) {
    FakeSysfs fs;
    fs.port("mlx5_1", 1, "4: ACTIVE", "Ethernet");
    fs.gid("mlx5_1", 1, 0, kLinkLocal, "IB/RoCE v1", "eth3");
    fs.gid("mlx5_1", 1, 1, kLinkLocal, "RoCE v2", "eth3");
    fs.gid("mlx5_1", 1, 2, kV6, "IB/RoCE v1", "eth3");
    fs.gid("mlx5_1", 1, 3, kV6, "RoCE v2", "eth3");
    fs.gid("mlx5_1", 1, 4, kV4, "IB/RoCE v1", "eth3");
    fs.gid("mlx5_1", 1, 5, kV4, "RoCE v2", "eth3");
    fs.gid("mlx5_1", 1, 10, kV4b, "RoCE v2", "eth3.100");  // a VLAN's address, later in the table
    const auto devs = read_rdma_sysfs(fs.root());
    ASSERT_EQ(devs.size(), 1u);
    EXPECT_EQ(devs[0].ports[0].roce_gid_index, 5);
    // On the VLAN interface, its own IPv4 entry wins.
    EXPECT_EQ(choose_roce_gid_index(devs[0].ports[0].gids, "eth3.100"), 10);
    // Without an IPv4-mapped v2 entry: a global RoCE v2 one; link-local only: none.
    std::vector<topology::GidEntry> v6only = {{0, kLinkLocal, "RoCE v2", "eth3"}, {1, kV6, "RoCE v2", "eth3"}};
    EXPECT_EQ(choose_roce_gid_index(v6only), 1);
    std::vector<topology::GidEntry> ll = {{0, kLinkLocal, "RoCE v2", "eth3"}, {1, kV4, "RoCE v1", "eth3"}};
    EXPECT_EQ(choose_roce_gid_index(ll), -1);
}

TEST(RoceGid, InfinibandPortsHaveNoRoceIndexAndMissingSysfsIsEmpty) {
    FakeSysfs fs;
    fs.port("mlx5_2", 1, "4: ACTIVE", "InfiniBand");
    fs.gid("mlx5_2", 1, 0, "fe80:0000:0000:0000:b859:9f03:00d6:a3c0", "IB/RoCE v1", "");
    auto devs = read_rdma_sysfs(fs.root());
    ASSERT_EQ(devs.size(), 1u);
    EXPECT_EQ(devs[0].ports[0].gids[0].type, "IB");
    EXPECT_EQ(devs[0].ports[0].roce_gid_index, -1);
    EXPECT_TRUE(read_rdma_sysfs(fs.root() + "/nonexistent").empty());
}

const char* kTwoHostPlan = R"({
  "world_size": 4, "ranks_per_stage": 2,
  "ranks": [
    {"rank": 0, "stage": 0, "local": 0, "host": "gpu-a", "node": 0, "gpu": 0, "numa": 0, "nic": "mlx5_0", "cpus": "0-13"},
    {"rank": 1, "stage": 0, "local": 1, "host": "gpu-a", "node": 0, "gpu": 1, "numa": 1, "nic": "mlx5_1", "cpus": "14-27"},
    {"rank": 2, "stage": 1, "local": 0, "host": "gpu-b", "node": 1, "gpu": 0, "numa": 0, "nic": "mlx5_0", "cpus": "0-13"},
    {"rank": 3, "stage": 1, "local": 1, "host": "gpu-b", "node": 1, "gpu": 1, "numa": 1, "nic": "mlx5_1", "cpus": "14-27"}
  ]})";

// The same layout on small hosts (CPU ids every test machine has).
std::string small_plan() {
    std::string s = kTwoHostPlan;
    for (auto [from, to] : {std::pair<std::string, std::string>{"\"0-13\"", "\"0\""}, {"\"14-27\"", "\"1\""}}) {
        for (size_t at; (at = s.find(from)) != std::string::npos;) {
            s.replace(at, from.size(), to);
        }
    }
    return s;
}

TEST(PlanFiles, HostfileAndRankfileForTwoHosts) {
    auto p = parse_plan_ranks(kTwoHostPlan, "plan.json", "here");
    ASSERT_TRUE(p.ok()) << p.status().to_string();
    EXPECT_EQ(p->world_size, 4);
    EXPECT_TRUE(p->gpu);
    EXPECT_FALSE(p->single_host());
    EXPECT_EQ(hostfile_text(*p), "gpu-a slots=2\ngpu-b slots=2\n");
    EXPECT_EQ(rankfile_text(*p),
              "rank 0=gpu-a slot=0-13\n"
              "rank 1=gpu-a slot=14-27\n"
              "rank 2=gpu-b slot=0-13\n"
              "rank 3=gpu-b slot=14-27\n");
}

TEST(PlanFiles, DefaultsWithoutBindingInfo) {
    // No "ranks" at all: every rank on the default host, no CPU lists -> no rankfile...
    auto p = parse_plan_ranks(R"({"world_size": 4})", "p.json", "node7");
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(hostfile_text(*p), "node7 slots=4\n");
    EXPECT_EQ(rankfile_text(*p), "");
    // ...until the host's CPUs are known: an even share each.
    fill_default_cpus(&p.value(), {0, 1, 2, 3, 4, 5, 6, 7});
    EXPECT_EQ(rankfile_text(*p),
              "rank 0=node7 slot=0-1\nrank 1=node7 slot=2-3\nrank 2=node7 slot=4-5\n"
              "rank 3=node7 slot=6-7\n");
    // A CPU list this host cannot honour (a plan for a described node type) is replaced too.
    auto big = parse_plan_ranks(kTwoHostPlan, "plan.json", "here");
    ASSERT_TRUE(big.ok());
    EXPECT_EQ(fill_default_cpus(&big.value(), {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}), 2);
    EXPECT_EQ(rankfile_text(*big),
              "rank 0=gpu-a slot=0-13\nrank 1=gpu-a slot=8-15\nrank 2=gpu-b slot=0-13\n"
              "rank 3=gpu-b slot=8-15\n");
    // More ranks than CPUs: round-robin single CPUs.
    auto q = parse_plan_ranks(R"({"world_size": 3})", "q.json", "n");
    ASSERT_TRUE(q.ok());
    fill_default_cpus(&q.value(), {0, 1});
    EXPECT_EQ(rankfile_text(*q), "rank 0=n slot=0\nrank 1=n slot=1\nrank 2=n slot=0\n");
}

TEST(PlanFiles, BadPlansAreRefusedWithTheField) {
    auto bad = [](const std::string& text) {
        auto p = parse_plan_ranks(text, "bad.json", "h");
        return p.ok() ? std::string("ok") : p.status().message();
    };
    EXPECT_NE(bad("not json").find("bad.json"), std::string::npos);
    EXPECT_NE(bad(R"({"ranks": []})").find("world_size"), std::string::npos);
    EXPECT_NE(bad(R"({"world_size": 2, "ranks": [{"rank": 0}]})").find("ranks"), std::string::npos);
    EXPECT_NE(bad(R"({"world_size": 2, "ranks": [{"rank": 0}, {"rank": 0}]})").find("repeated"), std::string::npos);
    EXPECT_NE(bad(R"({"world_size": 1, "ranks": [{"rank": 0, "cpus": "0;rm -rf"}]})").find("cpus"), std::string::npos);
    EXPECT_NE(bad(R"({"world_size": 1, "ranks": [{"rank": 0, "cpus": "3-1"}]})").find("cpus"), std::string::npos);
    EXPECT_NE(bad(R"({"world_size": 1, "ranks": [{"rank": 0, "cpus": "-"}]})").find("cpus"), std::string::npos);
    EXPECT_NE(bad(R"({"world_size": 1, "ranks": [{"rank": 0, "host": "a b"}]})").find("host"), std::string::npos);
    EXPECT_EQ(bad(R"({"world_size": 1, "ranks": [{"rank": 0, "cpus": "0-3,8,10-11"}]})"), "ok");
}

TEST(Network, InterfaceChoice) {
    FakeSysfs fs;
    fs.netdev("lo", "unknown", 772);
    fs.netdev("eth0", "up");
    fs.netdev("eth1", "down");
    fs.put("route",
           "Iface\tDestination\tGateway\tFlags\nbond0\t000200C0\t00000000\t0001\neth0\t00000000\t010200C0\t0003\n");
    NetworkInputs in;
    in.interfaces = read_interfaces_sysfs(fs.root());
    ASSERT_EQ(in.interfaces.size(), 3u);
    in.default_route_iface = default_route_interface(fs.root() + "/route");
    EXPECT_EQ(in.default_route_iface, "eth0");

    in.single_host = true;
    auto c = choose_network(in);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(c->iface, "lo");
    EXPECT_EQ(c->iface_ipv4, "127.0.0.1");

    in.single_host = false;
    c = choose_network(in);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(c->iface, "eth0");
    EXPECT_TRUE(c->hcas.empty());

    in.iface_override = "eth9";
    c = choose_network(in);
    ASSERT_FALSE(c.ok());
    EXPECT_NE(c.status().message().find("eth9"), std::string::npos);
}

TEST(Network, RoceEnvironment) {
    FakeSysfs fs;
    fs.netdev("lo", "unknown", 772);
    fs.netdev("eth0", "up");
    fs.netdev("eth2", "up");
    fs.port("mlx5_0", 1, "4: ACTIVE", "Ethernet");
    fs.gid("mlx5_0", 1, 0, kLinkLocal, "IB/RoCE v1", "eth2");
    fs.gid("mlx5_0", 1, 1, kLinkLocal, "RoCE v2", "eth2");
    fs.gid("mlx5_0", 1, 2, kV4, "IB/RoCE v1", "eth2");
    fs.gid("mlx5_0", 1, 3, kV4, "RoCE v2", "eth2");
    fs.port("mlx5_1", 1, "1: DOWN", "Ethernet");
    NetworkInputs in;
    in.single_host = false;
    in.rdma = read_rdma_sysfs(fs.root());
    in.interfaces = read_interfaces_sysfs(fs.root());
    in.default_route_iface = "eth0";
    auto c = choose_network(in);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ(c->iface, "eth2");                               // the RoCE port's netdev beats the default route
    EXPECT_EQ(c->hcas, std::vector<std::string>{"mlx5_0:1"});  // the DOWN port is left out
    EXPECT_TRUE(c->roce);
    EXPECT_EQ(c->gid_index, 3);

    const LaunchEnv env = make_launch_env(*c, false, true);
    auto get = [&](const std::string& k) {
        for (const auto& [n, v] : env.env) {
            if (n == k) {
                return v;
            }
        }
        return std::string("<unset>");
    };
    EXPECT_EQ(get("NCCL_IB_GID_INDEX"), "3");
    EXPECT_EQ(get("UCX_IB_GID_INDEX"), "3");
    EXPECT_EQ(get("NCCL_IB_HCA"), "mlx5_0:1");
    EXPECT_EQ(get("UCX_NET_DEVICES"), "eth2,mlx5_0:1");
    EXPECT_EQ(get("NCCL_SOCKET_IFNAME"), "eth2");
    const std::string text = launch_env_text(env, {"mpirun -np 4 x"});
    EXPECT_NE(text.find("export NCCL_IB_GID_INDEX=3\n"), std::string::npos) << text;
    EXPECT_NE(text.find("export OMPI_MCA_btl_tcp_if_include=eth2\n"), std::string::npos) << text;
    EXPECT_NE(text.find("# mpirun -np 4 x\n"), std::string::npos) << text;

    // No RDMA on a CPU cluster: TCP on the interface, NCCL's IB off only for GPU jobs.
    NetworkChoice tcp;
    tcp.iface = "eth0";
    const LaunchEnv e2 = make_launch_env(tcp, false, false);
    bool ib_disable = false;
    for (const auto& [n, v] : e2.env) {
        ib_disable = ib_disable || n == "NCCL_IB_DISABLE";
        EXPECT_NE(n, "NCCL_IB_GID_INDEX");
    }
    EXPECT_FALSE(ib_disable);
}

TEST(ShellQuote, QuotesWhatTheShellWouldSplit) {
    EXPECT_EQ(shell_quote("abc-1.2:/x"), "abc-1.2:/x");
    EXPECT_EQ(shell_quote("a b"), "'a b'");
    EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
    EXPECT_EQ(shell_quote(""), "''");
}

// prepare() end to end on a fake sysfs: the files land in the run dir and the mpirun line uses them;
// extra mpirun arguments replace ours where they overlap.
TEST(Prepare, WritesFilesAndBuildsTheJobCommand) {
    FakeSysfs fs;
    fs.netdev("lo", "unknown", 772);
    fs.netdev("eth0", "up");
    fs.put("model/config.json", "{}");
    fs.put("plan.json", small_plan());
    fs.put("route", "Iface\tDestination\tGateway\tFlags\neth0\t00000000\t010200C0\t0003\n");
    LaunchOptions o;
    o.model = fs.root() + "/model";
    o.plan = fs.root() + "/plan.json";
    o.run_dir = fs.root() + "/run";
    o.sysfs_root = fs.root();
    o.route_file = fs.root() + "/route";
    o.control = "10.0.0.5:0";
    o.shard_bin = "/opt/ds/deepshard-shard";
    auto p = prepare(o);
    ASSERT_TRUE(p.ok()) << p.status().to_string();
    auto slurp = [](const std::string& path) {
        std::ifstream in(path);
        return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    };
    EXPECT_EQ(slurp(o.run_dir + "/hostfile"), "gpu-a slots=2\ngpu-b slots=2\n");
    EXPECT_EQ(slurp(o.run_dir + "/rankfile"),
              "rank 0=gpu-a slot=0\nrank 1=gpu-a slot=1\nrank 2=gpu-b slot=0\nrank 3=gpu-b slot=1\n");
    const std::string env = slurp(o.run_dir + "/launch.env");
    EXPECT_NE(env.find("export NCCL_SOCKET_IFNAME=eth0"), std::string::npos) << env;
    EXPECT_NE(env.find("export NCCL_IB_DISABLE=1"), std::string::npos) << env;  // GPU plan, no RDMA here
    EXPECT_EQ(p->control_host, "10.0.0.5");

    auto argv = shard_job_argv(o, *p, "10.0.0.5:7001");
    auto joined = [](const std::vector<std::string>& a) {
        std::string s;
        for (const auto& x : a) {
            s += x + " ";
        }
        return s;
    };
    const std::string line = joined(argv);
    EXPECT_NE(line.find("-np 4 "), std::string::npos) << line;
    EXPECT_NE(line.find("--hostfile " + o.run_dir + "/hostfile"), std::string::npos) << line;
    EXPECT_NE(line.find("--rankfile " + o.run_dir + "/rankfile --mca rmaps_rank_file_physical 1"), std::string::npos);
    EXPECT_NE(line.find("--mca btl_tcp_if_include eth0"), std::string::npos) << line;
    EXPECT_NE(line.find("-x NCCL_SOCKET_IFNAME"), std::string::npos) << line;
    EXPECT_NE(
        line.find("/opt/ds/deepshard-shard --model " + o.model + " --plan " + o.plan + " --coordinator 10.0.0.5:7001"),
        std::string::npos)
        << line;

    // The netns cluster's own hostfile and rsh agent: ours step aside.
    o.mpi_args = {"--hostfile",   "/run/x/hostfile", "--mca",         "btl_tcp_if_include",
                  "10.77.0.0/24", "--mca",           "plm_rsh_agent", "launch/netns-rsh"};
    const std::string l2 = joined(shard_job_argv(o, *p, "10.0.0.5:7001"));
    EXPECT_EQ(l2.find("--hostfile " + o.run_dir), std::string::npos) << l2;
    EXPECT_EQ(l2.find("btl_tcp_if_include eth0"), std::string::npos) << l2;
    EXPECT_NE(l2.find("--mca plm_rsh_agent launch/netns-rsh /opt/ds/deepshard-shard"), std::string::npos) << l2;

    // srun: one mask list per node.
    o.mpi_args.clear();
    o.launcher = "srun";
    const std::string l3 = joined(shard_job_argv(o, *p, "h:1"));
    EXPECT_NE(l3.find("srun --mpi=pmix --ntasks=4 --nodes=2 --kill-on-bad-exit=1 --cpu-bind=mask_cpu:0x1,0x2 "),
              std::string::npos)
        << l3;

    // Bad options are named.
    o.launcher = "ssh";
    auto bad = prepare(o);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("--launcher"), std::string::npos);
}

}  // namespace
}  // namespace deepshard::launch
