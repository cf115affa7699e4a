// What one rank holds of the model, independent of how it computes (DESIGN §5): the tensors of its
// shard as views into the memory-mapped checkpoint, by layer, built once from (checkpoint, ShardSpec)
// and shared read-only by every engine. The CPU engine computes straight from these views; the CUDA
// engine copies exactly the listed byte ranges (tensors()) to the device once.
//
// A shard is a contiguous layer range, optionally the embedding and/or the final norm + head (a
// vocabulary row range), a head range of every attention layer (tensor parallel), a column range of
// the dense MLPs and shared experts, and a subset of routed experts. The default ShardSpec is the
// whole model.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "kernels/moe.h"
#include "kernels/weight_view.h"
#include "model/checkpoint.h"

namespace deepshard::model {

struct ShardSpec {
    int64_t first_layer = 0;
    int64_t last_layer = -1;       // exclusive; -1 = num_hidden_layers
    bool has_embedding = true;     // this shard embeds tokens (first stage)
    bool has_head = true;          // this shard applies the final norm + head (last stage)
    int64_t vocab_begin = 0;       // embedding/head rows held (vocab-parallel); end -1 = vocab_size
    int64_t vocab_end = -1;
    int64_t head_begin = 0;        // attention heads held; end -1 = all
    int64_t head_end = -1;
    int64_t tp_rank = 0;           // index / count used to slice dense MLP + shared expert columns
    int64_t tp_size = 1;
    std::vector<bool> experts;     // routed experts held (empty = all)
    // Also hold the MTP module (layer num_hidden_layers) when the checkpoint has one
    // (num_nextn_predict_layers > 0); only with has_head.
    bool has_mtp = false;
    // Requantize the output head (lm_head, BF16/F16/F32 in DeepSeek's checkpoints) to FP8 e4m3 with
    // 128 x 128 block scales at load, in memory (the mapped original pages are released), so a
    // decode token reads half the head's bytes. Opt-in (`--head-fp8`): it changes the logits by
    // the head's FP8 rounding, and never routing. CPU engine only.
    bool head_fp8 = false;
};

// A SwiGLU MLP (dense layer, routed expert or shared expert), possibly a TP column slice.
struct MlpWeights {
    kernels::WeightView w1, w3, w2;  // gate_proj, up_proj (rows sliced), down_proj (columns sliced)
    int64_t inter = 0;               // intermediate width held
    bool held() const { return w1.valid(); }
};

struct LayerWeights {
    int64_t index = 0;  // global layer index
    std::vector<float> attn_norm, ffn_norm, q_norm, kv_norm;
    kernels::WeightView wq_a, wq_b, wq;  // wq when q_lora_rank == 0 (wq_b / wq: local heads' rows)
    kernels::WeightView wkv_a, wkv_b, wo;  // wkv_b: local heads' rows; wo: local heads' columns
    bool moe = false;
    MlpWeights dense;
    kernels::WeightView gate;            // router [E, H]
    std::vector<float> bias;             // e_score_correction_bias (selection only); empty = none
    std::vector<MlpWeights> experts;     // index = expert id; not held() for experts elsewhere
    MlpWeights shared;
    bool has_shared = false;
};

// The multi-token-prediction module (MODEL_SPEC §2 "MTP"; DeepSeek-V3 tech report §2.2): for position
// i, h' = eh_proj . [enorm(Embed(t_{i+1})) ; hnorm(h_i)], then one full decoder block, then the head
// (shared_head.norm + shared_head.head) predicts t_{i+2}. Used to draft tokens for speculative decoding.
struct MtpWeights {
    kernels::WeightView embed, head;  // the module's own copies, vocabulary rows [vocab_begin, vocab_end)
    kernels::WeightView eh_proj;      // [H, 2H]: columns [0, H) see the embedding, [H, 2H) the hidden state
    std::vector<float> enorm, hnorm, head_norm;
    LayerWeights block;               // index = num_hidden_layers
};

// One held weight and where its bytes are in the checkpoint, so a device backend can read exactly
// them (through pinned staging) instead of faulting the mapping in. The view is `rows` rows of
// `cols` elements, `ld` elements apart in the file, starting at `file_offset` of file `file_index`;
// an FP8 view also needs the scale rows [scale_row0, scale_row0 + scale_rows) of its scale grid.
struct HeldTensor {
    std::string name;
    const kernels::WeightView* view = nullptr;  // points into the ShardWeights
    int file_index = 0;
    uint64_t file_offset = 0;
    const TensorInfo* scale_info = nullptr;     // FP8 only
    int64_t scale_row0 = 0, scale_rows = 0;
};

class ShardWeights {
public:
    // Builds the views of the tensors `spec` selects (nothing is read yet: the mapping faults in on
    // first use or prepare()). Errors name the tensor and the expected vs found shape.
    static StatusOr<std::shared_ptr<const ShardWeights>> load(std::shared_ptr<const Checkpoint> checkpoint,
                                                              const ShardSpec& spec);

    const Checkpoint& checkpoint() const { return *checkpoint_; }
    const ModelConfig& config() const { return checkpoint_->config(); }
    const ShardSpec& spec() const { return spec_; }

    int64_t first_layer() const { return first_; }
    int64_t last_layer() const { return last_; }      // exclusive
    int64_t num_layers() const { return last_ - first_; }
    int64_t head_begin() const { return h0_; }
    int64_t num_heads() const { return nh_; }         // local attention heads
    int64_t vocab_begin() const { return vb_; }
    int64_t vocab_end() const { return ve_; }
    bool has_embedding() const { return spec_.has_embedding; }
    bool has_head() const { return spec_.has_head; }

    const kernels::WeightView& embed() const { return embed_; }
    const kernels::WeightView& head() const { return head_; }
    const std::vector<float>& final_norm() const { return final_norm_; }
    const LayerWeights& layer(int64_t global_index) const { return layers_[global_index - first_]; }
    const std::vector<LayerWeights>& layers() const { return layers_; }
    // The MTP module, or nullptr (not asked for, or the checkpoint has none). Its weights are not in
    // tensors(): device engines that do not run it never upload it.
    const MtpWeights* mtp() const { return mtp_.get(); }

    // RoPE inverse frequencies (YaRN) and the attention softmax scale, from config.json.
    const std::vector<float>& rope_inv_freq() const { return inv_freq_; }
    float softmax_scale() const { return softmax_scale_; }
    kernels::RouteParams route_params() const;

    // Every held weight (matrices only; the small fp32 vectors are copied at load) with its bytes.
    const std::vector<HeldTensor>& tensors() const { return tensors_; }
    // Bytes of weight data (with FP8 scales) held, including a head requantized in memory.
    int64_t held_bytes() const;
    // Whether head() is an in-memory FP8 requantization (ShardSpec::head_fp8); then tensors() does
    // not list lm_head, whose file bytes are no longer what the view holds.
    bool head_requantized() const { return !head_q_.empty(); }

    // Faults in exactly the byte ranges of the held weights (one read per page, all cores), so a
    // rank's resident memory is its share of the checkpoint. Returns bytes and time.
    LoadStats prefault() const;

    // Bytes of weights one decode token reads on this shard (all held dense weights plus the
    // routed experts a token activates), for benchmarks.
    int64_t weight_bytes_per_token() const;

private:
    ShardWeights() = default;
    Status build(const ShardSpec& spec);
    Status load_layer(int64_t l, const ShardSpec& spec, LayerWeights* out);
    Status load_mtp(const ShardSpec& spec);
    Status load_mlp(const std::string& prefix, int64_t inter, int64_t tp_rank, int64_t tp_size, MlpWeights* mlp);
    void list_tensors();
    void requantize_head();

    std::shared_ptr<const Checkpoint> checkpoint_;
    ShardSpec spec_;
    int64_t first_ = 0, last_ = 0;  // layer range
    int64_t h0_ = 0, nh_ = 0;       // local heads
    int64_t vb_ = 0, ve_ = 0;       // vocab range
    kernels::WeightView embed_, head_;
    std::vector<float> final_norm_;
    std::vector<LayerWeights> layers_;
    std::unique_ptr<MtpWeights> mtp_;
    std::vector<float> inv_freq_;
    float softmax_scale_ = 1.0f;
    std::vector<HeldTensor> tensors_;
    std::vector<uint8_t> head_q_;  // requantized head (e4m3 codes) and its scale grid
    std::vector<float> head_s_;
};

}  // namespace deepshard::model
