// The compute-backend seam (DESIGN §5): what a rank holds is separate from how it computes.
//
//  - ShardWeights (model/shard_weights.h): the rank's tensors as views into the checkpoint, by layer,
//    built once from the plan's ShardSpec. Read-only, shared by every engine.
//  - Engine (this file): runs steps of the DeepSeek-V3 forward pass over a ShardWeights. A step is a
//    batch of sequence chunks (prefill chunks of any length and single-token decodes, mixed); their
//    tokens are stacked so every weight is read once per step. The engine owns its KV cache: the
//    block bookkeeping is the shared KvBlockManager (model/kv_blocks.h: which blocks a sequence
//    holds), the storage is the engine's own (CPU: float32 host pool; CUDA: BF16 device pool).
//  - create_engine() picks the implementation for a Device: the CPU engine (model/cpu_engine.h)
//    always, the CUDA engine where the build has it (registered explicitly, under DS_WITH_CUDA).
//
// Partial sums that need combining across the ranks of a tensor-parallel stage go through the
// TpReducer; expert parallelism with data-parallel attention through the MoeExchange. Both are set by
// the shard node (shard_node/pipeline) and absent (nullptr) in a single process.
//
// Threading: an engine is driven by one thread; step() blocks until the step's outputs are on the
// host. Kernels inside may use all cores (CPU) or the device's streams (CUDA).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "kernels/kernels.h"
#include "model/checkpoint.h"
#include "model/kv_blocks.h"
#include "model/sampling.h"
#include "model/shard_weights.h"

namespace deepshard::model {

enum class Device { kCpu, kCuda };
const char* device_name(Device d);  // "cpu", "cuda"
// "cpu" / "cuda" (case-sensitive); kInvalidArgument naming the value otherwise.
StatusOr<Device> parse_device(std::string_view name);

// Combines partial results across the ranks of a tensor-parallel group (host memory).
class TpReducer {
public:
    virtual ~TpReducer() = default;
    virtual Status allreduce_sum(float* data, int64_t n) = 0;
    // logits[rows, full_vocab]: each rank filled its vocab columns [vocab_begin, vocab_end).
    virtual Status allgather_vocab(float* logits, int64_t rows, int64_t full_vocab) = 0;
};

// Expert parallelism with data-parallel attention: routed tokens go to the ranks that own their
// experts and come back weight-summed (comm/ep dispatch + combine). Called once per MoE layer on
// every rank of the stage, also with T == 0, since it is collective.
class MoeExchange {
public:
    virtual ~MoeExchange() = default;
    // Runs one of this rank's experts on n rows of x [n, hidden] into y [n, hidden].
    using LocalExpert = std::function<void(int32_t expert, const float* x, int64_t n, float* y)>;
    // out[t] = sum_k weights[t*K+k] * Expert_{experts[t*K+k]}(x[t]) for the T local tokens.
    virtual Status run(const float* x, int64_t T, int64_t hidden, std::span<const int32_t> experts,
                       std::span<const float> weights, int64_t K, const LocalExpert& local_expert, float* out) = 0;
};

// Collectives over DEVICE memory for the CUDA engine (NCCL inside a tensor-parallel stage; see
// comm/communicator.h MemorySpace), enqueued on the engine's stream (a cudaStream_t passed as void*):
// nothing synchronizes with the host, so they are captured in the decode graph. Deadlines are the
// owner's watchdog's business (comm/nccl/watchdog.h).
class DeviceCollectives {
public:
    virtual ~DeviceCollectives() = default;
    virtual Status allreduce_sum(float* data, int64_t n, void* stream) = 0;
    // full[rows, vocab_local * ranks] = each rank's local[rows, vocab_local] side by side (rank order).
    virtual Status allgather_vocab(const float* local, int64_t rows, int64_t vocab_local, float* full,
                                   void* stream) = 0;
    // Bounds a host wait for device work that includes these collectives (a dead peer would make it
    // endless): `done` is a cheap poll the implementation's watchdog calls until end_wait(token).
    virtual uint64_t begin_wait(const std::string& what, std::function<bool()> done) {
        (void)what;
        (void)done;
        return 0;
    }
    virtual void end_wait(uint64_t token) { (void)token; }
};

// Optional observers for tests and debugging (nullptr = off).
struct ForwardHooks {
    // After the embedding (layer = -1) and after each block: the residual stream [tokens, hidden].
    std::function<void(int64_t layer, const float* h, int64_t tokens, int64_t hidden)> on_hidden;
    // After the final RMSNorm.
    std::function<void(const float* h, int64_t tokens, int64_t hidden)> on_final_norm;
    // Per MoE layer and token: chosen experts (top-k order) and their weights (after scaling).
    std::function<void(int64_t layer, int64_t token, std::span<const int32_t> experts, std::span<const float> weights)>
        on_routing;
    // Per MoE layer and token: the router's input x (the normed hidden state, H values) and its
    // logits (x . gate^T, one per expert) that routing ranked (both engines; the CUDA engine copies
    // them back per MoE layer, so only tests and debugging turn it on).
    std::function<void(int64_t layer, int64_t token, std::span<const float> input, std::span<const float> logits)>
        on_router_logits;
};

// kSample: the engine samples the chunk's last position itself with `SeqChunk::sampler` (the CUDA
// engine on the device, copying back only the decision) and returns no logits row for it.
enum class LogitsMode { kNone, kLast, kAll, kSample };

struct SeqChunk {
    uint64_t seq_id = 0;
    std::span<const int32_t> tokens;  // new tokens (first stage); count only elsewhere
    int64_t num_tokens = 0;           // == tokens.size() when tokens are given
    int64_t start_pos = 0;            // absolute position of the first new token
    LogitsMode logits = LogitsMode::kLast;
    // kSample: the sequence's sampler (parameters, seeded RNG, history); the engine draws its step key
    // and records nothing (the caller accept()s the token).
    Sampler* sampler = nullptr;
    // Positions past the chunk whose KV space to hold as well: speculative decoding's drafts write
    // the MTP cache there (coordinator/kv_pool.h reserves the same). The sequence's blocks become
    // exactly those holding [0, start_pos + num_tokens + reserve_ahead): blocks an earlier step
    // held past that (rejected drafts) are dropped first.
    int64_t reserve_ahead = 0;
    // The shard with the head also returns this chunk's hidden states (StepOutput::hidden), the
    // input of the MTP module.
    bool keep_hidden = false;
};

// One sequence's input to the MTP module (Engine::mtp_draft).
struct MtpChunk {
    uint64_t seq_id = 0;
    int64_t start_pos = 0;                 // position of the first row
    std::span<const float> hidden;         // [rows, hidden]: the main model's last block output there
    std::span<const int32_t> next_tokens;  // [rows]: the token at each row's position + 1
    int32_t drafts = 0;                    // tokens to draft after the last row (0: only fill the cache)
};

struct StepOutput {
    // Rows of logits in chunk order: one per chunk for kLast, num_tokens for kAll, none for kNone/kSample.
    std::vector<float> logits;
    int64_t rows = 0;
    int64_t vocab = 0;
    // One result per kSample chunk, in chunk order.
    std::vector<SampleResult> samples;
    // Hidden states leaving this shard [tokens, hidden] when it has no head (pipeline output), or,
    // on the shard with the head, the last block's output (before the final norm) of every token
    // of the step when a chunk asks for keep_hidden.
    std::vector<float> hidden;
};

// Activation precision of the CUDA engine (the CPU engine is always exact).
enum class Precision {
    kDefault,  // the engine's choice: kFast on CUDA
    kExact,    // fp32 activations and KV cache, weights dequantized exactly (the CPU engine's math)
    kFast,     // BF16 KV cache; FP8 x FP8 block-scaled GEMMs on Hopper, BF16 tensor cores elsewhere
};
const char* precision_name(Precision p);
StatusOr<Precision> parse_precision(std::string_view name);  // "default" | "exact" | "fast"
// The one user-facing choice (`--numerics`, the plan's field) for every engine: exact is the float32
// reference on CPU and CUDA alike; fast is BF16 dot products on the CPU, BF16 KV + FP8/BF16 GEMMs on CUDA.
inline Precision precision_for(kernels::Numerics n) {
    return n == kernels::Numerics::kExact ? Precision::kExact : Precision::kFast;
}

// The help text of `--head-fp8` (generate, deepshard-shard, engine_bench).
inline constexpr const char* kHeadFp8Help =
    "hold the output head requantized to FP8 e4m3 with 128x128 block scales (made at load; the checkpoint's "
    "BF16 pages are released): a decode token reads half the head's bytes, logits change by the head's FP8 "
    "rounding, routing never. CPU engine only";

struct EngineOptions {
    int64_t kv_budget_bytes = int64_t{1} << 30;
    int64_t kv_block_size = 16;
    int64_t kv_max_blocks = 0;  // caps the pool (tests, tuning); 0 = as many blocks as the budget holds
    int device_ordinal = 0;  // CUDA device of this rank (ignored by the CPU engine)
    // CUDA engine only (0 = its default).
    Precision precision = Precision::kDefault;
    int64_t max_step_tokens = 0;  // tokens per device pass (longer steps run in several passes)
    int64_t max_seqs = 0;         // sequences per pass; also the largest decode graph bucket
    bool cuda_graphs = true;      // capture decode steps as CUDA graphs
    // Numerics of the weight matmuls (kernels/kernels.h): exact = float32 activations, the reference
    // the golden tests hold to the official float32 model; fast = BF16 dot products where the CPU
    // has them. Router, norms, attention and the residual stream are float32 in both.
    kernels::Numerics numerics = kernels::Numerics::kExact;
    // Hold the output head requantized to FP8 (ShardSpec::head_fp8; `--head-fp8`). CPU engine only.
    bool head_fp8 = false;
};

// KV cache use, in the engine's own storage units.
struct KvUsage {
    int64_t total_blocks = 0;
    int64_t free_blocks = 0;
    int64_t block_size = 0;      // tokens per block
    int64_t block_bytes = 0;     // bytes of one block (all layers of the shard)
    int64_t sequences = 0;
    int64_t cached_blocks = 0;   // blocks held by prefix-cache entries (KvBlockManager::publish)
    int64_t used_blocks() const { return total_blocks - free_blocks; }
};

class Engine {
public:
    virtual ~Engine() = default;
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    virtual Device device() const = 0;
    const ShardWeights& weights() const { return *weights_; }
    const ModelConfig& config() const { return weights_->config(); }
    const ShardSpec& spec() const { return weights_->spec(); }

    // Makes the weights ready to compute (CPU: faults the mapping in; CUDA: uploads to the device)
    // and reports bytes and time. Optional: step() works without it (CPU faults pages on first use).
    virtual StatusOr<LoadStats> prepare() = 0;

    // Runs one step. KV space for [start_pos, start_pos+num_tokens) is reserved here (fails with
    // kResourceExhausted before any change when the pool cannot supply it). `hidden_in` is the
    // input residual stream [total tokens, hidden] for shards without the embedding.
    virtual StatusOr<StepOutput> step(std::span<const SeqChunk> chunks, std::span<const float> hidden_in = {}) = 0;

    // Drops a sequence's cache. Unknown ids are ignored.
    virtual void release(uint64_t seq_id) = 0;

    virtual KvUsage kv_usage() const = 0;

    // Speculative decoding with the MTP module (weights().mtp(), on the shard with the head; it keeps
    // its KV in one more layer slot of this engine's blocks). For each chunk: runs the module over
    // its rows (writing the MTP cache at start_pos ..), then drafts `drafts` tokens greedily, each
    // from the module's output for the previous one (position by position). Every row's position must
    // lie within the sequence's reserved blocks; drafting stops early at their end. Returns the drafts
    // per chunk. Collective over a tensor-parallel stage (every rank calls it with the same chunks).
    // kUnimplemented where an engine or layout cannot run it.
    virtual bool has_mtp() const { return false; }
    virtual StatusOr<std::vector<std::vector<int32_t>>> mtp_draft(std::span<const MtpChunk> chunks) {
        (void)chunks;
        return Status(StatusCode::kUnimplemented,
                      std::string("the ") + device_name(device()) + " engine does not run the MTP module");
    }

    // Prefill/decode disaggregation (comm/ucx/kv_transfer.h): the latent KV rows of positions
    // [pos_begin, pos_end) of a sequence for this shard's decoder layers (not the MTP slot), laid out
    // [layer][pos][row], a row being kv_lora_rank + qk_rope_head_dim float32 values whatever the
    // engine stores. write_kv_rows needs the positions reserved (kv_blocks().reserve) and writable.
    // Every message names the sequence and range; kUnimplemented where an engine cannot.
    int64_t kv_row_bytes() const {
        return (config().kv_lora_rank + config().qk_rope_head_dim) * static_cast<int64_t>(sizeof(float));
    }
    virtual Status read_kv_rows(uint64_t seq_id, int64_t pos_begin, int64_t pos_end, std::vector<uint8_t>* out) const {
        (void)seq_id, (void)pos_begin, (void)pos_end, (void)out;
        return Status(StatusCode::kUnimplemented,
                      std::string("the ") + device_name(device()) + " engine cannot export its KV cache yet");
    }
    virtual Status write_kv_rows(uint64_t seq_id, int64_t pos_begin, int64_t pos_end, std::span<const uint8_t> rows) {
        (void)seq_id, (void)pos_begin, (void)pos_end, (void)rows;
        return Status(StatusCode::kUnimplemented,
                      std::string("the ") + device_name(device()) + " engine cannot import a KV cache yet");
    }

    // The engine's block bookkeeping. The shard node applies the coordinator's prefix-cache
    // operations (fork / publish / evict, model/kv_blocks.h) here between steps; an engine must
    // therefore take its block tables from this manager at every step, never cache them.
    virtual KvBlockManager& kv_blocks() = 0;

    void set_reducer(TpReducer* reducer) { reducer_ = reducer; }
    void set_hooks(ForwardHooks* hooks) { hooks_ = hooks; }
    void set_moe_exchange(MoeExchange* exchange) { exchange_ = exchange; }
    // Device engines only: TP collectives on device memory (preferred over set_reducer when both are set).
    void set_device_collectives(DeviceCollectives* c) { device_collectives_ = c; }

protected:
    explicit Engine(std::shared_ptr<const ShardWeights> weights) : weights_(std::move(weights)) {}
    std::shared_ptr<const ShardWeights> weights_;
    TpReducer* reducer_ = nullptr;
    ForwardHooks* hooks_ = nullptr;
    MoeExchange* exchange_ = nullptr;
    DeviceCollectives* device_collectives_ = nullptr;
};

// The engine for `device` over `weights` (kInvalidArgument / kUnavailable naming the device when this
// build or machine cannot provide it).
StatusOr<std::unique_ptr<Engine>> create_engine(Device device, std::shared_ptr<const ShardWeights> weights,
                                                const EngineOptions& options);

// Convenience for single-process use: the whole model (or `spec`) of `checkpoint` on `device`.
StatusOr<std::unique_ptr<Engine>> create_engine(Device device, std::shared_ptr<const Checkpoint> checkpoint,
                                                const ShardSpec& spec, const EngineOptions& options);

}  // namespace deepshard::model
