// Status / StatusOr: the error currency of deepshard (modelled on leveldb/status.h and
// absl/status/statusor.h). Recoverable failures return these; invariants use DS_CHECK.
#pragma once

#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

namespace deepshard {

enum class StatusCode {
    kOk = 0,
    kInvalidArgument,
    kNotFound,
    kDataLoss,  // corrupt or truncated file contents
    kIo,
    kUnavailable,
    kDeadlineExceeded,
    kResourceExhausted,
    kCancelled,
    kProtocol,
    kUnimplemented,
    kCuda,
    kNccl,
    kMpi,
    kUcx,
    kInternal,
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
public:
    Status() = default;  // OK
    Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

    static Status ok_status() { return Status(); }
    bool ok() const { return code_ == StatusCode::kOk; }
    StatusCode code() const { return code_; }
    const std::string& message() const { return message_; }
    std::string to_string() const;

    // Adds context on the way up: "outer: inner".
    Status with_context(const std::string& context) const;

    void ignore() const {}

private:
    StatusCode code_ = StatusCode::kOk;
    std::string message_;
};

inline Status ok_status() {
    return Status();
}
inline Status invalid_argument(std::string m) {
    return Status(StatusCode::kInvalidArgument, std::move(m));
}
inline Status not_found(std::string m) {
    return Status(StatusCode::kNotFound, std::move(m));
}
inline Status data_loss(std::string m) {
    return Status(StatusCode::kDataLoss, std::move(m));
}
inline Status io_error(std::string m) {
    return Status(StatusCode::kIo, std::move(m));
}
inline Status unavailable(std::string m) {
    return Status(StatusCode::kUnavailable, std::move(m));
}
inline Status deadline_exceeded(std::string m) {
    return Status(StatusCode::kDeadlineExceeded, std::move(m));
}
inline Status resource_exhausted(std::string m) {
    return Status(StatusCode::kResourceExhausted, std::move(m));
}
inline Status cancelled(std::string m) {
    return Status(StatusCode::kCancelled, std::move(m));
}
inline Status protocol_error(std::string m) {
    return Status(StatusCode::kProtocol, std::move(m));
}
inline Status unimplemented(std::string m) {
    return Status(StatusCode::kUnimplemented, std::move(m));
}
inline Status internal_error(std::string m) {
    return Status(StatusCode::kInternal, std::move(m));
}

// Holds either a value or a non-OK Status.
template <typename T>
class [[nodiscard]] StatusOr {
public:
    StatusOr(Status status) : status_(std::move(status)) {  // NOLINT(google-explicit-constructor)
        if (status_.ok()) {
            status_ = internal_error("StatusOr constructed from an OK status without a value");
        }
    }
    StatusOr(T value) : value_(std::move(value)) {}  // NOLINT(google-explicit-constructor)

    bool ok() const { return status_.ok(); }
    const Status& status() const& { return status_; }
    Status status() && { return std::move(status_); }

    const T& value() const& {
        check_ok();
        return *value_;
    }
    T& value() & {
        check_ok();
        return *value_;
    }
    T&& value() && {
        check_ok();
        return std::move(*value_);
    }
    const T& operator*() const& { return value(); }
    T& operator*() & { return value(); }
    const T* operator->() const { return &value(); }
    T* operator->() { return &value(); }

private:
    void check_ok() const;
    Status status_;
    std::optional<T> value_;
};

[[noreturn]] void status_or_fatal(const Status& s);

template <typename T>
void StatusOr<T>::check_ok() const {
    if (!status_.ok()) {
        status_or_fatal(status_);
    }
}

namespace internal {
// Collects a message and aborts in its destructor; backs DS_CHECK.
class CheckFailure {
public:
    CheckFailure(const char* file, int line, const char* expr);
    [[noreturn]] ~CheckFailure();
    template <typename V>
    CheckFailure& operator<<(const V& v) {
        stream_ << v;
        return *this;
    }

private:
    std::ostringstream stream_;
};
}  // namespace internal

}  // namespace deepshard

#define DS_STATUS_CONCAT_INNER(a, b) a##b
#define DS_STATUS_CONCAT(a, b) DS_STATUS_CONCAT_INNER(a, b)

#define DS_RETURN_IF_ERROR(expr)                        \
    do {                                                \
        ::deepshard::Status _ds_status = (expr);        \
        if (!_ds_status.ok()) {                         \
            return _ds_status;                          \
        }                                               \
    } while (0)

#define DS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
    auto tmp = (expr);                           \
    if (!tmp.ok()) {                             \
        return std::move(tmp).status();          \
    }                                            \
    lhs = std::move(tmp).value()

#define DS_ASSIGN_OR_RETURN(lhs, expr) DS_ASSIGN_OR_RETURN_IMPL(DS_STATUS_CONCAT(_ds_statusor_, __LINE__), lhs, expr)

// Always-on invariant check (also in release builds). Never use it on data that arrives
// from a file or the network: return a Status instead.
#define DS_CHECK(cond) \
    if (cond) {        \
    } else             \
        ::deepshard::internal::CheckFailure(__FILE__, __LINE__, #cond)
