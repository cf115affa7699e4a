// Discovery on the machine running the tests: at least one core and one NUMA node; sources that are
// absent (no GPU, no RDMA device) give empty lists with a reason, never an error.
#include "topology/discovery.h"

#include <gtest/gtest.h>

#include <set>

namespace deepshard::topology {
namespace {

TEST(Discovery, FindsThisHost) {
    auto h = discover_host();
    ASSERT_TRUE(h.ok()) << h.status().to_string();
    std::printf("%s", to_text(*h).c_str());
    EXPECT_FALSE(h->hostname.empty());
    EXPECT_GE(h->sockets, 1);
    EXPECT_GE(h->cores, 1);
    EXPECT_GE(h->pus, h->cores);
    ASSERT_GE(h->numa_nodes.size(), 1u);
    EXPECT_GT(h->memory_bytes, 0);
    // Every PU belongs to exactly one NUMA node.
    std::set<int> seen;
    size_t total = 0;
    for (const auto& n : h->numa_nodes) {
        total += n.cpus.size();
        seen.insert(n.cpus.begin(), n.cpus.end());
    }
    EXPECT_EQ(total, seen.size());
    EXPECT_EQ(static_cast<int>(total), h->pus);
    EXPECT_EQ(h->numa_of_cpu(*seen.begin()), h->numa_nodes.front().os_index);
    // GPUs and RDMA devices: whatever is there is described, and absence is explained.
    EXPECT_FALSE(h->gpu_source.empty());
    EXPECT_FALSE(h->rdma_source.empty());
    for (const auto& g : h->gpus) {
        EXPECT_FALSE(g.pci_bus_id.empty());
        EXPECT_GT(g.memory_bytes, 0);
    }
    for (const auto& d : h->rdma) {
        EXPECT_FALSE(d.name.empty());
        for (const auto& p : d.ports) {
            EXPECT_TRUE(p.link_layer == "InfiniBand" || p.link_layer == "Ethernet") << p.link_layer;
        }
    }
    for (const auto& p : h->pci) {
        EXPECT_EQ(p.bus_id.size(), 12u) << p.bus_id;  // dddd:bb:dd.f
    }
    const auto j = to_json(*h);
    EXPECT_EQ(j["numa_nodes"].size(), h->numa_nodes.size());
    EXPECT_EQ(j["rdma"].size(), h->rdma.size());
}

TEST(Discovery, SourcesCanBeSkipped) {
    DiscoveryOptions o;
    o.cuda = false;
    o.rdma = false;
    auto h = discover_host(o);
    ASSERT_TRUE(h.ok()) << h.status().to_string();
    EXPECT_TRUE(h->gpus.empty());
    EXPECT_TRUE(h->rdma.empty());
    EXPECT_EQ(h->gpu_source, "not probed");
}

}  // namespace
}  // namespace deepshard::topology
