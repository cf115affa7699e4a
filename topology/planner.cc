// Planner search: every (pipeline stages x ranks per stage x attention mode) that uses all ranks is
// checked for validity (divisibility, node alignment), sized (memory per rank, KV left over) and
// costed; the best fitting one by the objective wins, and the others are kept with their reasons
// so that the summary can say why they lost.
#include "topology/planner.h"

#include <algorithm>
#include <cmath>
#include <sstream>

namespace deepshard::topology {

namespace {

constexpr double kGpuWorkspace = 512.0 * (1 << 20);  // cuBLAS/CUTLASS workspace, CUDA graphs (assumption)
constexpr double kCpuWorkspace = 64.0 * (1 << 20);
constexpr double kNcclPerComm = 256.0 * (1 << 20);  // NCCL channel buffers per communicator (assumption)

// What evaluating one layout produced.
struct Eval {
    Candidate cand;
    std::vector<std::pair<int64_t, int64_t>> stages;
    std::vector<int> expert_owner;
    std::vector<RankMemory> memory;
    int64_t capacity_tokens = 0;
    int64_t max_seq_tokens = 0;
    double kv_budget = 0;  // per rank (Plan::kv_budget_bytes)
    std::string kv_budget_reason;
    DecodeEstimate decode, bs1;
    PrefillEstimate prefill;
    std::string decode_bound, bs1_bound, prefill_bound;
};

std::string pct(double f) { return std::to_string(static_cast<int>(std::lround(f * 100))) + "%"; }

// "decode limited by expert weight reads over HBM at 30% efficiency (61% of the step)".
std::string bound_text(const CostModel& cm, const char* what, const BoundTimes& t) {
    const Bound b = dominant_bound(t);
    const double total = total_seconds(t);
    return std::string(what) + " limited by " + cm.describe(b) + " (" +
           pct(total > 0 ? t[static_cast<size_t>(b)] / total : 0) + " of the step)";
}

StatusOr<std::pair<DtypePath, std::string>> choose_dtype(const model::ModelConfig& c,
                                                         const DeviceSpec& d,
                                                         const std::string& want) {
    const bool fp8_ckpt = c.quantization.fp8;
    if (want != "auto" && want != "fp8" && want != "fp8-weight-only" && want != "bf16") {
        return invalid_argument("--dtype must be auto, fp8, fp8-weight-only or bf16, got \"" + want + "\"");
    }
    if (!fp8_ckpt && (want == "fp8" || want == "fp8-weight-only")) {
        return invalid_argument(
            "--dtype " + want +
            ": the checkpoint is BF16 (no quantization_config); quantizing at load is not supported");
    }
    if (want == "fp8" && !d.has_fp8()) {
        return invalid_argument("--dtype fp8: " + d.name + " (" + d.arch +
                                ") has no FP8 tensor cores; use fp8-weight-only (FP8 weights dequantized on the fly) "
                                "or bf16");
    }
    if (want == "bf16") {
        return std::make_pair(DtypePath::kBf16, std::string(fp8_ckpt ? "bf16 requested: FP8 weights upcast at load "
                                                                       "(twice the memory)"
                                                                     : "bf16 requested"));
    }
    if (!fp8_ckpt) {
        return std::make_pair(DtypePath::kBf16, std::string("the checkpoint is BF16"));
    }
    if (d.has_fp8() && want != "fp8-weight-only") {
        return std::make_pair(DtypePath::kFp8, d.name +
                                                   " has FP8 tensor cores: block-scaled FP8 weights and "
                                                   "activations, FP8 GEMMs with FP32 accumulation");
    }
    if (want == "fp8-weight-only") {
        return std::make_pair(DtypePath::kFp8WeightOnly, std::string("fp8-weight-only requested"));
    }
    return std::make_pair(DtypePath::kFp8WeightOnly,
                          d.name + (d.is_gpu() ? " has no FP8 tensor cores" : " is a CPU") +
                              ": FP8 weights stay FP8 in memory (half of BF16) and are dequantized to BF16 inside "
                              "the GEMM");
}

// Layout rules that do not depend on memory. Empty = valid.
std::string structural_problem(const model::ModelConfig& c, const Cluster& cl, int pp, int S, Attention attn) {
    if (pp > c.num_hidden_layers) {
        return std::to_string(pp) + " stages for " + std::to_string(c.num_hidden_layers) + " layers";
    }
    if (attn == Attention::kTp && S > 1) {
        if (c.num_attention_heads % S != 0) {
            return std::to_string(c.num_attention_heads) + " heads do not divide by tp " + std::to_string(S);
        }
        if (c.vocab_size % S != 0) {
            return "vocabulary " + std::to_string(c.vocab_size) + " does not divide by tp " + std::to_string(S);
        }
        if (c.intermediate_size % S != 0 || (c.moe_intermediate_size * c.n_shared_experts) % S != 0) {
            return "MLP widths do not divide by tp " + std::to_string(S);
        }
    }
    if (cl.homogeneous() && cl.nodes.size() > 1) {
        const int rpn = cl.ranks_per_node();
        if (S % rpn != 0 && rpn % S != 0) {
            return "a stage of " + std::to_string(S) + " ranks would straddle nodes of " + std::to_string(rpn);
        }
    }
    return "";
}

std::vector<int> place_experts(const model::ModelConfig& c, int S) {
    std::vector<int> owner;
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
        owner.push_back(static_cast<int>(e * S / c.n_routed_experts));
    }
    return owner;
}

int max_experts_per_rank(const std::vector<int>& owner, int S) {
    std::vector<int> count(static_cast<size_t>(S), 0);
    for (int o : owner) {
        ++count[static_cast<size_t>(o)];
    }
    return count.empty() ? 0 : *std::max_element(count.begin(), count.end());
}

// Weight bytes of one layer on the fullest rank.
double layer_bytes(const ModelStats& s, int64_t l, int split, int experts) {
    const model::ModelConfig& c = s.config();
    double b = s.attention_bytes(split);
    if (c.is_moe_layer(l)) {
        b += s.shared_bytes(split) + s.router_bytes() + experts * s.expert_bytes();
    } else {
        b += s.dense_mlp_bytes(split);
    }
    return b;
}

// Whether the engine of a plan's ranks holds the checkpoint's MTP module: the CPU engine loads it
// whenever the checkpoint has one (model/shard_weights.cc load_mtp), speculative decoding or not;
// the CUDA engine does not run it yet and never uploads it (shard_weights.h, tensors()).
bool holds_mtp(const model::ModelConfig& c, bool gpu) {
    return c.num_nextn_predict_layers > 0 && !gpu;
}

// Weight bytes of the MTP module on the last stage's fullest rank (0 when not held): one more
// layer, its own embedding and head (vocab-parallel like the main ones), the BF16 [H, 2H] eh_proj
// and three norms.
double mtp_bytes(const ModelStats& s, int split, int experts, bool held) {
    const model::ModelConfig& c = s.config();
    if (!held) return 0.0;
    const double H = static_cast<double>(c.hidden_size);
    return layer_bytes(s, c.num_hidden_layers, split, experts) + s.embed_bytes(split) + s.head_bytes(split) +
           2.0 * H * 2.0 * H + 2.0 * 4.0 * H;
}

// Latent-cache layer slots of a stage: its layers, plus the MTP module's own slot on the last stage
// (the engine keeps the module's cache in one more layer of the same blocks, model/cpu_engine.cc).
int64_t kv_layer_slots(const std::pair<int64_t, int64_t>& stage, bool last, bool mtp_held) {
    return stage.second - stage.first + (last && mtp_held ? 1 : 0);
}

// Contiguous layer ranges minimising the fullest stage's bytes (embedding on stage 0, head on the last).
std::vector<std::pair<int64_t, int64_t>> split_layers(const ModelStats& s, int pp, int split, int experts,
                                                      bool mtp_held) {
    const int64_t L = s.config().num_hidden_layers;
    std::vector<double> w(static_cast<size_t>(L));
    for (int64_t l = 0; l < L; ++l) {
        w[static_cast<size_t>(l)] = layer_bytes(s, l, split, experts);
    }
    w.front() += s.embed_bytes(split);
    w.back() += s.head_bytes(split) + mtp_bytes(s, split, experts, mtp_held);
    // Greedy packing under a cap; binary search the smallest cap that needs <= pp stages.
    auto pack = [&](double cap) {
        std::vector<std::pair<int64_t, int64_t>> st;
        int64_t first = 0;
        double acc = 0;
        for (int64_t l = 0; l < L; ++l) {
            const int64_t left_layers = L - l, left_stages = pp - static_cast<int64_t>(st.size());
            const bool must_cut = left_layers < left_stages;  // every later stage needs a layer
            if (l > first && (acc + w[static_cast<size_t>(l)] > cap || must_cut)) {
                st.push_back({first, l});
                first = l;
                acc = 0;
            }
            acc += w[static_cast<size_t>(l)];
        }
        st.push_back({first, L});
        return st;
    };
    double lo = *std::max_element(w.begin(), w.end()), hi = 0;
    for (double x : w) {
        hi += x;
    }
    for (int it = 0; it < 60; ++it) {
        const double mid = (lo + hi) / 2;
        (static_cast<int>(pack(mid).size()) <= pp ? hi : lo) = mid;
    }
    auto st = pack(hi);
    // Fewer stages than asked (tiny models): split the largest ranges until there are pp of them.
    while (static_cast<int>(st.size()) < pp) {
        auto it = std::max_element(
            st.begin(), st.end(), [](const auto& a, const auto& b) { return a.second - a.first < b.second - b.first; });
        const int64_t mid = it->first + (it->second - it->first) / 2;
        const auto tail = std::make_pair(mid, it->second);
        it->second = mid;
        st.insert(it + 1, tail);
    }
    return st;
}

Eval evaluate(
    const ModelStats& s, const Cluster& cl, const PlanOptions& o, DtypePath dtype, int pp, int S, Attention attn) {
    const model::ModelConfig& c = s.config();
    Eval ev;
    ev.cand.layout = {pp, S, attn};
    const std::string problem = structural_problem(c, cl, pp, S, attn);
    if (!problem.empty()) {
        ev.cand.reason = problem;
        return ev;
    }
    const bool dp = attn == Attention::kDp;
    const int split = dp ? 1 : S;
    const Workload& w = o.workload;
    ev.expert_owner = place_experts(c, S);
    const int experts = max_experts_per_rank(ev.expert_owner, S);
    const Node& node = cl.nodes.front();
    const bool gpu = node.device.is_gpu();
    const bool mtp_held = holds_mtp(c, gpu);
    ev.stages = split_layers(s, pp, split, experts, mtp_held);
    const int64_t seq_len = std::min(w.prompt_tokens + w.output_tokens, c.max_position_embeddings);
    const int64_t min_kv = o.min_kv_tokens > 0 ? o.min_kv_tokens : seq_len;

    // Memory of the fullest rank of each stage.
    const double H = static_cast<double>(c.hidden_size), T = static_cast<double>(w.prefill_tokens_per_rank);
    const double heads = static_cast<double>(c.num_attention_heads / split);
    const double k = static_cast<double>(c.num_experts_per_tok);
    const double per_token = 2.0 * (6 * H + heads * static_cast<double>(c.qk_head_dim() + c.v_head_dim) +
                                    static_cast<double>(c.kv_lora_rank + c.qk_rope_head_dim + c.q_lora_rank) +
                                    3 * std::max(static_cast<double>(c.intermediate_size / split),
                                                 k * static_cast<double>(c.moe_intermediate_size)));
    const double ctx_expand =
        static_cast<double>(w.prompt_tokens) * heads * static_cast<double>(c.qk_nope_head_dim + c.v_head_dim) * 2.0;
    ev.capacity_tokens = INT64_MAX;
    ev.max_seq_tokens = INT64_MAX;
    for (int st = 0; st < pp; ++st) {
        RankMemory m;
        m.stage = st;
        m.capacity = static_cast<double>(node.rank_memory_bytes());
        m.usable = m.capacity * o.mem_fraction;
        for (int64_t l = ev.stages[st].first; l < ev.stages[st].second; ++l) {
            m.weights += layer_bytes(s, l, split, experts);
        }
        m.weights += st == 0 ? s.embed_bytes(split) : 0.0;
        const bool last = st + 1 == pp;
        m.weights += last ? s.head_bytes(split) + mtp_bytes(s, split, experts, mtp_held) : 0.0;
        m.activations = T * per_token + ctx_expand + (gpu ? kGpuWorkspace : kCpuWorkspace);
        if (last) {
            m.activations += static_cast<double>(w.max_batch_per_rank) * static_cast<double>(c.vocab_size / split) * 4;
        }
        m.comm = gpu ? kNcclPerComm * (1 + (S > 1) + (pp > 1)) : kCpuWorkspace;
        if (dp && S > 1) {
            m.comm += 2 * T * std::min<double>(k, S) * H * 3;  // dispatch (FP8) + combine (BF16) buffers
        }
        m.kv_room = m.usable - m.weights - m.activations - m.comm;
        ev.cand.max_rank_bytes = std::max(ev.cand.max_rank_bytes, m.weights + m.activations + m.comm);
        ev.memory.push_back(m);
    }
    for (const auto& m : ev.memory) {
        if (m.kv_room <= 0) {
            ev.cand.reason = "stage " + std::to_string(m.stage) + " needs " + format_gb(m.weights) + " weights + " +
                             format_gb(m.activations) + " activations + " + format_gb(m.comm) +
                             " comm buffers = " + format_gb(m.weights + m.activations + m.comm) + " per rank > " +
                             format_gb(m.usable) + " usable (" + pct(o.mem_fraction) + " of " + format_gb(m.capacity) +
                             ")";
            return ev;
        }
    }
    // One KV budget for every rank: the plan file carries one number and each rank registers the
    // blocks it holds. It is the smallest room of any rank, capped at what the workload can keep
    // resident (pp step batches in flight, DESIGN §3, each of max_batch_per_rank sequences of
    // seq_len tokens, on the stage with the most layers): past that the pool is memory nothing uses,
    // and on a CPU host it is committed RAM. --kv-budget-mb fixes it instead.
    const double per_token_layer = static_cast<double>(s.kv_bytes_per_token_layer());
    double room = INFINITY;
    int64_t max_layers = 1;
    for (const auto& m : ev.memory) {
        room = std::min(room, m.kv_room);
        max_layers = std::max(max_layers, kv_layer_slots(ev.stages[m.stage], m.stage + 1 == pp, mtp_held));
    }
    const double need = static_cast<double>(pp) * static_cast<double>(w.max_batch_per_rank) *
                        static_cast<double>(seq_len) * static_cast<double>(max_layers) * per_token_layer;
    if (o.kv_budget_bytes > 0) {
        if (static_cast<double>(o.kv_budget_bytes) > room) {
            ev.cand.reason = "a KV budget of " + format_gb(static_cast<double>(o.kv_budget_bytes)) +
                             " per rank does not fit: the fullest rank has " + format_gb(room) + " left for KV";
            return ev;
        }
        ev.kv_budget = static_cast<double>(o.kv_budget_bytes);
        ev.kv_budget_reason = "fixed by --kv-budget-mb";
    } else if (need < room) {
        ev.kv_budget = std::floor(need);
        ev.kv_budget_reason = "what the workload keeps resident (" + std::to_string(pp) + " step batch(es) in flight x " +
                              std::to_string(w.max_batch_per_rank) + " sequences x " + std::to_string(seq_len) +
                              " tokens), below the " + format_gb(room) + " left";
    } else {
        ev.kv_budget = std::floor(room);
        ev.kv_budget_reason = "what memory leaves on the fullest rank";
    }
    for (auto& m : ev.memory) {
        m.kv = ev.kv_budget;
        const double layers = static_cast<double>(kv_layer_slots(ev.stages[m.stage], m.stage + 1 == pp, mtp_held));
        m.kv_tokens = static_cast<int64_t>(m.kv / (layers * per_token_layer));
        ev.capacity_tokens = std::min(ev.capacity_tokens, dp ? m.kv_tokens * S : m.kv_tokens);
        ev.max_seq_tokens = std::min(ev.max_seq_tokens, m.kv_tokens);
    }
    ev.max_seq_tokens = std::min(ev.max_seq_tokens, c.max_position_embeddings);
    ev.cand.kv_tokens = ev.capacity_tokens;
    if (ev.max_seq_tokens < min_kv) {
        ev.cand.reason = "leaves KV room for only " + std::to_string(ev.max_seq_tokens) +
                         " tokens per sequence, below the " + std::to_string(min_kv) + " required";
        return ev;
    }
    ev.cand.fits = true;
    Geometry g;
    g.pp = pp;
    g.ranks_per_stage = S;
    g.dp_attention = dp;
    g.ranks_per_node = cl.ranks_per_node();
    g.stages = ev.stages;
    g.max_experts_per_rank = experts;
    const CostModel cm(s, node.device, dtype, g, o.serving);
    const int64_t cap = static_cast<int64_t>(w.max_batch_per_rank) * (dp ? S : 1);
    const int64_t batch = std::max<int64_t>(1, std::min(cap, ev.capacity_tokens / (pp * seq_len)));
    ev.prefill = cm.prefill(w.prefill_tokens_per_rank, w.prompt_tokens, w.prefix_hit_rate);
    ev.decode = cm.serve(w, batch, ev.prefill);
    ev.bs1 = cm.decode(1, w.prompt_tokens, w.mtp_speedup);
    ev.decode_bound = bound_text(cm, "decode", ev.decode.by_bound);
    ev.bs1_bound = bound_text(cm, "batch-1 decode", ev.bs1.by_bound);
    ev.prefill_bound = bound_text(cm, "prefill", ev.prefill.by_bound);
    ev.cand.decode_tokens_per_s = ev.decode.tokens_per_s;
    ev.cand.tpot_bs1_ms = ev.bs1.tpot_ms;
    return ev;
}

std::vector<RankBinding> bind_ranks(const Cluster& cl, int S) {
    std::vector<RankBinding> out;
    int rank = 0;
    for (size_t ni = 0; ni < cl.nodes.size(); ++ni) {
        const Node& n = cl.nodes[ni];
        const HostTopology& t = n.topo;
        std::vector<RankBinding> local;
        for (int i = 0; i < n.slots; ++i, ++rank) {
            RankBinding b;
            b.rank = rank;
            b.stage = rank / S;
            b.local = rank % S;
            b.node = static_cast<int>(ni);
            b.host = n.host;
            if (n.device.is_gpu() && i < static_cast<int>(t.gpus.size())) {
                b.gpu = t.gpus[static_cast<size_t>(i)].index;
                b.numa = t.gpus[static_cast<size_t>(i)].numa_node;
                b.nic = t.nic_for_gpu(b.gpu);
            } else {
                b.gpu = n.device.is_gpu() ? i : -1;
                if (!t.numa_nodes.empty()) {
                    b.numa = t.numa_nodes[static_cast<size_t>(i) * t.numa_nodes.size() / n.slots].os_index;
                }
                b.nic = t.nic_for_numa(b.numa);
            }
            if (b.nic.empty()) {
                for (const auto& p : t.pci) {
                    if (p.kind == "nic" && !p.os_devices.empty()) {
                        b.nic = p.os_devices.front();
                        break;
                    }
                }
            }
            local.push_back(b);
        }
        // Share each NUMA node's CPUs among the ranks bound to it.
        for (const auto& numa : t.numa_nodes) {
            std::vector<RankBinding*> on;
            for (auto& b : local) {
                if (b.numa == numa.os_index) {
                    on.push_back(&b);
                }
            }
            const size_t nc = numa.cpus.size();
            if (nc == 0) continue;
            for (size_t j = 0; j < on.size(); ++j) {
                if (on.size() > nc) {
                    // More ranks than CPUs (oversubscribed test hosts): one CPU each, round robin, so the
                    // ranks spread evenly instead of some sharing all CPUs and others one.
                    on[j]->cpus = cpu_list_string({numa.cpus[j % nc]});
                    continue;
                }
                const size_t b0 = j * nc / on.size(), b1 = (j + 1) * nc / on.size();
                on[j]->cpus = cpu_list_string(std::vector<int>(numa.cpus.begin() + static_cast<long>(b0),
                                                               numa.cpus.begin() + static_cast<long>(b1)));
            }
        }
        out.insert(out.end(), local.begin(), local.end());
    }
    return out;
}

std::string refusal(
    const ModelStats& s, const Cluster& cl, const PlanOptions& o, DtypePath dtype, const std::vector<Eval>& evals) {
    std::ostringstream m;
    const Node& node = cl.nodes.front();
    const double per_rank = static_cast<double>(node.rank_memory_bytes());
    const double usable_total = per_rank * o.mem_fraction * cl.world_size();
    m << "cannot place the model on " << cl.description << ": ";
    if (s.total_bytes() > usable_total) {
        m << "its weights alone need " << format_gb(s.total_bytes()) << " (" << dtype_path_name(dtype)
          << (s.fp8_weights() ? " + block scales" : "") << ") but " << cl.world_size() << " ranks x "
          << format_gb(per_rank * o.mem_fraction) << " usable (" << pct(o.mem_fraction) << " of " << format_gb(per_rank)
          << ") = " << format_gb(usable_total) << "; physical total " << format_gb(per_rank * cl.world_size()) << ". ";
    }
    const Eval* best = nullptr;
    for (const auto& e : evals) {
        if (!e.memory.empty() && (!best || e.cand.max_rank_bytes < best->cand.max_rank_bytes)) {
            best = &e;
        }
    }
    if (best) {
        m << "Smallest layout " << best->cand.layout.to_string() << ": " << best->cand.reason << ".";
    } else if (!evals.empty()) {
        m << "layout " << evals.front().cand.layout.to_string() << ": " << evals.front().cand.reason << ".";
    }
    return m.str();
}

}  // namespace

const char* attention_name(Attention a) { return a == Attention::kDp ? "dp" : "tp"; }

std::string LayoutRequest::to_string() const {
    std::string s = "pp=" + std::to_string(pp) + ",tp=" + std::to_string(ranks_per_stage);
    if (attention == Attention::kDp) {
        s = "pp=" + std::to_string(pp) + ",attn=dp,ep=" + std::to_string(ranks_per_stage);
    }
    return s;
}

StatusOr<LayoutRequest> parse_layout(std::string_view text) {
    LayoutRequest r;
    int width = 0;
    std::string width_key;
    std::string item;
    std::istringstream in{std::string(text)};
    bool any = false;
    while (std::getline(in, item, ',')) {
        const size_t eq = item.find('=');
        if (eq == std::string::npos) {
            return invalid_argument("layout \"" + std::string(text) + "\": \"" + item + "\" is not key=value");
        }
        const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
        any = true;
        if (key == "attn" || key == "attention") {
            if (value != "tp" && value != "dp") {
                return invalid_argument("layout \"" + std::string(text) + "\": attn must be tp or dp, got \"" + value +
                                        "\"");
            }
            r.attention = value == "dp" ? Attention::kDp : Attention::kTp;
            continue;
        }
        if (key != "pp" && key != "tp" && key != "dp" && key != "ep") {
            return invalid_argument("layout \"" + std::string(text) + "\": unknown key \"" + key +
                                    "\" (want pp, tp, dp, ep, attn)");
        }
        int v = 0;
        size_t used = 0;
        try {
            v = std::stoi(value, &used);
        } catch (...) {
            used = 0;
        }
        if (used != value.size() || v < 1 || v > 65536) {
            return invalid_argument("layout \"" + std::string(text) + "\": " + key +
                                    " must be a positive integer, got \"" + value + "\"");
        }
        if (key == "pp") {
            r.pp = v;
        } else if (width != 0 && width != v) {
            return invalid_argument(
                "layout \"" + std::string(text) + "\": " + width_key + "=" + std::to_string(width) + " and " + key +
                "=" + std::to_string(v) +
                " disagree; the ranks of a stage serve tp, dp and ep together, so they must be equal");
        } else {
            width = v;
            width_key = key;
        }
    }
    if (!any) {
        return invalid_argument("layout is empty (want e.g. pp=2,tp=2)");
    }
    r.ranks_per_stage = width == 0 ? 1 : width;
    return r;
}

StatusOr<Plan> make_plan(const model::ModelConfig& config, const Cluster& cluster, const PlanOptions& options) {
    if (cluster.nodes.empty()) {
        return invalid_argument("the cluster has no nodes");
    }
    for (const auto& n : cluster.nodes) {
        if (n.device.name != cluster.device().name) {
            return invalid_argument("mixed device types (" + cluster.device().name + ", " + n.device.name +
                                    ") are not supported: plan each kind of node as its own job");
        }
    }
    if (options.mem_fraction <= 0 || options.mem_fraction > 1) {
        return invalid_argument("--mem-fraction must be in (0, 1]");
    }
    DS_ASSIGN_OR_RETURN(auto dt, choose_dtype(config, cluster.device(), options.dtype));
    const model::KvStorage kv_storage =
        model::kv_storage_for(cluster.device().is_gpu(), options.numerics == "exact");
    const ModelStats stats(config, dt.first != DtypePath::kBf16, kv_storage);
    const int world = cluster.world_size();

    std::vector<Eval> evals;
    if (options.layout) {
        const LayoutRequest& l = *options.layout;
        if (l.pp * l.ranks_per_stage != world) {
            return invalid_argument("layout " + l.to_string() + " has " + std::to_string(l.pp * l.ranks_per_stage) +
                                    " ranks but the cluster " + cluster.description + " has " + std::to_string(world));
        }
        Eval e = evaluate(stats, cluster, options, dt.first, l.pp, l.ranks_per_stage, l.attention);
        if (e.memory.empty()) {
            return invalid_argument("layout " + l.to_string() + " does not fit this model: " + e.cand.reason);
        }
        evals.push_back(std::move(e));
    } else {
        for (int S = 1; S <= world; ++S) {
            if (world % S != 0) {
                continue;
            }
            evals.push_back(evaluate(stats, cluster, options, dt.first, world / S, S, Attention::kTp));
            if (S > 1 && config.n_routed_experts > 0) {
                evals.push_back(evaluate(stats, cluster, options, dt.first, world / S, S, Attention::kDp));
            }
        }
    }
    const Eval* best = nullptr;
    for (const auto& e : evals) {
        if (!e.cand.fits) {
            continue;
        }
        if (!best) {
            best = &e;
            continue;
        }
        const bool better = options.objective == Objective::kLatency
                                ? e.bs1.tpot_ms < best->bs1.tpot_ms * 0.999
                                : e.decode.tokens_per_s > best->decode.tokens_per_s * 1.001;
        if (better) {
            best = &e;
        }
    }
    if (!best) {
        return resource_exhausted(refusal(stats, cluster, options, dt.first, evals));
    }

    Plan p;
    p.model_source = options.model_source;
    p.config = config;
    p.cluster = cluster;
    p.options = options;
    p.world_size = world;
    p.ranks_per_stage = best->cand.layout.ranks_per_stage;
    p.attention = best->cand.layout.attention;
    p.stages = best->stages;
    p.expert_owner = best->expert_owner;
    p.dtype = dt.first;
    p.dtype_reason = dt.second;
    // What the ranks load: the main layers, plus the MTP module where the engine holds it (DeepSeek-V3:
    // 673.2 GB of main layers + 15.4 GB of MTP module; the model card's 685B parameters are 671B main
    // + 14B MTP).
    p.total_weight_bytes =
        stats.total_bytes() + mtp_bytes(stats, 1, static_cast<int>(config.n_routed_experts),
                                        holds_mtp(config, cluster.device().is_gpu()));
    p.total_params = stats.total_params();
    p.stage_memory = best->memory;
    p.kv_storage = kv_storage;
    p.kv_bytes_per_token_layer = stats.kv_bytes_per_token_layer();
    p.kv_budget_bytes = static_cast<int64_t>(best->kv_budget);
    p.kv_budget_reason = best->kv_budget_reason;
    p.kv_capacity_tokens = best->capacity_tokens;
    p.max_tokens_per_sequence = best->max_seq_tokens;
    p.ranks = bind_ranks(cluster, p.ranks_per_stage);
    p.decode = best->decode;
    p.decode_bs1 = best->bs1;
    p.prefill = best->prefill;
    p.decode_bound = best->decode_bound;
    p.decode_bs1_bound = best->bs1_bound;
    p.prefill_bound = best->prefill_bound;
    for (const auto& e : evals) {
        p.candidates.push_back(e.cand);
    }

    // Why this layout.
    auto& x = p.explanation;
    x.push_back("dtype " + std::string(dtype_path_name(p.dtype)) + ": " + p.dtype_reason + ".");
    x.push_back("weights " + format_gb(p.total_weight_bytes) + " in total (" +
                std::to_string(p.total_params / 1000000) + "M parameters); the fullest rank holds " +
                format_gb(best->cand.max_rank_bytes) + " with activations and buffers.");
    if (options.layout) {
        x.push_back("layout fixed by --layout " + options.layout->to_string() + ".");
    } else {
        const Eval* runner = nullptr;
        int fitting = 0;
        for (const auto& e : evals) {
            fitting += e.cand.fits ? 1 : 0;
            if (e.cand.fits && &e != best && (!runner || e.decode.tokens_per_s > runner->decode.tokens_per_s)) {
                runner = &e;
            }
        }
        std::ostringstream why;
        why << "chose " << best->cand.layout.to_string() << " among " << fitting << " fitting layouts of "
            << evals.size()
            << " (objective: " << (options.objective == Objective::kLatency ? "batch-1 latency" : "decode throughput")
            << ")";
        if (runner) {
            why << "; next best " << runner->cand.layout.to_string() << " predicts "
                << static_cast<int64_t>(runner->decode.tokens_per_s) << " tok/s decode, "
                << static_cast<int64_t>(runner->bs1.tpot_ms * 10) / 10.0 << " ms batch-1 TPOT";
        }
        x.push_back(why.str() + ".");
    }
    const int rpn = cluster.ranks_per_node();
    const bool gpu = cluster.device().is_gpu();
    if (p.ranks_per_stage > 1) {
        const bool spans = p.ranks_per_stage > rpn;
        if (p.attention == Attention::kTp) {
            x.push_back(std::string("tensor-parallel attention: heads split over the ") +
                        std::to_string(p.ranks_per_stage) + " ranks of a stage, latent KV replicated; " +
                        (spans ? std::string("the stage spans nodes, so its allreduces cross the ") +
                                     (gpu ? "NIC" : "network") + " (slow at small batch)"
                               : std::string("the allreduces stay inside a node ") +
                                     (gpu ? "on NVLink" : "in shared memory between the CPU ranks")) +
                        ".");
        } else {
            x.push_back(std::string("data-parallel attention: each rank serves its own sequences with all heads, ") +
                        "KV split by sequence; experts spread " + std::to_string(config.n_routed_experts) + " over " +
                        std::to_string(p.ranks_per_stage) + " ranks with all-to-all dispatch/combine" +
                        (spans ? " crossing the NIC between the stage's nodes" : " inside a node") + ".");
        }
    }
    if (p.stages.size() > 1) {
        x.push_back(std::to_string(p.stages.size()) +
                    " pipeline stages, layer ranges balanced by per-rank weight bytes; stages pass one hidden state "
                    "per token (" +
                    std::to_string(config.hidden_size * 2) + " B) point-to-point.");
    }
    x.push_back("KV cache: " + format_gb(static_cast<double>(p.kv_budget_bytes)) + " per rank (" +
                p.kv_budget_reason + "), " + model::kv_storage_name(p.kv_storage) + " (" +
                (gpu ? "the CUDA engine's cache under " + options.numerics + " numerics"
                     : std::string("the CPU engine's cache")) +
                ", " + std::to_string(p.kv_bytes_per_token_layer) + " B per token per layer): " +
                std::to_string(p.kv_capacity_tokens) + " tokens in total, at most " +
                std::to_string(p.max_tokens_per_sequence) + " per sequence.");
    return p;
}

}  // namespace deepshard::topology
