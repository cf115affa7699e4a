// Encoders/decoders for the control protocol (protocol.h). Everything goes through Writer/Reader,
// which fix the byte order and make every read bounds-checked; decoders then check each field's
// range. Limits below are far above anything a real job sends and exist so that a corrupt or
// hostile count cannot make us allocate gigabytes before the length check catches it.
#include "control/protocol.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <type_traits>

namespace deepshard::control {

namespace {

constexpr uint32_t kMaxStringBytes = 16u << 20;    // plan JSON is the largest string
constexpr uint32_t kMaxReasonBytes = 64u << 10;
constexpr uint32_t kMaxSeqsPerBatch = 1u << 16;
constexpr uint32_t kMaxTokensPerSeq = 1u << 24;
constexpr uint32_t kMaxRelease = 1u << 20;
constexpr uint32_t kMaxTopLogprobs = limits::kMaxTopLogprobs;

class Writer {
public:
    explicit Writer(std::string* out) : out_(out) {}
    template <typename T>
    void put(T v) {
        static_assert(std::is_arithmetic_v<T>);
        // Hosts are little-endian (x86-64, aarch64); memcpy keeps it free of aliasing issues.
        char b[sizeof(T)];
        std::memcpy(b, &v, sizeof(T));
        out_->append(b, sizeof(T));
    }
    void str(const std::string& s) {
        put<uint32_t>(static_cast<uint32_t>(s.size()));
        out_->append(s);
    }
    template <typename T>
    void vec(const std::vector<T>& v) {
        put<uint32_t>(static_cast<uint32_t>(v.size()));
        for (const T& x : v) put<T>(x);
    }
    template <size_t N>
    void bytes(const std::array<uint8_t, N>& a) {
        out_->append(reinterpret_cast<const char*>(a.data()), N);
    }

private:
    std::string* out_;
};

// Bounds-checked reader; the first failure sticks and names the field.
class Reader {
public:
    explicit Reader(const std::string& s) : p_(reinterpret_cast<const uint8_t*>(s.data())), n_(s.size()) {}
    template <typename T>
    bool get(T* v, const char* field) {
        if (!status_.ok()) return false;
        if (n_ - pos_ < sizeof(T)) {
            status_ = protocol_error(std::string("truncated frame reading ") + field);
            return false;
        }
        std::memcpy(v, p_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return true;
    }
    bool count(uint32_t* c, uint32_t max, size_t min_elem_bytes, const char* field) {
        if (!get(c, field)) return false;
        if (*c > max) {
            return fail(std::string(field) + " count " + std::to_string(*c) + " exceeds the limit " +
                        std::to_string(max));
        }
        if (static_cast<uint64_t>(*c) * min_elem_bytes > n_ - pos_) {
            return fail(std::string("truncated frame: ") + field + " count " + std::to_string(*c) +
                        " exceeds the remaining payload");
        }
        return true;
    }
    bool str(std::string* s, uint32_t max, const char* field) {
        uint32_t len = 0;
        if (!count(&len, max, 1, field)) return false;
        s->assign(reinterpret_cast<const char*>(p_ + pos_), len);
        pos_ += len;
        return true;
    }
    template <typename T>
    bool vec(std::vector<T>* v, uint32_t max, const char* field) {
        uint32_t c = 0;
        if (!count(&c, max, sizeof(T), field)) return false;
        v->resize(c);
        if (c > 0) std::memcpy(v->data(), p_ + pos_, c * sizeof(T));
        pos_ += c * sizeof(T);
        return true;
    }
    template <size_t N>
    bool bytes(std::array<uint8_t, N>* a, const char* field) {
        if (!status_.ok()) return false;
        if (n_ - pos_ < N) {
            status_ = protocol_error(std::string("truncated frame reading ") + field);
            return false;
        }
        std::memcpy(a->data(), p_ + pos_, N);
        pos_ += N;
        return true;
    }
    bool flag(uint8_t* v, const char* field) {
        if (!get(v, field)) return false;
        if (*v > 1) return fail(std::string(field) + " must be 0 or 1, got " + std::to_string(*v));
        return true;
    }
    bool check(bool cond, const std::string& msg) { return cond ? status_.ok() : fail(msg); }
    bool fail(const std::string& msg) {
        if (status_.ok()) status_ = protocol_error(msg);
        return false;
    }
    // Trailing bytes mean the peer and we disagree on the layout: reject rather than guess.
    Status finish(const char* message) {
        if (status_.ok() && pos_ != n_) {
            status_ = protocol_error(std::to_string(n_ - pos_) + " trailing bytes after " + message);
        }
        if (!status_.ok()) return status_.with_context(std::string("decoding ") + message);
        return ok_status();
    }

private:
    const uint8_t* p_;
    size_t n_;
    size_t pos_ = 0;
    Status status_;
};

// Writes the header with a placeholder length, lets `body` append the payload, patches the length.
template <typename F>
void frame(MessageType type, std::string* out, F&& body) {
    const size_t start = out->size();
    Writer w(out);
    w.put<uint32_t>(kMagic);
    w.put<uint16_t>(kVersion);
    w.put<uint16_t>(static_cast<uint16_t>(type));
    w.put<uint32_t>(0);
    body(w);
    const uint32_t len = static_cast<uint32_t>(out->size() - start - kFrameHeaderSize);
    std::memcpy(out->data() + start + 8, &len, sizeof(len));
}

std::string fmt_hex_magic(uint32_t magic) {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "bad frame magic 0x%08x (expected 0x%08x 'DSCP')", magic, kMagic);
    return buf;
}

void put_sampling(Writer& w, const SamplingSpec& s) {
    w.put(s.temperature);
    w.put(s.top_k);
    w.put(s.top_p);
    w.put(s.min_p);
    w.put(s.repetition_penalty);
    w.put(s.frequency_penalty);
    w.put(s.presence_penalty);
    w.put(s.seed);
    w.put(s.has_seed);
    w.put(s.logprobs);
}

bool get_sampling(Reader& r, SamplingSpec* s) {
    if (!(r.get(&s->temperature, "sampling.temperature") && r.get(&s->top_k, "sampling.top_k") &&
          r.get(&s->top_p, "sampling.top_p") && r.get(&s->min_p, "sampling.min_p") &&
          r.get(&s->repetition_penalty, "sampling.repetition_penalty") &&
          r.get(&s->frequency_penalty, "sampling.frequency_penalty") &&
          r.get(&s->presence_penalty, "sampling.presence_penalty") && r.get(&s->seed, "sampling.seed") &&
          r.flag(&s->has_seed, "sampling.has_seed") && r.get(&s->logprobs, "sampling.logprobs"))) {
        return false;
    }
    // The request-limits table, as the front ends applied it: a frame outside it is not from us.
    const Status in_range = limits::check_sampling(sampling_values(*s), "sampling.");
    return r.check(in_range.ok(), in_range.message());
}

void put_kv_ops(Writer& w, const KvOps& k) {
    w.put<uint32_t>(static_cast<uint32_t>(k.publish.size()));
    for (const KvPublish& p : k.publish) {
        w.put(p.entry);
        w.put(p.seq_id);
        w.put(p.block_index);
        w.put(p.domain);
    }
    w.vec(k.preempt);
    w.put<uint32_t>(static_cast<uint32_t>(k.evict.size()));
    for (const KvEvict& e : k.evict) {
        w.put(e.entry);
        w.put(e.domain);
    }
    w.put<uint32_t>(static_cast<uint32_t>(k.start.size()));
    for (const KvStart& s : k.start) {
        w.put(s.seq_id);
        w.put(s.domain);
        w.vec(s.prefix);
    }
}

// Domains are local ranks of a stage (< 65536, like world_size); the job checks them against its
// own layout.
bool get_kv_ops(Reader& r, KvOps* k) {
    uint32_t n = 0;
    if (!r.count(&n, kMaxRelease, 8 + 8 + 4 + 4, "step_batch.kv.publish")) return false;
    k->publish.resize(n);
    for (KvPublish& p : k->publish) {
        if (!(r.get(&p.entry, "kv.publish.entry") && r.get(&p.seq_id, "kv.publish.seq_id") &&
              r.get(&p.block_index, "kv.publish.block_index") && r.get(&p.domain, "kv.publish.domain") &&
              r.check(p.domain < 65536, "kv.publish.domain out of range"))) {
            return false;
        }
    }
    if (!r.vec(&k->preempt, kMaxRelease, "step_batch.kv.preempt")) return false;
    if (!r.count(&n, kMaxRelease, 8 + 4, "step_batch.kv.evict")) return false;
    k->evict.resize(n);
    for (KvEvict& e : k->evict) {
        if (!(r.get(&e.entry, "kv.evict.entry") && r.get(&e.domain, "kv.evict.domain") &&
              r.check(e.domain < 65536, "kv.evict.domain out of range"))) {
            return false;
        }
    }
    if (!r.count(&n, kMaxSeqsPerBatch, 8 + 4 + 4, "step_batch.kv.start")) return false;
    k->start.resize(n);
    for (KvStart& s : k->start) {
        if (!(r.get(&s.seq_id, "kv.start.seq_id") && r.get(&s.domain, "kv.start.domain") &&
              r.check(s.domain < 65536, "kv.start.domain out of range") &&
              r.vec(&s.prefix, kMaxTokensPerSeq, "kv.start.prefix"))) {
            return false;
        }
    }
    return true;
}

constexpr uint32_t kMaxEndpointBytes = 256;  // "IP:PORT", with room for IPv6 and a scope
constexpr uint32_t kMaxKvSources = 65536;    // one per exporting stage at most (layers)

void put_sources(Writer& w, const std::vector<KvSource>& v) {
    w.put<uint32_t>(static_cast<uint32_t>(v.size()));
    for (const KvSource& src : v) {
        w.put(src.layer_begin);
        w.put(src.layer_end);
        w.str(src.endpoint);
    }
}

// `groups` lists of sources, each covering the layers from 0 in order without gaps or overlaps
// (KvImport.sources: one list; Hello.kv_exports: one per KV domain, or none when `may_be_empty`).
bool get_sources(Reader& r, const char* field, uint32_t groups, bool may_be_empty, std::vector<KvSource>* out) {
    const std::string f = field;
    uint32_t n = 0;
    if (!(r.count(&n, kMaxKvSources, 4 + 4 + 4, field) && r.check(n > 0 || may_be_empty, f + " is empty") &&
          r.check(groups >= 1 && n % groups == 0, f + " holds " + std::to_string(n) + " sources for " +
                                                      std::to_string(groups) + " KV domains"))) {
        return false;
    }
    out->resize(n);
    const uint32_t per = n / groups;  // sources per group (n % groups == 0 above)
    for (uint32_t i = 0; i < n; ++i) {
        KvSource& src = (*out)[i];
        // A group starts at layer 0 and continues where its previous source ended; every group
        // ends where the first one does (one model).
        const bool first = i % per == 0, last = i % per == per - 1;
        const uint32_t begin = first ? 0 : (*out)[i - 1].layer_end;
        if (!(r.get(&src.layer_begin, field) && r.get(&src.layer_end, field) &&
              r.check(src.layer_begin == begin && src.layer_end > src.layer_begin && src.layer_end <= 65536 &&
                          (!last || i < per || src.layer_end == (*out)[per - 1].layer_end),
                      f + " must cover the layers from 0 in order, without gaps or overlaps") &&
              r.str(&src.endpoint, kMaxEndpointBytes, field) && r.check(!src.endpoint.empty(), f + ": empty endpoint"))) {
            return false;
        }
    }
    return true;
}

// SeqWork.kv_export / kv_import and their rules (see protocol.h).
bool get_transfer(Reader& r, SeqWork* s) {
    if (!r.flag(&s->has_export, "seq.has_export")) return false;
    if (s->has_export && !(r.get(&s->kv_export.transfer_id, "seq.kv_export.transfer_id") &&
                           r.bytes(&s->kv_export.key, "seq.kv_export.key"))) {
        return false;
    }
    if (!r.flag(&s->has_import, "seq.has_import")) return false;
    if (s->has_import) {
        if (!(r.get(&s->kv_import.transfer_id, "seq.kv_import.transfer_id") &&
              r.bytes(&s->kv_import.key, "seq.kv_import.key") &&
              get_sources(r, "seq.kv_import.sources", 1, false, &s->kv_import.sources))) {
            return false;
        }
    }
    const bool plain = !s->has_export && !s->has_import;
    return r.check(plain || (s->sample == 0 && s->num_draft == 0 && s->propose == 0 && !(s->has_export && s->has_import)),
                   "seq.kv_export / kv_import go only with a chunk that neither samples nor drafts (seq " +
                       std::to_string(s->seq_id) + ")");
}

}  // namespace

void encode(const AuthHello& m, std::string* out) {
    frame(MessageType::kAuthHello, out, [&](Writer& w) { w.bytes(m.client_nonce); });
}

void encode(const AuthChallenge& m, std::string* out) {
    frame(MessageType::kAuthChallenge, out, [&](Writer& w) {
        w.bytes(m.server_nonce);
        w.bytes(m.server_mac);
    });
}

void encode(const AuthProof& m, std::string* out) {
    frame(MessageType::kAuthProof, out, [&](Writer& w) { w.bytes(m.client_mac); });
}

void encode(const Hello& m, std::string* out) {
    frame(MessageType::kHello, out, [&](Writer& w) {
        w.put(m.version);
        w.put(m.model_fingerprint);
        w.str(m.plan_json);
        w.put(m.world_size);
        w.put(m.pipeline_stages);
        w.put(m.kv_block_size);
        w.put(m.kv_blocks);
        w.put(m.max_batch_tokens);
        w.put(m.max_sequences);
        w.put(m.vocab_size);
        w.str(m.job_id);
        w.put(m.kv_domains);
        w.put(m.resume_session);
        w.put(m.received);
        put_sources(w, m.kv_exports);
    });
}

void encode(const HelloAck& m, std::string* out) {
    frame(MessageType::kHelloAck, out, [&](Writer& w) {
        w.put(m.session_id);
        w.put(m.resumed);
        w.put(m.received);
        w.put(m.resume_grace_ms);
    });
}

void encode(const Refuse& m, std::string* out) {
    frame(MessageType::kRefuse, out, [&](Writer& w) { w.str(m.reason); });
}

void encode(const StepBatch& m, std::string* out) {
    frame(MessageType::kStepBatch, out, [&](Writer& w) {
        w.put(m.step_id);
        w.vec(m.release);
        w.put<uint32_t>(static_cast<uint32_t>(m.seqs.size()));
        for (const SeqWork& s : m.seqs) {
            w.put(s.seq_id);
            w.put(s.start_pos);
            w.vec(s.tokens);
            w.put(s.sample);
            w.put(s.is_new);
            if (s.is_new) {
                put_sampling(w, s.sampling);
                w.vec(s.prompt);
            }
            w.put(s.num_draft);
            w.put(s.propose);
            w.put(s.has_export);
            if (s.has_export) {
                w.put(s.kv_export.transfer_id);
                w.bytes(s.kv_export.key);
            }
            w.put(s.has_import);
            if (s.has_import) {
                w.put(s.kv_import.transfer_id);
                w.bytes(s.kv_import.key);
                put_sources(w, s.kv_import.sources);
            }
        }
        put_kv_ops(w, m.kv);
    });
}

void encode(const StepResult& m, std::string* out) {
    frame(MessageType::kStepResult, out, [&](Writer& w) {
        w.put(m.step_id);
        w.put(m.ok);
        w.str(m.error);
        w.put(m.step_seconds);
        w.put<uint32_t>(static_cast<uint32_t>(m.outputs.size()));
        for (const SeqOutput& o : m.outputs) {
            w.put(o.seq_id);
            w.put(o.token);
            w.put(o.logprob);
            // top_ids and top_logprobs are pairs: one count, so they cannot disagree on the wire.
            w.put<uint32_t>(static_cast<uint32_t>(o.top_ids.size()));
            for (size_t i = 0; i < o.top_ids.size(); ++i) {
                w.put(o.top_ids[i]);
                w.put(i < o.top_logprobs.size() ? o.top_logprobs[i] : 0.0f);
            }
            w.vec(o.drafts);
        }
        w.put<uint32_t>(static_cast<uint32_t>(m.kv.size()));
        for (const KvReport& k : m.kv) {
            w.put(k.domain);
            w.put(k.used_blocks);
            w.put(k.cached_blocks);
            w.put(k.total_blocks);
        }
        w.vec(m.import_failed);
    });
}

void encode(const Heartbeat& m, std::string* out) {
    frame(MessageType::kHeartbeat, out, [&](Writer& w) {
        w.put(m.sequence);
        w.put(m.unix_millis);
        w.put(m.ack);
    });
}

void encode(const Shutdown& m, std::string* out) {
    frame(MessageType::kShutdown, out, [&](Writer& w) { w.str(m.reason); });
}

StatusOr<FrameHeader> decode_header(const uint8_t* data, size_t size) {
    if (size < kFrameHeaderSize) {
        return protocol_error("truncated frame header: " + std::to_string(size) + " of 12 bytes");
    }
    uint32_t magic = 0;
    uint16_t version = 0;
    uint16_t type = 0;
    uint32_t length = 0;
    std::memcpy(&magic, data, 4);
    std::memcpy(&version, data + 4, 2);
    std::memcpy(&type, data + 6, 2);
    std::memcpy(&length, data + 8, 4);
    if (magic != kMagic) {
        return protocol_error(fmt_hex_magic(magic));
    }
    if (version != kVersion) {
        return protocol_error("frame version " + std::to_string(version) + " is not the supported version " +
                              std::to_string(kVersion));
    }
    if (type < static_cast<uint16_t>(MessageType::kHello) || type > kMaxMessageType) {
        return protocol_error("unknown frame type " + std::to_string(type));
    }
    if (length > kMaxPayload) {
        return protocol_error("frame length " + std::to_string(length) + " exceeds the limit " +
                              std::to_string(kMaxPayload));
    }
    FrameHeader h;
    h.version = version;
    h.type = static_cast<MessageType>(type);
    h.length = length;
    return h;
}


StatusOr<Hello> decode_hello(const std::string& payload) {
    Reader r(payload);
    Hello m;
    r.get(&m.version, "hello.version") && r.check(m.version >= 1, "hello.version is 0") &&
        r.get(&m.model_fingerprint, "hello.model_fingerprint") &&
        r.str(&m.plan_json, kMaxStringBytes, "hello.plan_json") && r.get(&m.world_size, "hello.world_size") &&
        r.check(m.world_size >= 1 && m.world_size <= 65536, "hello.world_size out of range [1, 65536]") &&
        r.get(&m.pipeline_stages, "hello.pipeline_stages") &&
        r.check(m.pipeline_stages >= 1 && m.pipeline_stages <= m.world_size,
                "hello.pipeline_stages out of range [1, world_size]") &&
        r.get(&m.kv_block_size, "hello.kv_block_size") &&
        r.check(m.kv_block_size >= 1 && m.kv_block_size <= 65536, "hello.kv_block_size out of range [1, 65536]") &&
        r.get(&m.kv_blocks, "hello.kv_blocks") && r.check(m.kv_blocks >= 1, "hello.kv_blocks is 0") &&
        r.check(m.kv_blocks <= (uint64_t{1} << 40), "hello.kv_blocks is absurdly large") &&
        r.get(&m.max_batch_tokens, "hello.max_batch_tokens") &&
        r.check(m.max_batch_tokens <= kMaxTokensPerSeq, "hello.max_batch_tokens exceeds the limit") &&
        r.get(&m.max_sequences, "hello.max_sequences") &&
        r.check(m.max_sequences <= kMaxSeqsPerBatch, "hello.max_sequences exceeds the limit") &&
        r.get(&m.vocab_size, "hello.vocab_size") && r.check(m.vocab_size >= 1, "hello.vocab_size is 0") &&
        r.str(&m.job_id, kMaxReasonBytes, "hello.job_id") && r.get(&m.kv_domains, "hello.kv_domains") &&
        r.check(m.kv_domains >= 1 && m.kv_domains <= m.world_size, "hello.kv_domains out of range [1, world_size]") &&
        r.get(&m.resume_session, "hello.resume_session") && r.get(&m.received, "hello.received") &&
        get_sources(r, "hello.kv_exports", m.kv_domains, true, &m.kv_exports);
    DS_RETURN_IF_ERROR(r.finish("Hello"));
    return m;
}

StatusOr<HelloAck> decode_hello_ack(const std::string& payload) {
    Reader r(payload);
    HelloAck m;
    r.get(&m.session_id, "hello_ack.session_id") && r.check(m.session_id != 0, "hello_ack.session_id is 0") &&
        r.flag(&m.resumed, "hello_ack.resumed") && r.get(&m.received, "hello_ack.received") &&
        r.get(&m.resume_grace_ms, "hello_ack.resume_grace_ms");
    DS_RETURN_IF_ERROR(r.finish("HelloAck"));
    return m;
}

StatusOr<AuthHello> decode_auth_hello(const std::string& payload) {
    Reader r(payload);
    AuthHello m;
    r.bytes(&m.client_nonce, "auth_hello.client_nonce");
    DS_RETURN_IF_ERROR(r.finish("AuthHello"));
    return m;
}

StatusOr<AuthChallenge> decode_auth_challenge(const std::string& payload) {
    Reader r(payload);
    AuthChallenge m;
    r.bytes(&m.server_nonce, "auth_challenge.server_nonce") && r.bytes(&m.server_mac, "auth_challenge.server_mac");
    DS_RETURN_IF_ERROR(r.finish("AuthChallenge"));
    return m;
}

StatusOr<AuthProof> decode_auth_proof(const std::string& payload) {
    Reader r(payload);
    AuthProof m;
    r.bytes(&m.client_mac, "auth_proof.client_mac");
    DS_RETURN_IF_ERROR(r.finish("AuthProof"));
    return m;
}

StatusOr<Refuse> decode_refuse(const std::string& payload) {
    Reader r(payload);
    Refuse m;
    r.str(&m.reason, kMaxReasonBytes, "refuse.reason");
    DS_RETURN_IF_ERROR(r.finish("Refuse"));
    return m;
}

StatusOr<StepBatch> decode_step_batch(const std::string& payload) {
    Reader r(payload);
    StepBatch m;
    uint32_t n = 0;
    if (r.get(&m.step_id, "step_batch.step_id") && r.vec(&m.release, kMaxRelease, "step_batch.release") &&
        r.count(&n, kMaxSeqsPerBatch, 8 + 4 + 4 + 2 + 2, "step_batch.seqs")) {
        m.seqs.resize(n);
        for (uint32_t i = 0; i < n; ++i) {
            SeqWork& s = m.seqs[i];
            const bool ok =
                r.get(&s.seq_id, "seq.seq_id") && r.get(&s.start_pos, "seq.start_pos") &&
                r.vec(&s.tokens, kMaxTokensPerSeq, "seq.tokens") &&
                r.check(!s.tokens.empty(), "seq.tokens is empty (seq " + std::to_string(s.seq_id) + ")") &&
                r.check(static_cast<uint64_t>(s.start_pos) + s.tokens.size() <= kMaxTokensPerSeq,
                        "seq.start_pos + tokens exceeds the position limit") &&
                r.flag(&s.sample, "seq.sample") && r.flag(&s.is_new, "seq.is_new");
            if (!ok) break;
            for (int32_t t : s.tokens) {
                if (t < 0) {
                    r.fail("seq.tokens holds a negative id " + std::to_string(t));
                    break;
                }
            }
            if (s.is_new && !(get_sampling(r, &s.sampling) && r.vec(&s.prompt, kMaxTokensPerSeq, "seq.prompt"))) {
                break;
            }
            for (int32_t t : s.prompt) {
                if (t < 0) {
                    r.fail("seq.prompt holds a negative id " + std::to_string(t));
                    break;
                }
            }
            if (!(r.get(&s.num_draft, "seq.num_draft") && r.get(&s.propose, "seq.propose") &&
                  r.check(s.num_draft <= kMaxDraftTokens && s.propose <= kMaxDraftTokens,
                          "seq.num_draft / seq.propose exceed " + std::to_string(kMaxDraftTokens)) &&
                  r.check(s.num_draft < s.tokens.size(), "seq.num_draft leaves no verified token") &&
                  r.check(s.num_draft == 0 || s.sample, "seq.num_draft without sample") && get_transfer(r, &s))) {
                break;
            }
            // Disjointness: one sequence appears at most once per batch (checked cheaply for small n).
            if (n <= 4096) {
                for (uint32_t j = 0; j < i; ++j) {
                    if (m.seqs[j].seq_id == s.seq_id) {
                        r.fail("seq.seq_id " + std::to_string(s.seq_id) + " appears twice in one batch");
                        break;
                    }
                }
            }
        }
    }
    if (get_kv_ops(r, &m.kv)) {
        // A sequence starts past position 0 only from a cached prefix.
        for (const SeqWork& s : m.seqs) {
            if (!s.is_new || s.start_pos == 0) continue;
            bool from_cache = false;
            for (const KvStart& k : m.kv.start) from_cache |= k.seq_id == s.seq_id && !k.prefix.empty();
            if (!r.check(from_cache, "seq.is_new with start_pos " + std::to_string(s.start_pos) + " but no cached prefix (seq " +
                                         std::to_string(s.seq_id) + ")")) {
                break;
            }
        }
    }
    DS_RETURN_IF_ERROR(r.finish("StepBatch"));
    return m;
}

StatusOr<StepResult> decode_step_result(const std::string& payload) {
    Reader r(payload);
    StepResult m;
    uint32_t n = 0;
    if (r.get(&m.step_id, "step_result.step_id") && r.flag(&m.ok, "step_result.ok") &&
        r.str(&m.error, kMaxReasonBytes, "step_result.error") && r.get(&m.step_seconds, "step_result.step_seconds") &&
        r.check(std::isfinite(m.step_seconds) && m.step_seconds >= 0, "step_result.step_seconds is not a duration") &&
        r.count(&n, kMaxSeqsPerBatch * (kMaxDraftTokens + 1), 8 + 4 + 4 + 4 + 4, "step_result.outputs")) {
        m.outputs.resize(n);
        for (uint32_t i = 0; i < n; ++i) {
            SeqOutput& o = m.outputs[i];
            uint32_t k = 0;
            const bool ok = r.get(&o.seq_id, "output.seq_id") && r.get(&o.token, "output.token") &&
                            r.check(o.token >= -1, "output.token is negative") &&
                            r.get(&o.logprob, "output.logprob") &&
                            r.check(!std::isnan(o.logprob) && o.logprob <= 1e-3f, "output.logprob is not a log-probability") &&
                            r.count(&k, kMaxTopLogprobs, 8, "output.top_logprobs");
            if (!ok) break;
            o.top_ids.resize(k);
            o.top_logprobs.resize(k);
            for (uint32_t j = 0; j < k; ++j) {
                if (!(r.get(&o.top_ids[j], "output.top_ids") && r.check(o.top_ids[j] >= 0, "output.top_ids negative") &&
                      r.get(&o.top_logprobs[j], "output.top_logprobs") &&
                      r.check(!std::isnan(o.top_logprobs[j]), "output.top_logprobs is NaN"))) {
                    break;
                }
            }
            if (!r.vec(&o.drafts, kMaxDraftTokens, "output.drafts")) break;
            for (int32_t t : o.drafts) {
                if (t < 0) {
                    r.fail("output.drafts holds a negative id " + std::to_string(t));
                    break;
                }
            }
        }
    }
    if (r.count(&n, kMaxRelease, 4 + 8 + 8 + 8, "step_result.kv")) {
        m.kv.resize(n);
        for (KvReport& k : m.kv) {
            if (!(r.get(&k.domain, "kv.domain") && r.get(&k.used_blocks, "kv.used_blocks") &&
                  r.get(&k.cached_blocks, "kv.cached_blocks") && r.get(&k.total_blocks, "kv.total_blocks") &&
                  r.check(k.used_blocks <= k.total_blocks && k.cached_blocks <= k.total_blocks,
                          "kv report counts exceed the pool"))) {
                break;
            }
        }
    }
    r.vec(&m.import_failed, kMaxSeqsPerBatch, "step_result.import_failed");
    DS_RETURN_IF_ERROR(r.finish("StepResult"));
    return m;
}

StatusOr<Heartbeat> decode_heartbeat(const std::string& payload) {
    Reader r(payload);
    Heartbeat m;
    r.get(&m.sequence, "heartbeat.sequence") && r.get(&m.unix_millis, "heartbeat.unix_millis") &&
        r.get(&m.ack, "heartbeat.ack");
    DS_RETURN_IF_ERROR(r.finish("Heartbeat"));
    return m;
}

StatusOr<Shutdown> decode_shutdown(const std::string& payload) {
    Reader r(payload);
    Shutdown m;
    r.str(&m.reason, kMaxReasonBytes, "shutdown.reason");
    DS_RETURN_IF_ERROR(r.finish("Shutdown"));
    return m;
}

const char* message_type_name(MessageType type) {
    switch (type) {
        case MessageType::kHello: return "Hello";
        case MessageType::kHelloAck: return "HelloAck";
        case MessageType::kRefuse: return "Refuse";
        case MessageType::kStepBatch: return "StepBatch";
        case MessageType::kStepResult: return "StepResult";
        case MessageType::kHeartbeat: return "Heartbeat";
        case MessageType::kShutdown: return "Shutdown";
        case MessageType::kAuthHello: return "AuthHello";
        case MessageType::kAuthChallenge: return "AuthChallenge";
        case MessageType::kAuthProof: return "AuthProof";
    }
    return "unknown";
}

}  // namespace deepshard::control
