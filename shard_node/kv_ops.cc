#include "shard_node/kv_ops.h"

#include <string>

namespace deepshard::shard_node {

namespace ctl = deepshard::control;

namespace {

Status check_domain(uint32_t d, uint32_t domains, const char* what) {
    if (d >= domains) {
        return protocol_error(std::string("kv ") + what + ": domain " + std::to_string(d) + " but the job has " +
                              std::to_string(domains) + " KV domain(s)");
    }
    return ok_status();
}

Status as_protocol(Status s, const char* what) {
    if (s.ok()) return s;
    return protocol_error(std::string("kv ") + what + ": " + s.message());
}

}  // namespace

Status apply_kv_ops(const ctl::StepBatch& batch, uint32_t domain, uint32_t domains, model::KvBlockManager& blocks,
                    const std::function<void(uint64_t)>& drop_kv) {
    const ctl::KvOps& ops = batch.kv;
    // Publish before release: a sequence's last full blocks are cached as it ends.
    for (const ctl::KvPublish& p : ops.publish) {
        DS_RETURN_IF_ERROR(check_domain(p.domain, domains, "publish"));
        if (p.domain != domain) continue;
        DS_RETURN_IF_ERROR(as_protocol(blocks.publish(p.entry, p.seq_id, p.block_index), "publish"));
    }
    for (uint64_t id : batch.release) drop_kv(id);
    // Preempted sequences lose their KV only (their sampler stays for the recomputation).
    for (uint64_t id : ops.preempt) drop_kv(id);
    for (const ctl::KvEvict& e : ops.evict) {
        DS_RETURN_IF_ERROR(check_domain(e.domain, domains, "evict"));
        if (e.domain != domain) continue;
        DS_RETURN_IF_ERROR(as_protocol(blocks.evict(e.entry), "evict"));
    }
    for (const ctl::KvStart& st : ops.start) {
        DS_RETURN_IF_ERROR(check_domain(st.domain, domains, "start"));
        if (st.domain != domain) continue;
        if (blocks.has(st.seq_id) && !blocks.block_table(st.seq_id).empty()) {
            return protocol_error("kv start: sequence " + std::to_string(st.seq_id) + " still holds KV blocks");
        }
        if (!st.prefix.empty()) DS_RETURN_IF_ERROR(as_protocol(blocks.fork(st.seq_id, st.prefix), "start"));
    }
    return ok_status();
}

}  // namespace deepshard::shard_node
