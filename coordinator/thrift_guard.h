// The Thrift front end's guards against hostile clients, below the generated code: a transport that
// puts deadlines and a byte budget on every call, and a binary protocol that bounds every list
// before the generated code allocates it. Header-only so that the fuzz target decodes calls exactly
// as the server does.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <thrift/protocol/TBinaryProtocol.h>
#include <thrift/transport/TBufferTransports.h>
#include <thrift/transport/TSocket.h>
#include <thrift/transport/TVirtualTransport.h>

#include "common/request_limits.h"
#include "coordinator/thrift_server.h"

namespace deepshard::coordinator::thrift_guard {

namespace th = apache::thrift;
using th::transport::TTransportException;
using Clock = std::chrono::steady_clock;

// The binary protocol with Thrift's string and list limits, plus one per element kind: a list of
// numbers may be as long as a prompt of token ids (max_list_entries), but a list of structs or
// strings (chat messages, stop strings) at most the request-limits table's longest such list. The
// generated code resizes a list to the announced count before reading it, and a struct costs ~80
// bytes in memory for its 1 byte on the wire; without this bound a 256 KB call could allocate 20 MB.
class Protocol : public th::protocol::TBinaryProtocolT<th::transport::TTransport> {
public:
    Protocol(std::shared_ptr<th::transport::TTransport> t, int32_t string_limit, int32_t list_limit)
        : TBinaryProtocolT(std::move(t), string_limit, list_limit, /*strict_read=*/false, /*strict_write=*/true) {}

    static constexpr uint32_t kMaxCompoundEntries = static_cast<uint32_t>(limits::kMaxMessages);

    // Thrift's own readers cast the wire's type bytes straight to its enums, and a byte outside an
    // enum's range is undefined behaviour there (UBSan, found by tests/fuzz/fuzz_thrift). These are
    // Thrift's readers with each type byte checked before the cast: an unknown type is malformed
    // input (TProtocolException INVALID_DATA naming the byte), as skip() would have said anyway.
    uint32_t readMessageBegin_virt(std::string& name, th::protocol::TMessageType& type, int32_t& seqid) override {
        uint32_t n = 0;
        int32_t head = 0;
        n += readI32(head);
        int32_t t = 0;
        if (head < 0) {  // strict: version + type, name, seqid
            if ((head & VERSION_MASK) != VERSION_1) {
                throw th::protocol::TProtocolException(th::protocol::TProtocolException::BAD_VERSION,
                                                       "Bad version identifier");
            }
            t = head & 0xff;
            n += readString(name);
        } else {  // pre-versioned: name (head is its length), type byte, seqid
            int8_t b = 0;
            n += readStringBody(name, head);
            n += readByte(b);
            t = b;
        }
        if (t < th::protocol::T_CALL || t > th::protocol::T_ONEWAY) {
            throw th::protocol::TProtocolException(th::protocol::TProtocolException::INVALID_DATA,
                                                   "unknown Thrift message type " + std::to_string(t));
        }
        type = static_cast<th::protocol::TMessageType>(t);
        return n + readI32(seqid);
    }
    // Thrift's skip() (an unknown method's arguments, an unknown field) reads through the
    // non-virtual readers of TBinaryProtocolT; through the TProtocol interface it uses the ones below.
    uint32_t skip_virt(th::protocol::TType type) override {
        return th::protocol::skip(static_cast<th::protocol::TProtocol&>(*this), type);
    }
    uint32_t readFieldBegin_virt(std::string&, th::protocol::TType& type, int16_t& id) override {
        int8_t b = 0;
        const uint32_t n = readByte(b);
        if (b == th::protocol::T_STOP) {
            type = th::protocol::T_STOP;
            id = 0;
            return n;
        }
        type = wire_type(b);
        return n + readI16(id);
    }
    uint32_t readListBegin_virt(th::protocol::TType& elem, uint32_t& size) override {
        const uint32_t n = read_sequence_head(&elem, &size);
        th::protocol::TList list(elem, size);
        checkReadBytesAvailable(list);
        check(elem, size);
        return n;
    }
    uint32_t readSetBegin_virt(th::protocol::TType& elem, uint32_t& size) override {
        const uint32_t n = read_sequence_head(&elem, &size);
        th::protocol::TSet set(elem, size);
        checkReadBytesAvailable(set);
        check(elem, size);
        return n;
    }
    uint32_t readMapBegin_virt(th::protocol::TType& key, th::protocol::TType& value, uint32_t& size) override {
        int8_t k = 0;
        uint32_t n = readByte(k);
        key = wire_type(k);
        const uint32_t rest = read_sequence_head(&value, &size);
        th::protocol::TMap map(key, value, size);
        checkReadBytesAvailable(map);
        check(th::protocol::T_STRUCT, size);  // no call takes a map: any is bounded like structs
        return n + rest;
    }

private:
    // A value type byte as the binary protocol writes them; anything else is refused before the cast.
    static th::protocol::TType wire_type(int8_t b) {
        switch (b) {
            case th::protocol::T_BOOL: case th::protocol::T_BYTE: case th::protocol::T_DOUBLE:
            case th::protocol::T_I16: case th::protocol::T_I32: case th::protocol::T_I64:
            case th::protocol::T_STRING: case th::protocol::T_STRUCT: case th::protocol::T_MAP:
            case th::protocol::T_SET: case th::protocol::T_LIST:
                return static_cast<th::protocol::TType>(b);
            default:
                throw th::protocol::TProtocolException(th::protocol::TProtocolException::INVALID_DATA,
                                                       "unknown Thrift type " + std::to_string(b));
        }
    }
    // Element type byte + signed 32-bit count, bounded by the container limit (Thrift's checks).
    uint32_t read_sequence_head(th::protocol::TType* elem, uint32_t* size) {
        int8_t e = 0;
        int32_t count = 0;
        uint32_t n = readByte(e);
        *elem = wire_type(e);
        n += readI32(count);
        if (count < 0) throw th::protocol::TProtocolException(th::protocol::TProtocolException::NEGATIVE_SIZE);
        if (container_limit_ > 0 && count > container_limit_) {
            throw th::protocol::TProtocolException(th::protocol::TProtocolException::SIZE_LIMIT);
        }
        *size = static_cast<uint32_t>(count);
        return n;
    }
    static void check(th::protocol::TType elem, uint32_t size) {
        const bool scalar = elem == th::protocol::T_BOOL || elem == th::protocol::T_BYTE ||
                            elem == th::protocol::T_I16 || elem == th::protocol::T_I32 ||
                            elem == th::protocol::T_I64 || elem == th::protocol::T_DOUBLE;
        if (!scalar && size > kMaxCompoundEntries) {
            throw th::protocol::TProtocolException(
                th::protocol::TProtocolException::SIZE_LIMIT,
                "a list of " + std::to_string(size) + " strings or structs (at most " +
                    std::to_string(kMaxCompoundEntries) + ")");
        }
    }
};

class ProtocolFactory : public th::protocol::TProtocolFactory {
public:
    ProtocolFactory(size_t string_limit, size_t list_limit)
        : string_limit_(static_cast<int32_t>(std::min<size_t>(string_limit, INT32_MAX))),
          list_limit_(static_cast<int32_t>(std::min<size_t>(list_limit, INT32_MAX))) {}
    std::shared_ptr<th::protocol::TProtocol> getProtocol(std::shared_ptr<th::transport::TTransport> t) override {
        return std::make_shared<Protocol>(std::move(t), string_limit_, list_limit_);
    }

private:
    int32_t string_limit_;
    int32_t list_limit_;
};

using Clock = std::chrono::steady_clock;

// The per-connection guard between the protocol and the buffered socket: an idle deadline while
// waiting for a call's first byte, one deadline for the whole call after that (the socket's receive
// timeout is lowered to what is left before every read, so a client trickling bytes cannot stretch
// it), and the byte budget of one call (Thrift's own MaxMessageSize accounting, which the binary
// protocol also consults before allocating a list or a string).
class Transport : public th::transport::TVirtualTransport<Transport> {
public:
    Transport(std::shared_ptr<th::transport::TBufferedTransport> inner,
                     std::shared_ptr<th::transport::TSocket> socket, const ThriftOptions& options,
                     std::shared_ptr<th::TConfiguration> config)
        : TVirtualTransport(config), inner_(std::move(inner)), socket_(std::move(socket)), options_(options) {}

    bool isOpen() const override { return inner_->isOpen(); }
    bool peek() override { return inner_->peek(); }
    void open() override { inner_->open(); }
    void close() override { inner_->close(); }

    uint32_t read(uint8_t* buf, uint32_t len) {
        uint32_t n = 0;
        if (!in_call_) {
            set_recv_timeout(options_.idle_timeout);
            n = inner_->read(buf, len);
            if (n == 0) return 0;
            in_call_ = true;
            deadline_ = Clock::now() + options_.request_timeout;
        } else {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now());
            if (left.count() <= 0) {
                throw TTransportException(TTransportException::TIMED_OUT,
                                          "the call did not arrive within " +
                                              std::to_string(options_.request_timeout.count()) + " ms");
            }
            set_recv_timeout(left);
            n = inner_->read(buf, len);
        }
        countConsumedMessageBytes(n);  // throws past max_message_bytes
        return n;
    }
    uint32_t readEnd() override {
        in_call_ = false;
        resetConsumedMessageSize();
        return inner_->readEnd();
    }
    void write(const uint8_t* buf, uint32_t len) { inner_->write(buf, len); }
    uint32_t writeEnd() override { return inner_->writeEnd(); }
    void flush() override { inner_->flush(); }

private:
    void set_recv_timeout(std::chrono::milliseconds ms) {
        // TSocket treats 0 as "no timeout": never pass it.
        if (socket_) socket_->setRecvTimeout(static_cast<int>(std::clamp<int64_t>(ms.count(), 1, INT32_MAX)));
    }

    std::shared_ptr<th::transport::TBufferedTransport> inner_;
    std::shared_ptr<th::transport::TSocket> socket_;
    const ThriftOptions& options_;
    bool in_call_ = false;
    Clock::time_point deadline_{};
};

class TransportFactory : public th::transport::TTransportFactory {
public:
    explicit TransportFactory(const ThriftOptions& options)
        : options_(options),
          config_(std::make_shared<th::TConfiguration>(static_cast<int>(options.max_message_bytes))) {}

    std::shared_ptr<th::transport::TTransport> getTransport(std::shared_ptr<th::transport::TTransport> t) override {
        auto socket = std::dynamic_pointer_cast<th::transport::TSocket>(t);
        if (socket) socket->setSendTimeout(static_cast<int>(std::max<int64_t>(1, options_.write_timeout.count())));
        auto buffered = std::make_shared<th::transport::TBufferedTransport>(t, config_);
        return std::make_shared<Transport>(std::move(buffered), std::move(socket), options_, config_);
    }

private:
    const ThriftOptions& options_;
    std::shared_ptr<th::TConfiguration> config_;
};

}  // namespace deepshard::coordinator::thrift_guard
