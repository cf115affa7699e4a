#include "common/status.h"

#include <cstdio>

namespace deepshard {

const char* status_code_name(StatusCode code) {
    switch (code) {
        case StatusCode::kOk:
            return "OK";
        case StatusCode::kInvalidArgument:
            return "InvalidArgument";
        case StatusCode::kNotFound:
            return "NotFound";
        case StatusCode::kDataLoss:
            return "DataLoss";
        case StatusCode::kIo:
            return "IoError";
        case StatusCode::kUnavailable:
            return "Unavailable";
        case StatusCode::kDeadlineExceeded:
            return "DeadlineExceeded";
        case StatusCode::kResourceExhausted:
            return "ResourceExhausted";
        case StatusCode::kCancelled:
            return "Cancelled";
        case StatusCode::kProtocol:
            return "ProtocolError";
        case StatusCode::kUnimplemented:
            return "Unimplemented";
        case StatusCode::kCuda:
            return "CudaError";
        case StatusCode::kNccl:
            return "NcclError";
        case StatusCode::kMpi:
            return "MpiError";
        case StatusCode::kUcx:
            return "UcxError";
        case StatusCode::kInternal:
            return "Internal";
    }
    return "Unknown";
}

std::string Status::to_string() const {
    if (ok()) {
        return "OK";
    }
    return std::string(status_code_name(code_)) + ": " + message_;
}

Status Status::with_context(const std::string& context) const {
    if (ok()) {
        return *this;
    }
    return Status(code_, context + ": " + message_);
}

void status_or_fatal(const Status& s) {
    std::fprintf(stderr, "fatal: StatusOr::value() on error: %s\n", s.to_string().c_str());
    std::abort();
}

namespace internal {
CheckFailure::CheckFailure(const char* file, int line, const char* expr) {
    stream_ << file << ":" << line << ": check failed: " << expr << " ";
}
CheckFailure::~CheckFailure() {
    std::fprintf(stderr, "%s\n", stream_.str().c_str());
    std::fflush(stderr);
    std::abort();
}
}  // namespace internal

}  // namespace deepshard
