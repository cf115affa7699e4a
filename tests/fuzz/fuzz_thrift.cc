// libFuzzer target: Thrift calls as the coordinator decodes them. The input is a stream of binary-
// protocol messages read through the generated DeepshardProcessor with the server's limits (message
// bytes, string and list sizes, recursion depth); Generate / Submit run params_from_thrift (the
// Thrift front end's validation) against a 4096-token model with the real tokenizer, Tokenize /
// Detokenize run the tokenizer. Aborts when an accepted request fails validate_params; any
// sanitizer report or an exception other than Thrift's own decoding errors is a finding.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include <thrift/TApplicationException.h>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/transport/TBufferTransports.h>

#include "coordinator/thrift/Deepshard.h"
#include "coordinator/thrift_guard.h"
#include "coordinator/thrift_params.h"

#ifndef DS_FUZZ_SOURCE_DIR
#define DS_FUZZ_SOURCE_DIR "."
#endif

namespace {

namespace th = apache::thrift;
using deepshard::coordinator::ModelInfo;

[[noreturn]] void fail(const std::string& what) {
    std::fprintf(stderr, "fuzz_thrift: %s\n", what.c_str());
    std::abort();
}

struct World {
    ModelInfo model;
    std::unique_ptr<deepshard::model::Tokenizer> tokenizer;
};

const World& world() {
    static const World* w = [] {
        auto* x = new World;
        x->model.name = "m";
        x->model.max_context = 4096;
        x->model.vocab_size = 129280;
        const char* env = std::getenv("DS_TOKENIZER_DIR");
        const std::string dir = env != nullptr ? env : std::string(DS_FUZZ_SOURCE_DIR) + "/testdata/tokenizer";
        auto tok = deepshard::model::Tokenizer::load(dir);
        if (!tok.ok()) fail("cannot load " + dir + ": " + tok.status().to_string());
        x->tokenizer = std::make_unique<deepshard::model::Tokenizer>(std::move(tok).value());
        return x;
    }();
    return *w;
}

// The server's handler minus the engine: what it does with a decoded call before any queueing.
class Handler : public deepshard::rpc::DeepshardIf {
public:
    void Generate(deepshard::rpc::GenerateResponse&, const deepshard::rpc::GenerateRequest& r) override { check(r); }
    int64_t Submit(const deepshard::rpc::GenerateRequest& r) override {
        check(r);
        return 1;
    }
    void Poll(deepshard::rpc::PollResponse&, int64_t, int64_t, int32_t, const std::string&) override {}
    void Cancel(int64_t, const std::string&) override {}
    void Tokenize(std::vector<int32_t>& out, const std::string& text, bool add_bos, const std::string&) override {
        auto ids = world().tokenizer->encode(text, add_bos);
        if (ids.ok()) out = std::move(ids).value();
    }
    void Detokenize(std::string& out, const std::vector<int32_t>& tokens, const std::string&) override {
        for (int32_t t : tokens) {
            if (t < 0 || t >= world().model.vocab_size) return;
        }
        out = world().tokenizer->decode(tokens);
    }
    void GetModelInfo(deepshard::rpc::ModelInfo&) override {}
    void Health(deepshard::rpc::HealthStatus&) override {}
    void GetStats(deepshard::rpc::Stats&) override {}

private:
    static void check(const deepshard::rpc::GenerateRequest& r) {
        const World& w = world();
        auto p = deepshard::coordinator::params_from_thrift(r, w.model, w.tokenizer.get());
        if (!p.ok()) {
            if (p.status().code() != deepshard::StatusCode::kInvalidArgument) fail("not InvalidArgument: " + p.status().to_string());
            deepshard::rpc::InvalidRequest e;
            e.message = p.status().message();
            e.field = deepshard::coordinator::field_of(p.status());
            throw e;
        }
        if (p->prompt.empty()) fail("accepted an empty prompt");
        const deepshard::Status v = deepshard::coordinator::validate_params(*p, w.model);
        if (!v.ok()) fail("accepted a request validate_params refuses: " + v.to_string());
    }
};

}  // namespace

// Loading the real tokenizer takes seconds under ASan: done before libFuzzer's per-input timer.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
    (void)world();
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    (void)world();
    // ThriftOptions' defaults: 4 MiB + 64 KiB per call, 2^18 list entries; recursion depth 64.
    auto config = std::make_shared<th::TConfiguration>((4 << 20) + (64 << 10));
    auto in = std::make_shared<th::transport::TMemoryBuffer>(const_cast<uint8_t*>(data), static_cast<uint32_t>(size),
                                                             th::transport::TMemoryBuffer::OBSERVE, config);
    auto out = std::make_shared<th::transport::TMemoryBuffer>();
    deepshard::coordinator::thrift_guard::ProtocolFactory factory((4 << 20) + (64 << 10), 1 << 18);
    auto iprot = factory.getProtocol(in);
    auto oprot = factory.getProtocol(out);
    deepshard::rpc::DeepshardProcessor processor(std::make_shared<Handler>());
    for (int calls = 0; calls < 8 && in->available_read() > 0; ++calls) {
        try {
            if (!processor.process(iprot, oprot, nullptr)) break;
        } catch (const th::protocol::TProtocolException&) {
            break;  // malformed on the wire: the server answers with an exception and closes
        } catch (const th::transport::TTransportException&) {
            break;  // truncated / over the size limit
        } catch (const th::TApplicationException&) {
            break;
        }
        out->resetBuffer();
    }
    return 0;
}
