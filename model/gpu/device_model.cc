// Weights on the device (see device_model.h): the arena plan, the pinned-staging sink and the views.
#include "model/gpu/device_model.h"

#include <cuda_runtime_api.h>

#include <set>

#include "common/logging.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch_util.h"
#include "model/gpu/upload.h"

namespace deepshard::model::gpu {

namespace {

namespace kc = kernels::cuda;

// Pinned staging buffers copied to the arena on a dedicated stream; an event per buffer tells when it
// may be refilled, so the next pread overlaps the previous copy.
class CudaUploadSink : public UploadSink {
public:
    static StatusOr<std::unique_ptr<CudaUploadSink>> create(void* arena, int buffers, uint64_t bytes) {
        std::unique_ptr<CudaUploadSink> s(new CudaUploadSink());
        s->arena_ = static_cast<uint8_t*>(arena);
        s->bytes_ = bytes;
        DS_ASSIGN_OR_RETURN(s->stream_, kc::CudaStream::create());
        for (int i = 0; i < buffers; ++i) {
            void* p = nullptr;
            DS_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&p, bytes, cudaHostAllocDefault));
            s->pinned_.push_back(static_cast<uint8_t*>(p));
            DS_ASSIGN_OR_RETURN(kc::CudaEvent e, kc::CudaEvent::create());
            s->events_.push_back(std::move(e));
            s->used_.push_back(false);
        }
        return s;
    }
    ~CudaUploadSink() override {
        cudaStreamSynchronize(stream_.get());
        for (uint8_t* p : pinned_) cudaFreeHost(p);
    }
    int num_buffers() const override { return static_cast<int>(pinned_.size()); }
    uint64_t buffer_bytes() const override { return bytes_; }
    uint8_t* buffer(int b) override { return pinned_[b]; }
    Status wait(int b) override {
        if (used_[b]) DS_RETURN_IF_ERROR(events_[b].synchronize());
        return ok_status();
    }
    Status copy(int b, uint64_t bytes, uint64_t arena_offset) override {
        DS_CUDA_RETURN_IF_ERROR(
            cudaMemcpyAsync(arena_ + arena_offset, pinned_[b], bytes, cudaMemcpyHostToDevice, stream_.get()));
        DS_RETURN_IF_ERROR(events_[b].record(stream_.get()));
        used_[b] = true;
        return ok_status();
    }
    Status finish() override { return stream_.synchronize(); }

private:
    CudaUploadSink() = default;
    uint8_t* arena_ = nullptr;
    uint64_t bytes_ = 0;
    kc::CudaStream stream_;
    std::vector<uint8_t*> pinned_;
    std::vector<kc::CudaEvent> events_;
    std::vector<bool> used_;
};

constexpr int kStagingBuffers = 4;
constexpr uint64_t kStagingBytes = uint64_t{32} << 20;

}  // namespace

const float* DeviceModel::lt_scales(const kernels::WeightView& v) const {
    auto it = lt_scales_.find(v.data);
    return it == lt_scales_.end() ? nullptr : it->second;
}

StatusOr<std::unique_ptr<DeviceModel>> DeviceModel::upload(const ShardWeights& w,
                                                           const std::optional<kc::Fp8GemmConfig>& lt,
                                                           LoadStats* stats) {
    const ModelConfig& c = w.config();
    ArenaPlan plan;
    DS_ASSIGN_OR_RETURN(std::vector<PlacedTensor> placed, plan_weights(w, &plan));
    std::unordered_map<const kernels::WeightView*, size_t> index;
    for (size_t i = 0; i < placed.size(); ++i) index[placed[i].tensor->view] = i;

    // Dense GEMM weights that may take the FP8 cuBLASLt path get their scales repacked.
    std::unordered_map<size_t, uint64_t> lt_offset;
    if (lt.has_value()) {
        std::set<const kernels::WeightView*> dense;
        for (const LayerWeights& L : w.layers()) {
            for (const kernels::WeightView* v : {&L.wq_a, &L.wq_b, &L.wq, &L.wkv_a, &L.wo, &L.dense.w1, &L.dense.w3,
                                                 &L.dense.w2, &L.shared.w1, &L.shared.w3, &L.shared.w2}) {
                if (v->valid()) dense.insert(v);
            }
        }
        for (const kernels::WeightView* v : dense) {
            if (!kc::fp8_lt_compatible(*v)) continue;
            std::vector<float> packed(static_cast<size_t>(kc::fp8_weight_scale_floats(*v, *lt)));
            kc::pack_weight_scales_host(*v, v->scale, *lt, packed.data());
            lt_offset[index.at(v)] = plan.add_host(placed[index.at(v)].tensor->name + " (cuBLASLt scales)",
                                                   packed.data(), packed.size() * sizeof(float));
        }
    }
    auto add_vec = [&](const std::string& name, const std::vector<float>& v) -> uint64_t {
        return plan.add_host(name, v.data(), v.size() * sizeof(float));
    };
    struct LayerOffsets {
        uint64_t attn_norm = 0, ffn_norm = 0, q_norm = 0, kv_norm = 0, bias = 0, tables = 0;
    };
    std::vector<LayerOffsets> lo(w.layers().size());
    const int64_t E = c.n_routed_experts;
    const uint64_t table_bytes = static_cast<uint64_t>(E) * sizeof(kc::DevWeight);
    for (size_t i = 0; i < w.layers().size(); ++i) {
        const LayerWeights& L = w.layers()[i];
        const std::string p = layer_prefix(L.index);
        lo[i].attn_norm = add_vec(p + "input_layernorm", L.attn_norm);
        lo[i].ffn_norm = add_vec(p + "post_attention_layernorm", L.ffn_norm);
        if (!L.q_norm.empty()) lo[i].q_norm = add_vec(p + "q_a_layernorm", L.q_norm);
        lo[i].kv_norm = add_vec(p + "kv_a_layernorm", L.kv_norm);
        if (!L.bias.empty()) lo[i].bias = add_vec(p + "e_score_correction_bias", L.bias);
        if (L.moe) lo[i].tables = plan.reserve(p + "expert tables", 3 * table_bytes + static_cast<uint64_t>(E));
    }
    const uint64_t final_norm_off = w.has_head() ? add_vec("model.norm", w.final_norm()) : 0;
    const uint64_t inv_freq_off = add_vec("rope inv_freq", w.rope_inv_freq());

    std::unique_ptr<DeviceModel> m(new DeviceModel());
    DS_ASSIGN_OR_RETURN(m->arena_, kc::DeviceBuffer::create(plan.total_bytes()));
    spdlog::info("cuda: uploading {:.1f} MB of weights ({} tensors) into a {:.1f} MB device arena",
                 static_cast<double>(plan.file_bytes()) / 1e6, placed.size(),
                 static_cast<double>(plan.total_bytes()) / 1e6);
    DS_ASSIGN_OR_RETURN(auto sink, CudaUploadSink::create(m->arena_.get(), kStagingBuffers, kStagingBytes));
    auto progress = [](const UploadProgress& p) {
        spdlog::info("cuda: upload {:5.1f}% ({:.2f} / {:.2f} GB, {:.2f} GB/s)",
                     p.total ? 100.0 * static_cast<double>(p.done) / static_cast<double>(p.total) : 100.0,
                     static_cast<double>(p.done) / 1e9, static_cast<double>(p.total) / 1e9,
                     p.seconds > 0 ? static_cast<double>(p.done) / p.seconds / 1e9 : 0.0);
    };
    DS_ASSIGN_OR_RETURN(*stats, gpu::upload(plan, w.checkpoint(), *sink, progress));
    sink.reset();

    const auto* base = static_cast<const uint8_t*>(m->arena_.get());
    auto dev = [&](const kernels::WeightView& v) -> kernels::WeightView {
        if (!v.valid()) return kernels::WeightView{};
        const size_t i = index.at(&v);
        kernels::WeightView d = placed_view(placed[i], base);
        auto it = lt_offset.find(i);
        if (it != lt_offset.end()) m->lt_scales_[d.data] = reinterpret_cast<const float*>(base + it->second);
        return d;
    };
    auto dev_mlp = [&](const MlpWeights& mlp) {
        DevMlp d;
        d.w1 = dev(mlp.w1);
        d.w3 = dev(mlp.w3);
        d.w2 = dev(mlp.w2);
        d.inter = mlp.inter;
        return d;
    };
    auto fptr = [&](uint64_t off) { return reinterpret_cast<const float*>(base + off); };
    m->embed_ = dev(w.embed());
    m->head_ = dev(w.head());
    m->final_norm_ = w.has_head() ? fptr(final_norm_off) : nullptr;
    m->inv_freq_ = fptr(inv_freq_off);
    for (size_t i = 0; i < w.layers().size(); ++i) {
        const LayerWeights& L = w.layers()[i];
        DevLayer d;
        d.index = L.index;
        d.moe = L.moe;
        d.attn_norm = fptr(lo[i].attn_norm);
        d.ffn_norm = fptr(lo[i].ffn_norm);
        d.q_norm = L.q_norm.empty() ? nullptr : fptr(lo[i].q_norm);
        d.kv_norm = fptr(lo[i].kv_norm);
        d.bias = L.bias.empty() ? nullptr : fptr(lo[i].bias);
        d.wq_a = dev(L.wq_a);
        d.wq_b = dev(L.wq_b);
        d.wq = dev(L.wq);
        d.wkv_a = dev(L.wkv_a);
        d.wkv_b = dev(L.wkv_b);
        d.wo = dev(L.wo);
        d.gate = dev(L.gate);
        d.dense = dev_mlp(L.dense);
        d.shared = dev_mlp(L.shared);
        d.has_shared = L.has_shared;
        if (L.moe) {
            std::vector<kc::DevWeight> t1(E), t3(E), t2(E);
            std::vector<uint8_t> held(static_cast<size_t>(E), 0);
            bool first = true, vec = true;
            for (int64_t e = 0; e < E; ++e) {
                d.experts.push_back(dev_mlp(L.experts[e]));
                const DevMlp& x = d.experts.back();
                if (!x.held()) continue;
                held[e] = 1;
                if (!kc::to_dev_weight(x.w1, &t1[e]) || !kc::to_dev_weight(x.w3, &t3[e]) ||
                    !kc::to_dev_weight(x.w2, &t2[e])) {
                    return invalid_argument("cuda: expert " + std::to_string(e) + " of layer " +
                                            std::to_string(L.index) + " has an unsupported dtype");
                }
                if (first) {
                    d.exp_dtype = t1[e].dtype;
                    d.moe_inter = x.inter;
                    first = false;
                }
                if (t1[e].dtype != d.exp_dtype || t3[e].dtype != d.exp_dtype || t2[e].dtype != d.exp_dtype ||
                    x.inter != d.moe_inter) {
                    return invalid_argument("cuda: the experts of layer " + std::to_string(L.index) +
                                            " differ in dtype or width; the grouped GEMM needs them uniform");
                }
                vec = vec && kc::internal::weight_vec_ok(t1[e]) && kc::internal::weight_vec_ok(t3[e]) &&
                      kc::internal::weight_vec_ok(t2[e]);
            }
            d.exp_vec = vec;
            auto* tb = const_cast<uint8_t*>(base) + lo[i].tables;
            DS_CUDA_RETURN_IF_ERROR(cudaMemcpy(tb, t1.data(), table_bytes, cudaMemcpyHostToDevice));
            DS_CUDA_RETURN_IF_ERROR(cudaMemcpy(tb + table_bytes, t3.data(), table_bytes, cudaMemcpyHostToDevice));
            DS_CUDA_RETURN_IF_ERROR(cudaMemcpy(tb + 2 * table_bytes, t2.data(), table_bytes, cudaMemcpyHostToDevice));
            DS_CUDA_RETURN_IF_ERROR(cudaMemcpy(tb + 3 * table_bytes, held.data(), held.size(), cudaMemcpyHostToDevice));
            d.exp_w1 = reinterpret_cast<const kc::DevWeight*>(tb);
            d.exp_w3 = reinterpret_cast<const kc::DevWeight*>(tb + table_bytes);
            d.exp_w2 = reinterpret_cast<const kc::DevWeight*>(tb + 2 * table_bytes);
            d.exp_held = tb + 3 * table_bytes;
        }
        m->layers_.push_back(std::move(d));
    }
    spdlog::info("cuda: weights on the device: {:.1f} MB in {:.2f} s ({:.2f} GB/s){}",
                 static_cast<double>(stats->bytes) / 1e6, stats->seconds, stats->gb_per_s(),
                 m->lt_scales_.empty() ? "" : ", " + std::to_string(m->lt_scales_.size()) + " FP8 cuBLASLt weights");
    return m;
}

}  // namespace deepshard::model::gpu
