#include "shard_node/pipeline.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common/logging.h"
#include "shard_node/kv_ops.h"
#include "shard_node/moe_exchange.h"
#if defined(DS_WITH_DEVICE_COLLECTIVES)
#include "shard_node/device_collectives.h"
#endif

namespace deepshard::shard_node {

namespace ctl = deepshard::control;

namespace {

constexpr comm::Tag kTagHeaderLen{1};
constexpr comm::Tag kTagHeader{2};
constexpr comm::Tag kTagHidden{3};
constexpr comm::Tag kTagResultLen{4};
constexpr comm::Tag kTagResult{5};
constexpr comm::Tag kTagLogits{6};

// Allreduce / vocab allgather over the ranks of a stage (tensor-parallel attention).
class StageReducer : public model::TpReducer {
public:
    explicit StageReducer(comm::Communicator* comm) : comm_(comm) {}
    Status allreduce_sum(float* data, int64_t n) override {
        return comm_->allreduce_sum(data, data, static_cast<size_t>(n)).with_context("tensor-parallel allreduce");
    }
    Status allgather_vocab(float* logits, int64_t rows, int64_t vocab) override {
        const int S = comm_->size(), me = comm_->rank();
        const int64_t part = vocab / S;
        std::vector<float> send(static_cast<size_t>(rows * part)), recv(static_cast<size_t>(rows * part * S));
        for (int64_t i = 0; i < rows; ++i) {
            std::copy_n(logits + i * vocab + me * part, part, send.data() + i * part);
        }
        DS_RETURN_IF_ERROR(comm_->allgather(send.data(), recv.data(), send.size(), comm::DataType::kFloat32)
                               .with_context("vocab-parallel logits allgather"));
        for (int q = 0; q < S; ++q) {
            for (int64_t i = 0; i < rows; ++i) {
                std::copy_n(recv.data() + (q * rows + i) * part, part, logits + i * vocab + q * part);
            }
        }
        return ok_status();
    }

private:
    comm::Communicator* comm_;
};

void put_u64(std::string* out, uint64_t v) {
    out->append(reinterpret_cast<const char*>(&v), 8);
}

int64_t chunk_tokens(const ctl::SeqWork& w) {
    return static_cast<int64_t>(w.tokens.size());
}

model::SamplingParams to_params(const ctl::SamplingSpec& s) {
    model::SamplingParams p;
    p.temperature = s.temperature;
    p.top_k = s.top_k;
    p.top_p = s.top_p;
    p.min_p = s.min_p;
    p.repetition_penalty = s.repetition_penalty;
    p.frequency_penalty = s.frequency_penalty;
    p.presence_penalty = s.presence_penalty;
    p.seed = s.seed;
    p.has_seed = s.has_seed != 0;
    p.logprobs = s.logprobs;
    return p;
}

ctl::SeqOutput to_output(uint64_t seq_id, const model::SampleResult& r) {
    ctl::SeqOutput o;
    o.seq_id = seq_id;
    o.token = r.token;
    o.logprob = r.logprob;
    for (const auto& [id, lp] : r.top_logprobs) {
        o.top_ids.push_back(id);
        o.top_logprobs.push_back(lp);
    }
    return o;
}

}  // namespace

std::string encode_step(const PipelineStep& step) {
    std::string out;
    out.push_back(static_cast<char>(step.kind));
    out.push_back(static_cast<char>(step.return_logits ? 1 : 0));
    put_u64(&out, step.error.size());
    out.append(step.error);
    put_u64(&out, step.logits_mode.size());
    for (auto m : step.logits_mode) out.push_back(static_cast<char>(m));
    put_u64(&out, step.import_failed.size());
    for (uint64_t id : step.import_failed) put_u64(&out, id);
    ctl::encode(step.batch, &out);
    return out;
}

StatusOr<PipelineStep> decode_step(const std::string& bytes) {
    PipelineStep step;
    if (bytes.size() < 18) {
        return protocol_error("pipeline step header: " + std::to_string(bytes.size()) + " bytes is too short");
    }
    const uint8_t kind = static_cast<uint8_t>(bytes[0]);
    if (kind < 1 || kind > 3) {
        return protocol_error("pipeline step header: unknown kind " + std::to_string(kind));
    }
    step.kind = static_cast<StepKind>(kind);
    step.return_logits = bytes[1] != 0;
    uint64_t elen = 0;
    std::memcpy(&elen, bytes.data() + 2, 8);
    if (elen > bytes.size() - 10 || bytes.size() - 10 - elen < 8) {
        return protocol_error("pipeline step header: error text of " + std::to_string(elen) + " bytes exceeds the message");
    }
    step.error = bytes.substr(10, elen);
    size_t off = 10 + elen;
    uint64_t n = 0;
    std::memcpy(&n, bytes.data() + off, 8);
    off += 8;
    if (n > bytes.size() - off) {
        return protocol_error("pipeline step header: " + std::to_string(n) + " logits modes exceed the message");
    }
    for (uint64_t i = 0; i < n; ++i, ++off) {
        const uint8_t m = static_cast<uint8_t>(bytes[off]);
        if (m > 2) return protocol_error("pipeline step header: bad logits mode " + std::to_string(m));
        step.logits_mode.push_back(static_cast<model::LogitsMode>(m));
    }
    if (bytes.size() - off < 8) return protocol_error("pipeline step header: no import failure count");
    std::memcpy(&n, bytes.data() + off, 8);
    off += 8;
    if (n > (bytes.size() - off) / 8) {
        return protocol_error("pipeline step header: " + std::to_string(n) + " import failures exceed the message");
    }
    for (uint64_t i = 0; i < n; ++i, off += 8) {
        uint64_t id = 0;
        std::memcpy(&id, bytes.data() + off, 8);
        step.import_failed.push_back(id);
    }
    DS_ASSIGN_OR_RETURN(ctl::FrameHeader fh,
                        ctl::decode_header(reinterpret_cast<const uint8_t*>(bytes.data()) + off, bytes.size() - off));
    if (fh.type != ctl::MessageType::kStepBatch || fh.length != bytes.size() - off - ctl::kFrameHeaderSize) {
        return protocol_error("pipeline step header: the embedded frame is not one step batch");
    }
    DS_ASSIGN_OR_RETURN(step.batch, ctl::decode_step_batch(bytes.substr(off + ctl::kFrameHeaderSize)));
    if (!step.logits_mode.empty() && step.logits_mode.size() != step.batch.seqs.size()) {
        return protocol_error("pipeline step header: logits modes do not match the sequences");
    }
    return step;
}

Pipeline::~Pipeline() = default;

StatusOr<std::unique_ptr<Pipeline>> Pipeline::create(comm::Communicator* world, const Layout& layout,
                                                     std::shared_ptr<const model::Checkpoint> checkpoint,
                                                     model::Device device, const model::EngineOptions& options) {
    std::unique_ptr<Pipeline> p(new Pipeline());
    p->world_ = world;
    p->layout_ = layout;
    p->rank_ = world->rank();
    p->stage_ = layout.stage_of(p->rank_);
    p->local_ = layout.local_of(p->rank_);
    p->checkpoint_ = std::move(checkpoint);
    DS_RETURN_IF_ERROR(world->require_memory(comm::MemorySpace::kHost, "the shard pipeline (step headers, results)"));
    if (world->size() != layout.world_size) {
        return invalid_argument("the plan is for " + std::to_string(layout.world_size) + " ranks, the job has " +
                                std::to_string(world->size()));
    }
    DS_ASSIGN_OR_RETURN(p->stage_comm_, world->split(p->stage_, p->local_));
    const model::ModelConfig& cfg = p->checkpoint_->config();
    DS_ASSIGN_OR_RETURN(p->model_,
                        model::create_engine(device, p->checkpoint_, layout.shard_spec(cfg, p->rank_), options));
    {
        // The coordinator schedules against the smallest pool of the job.
        const int64_t mine = p->model_->kv_usage().total_blocks;
        std::vector<int64_t> all(static_cast<size_t>(world->size()));
        DS_RETURN_IF_ERROR(world->allgather(&mine, all.data(), 8, comm::DataType::kByte));
        p->min_kv_blocks_ = *std::min_element(all.begin(), all.end());
    }
    if (layout.ranks_per_stage > 1) {
        if (layout.attention == AttentionMode::kTensorParallel) {
            p->reducer_ = std::make_unique<StageReducer>(p->stage_comm_.get());
            p->model_->set_reducer(p->reducer_.get());
#if defined(DS_WITH_DEVICE_COLLECTIVES)
            if (device == model::Device::kCuda) {
                // CUDA ranks reduce on the device, on the engine's stream (captured in its decode graphs).
                const model::ShardSpec spec = layout.shard_spec(cfg, p->rank_);
                const int64_t vocab_local = (spec.vocab_end < 0 ? cfg.vocab_size : spec.vocab_end) - spec.vocab_begin;
                DS_ASSIGN_OR_RETURN(p->device_collectives_,
                                    NcclDeviceCollectives::create(*p->stage_comm_, options.device_ordinal,
                                                                  options.max_seqs > 0 ? options.max_seqs : 256,
                                                                  vocab_local));
                p->model_->set_device_collectives(p->device_collectives_.get());
            }
#endif
        } else {
            p->exchange_ = make_moe_exchange(p->stage_comm_.get(), layout.expert_owner);
            p->model_->set_moe_exchange(p->exchange_.get());
        }
    }
    return p;
}

int Pipeline::domain_of(uint64_t seq_id) const {
    if (layout_.attention == AttentionMode::kTensorParallel) return 0;
    auto it = owners_.find(seq_id);
    return it != owners_.end() ? it->second : dp_owner(seq_id, layout_.ranks_per_stage);
}

Status Pipeline::apply_kv_ops(PipelineStep* step) {
    const int mine = layout_.attention == AttentionMode::kTensorParallel ? 0 : local_;
    DS_RETURN_IF_ERROR(shard_node::apply_kv_ops(step->batch, static_cast<uint32_t>(mine),
                                                static_cast<uint32_t>(kv_domains()), model_->kv_blocks(),
                                                [&](uint64_t id) { model_->release(id); }));
    for (uint64_t id : step->batch.release) {
        samplers_.erase(id);
        owners_.erase(id);
    }
    // Preempted sequences keep their sampler and owner: they are recomputed later on the same rank
    // and continue their sampling stream unchanged.
    if (layout_.attention == AttentionMode::kDataParallel) {
        for (const ctl::KvStart& st : step->batch.kv.start) owners_[st.seq_id] = static_cast<int>(st.domain);
    }
    step->owners.clear();
    for (const ctl::SeqWork& w : step->batch.seqs) step->owners.push_back(domain_of(w.seq_id));
    return ok_status();
}

std::vector<size_t> Pipeline::my_sequences(const PipelineStep& step) const {
    std::vector<size_t> mine;
    for (size_t i = 0; i < step.batch.seqs.size(); ++i) {
        const int owner = i < step.owners.size() ? step.owners[i] : domain_of(step.batch.seqs[i].seq_id);
        if (layout_.attention == AttentionMode::kTensorParallel || owner == local_) {
            mine.push_back(i);
        }
    }
    return mine;
}

std::vector<int> Pipeline::result_senders() const {
    const int last = layout_.num_stages() - 1;
    std::vector<int> senders;
    if (layout_.attention == AttentionMode::kTensorParallel) {
        senders.push_back(layout_.rank_of(last, 0));
    } else {
        for (int i = 0; i < layout_.ranks_per_stage; ++i) senders.push_back(layout_.rank_of(last, i));
    }
    return senders;
}

Status Pipeline::send_step(const PipelineStep& step, std::span<const float> hidden, int peer) {
    const std::string bytes = encode_step(step);
    const uint64_t len = bytes.size();
    DS_RETURN_IF_ERROR(world_->send(&len, 8, comm::DataType::kByte, peer, kTagHeaderLen));
    DS_RETURN_IF_ERROR(world_->send(bytes.data(), bytes.size(), comm::DataType::kByte, peer, kTagHeader));
    if (step.kind == StepKind::kStep && step.error.empty() && !hidden.empty()) {
        DS_RETURN_IF_ERROR(world_->send(hidden, peer, kTagHidden));
    }
    return ok_status();
}

Status Pipeline::receive_step(PipelineStep* step, std::vector<float>* hidden) {
    std::string bytes;
    if (stage_ == 0) {
        // Stage 0 gets headers from the leader by a broadcast inside the stage.
        uint64_t len = 0;
        DS_RETURN_IF_ERROR(stage_comm_->broadcast(&len, 8, comm::DataType::kByte, 0));
        if (len > (uint64_t{1} << 32)) return protocol_error("step header of " + std::to_string(len) + " bytes");
        bytes.resize(len);
        DS_RETURN_IF_ERROR(stage_comm_->broadcast(bytes.data(), len, comm::DataType::kByte, 0));
    } else {
        const int prev = layout_.rank_of(stage_ - 1, local_);
        uint64_t len = 0;
        DS_RETURN_IF_ERROR(world_->recv(&len, 8, comm::DataType::kByte, prev, kTagHeaderLen));
        if (len > (uint64_t{1} << 32)) return protocol_error("step header of " + std::to_string(len) + " bytes");
        bytes.resize(len);
        DS_RETURN_IF_ERROR(world_->recv(bytes.data(), len, comm::DataType::kByte, prev, kTagHeader));
    }
    DS_ASSIGN_OR_RETURN(*step, decode_step(bytes));
    if (step->kind == StepKind::kStep) {
        DS_RETURN_IF_ERROR(apply_kv_ops(step).with_context("step " + std::to_string(step->batch.step_id) +
                                                          ": the coordinator's KV view disagrees with the job's"));
    }
    hidden->clear();
    if (stage_ > 0 && step->kind == StepKind::kStep && step->error.empty()) {
        int64_t tokens = 0;
        for (size_t i : my_sequences(*step)) {
            // Imported chunks are fetched, not computed: no rows of theirs travel (pipeline_kv.cc).
            if (!step->batch.seqs[i].has_import) tokens += chunk_tokens(step->batch.seqs[i]);
        }
        if (tokens > 0) {
            hidden->resize(static_cast<size_t>(tokens * checkpoint_->config().hidden_size));
            DS_RETURN_IF_ERROR(world_->recv(std::span<float>(*hidden), layout_.rank_of(stage_ - 1, local_), kTagHidden));
        }
    }
    return ok_status();
}

Status Pipeline::process(const PipelineStep& step, std::span<const float> hidden_in) {
    const bool last = stage_ == layout_.num_stages() - 1;
    if (step.kind != StepKind::kStep) {
        if (!last) DS_RETURN_IF_ERROR(send_step(step, {}, layout_.rank_of(stage_ + 1, local_)));
        return ok_status();
    }
    if (!step.error.empty()) {
        return forward_failure(step);
    }
    if (const std::string why = speculative_refusal(step); !why.empty()) {
        PipelineStep failed = step;
        failed.error = why;
        return forward_failure(failed);
    }
    const std::vector<size_t> mine = my_sequences(step);
    const bool transfers = std::any_of(step.batch.seqs.begin(), step.batch.seqs.end(), [](const ctl::SeqWork& w) {
        return w.has_import || w.has_export;
    });
    std::vector<uint64_t> import_failed = step.import_failed;
    if (transfers) DS_RETURN_IF_ERROR(import_chunks(step, mine, &import_failed));
    // The rank that answers for the last stage samples: its engine does it (on the device for CUDA),
    // with this rank's per-sequence samplers; the stage's other ranks only compute the rows.
    const bool samples_here =
        last && step.logits_mode.empty() && !(layout_.attention == AttentionMode::kTensorParallel && local_ != 0);
    std::vector<model::SeqChunk> chunks;
    for (size_t i : mine) {
        const ctl::SeqWork& w = step.batch.seqs[i];
        if (w.has_import) {
            // Fetched, not computed (import_chunks). Its sampler still starts here.
            if (samples_here && (w.is_new || samplers_.count(w.seq_id) == 0)) {
                samplers_[w.seq_id] = std::make_unique<model::Sampler>(to_params(w.sampling), w.prompt);
            }
            continue;
        }
        model::SeqChunk c;
        c.seq_id = w.seq_id;
        c.tokens = w.tokens;
        c.num_tokens = chunk_tokens(w);
        c.start_pos = w.start_pos;
        // Speculative decoding: every stage holds the KV the drafts will need (the coordinator's
        // mirror reserves the same); the last stage keeps the hidden states for the MTP module and
        // all logits rows of a chunk with drafts to verify (same rows on every rank: the vocab
        // allgather is collective).
        c.reserve_ahead = w.sample && w.propose > 0 ? w.propose - 1 : 0;
        c.keep_hidden = last && w.propose > 0;
        if (!step.logits_mode.empty()) {
            c.logits = step.logits_mode[i];
        } else if (w.num_draft > 0) {
            c.logits = model::LogitsMode::kAll;
        } else {
            c.logits = w.sample ? model::LogitsMode::kLast : model::LogitsMode::kNone;
        }
        if (samples_here) {
            if (w.is_new || samplers_.count(w.seq_id) == 0) {
                samplers_[w.seq_id] = std::make_unique<model::Sampler>(to_params(w.sampling), w.prompt);
            }
            if (w.sample && w.num_draft == 0) {
                c.logits = model::LogitsMode::kSample;
                c.sampler = samplers_[w.seq_id].get();
            }
        }
        chunks.push_back(c);
    }
    auto stepped = model_->step(chunks, hidden_in);
    if (!stepped.ok()) {
        // Rejections happen before the step changes any state or communicates, identically on
        // every rank of the stage (same inputs, same checks): the job stays up, the step fails.
        const StatusCode code = stepped.status().code();
        if (code != StatusCode::kInvalidArgument && code != StatusCode::kResourceExhausted) {
            return stepped.status();
        }
        PipelineStep failed = step;
        failed.error = stepped.status().to_string();
        return forward_failure(failed);
    }
    model::StepOutput out = std::move(stepped).value();
    if (transfers) export_chunks(step, mine);
    if (import_failed.size() != step.import_failed.size()) {
        // This stage's failures travel on with the step (a copy only in this rare case).
        PipelineStep with = step;
        with.import_failed = std::move(import_failed);
        if (!last) return send_step(with, out.hidden, layout_.rank_of(stage_ + 1, local_));
        return finish_last_stage(with, mine, out);
    }
    if (!last) {
        return send_step(step, out.hidden, layout_.rank_of(stage_ + 1, local_));
    }
    const bool speculative = step.logits_mode.empty() &&
                             std::any_of(mine.begin(), mine.end(), [&](size_t i) {
                                 return step.batch.seqs[i].propose > 0 || step.batch.seqs[i].num_draft > 0;
                             });
    if (!speculative) {
        return finish_last_stage(step, mine, out);
    }
    std::vector<SpecOutcome> outcomes;
    DS_RETURN_IF_ERROR(speculate(step, mine, out, &outcomes).with_context("speculative decoding"));
    return finish_last_stage(step, mine, out, &outcomes);
}

std::string Pipeline::speculative_refusal(const PipelineStep& step) const {
    const bool asked = std::any_of(step.batch.seqs.begin(), step.batch.seqs.end(),
                                   [](const ctl::SeqWork& w) { return w.propose > 0 || w.num_draft > 0; });
    if (step.kind != StepKind::kStep || !asked) return "";
    if (layout_.attention == AttentionMode::kDataParallel && layout_.ranks_per_stage > 1) {
        return "speculative decoding is not implemented with data-parallel attention (use tensor-parallel attention)";
    }
    // Every stage checks what the last one holds (the plan and model are the same everywhere).
    const model::ModelConfig& cfg = checkpoint_->config();
    if (cfg.num_nextn_predict_layers <= 0) {
        return "speculative decoding (mtp): the model has no MTP module (num_nextn_predict_layers = 0)";
    }
    if (stage_ == layout_.num_stages() - 1 && !model_->has_mtp()) {
        return std::string("speculative decoding (mtp): the ") + model::device_name(model_->device()) +
               " engine does not run the MTP module (use --device cpu)";
    }
    return "";
}

Status Pipeline::forward_failure(const PipelineStep& step) {
    if (stage_ != layout_.num_stages() - 1) {
        return send_step(step, {}, layout_.rank_of(stage_ + 1, local_));
    }
    model::StepOutput none;
    return finish_last_stage(step, {}, none);
}

Status Pipeline::finish_last_stage(const PipelineStep& step, const std::vector<size_t>& mine,
                                   const model::StepOutput& out, const std::vector<SpecOutcome>* spec) {
    if (layout_.attention == AttentionMode::kTensorParallel && local_ != 0) {
        return ok_status();  // local 0 of the last stage answers for the stage
    }
    StepReply reply;
    reply.step_id = step.batch.step_id;
    reply.result.step_id = step.batch.step_id;
    {
        const model::KvUsage u = model_->kv_usage();
        ctl::KvReport k;
        k.domain = static_cast<uint32_t>(layout_.attention == AttentionMode::kTensorParallel ? 0 : local_);
        k.used_blocks = static_cast<uint64_t>(u.used_blocks());
        k.cached_blocks = static_cast<uint64_t>(u.cached_blocks);
        k.total_blocks = static_cast<uint64_t>(u.total_blocks);
        reply.result.kv.push_back(k);
    }
    reply.result.import_failed = step.import_failed;
    if (!step.error.empty()) {
        reply.result.ok = 0;
        reply.result.error = step.error;
    } else if (step.return_logits) {
        reply.logits = out.logits;
        reply.rows = out.rows;
        reply.vocab = out.vocab;
    } else {
        // The engine sampled every kSample chunk (process() set them), in chunk order.
        size_t next = 0;
        for (size_t j = 0; j < mine.size(); ++j) {
            const ctl::SeqWork& w = step.batch.seqs[mine[j]];
            if (!w.sample) continue;
            const SpecOutcome* so = spec != nullptr && (*spec)[j].active ? &(*spec)[j] : nullptr;
            if (w.num_draft > 0) {
                // Verified drafts: the emitted tokens (their sampler already took them), in order.
                if (so == nullptr || so->emitted.empty()) {
                    return internal_error("speculative decoding: no verification for sequence " +
                                          std::to_string(w.seq_id));
                }
                for (const model::SampleResult& r : so->emitted) {
                    reply.result.outputs.push_back(to_output(w.seq_id, r));
                }
                reply.result.outputs.back().drafts = so->drafts;
                continue;
            }
            if (next >= out.samples.size()) {
                return internal_error("the engine returned " + std::to_string(out.samples.size()) +
                                      " sampled tokens for more sampled sequences");
            }
            const model::SampleResult& r = out.samples[next++];
            samplers_[w.seq_id]->accept(r.token);
            ctl::SeqOutput o = to_output(w.seq_id, r);
            if (so != nullptr) o.drafts = so->drafts;
            reply.result.outputs.push_back(std::move(o));
        }
    }
    if (rank_ == 0) {
        local_replies_[step.batch.step_id] = std::move(reply);
        return ok_status();
    }
    std::string bytes;
    ctl::encode(reply.result, &bytes);
    const uint64_t len = bytes.size();
    DS_RETURN_IF_ERROR(world_->send(&len, 8, comm::DataType::kByte, 0, kTagResultLen));
    DS_RETURN_IF_ERROR(world_->send(bytes.data(), bytes.size(), comm::DataType::kByte, 0, kTagResult));
    if (step.return_logits && !reply.logits.empty()) {
        DS_RETURN_IF_ERROR(world_->send(std::span<const float>(reply.logits), 0, kTagLogits));
    }
    return ok_status();
}

Status Pipeline::submit(const PipelineStep& step) {
    DS_CHECK(rank_ == 0) << "only the leader submits steps";
    const std::string bytes = encode_step(step);
    uint64_t len = bytes.size();
    DS_RETURN_IF_ERROR(stage_comm_->broadcast(&len, 8, comm::DataType::kByte, 0));
    DS_RETURN_IF_ERROR(stage_comm_->broadcast(const_cast<char*>(bytes.data()), len, comm::DataType::kByte, 0));
    if (step.kind != StepKind::kStep) {
        return process(step, {});
    }
    PipelineStep mine = step;
    DS_RETURN_IF_ERROR(apply_kv_ops(&mine).with_context("step " + std::to_string(step.batch.step_id) +
                                                        ": the coordinator's KV view disagrees with the job's"));
    DS_RETURN_IF_ERROR(process(mine, {}));
    pending_.push_back(std::move(mine));
    return ok_status();
}

Status Pipeline::collect(bool block, bool* ready, StepReply* reply) {
    *ready = false;
    if (pending_.empty()) {
        return ok_status();
    }
    const PipelineStep& step = pending_.front();
    const int64_t V = checkpoint_->config().vocab_size;
    StepReply merged;
    merged.step_id = step.batch.step_id;
    merged.result.step_id = step.batch.step_id;
    merged.vocab = V;
    // Replies per sender, merged in batch order below.
    std::map<int, StepReply> parts;
    for (int sender : result_senders()) {
        StepReply part;
        if (sender == 0) {
            auto it = local_replies_.find(step.batch.step_id);
            if (it == local_replies_.end()) {
                return internal_error("the leader's own last-stage result is missing");
            }
            part = it->second;
        } else {
            // The length message of the first remote sender may be polled without blocking; the
            // posted receive survives across calls so no message is consumed twice.
            if (len_sender_ != sender) {
                DS_ASSIGN_OR_RETURN(len_req_, world_->irecv(&len_buf_, 8, comm::DataType::kByte, sender, kTagResultLen));
                len_sender_ = sender;
            }
            if (!block && parts.empty()) {
                DS_ASSIGN_OR_RETURN(bool done, len_req_.test());
                if (!done) {
                    return ok_status();
                }
            } else {
                DS_RETURN_IF_ERROR(len_req_.wait());
            }
            len_sender_ = -1;
            const uint64_t len = len_buf_;
            if (len > (uint64_t{1} << 32)) return protocol_error("step result of " + std::to_string(len) + " bytes");
            std::string bytes(len, '\0');
            DS_RETURN_IF_ERROR(world_->recv(bytes.data(), len, comm::DataType::kByte, sender, kTagResult));
            DS_ASSIGN_OR_RETURN(ctl::FrameHeader fh,
                                ctl::decode_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
            if (fh.type != ctl::MessageType::kStepResult) return protocol_error("expected a step result frame");
            DS_ASSIGN_OR_RETURN(part.result, ctl::decode_step_result(bytes.substr(ctl::kFrameHeaderSize)));
            if (step.return_logits && part.result.ok) {
                // Rows this sender computed: its sequences' logits modes.
                int64_t rows = 0;
                for (size_t i = 0; i < step.batch.seqs.size(); ++i) {
                    const bool theirs = layout_.attention == AttentionMode::kTensorParallel ||
                                        layout_.rank_of(layout_.num_stages() - 1, step.owners[i]) == sender;
                    if (!theirs) continue;
                    const auto m = step.logits_mode.empty() ? model::LogitsMode::kLast : step.logits_mode[i];
                    rows += m == model::LogitsMode::kAll ? chunk_tokens(step.batch.seqs[i])
                                                         : (m == model::LogitsMode::kLast ? 1 : 0);
                }
                part.logits.resize(static_cast<size_t>(rows * V));
                part.rows = rows;
                if (rows > 0) {
                    DS_RETURN_IF_ERROR(world_->recv(std::span<float>(part.logits), sender, kTagLogits));
                }
            }
        }
        parts[sender] = std::move(part);
    }
    for (auto& [sender, part] : parts) {
        // Every answering rank reports its own KV domain.
        merged.result.kv.insert(merged.result.kv.end(), part.result.kv.begin(), part.result.kv.end());
        // The stage agreed on its import failures (import_chunks): every part has the same list.
        if (merged.result.import_failed.empty()) merged.result.import_failed = part.result.import_failed;
    }
    for (auto& [sender, part] : parts) {
        if (!part.result.ok) {
            // The step was rejected (same reason on every rank): report it, keep the job up.
            merged.result.ok = 0;
            merged.result.error = part.result.error;
            local_replies_.erase(step.batch.step_id);
            pending_.pop_front();
            *reply = std::move(merged);
            *ready = true;
            return ok_status();
        }
    }
    // Merge in batch order.
    std::map<int, size_t> out_pos, row_pos;
    for (size_t i = 0; i < step.batch.seqs.size(); ++i) {
        const ctl::SeqWork& w = step.batch.seqs[i];
        const int sender = layout_.attention == AttentionMode::kTensorParallel
                               ? result_senders().front()
                               : layout_.rank_of(layout_.num_stages() - 1, step.owners[i]);
        StepReply& part = parts[sender];
        if (step.return_logits) {
            const auto m = step.logits_mode.empty() ? model::LogitsMode::kLast : step.logits_mode[i];
            const int64_t rows =
                m == model::LogitsMode::kAll ? chunk_tokens(w) : (m == model::LogitsMode::kLast ? 1 : 0);
            size_t& at = row_pos[sender];
            merged.logits.insert(merged.logits.end(), part.logits.begin() + at * V, part.logits.begin() + (at + rows) * V);
            at += rows;
            merged.rows += rows;
        } else if (w.sample) {
            size_t& at = out_pos[sender];
            if (at >= part.result.outputs.size()) return protocol_error("a last-stage rank returned too few tokens");
            merged.result.outputs.push_back(part.result.outputs[at++]);
            // Speculative decoding: the sequence's further emitted tokens follow (same id).
            for (int64_t more = 0; more < w.num_draft && at < part.result.outputs.size() &&
                                   part.result.outputs[at].seq_id == w.seq_id;
                 ++more) {
                merged.result.outputs.push_back(part.result.outputs[at++]);
            }
        }
    }
    local_replies_.erase(step.batch.step_id);
    pending_.pop_front();
    *reply = std::move(merged);
    *ready = true;
    return ok_status();
}

StatusOr<StepReply> Pipeline::run(const PipelineStep& step) {
    DS_RETURN_IF_ERROR(submit(step));
    bool ready = false;
    StepReply reply;
    DS_RETURN_IF_ERROR(collect(true, &ready, &reply));
    if (!ready) return internal_error("step finished without a reply");
    if (!reply.result.ok) return invalid_argument(reply.result.error);
    return reply;
}

Status Pipeline::serve() {
    for (;;) {
        PipelineStep step;
        std::vector<float> hidden;
        DS_RETURN_IF_ERROR(receive_step(&step, &hidden).with_context("rank " + std::to_string(rank_) + " waiting for a step"));
        DS_RETURN_IF_ERROR(process(step, hidden).with_context("rank " + std::to_string(rank_) + " step " +
                                                                std::to_string(step.batch.step_id)));
        if (observer_) observer_(step);
        if (step.kind == StepKind::kShutdown) {
            return ok_status();
        }
    }
}

Status Pipeline::shutdown() {
    PipelineStep s;
    s.kind = StepKind::kShutdown;
    return submit(s);
}

}  // namespace deepshard::shard_node
