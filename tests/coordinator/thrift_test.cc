// The Thrift front end against hostile input: params_from_thrift's checks (presence, counts, the
// request-limits table's ranges on the values as sent) and, on a live deepshard-coordinator without
// a shard job, the transport guards: an oversized call or a list header announcing a billion
// entries is answered with a TApplicationException (not an allocation, not a silent drop); a client
// trickling a call byte by byte is cut off by the call deadline; an idle connection by the idle
// deadline; at most --thrift-max-connections are served at once. Other clients are served
// throughout.
#include <sys/socket.h>
#include <unistd.h>

#include <future>
#include <thread>

#include <gtest/gtest.h>
#include <thrift/TApplicationException.h>
#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/TSocket.h>

#include "common/request_limits.h"
#include "coordinator/thrift/Deepshard.h"
#include "coordinator/thrift_params.h"
#include "tests/coordinator/live_util.h"
#include "tests/util/subprocess.h"

namespace deepshard {
namespace {

using namespace testing_util;
using namespace apache::thrift;
using coordinator::ModelInfo;
using coordinator::params_from_thrift;
using std::chrono::milliseconds;
using std::chrono::seconds;

// ---- params_from_thrift ------------------------------------------------------------------------

class ThriftParamsTest : public ::testing::Test {
protected:
    ThriftParamsTest() {
        model_.name = "m";
        model_.max_context = 64;
        model_.vocab_size = 1000;
    }
    rpc::GenerateRequest tokens_request() {
        rpc::GenerateRequest r;
        r.__set_prompt_tokens({1, 2, 3});
        r.__set_max_tokens(4);
        return r;
    }
    // Expects InvalidArgument naming `field` (the text before the first ':').
    void expect_invalid(const rpc::GenerateRequest& r, const std::string& field, const std::string& needle = "") {
        auto p = params_from_thrift(r, model_, nullptr);
        ASSERT_FALSE(p.ok()) << field;
        EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
        EXPECT_EQ(coordinator::field_of(p.status()), field) << p.status().message();
        EXPECT_NE(p.status().message().find(needle), std::string::npos) << p.status().message();
    }
    ModelInfo model_;
};

TEST_F(ThriftParamsTest, GoodRequestAndDefaults) {
    auto p = params_from_thrift(tokens_request(), model_, nullptr);
    ASSERT_TRUE(p.ok()) << p.status().to_string();
    EXPECT_EQ(p->prompt, (std::vector<int32_t>{1, 2, 3}));
    EXPECT_EQ(p->max_tokens, 4);
    EXPECT_FLOAT_EQ(p->sampling.temperature, 1.0f);
}

TEST_F(ThriftParamsTest, PresenceAndCounts) {
    rpc::GenerateRequest r;
    expect_invalid(r, "prompt", "exactly one");
    r = tokens_request();
    r.__set_prompt("also text");
    expect_invalid(r, "prompt", "exactly one");
    // Chat messages need a tokenizer, but presence and counts are checked first.
    r = rpc::GenerateRequest();
    rpc::ChatMessage no_role;
    no_role.__set_content("hi");
    r.__set_messages({no_role});
    expect_invalid(r, "messages", "no tokenizer");  // this model has none (see the next test)
    r = tokens_request();
    r.__set_stop(std::vector<std::string>(limits::kMaxStopStrings + 1, "x"));
    expect_invalid(r, "stop", "at most 16");
    r = tokens_request();
    r.__set_stop_token_ids(std::vector<int32_t>(limits::kMaxStopTokenIds + 1, 5));
    expect_invalid(r, "stop_token_ids", "at most");
    r = tokens_request();
    r.__set_prompt_tokens(std::vector<int32_t>(64, 5));
    expect_invalid(r, "prompt_tokens", "context length");
    r = tokens_request();
    r.__set_timeout_ms(0);
    expect_invalid(r, "timeout_ms");
    r = tokens_request();
    r.__set_max_tokens(-5);
    expect_invalid(r, "max_tokens");
}

// The table's ranges apply to the doubles as sent: 2.0000001 must not pass as 2.0f.
TEST_F(ThriftParamsTest, SamplingRangesAreTheSharedTableOnTheValuesSent) {
    auto with = [&](auto set) {
        rpc::GenerateRequest r = tokens_request();
        rpc::SamplingParams sp;
        set(sp);
        r.__set_sampling(sp);
        return r;
    };
    expect_invalid(with([](rpc::SamplingParams& s) { s.__set_temperature(2.0000001); }), "temperature",
                   "out of range [0, 2]");
    expect_invalid(with([](rpc::SamplingParams& s) { s.__set_temperature(1e300); }), "temperature");
    expect_invalid(with([](rpc::SamplingParams& s) { s.__set_top_p(0); }), "top_p");
    expect_invalid(with([](rpc::SamplingParams& s) { s.__set_repetition_penalty(10.5); }), "repetition_penalty");
    expect_invalid(with([](rpc::SamplingParams& s) { s.__set_min_p(-0.1); }), "min_p");
    expect_invalid(with([](rpc::SamplingParams& s) { s.__set_top_k(-1); }), "top_k");
    expect_invalid(with([](rpc::SamplingParams& s) { s.__set_frequency_penalty(2.5); }), "frequency_penalty");
    rpc::GenerateRequest r = tokens_request();
    r.__set_logprobs(limits::kMaxTopLogprobs + 1);
    expect_invalid(r, "logprobs");
    auto edge = with([](rpc::SamplingParams& s) {
        s.__set_temperature(2);
        s.__set_top_p(1);
        s.__set_repetition_penalty(10);
        s.__set_presence_penalty(-2);
    });
    EXPECT_TRUE(params_from_thrift(edge, model_, nullptr).ok());
}

TEST_F(ThriftParamsTest, ChatMessagesAreCheckedWithATokenizer) {
    const char* src = std::getenv("DS_SOURCE_DIR");
    auto tok = model::Tokenizer::load(std::string(src ? src : ".") + "/testdata/tokenizer");
    ASSERT_TRUE(tok.ok()) << tok.status().to_string();
    model_.vocab_size = 129280;
    model_.max_context = 4096;
    rpc::GenerateRequest r;
    rpc::ChatMessage no_role;
    no_role.__set_content("hi");
    rpc::ChatMessage ok;
    ok.__set_role("user");
    ok.__set_content("hi");
    r.__set_messages({ok, no_role});
    auto p = params_from_thrift(r, model_, &*tok);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(coordinator::field_of(p.status()), "messages[1].role") << p.status().message();
    rpc::ChatMessage no_content;
    no_content.__set_role("user");
    r.__set_messages({no_content});
    p = params_from_thrift(r, model_, &*tok);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(coordinator::field_of(p.status()), "messages[0].content") << p.status().message();
    r.__set_messages(std::vector<rpc::ChatMessage>(limits::kMaxMessages + 1, ok));
    p = params_from_thrift(r, model_, &*tok);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(coordinator::field_of(p.status()), "messages") << p.status().message();
    rpc::ChatMessage wizard;
    wizard.__set_role("wizard");
    wizard.__set_content("x");
    r.__set_messages({wizard});
    p = params_from_thrift(r, model_, &*tok);
    ASSERT_FALSE(p.ok());
    EXPECT_NE(p.status().message().find("unknown role"), std::string::npos) << p.status().message();
    r.__set_messages({ok});
    p = params_from_thrift(r, model_, &*tok);
    EXPECT_TRUE(p.ok()) << p.status().to_string();
}

// ---- live coordinator --------------------------------------------------------------------------

struct Conn {
    std::shared_ptr<transport::TSocket> socket;
    std::shared_ptr<transport::TTransport> transport;
    std::shared_ptr<protocol::TBinaryProtocol> protocol;
    std::unique_ptr<rpc::DeepshardClient> client;
};

Conn thrift_connect(uint16_t port, int timeout_ms = 20000) {
    Conn c;
    c.socket = std::make_shared<transport::TSocket>("127.0.0.1", port);
    c.socket->setConnTimeout(timeout_ms);
    c.socket->setRecvTimeout(timeout_ms);
    c.socket->setSendTimeout(timeout_ms);
    c.transport = std::make_shared<transport::TBufferedTransport>(c.socket);
    c.protocol = std::make_shared<protocol::TBinaryProtocol>(c.transport);
    c.client = std::make_unique<rpc::DeepshardClient>(c.protocol);
    c.transport->open();
    return c;
}

// Bytes of one Generate call whose request `body` writes (the struct's fields).
template <typename Body>
std::string call_bytes(Body body) {
    auto buf = std::make_shared<transport::TMemoryBuffer>();
    protocol::TBinaryProtocol p(buf);
    p.writeMessageBegin("Generate", protocol::T_CALL, 7);
    p.writeStructBegin("Generate_args");
    p.writeFieldBegin("request", protocol::T_STRUCT, 1);
    p.writeStructBegin("GenerateRequest");
    body(p);
    p.writeFieldStop();
    p.writeStructEnd();
    p.writeFieldEnd();
    p.writeFieldStop();
    p.writeStructEnd();
    p.writeMessageEnd();
    return buf->getBufferAsString();
}

class ThriftLiveTest : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        ensure_test_env();
        model_dir_ = new std::string(make_config_only_model("tiny-bf16", /*with_tokenizer=*/true, 129280));
        const std::string ports = *model_dir_ + "/../ports.json";
        proc_ = new BackgroundProcess(
            {binary_path("deepshard-coordinator"), "--model", *model_dir_, "--http", "127.0.0.1:0", "--thrift",
             "127.0.0.1:0", "--control", "127.0.0.1:0", "--ports-file", ports, "--max-body", "65536",
             "--thrift-max-connections", "4", "--thrift-idle-timeout-ms", "1500", "--thrift-request-timeout-ms",
             "1000"},
            *model_dir_ + "/../coordinator.log");
        ports_ = new nlohmann::json(wait_for_json_file(ports, seconds(30)));
    }
    static void TearDownTestSuite() {
        delete proc_;
        delete ports_;
        delete model_dir_;
    }
    void SetUp() override {
        ASSERT_TRUE(ports_->is_object()) << "the coordinator did not start:\n" << proc_->log();
        port_ = (*ports_)["thrift"].get<uint16_t>();
    }
    // A fresh connection's Health call works (the service keeps serving).
    void expect_serving() {
        Conn c = thrift_connect(port_);
        rpc::HealthStatus h;
        ASSERT_NO_THROW(c.client->Health(h));
        EXPECT_FALSE(h.available);
        EXPECT_FALSE(h.reason.empty());
    }
    // Sends raw bytes as one call and reads the reply: the TApplicationException's message, or
    // what went wrong.
    std::string raw_call_rejection(const std::string& bytes) {
        Conn c = thrift_connect(port_);
        c.transport->write(reinterpret_cast<const uint8_t*>(bytes.data()), static_cast<uint32_t>(bytes.size()));
        try {
            c.transport->flush();
        } catch (const std::exception&) {
            // The server may stop reading an oversized call before all of it is sent.
        }
        std::string name;
        protocol::TMessageType type;
        int32_t seqid = 0;
        try {
            c.protocol->readMessageBegin(name, type, seqid);
            if (type != protocol::T_EXCEPTION) return "reply is not an exception";
            TApplicationException x;
            x.read(c.protocol.get());
            c.protocol->readMessageEnd();
            return x.what();
        } catch (const std::exception& e) {
            return std::string("no reply: ") + e.what();
        }
    }

    static std::string* model_dir_;
    static BackgroundProcess* proc_;
    static nlohmann::json* ports_;
    uint16_t port_ = 0;
};
std::string* ThriftLiveTest::model_dir_ = nullptr;
BackgroundProcess* ThriftLiveTest::proc_ = nullptr;
nlohmann::json* ThriftLiveTest::ports_ = nullptr;

TEST_F(ThriftLiveTest, InvalidRequestNamesTheField) {
    Conn c = thrift_connect(port_);
    rpc::GenerateRequest r;
    rpc::ChatMessage no_role;
    no_role.__set_content("hi");
    r.__set_messages({no_role});
    rpc::GenerateResponse out;
    try {
        c.client->Generate(out, r);
        FAIL() << "accepted a message without a role";
    } catch (const rpc::InvalidRequest& e) {
        EXPECT_EQ(e.field, "messages[0].role") << e.message;
    }
    rpc::SamplingParams sp;
    sp.__set_temperature(7);
    r = rpc::GenerateRequest();
    r.__set_prompt_tokens({1, 2});
    r.__set_sampling(sp);
    try {
        c.client->Generate(out, r);
        FAIL() << "accepted temperature 7";
    } catch (const rpc::InvalidRequest& e) {
        EXPECT_EQ(e.field, "temperature") << e.message;
    }
    expect_serving();
}

// A call over the size limit (a 200 KB prompt; the limit is --max-body + 64 KiB) is answered with
// an exception naming the limit, not read to the end and not silently dropped.
TEST_F(ThriftLiveTest, OversizedCallIsRejectedWithAReason) {
    const std::string bytes = call_bytes([](protocol::TBinaryProtocol& p) {
        p.writeFieldBegin("prompt", protocol::T_STRING, 1);
        p.writeString(std::string(200000, 'a'));
        p.writeFieldEnd();
    });
    const std::string why = raw_call_rejection(bytes);
    EXPECT_NE(why.find("rejected"), std::string::npos) << why;
    EXPECT_NE(why.find("bytes"), std::string::npos) << why;
    expect_serving();
}

// A list header announcing 2^30 token ids (4 GiB) in a call of a few bytes, or more structs than any
// request may carry: refused before anything is allocated for them.
TEST_F(ThriftLiveTest, HugeListHeaderIsRejectedBeforeAllocation) {
    const std::string bytes = call_bytes([](protocol::TBinaryProtocol& p) {
        p.writeFieldBegin("prompt_tokens", protocol::T_LIST, 2);
        p.writeListBegin(protocol::T_I32, 1 << 30);
    });
    const std::string why = raw_call_rejection(bytes);
    EXPECT_NE(why.find("rejected"), std::string::npos) << why;
    // 5000 empty chat messages: 5 KB on the wire, but each an ~80-byte struct once decoded; lists
    // of structs or strings are bounded by the request-limits table's longest (4096 messages).
    const std::string messages = call_bytes([](protocol::TBinaryProtocol& p) {
        p.writeFieldBegin("messages", protocol::T_LIST, 3);
        p.writeListBegin(protocol::T_STRUCT, 5000);
        for (int i = 0; i < 5000; ++i) p.writeFieldStop();
        p.writeListEnd();
        p.writeFieldEnd();
    });
    const std::string why2 = raw_call_rejection(messages);
    EXPECT_NE(why2.find("rejected"), std::string::npos) << why2;
    EXPECT_NE(why2.find("at most 4096"), std::string::npos) << why2;
    expect_serving();
}

// A field or list element type byte that is no Thrift type (fuzz_thrift's first finding: Thrift's
// reader casts it to its TType enum, undefined behaviour for a byte outside the enum's range) is
// refused as malformed, naming the byte, before any cast.
TEST_F(ThriftLiveTest, UnknownTypeByteIsRejectedAsMalformed) {
    const std::string field = call_bytes([](protocol::TBinaryProtocol& p) {
        p.writeByte(static_cast<int8_t>(0x99));  // type byte -103, field id 5
        p.writeI16(5);
    });
    const std::string why = raw_call_rejection(field);
    EXPECT_NE(why.find("unknown Thrift type -103"), std::string::npos) << why;
    const std::string element = call_bytes([](protocol::TBinaryProtocol& p) {
        p.writeFieldBegin("prompt_tokens", protocol::T_LIST, 2);
        p.writeByte(static_cast<int8_t>(0x7f));  // element type 127, 1 element
        p.writeI32(1);
    });
    const std::string why2 = raw_call_rejection(element);
    EXPECT_NE(why2.find("unknown Thrift type 127"), std::string::npos) << why2;
    expect_serving();
}

// A client that trickles a call (one byte every 100 ms) is cut off by the 1 s call deadline, while
// others are served; an idle connection by the 1.5 s idle deadline.
TEST_F(ThriftLiveTest, SlowAndIdleClientsAreCutOff) {
    const std::string bytes = call_bytes([](protocol::TBinaryProtocol& p) {
        p.writeFieldBegin("prompt_tokens", protocol::T_LIST, 2);
        p.writeListBegin(protocol::T_I32, 100);
        for (int i = 0; i < 100; ++i) p.writeI32(1);
        p.writeListEnd();
        p.writeFieldEnd();
    });
    auto closed_while_trickling = [&](int fd, const std::string& data, std::chrono::milliseconds every) {
        timeval tv{0, 1000};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        const auto deadline = std::chrono::steady_clock::now() + seconds(20);
        for (size_t i = 0; std::chrono::steady_clock::now() < deadline; ++i) {
            if (i < data.size() && send(fd, data.data() + i, 1, MSG_NOSIGNAL) != 1) return true;
            char b[64];
            const ssize_t n = recv(fd, b, sizeof(b), 0);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) return true;
            std::this_thread::sleep_for(every);
        }
        return false;
    };
    int slow = connect_local(port_);
    ASSERT_GE(slow, 0);
    auto slow_done = std::async(std::launch::async, [&] { return closed_while_trickling(slow, bytes, milliseconds(100)); });
    expect_serving();  // while the slow client holds a connection
    EXPECT_TRUE(slow_done.get()) << "a trickling client was never cut off";
    close(slow);
    int idle = connect_local(port_);
    ASSERT_GE(idle, 0);
    EXPECT_TRUE(closed_while_trickling(idle, "", milliseconds(100))) << "an idle connection was never closed";
    close(idle);
    expect_serving();
}

// With --thrift-max-connections 4, four held connections make a fifth client wait; it is served as
// soon as one of them goes away (not refused, not dropped).
TEST_F(ThriftLiveTest, ConnectionCapQueuesTheRest) {
    std::vector<Conn> held;
    for (int i = 0; i < 4; ++i) {
        held.push_back(thrift_connect(port_));
        rpc::HealthStatus h;
        held.back().client->Health(h);  // each is being served (owns a server thread)
    }
    auto fifth = std::async(std::launch::async, [&] {
        Conn c = thrift_connect(port_);
        rpc::HealthStatus h;
        c.client->Health(h);
        return h.reason;
    });
    EXPECT_EQ(fifth.wait_for(milliseconds(500)), std::future_status::timeout)
        << "a fifth connection was served while four were held";
    held.pop_back();  // closes one
    ASSERT_EQ(fifth.wait_for(seconds(20)), std::future_status::ready);
    EXPECT_FALSE(fifth.get().empty());
}

}  // namespace
}  // namespace deepshard
