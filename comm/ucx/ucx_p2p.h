// UCX (ucp) point-to-point backend for stage-to-stage activations.
//
// Handles: UcxContext (ucp_context_h), UcxWorker (ucp_worker_h), UcxEndpoint (ucp_ep_h) are
// move-only RAII wrappers, each exposing get(). UcxP2p owns one context, one worker and one
// endpoint per peer; it is created collectively over a bootstrap Communicator (usually MpiComm),
// which is used only to allgather worker addresses and is not retained.
// Transports follow UCX's own environment (UCX_TLS=tcp, UCX_TLS=shm / sm / posix, ...).
// Messages: tagged send/recv (ucp_tag_send_nbx / ucp_tag_recv_nbx); the 64-bit UCX tag carries
// (Tag << 32 | source rank), so a receive matches one peer and one tag exactly. Sending to self is
// not supported (a pipeline stage never sends to itself).
// Deadlines: Request::wait() drives ucp_worker_progress until completion or the deadline; a
// timed-out request is cancelled (ucp_request_cancel) and the object is poisoned. Endpoints use
// UCP_ERR_HANDLING_MODE_PEER, so a dead peer fails its requests (kUcx) instead of hanging.
// Thread-safety: every UCX call on the worker is serialized by an internal mutex, so a UcxP2p may
// be used from several threads. Every Request must complete before the UcxP2p is destroyed.
#pragma once

#include <ucp/api/ucp.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace deepshard::comm {

// kUcx Status "expr failed: <ucs_status_string> (file:line)".
Status ucs_error(ucs_status_t st, const char* expr, const char* file, int line);

}  // namespace deepshard::comm

#define DS_UCS_RETURN_IF_ERROR(expr)                                                    \
    do {                                                                                \
        ucs_status_t _ds_ucs_st = (expr);                                               \
        if (_ds_ucs_st != UCS_OK) {                                                     \
            return ::deepshard::comm::ucs_error(_ds_ucs_st, #expr, __FILE__, __LINE__); \
        }                                                                               \
    } while (0)

namespace deepshard::comm {

class UcxContext {
public:
    // ucp_init with `features` (UCP_FEATURE_*; tag matching by default); reads UCX_* environment variables.
    static StatusOr<UcxContext> create(uint64_t features = UCP_FEATURE_TAG);
    UcxContext(UcxContext&& o) noexcept : ctx_(o.ctx_) { o.ctx_ = nullptr; }
    UcxContext& operator=(UcxContext&& o) noexcept;
    UcxContext(const UcxContext&) = delete;
    UcxContext& operator=(const UcxContext&) = delete;
    ~UcxContext();
    ucp_context_h get() const { return ctx_; }

private:
    explicit UcxContext(ucp_context_h ctx) : ctx_(ctx) {}
    ucp_context_h ctx_ = nullptr;
};

class UcxWorker {
public:
    // Serialized thread mode: the caller serializes access (UcxP2p does with a mutex).
    static StatusOr<UcxWorker> create(const UcxContext& ctx);
    UcxWorker(UcxWorker&& o) noexcept : worker_(o.worker_) { o.worker_ = nullptr; }
    UcxWorker& operator=(UcxWorker&& o) noexcept;
    UcxWorker(const UcxWorker&) = delete;
    UcxWorker& operator=(const UcxWorker&) = delete;
    ~UcxWorker();
    ucp_worker_h get() const { return worker_; }
    // The worker's address blob (to be sent to peers).
    StatusOr<std::vector<uint8_t>> address() const;

private:
    explicit UcxWorker(ucp_worker_h w) : worker_(w) {}
    ucp_worker_h worker_ = nullptr;
};

class UcxEndpoint {
public:
    // Connects to a remote worker address. err_cb/err_arg receive transport errors (peer mode).
    static StatusOr<UcxEndpoint> create(const UcxWorker& worker, const std::vector<uint8_t>& remote_address,
                                        ucp_err_handler_cb_t err_cb, void* err_arg);
    UcxEndpoint() = default;
    UcxEndpoint(UcxEndpoint&& o) noexcept : ep_(o.ep_), worker_(o.worker_) { o.ep_ = nullptr; }
    UcxEndpoint& operator=(UcxEndpoint&& o) noexcept;
    UcxEndpoint(const UcxEndpoint&) = delete;
    UcxEndpoint& operator=(const UcxEndpoint&) = delete;
    // Flush-closes with bounded progress (1 s), then gives up with a warning. The worker must
    // still be alive.
    ~UcxEndpoint();
    ucp_ep_h get() const { return ep_; }

private:
    UcxEndpoint(ucp_ep_h ep, ucp_worker_h worker) : ep_(ep), worker_(worker) {}
    void close() noexcept;
    ucp_ep_h ep_ = nullptr;
    ucp_worker_h worker_ = nullptr;  // borrowed, for progress during close
};

namespace internal {
struct UcxShared;
}

class UcxP2p final : public PointToPoint {
public:
    // Collective over `bootstrap` (allgather of worker addresses + a barrier); rank and size are
    // the bootstrap's. The timeout is inherited from the bootstrap.
    static StatusOr<std::unique_ptr<UcxP2p>> create(Communicator& bootstrap, std::string name = "ucx");
    ~UcxP2p() override;

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    std::string_view backend() const override { return "ucx"; }
    MemorySpace memory_space() const override { return MemorySpace::kHost; }
    bool poisoned() const;

    StatusOr<Request> isend(const void* buf, size_t count, DataType type, int peer, Tag tag) override;
    StatusOr<Request> irecv(void* buf, size_t count, DataType type, int peer, Tag tag) override;

private:
    UcxP2p(int rank, int size, std::string name);
    Status check_usable(const char* what, int peer) const;

    int rank_ = 0;
    int size_ = 0;
    std::string name_;
    // Declaration order = reverse destruction order: endpoints before worker before context.
    std::optional<UcxContext> context_;
    std::optional<UcxWorker> worker_;
    std::shared_ptr<internal::UcxShared> shared_;
    std::vector<UcxEndpoint> endpoints_;  // [size], empty for self
};

}  // namespace deepshard::comm
