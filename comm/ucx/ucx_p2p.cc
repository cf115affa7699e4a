// UCX backend: RAII handles, address exchange over a bootstrap Communicator, and tagged
// send/recv requests whose poll() drives ucp_worker_progress under the shared mutex.
#include "comm/ucx/ucx_p2p.h"

#include <atomic>
#include <cstring>

#include "common/logging.h"

namespace deepshard::comm {

Status ucs_error(ucs_status_t st, const char* expr, const char* file, int line) {
    return Status(StatusCode::kUcx, std::string(expr) + " failed: " + ucs_status_string(st) + " (" + file + ":" +
                                        std::to_string(line) + ")");
}

// ---- RAII handles ----------------------------------------------------------------------------

StatusOr<UcxContext> UcxContext::create(uint64_t features) {
    ucp_config_t* config = nullptr;
    DS_UCS_RETURN_IF_ERROR(ucp_config_read(nullptr, nullptr, &config));
    ucp_params_t params;
    std::memset(&params, 0, sizeof(params));
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
    params.features = features;
    params.mt_workers_shared = 0;
    ucp_context_h ctx = nullptr;
    ucs_status_t st = ucp_init(&params, config, &ctx);
    ucp_config_release(config);
    DS_UCS_RETURN_IF_ERROR(st);
    return UcxContext(ctx);
}

UcxContext& UcxContext::operator=(UcxContext&& o) noexcept {
    if (this != &o) {
        if (ctx_) {
            ucp_cleanup(ctx_);
        }
        ctx_ = o.ctx_;
        o.ctx_ = nullptr;
    }
    return *this;
}

UcxContext::~UcxContext() {
    if (ctx_) {
        ucp_cleanup(ctx_);
    }
}

StatusOr<UcxWorker> UcxWorker::create(const UcxContext& ctx) {
    ucp_worker_params_t params;
    std::memset(&params, 0, sizeof(params));
    params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    params.thread_mode = UCS_THREAD_MODE_SERIALIZED;
    ucp_worker_h w = nullptr;
    DS_UCS_RETURN_IF_ERROR(ucp_worker_create(ctx.get(), &params, &w));
    return UcxWorker(w);
}

UcxWorker& UcxWorker::operator=(UcxWorker&& o) noexcept {
    if (this != &o) {
        if (worker_) {
            ucp_worker_destroy(worker_);
        }
        worker_ = o.worker_;
        o.worker_ = nullptr;
    }
    return *this;
}

UcxWorker::~UcxWorker() {
    if (worker_) {
        ucp_worker_destroy(worker_);
    }
}

StatusOr<std::vector<uint8_t>> UcxWorker::address() const {
    ucp_address_t* addr = nullptr;
    size_t len = 0;
    DS_UCS_RETURN_IF_ERROR(ucp_worker_get_address(worker_, &addr, &len));
    std::vector<uint8_t> out(len);
    std::memcpy(out.data(), addr, len);
    ucp_worker_release_address(worker_, addr);
    return out;
}

StatusOr<UcxEndpoint> UcxEndpoint::create(const UcxWorker& worker, const std::vector<uint8_t>& remote_address,
                                          ucp_err_handler_cb_t err_cb, void* err_arg) {
    ucp_ep_params_t params;
    std::memset(&params, 0, sizeof(params));
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(remote_address.data());
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    params.err_handler.cb = err_cb;
    params.err_handler.arg = err_arg;
    ucp_ep_h ep = nullptr;
    ucs_status_t st = ucp_ep_create(worker.get(), &params, &ep);
    if (st == UCS_ERR_UNREACHABLE) {
        // Shared-memory transports (UCX_TLS=shm) cannot detect peer failure, so peer error mode
        // has no lane; fall back to no error handling: the request deadlines still bound every wait.
        static std::once_flag once;
        std::call_once(once, [] {
            spdlog::info("comm: UCX transports without peer-failure detection; relying on deadlines");
        });
        params.field_mask &= ~static_cast<uint64_t>(UCP_EP_PARAM_FIELD_ERR_HANDLER);
        params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
        st = ucp_ep_create(worker.get(), &params, &ep);
    }
    DS_UCS_RETURN_IF_ERROR(st);
    return UcxEndpoint(ep, worker.get());
}

UcxEndpoint& UcxEndpoint::operator=(UcxEndpoint&& o) noexcept {
    if (this != &o) {
        close();
        ep_ = o.ep_;
        worker_ = o.worker_;
        o.ep_ = nullptr;
    }
    return *this;
}

UcxEndpoint::~UcxEndpoint() {
    close();
}

void UcxEndpoint::close() noexcept {
    if (!ep_) {
        return;
    }
    ucp_request_param_t param;
    std::memset(&param, 0, sizeof(param));
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = 0;  // flush mode: let in-flight sends finish
    void* req = ucp_ep_close_nbx(ep_, &param);
    if (UCS_PTR_IS_PTR(req)) {
        auto until = Clock::now() + std::chrono::seconds(1);
        while (ucp_request_check_status(req) == UCS_INPROGRESS && Clock::now() < until) {
            ucp_worker_progress(worker_);
        }
        if (ucp_request_check_status(req) == UCS_INPROGRESS) {
            spdlog::warn("comm: UCX endpoint close did not finish within 1 s; abandoning it");
        } else {
            ucp_request_free(req);
        }
    }
    ep_ = nullptr;
}

// ---- UcxP2p ----------------------------------------------------------------------------------

namespace internal {
struct UcxPeer {
    UcxShared* shared = nullptr;
    int peer = 0;
};

struct UcxShared : PoisonState {
    std::mutex mu;  // serializes every call on the worker
    ucp_worker_h worker = nullptr;
    std::vector<std::unique_ptr<UcxPeer>> peers;  // stable err-handler args
    std::vector<std::atomic<int>> peer_status;    // ucs_status_t of a failed endpoint, UCS_OK otherwise

    explicit UcxShared(size_t n) : peer_status(n) {
        for (auto& s : peer_status) {
            s.store(UCS_OK);
        }
    }
    // Caller holds mu (the latch has its own lock; the name says where callers are).
    void poison_locked(const std::string& why) { poison(why); }
};
}  // namespace internal

namespace {

using internal::UcxShared;

void on_endpoint_error(void* arg, ucp_ep_h /*ep*/, ucs_status_t status) {
    auto* p = static_cast<internal::UcxPeer*>(arg);
    p->shared->peer_status[static_cast<size_t>(p->peer)].store(status);
    spdlog::error("comm: UCX endpoint to peer {} failed: {}", p->peer, ucs_status_string(status));
}

uint64_t make_tag(Tag tag, int src_rank) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(tag.value)) << 32) | static_cast<uint32_t>(src_rank);
}

class UcxRequest final : public RequestImpl {
public:
    UcxRequest(std::shared_ptr<UcxShared> shared, void* req, bool is_recv, size_t expected_bytes, int peer,
               std::string desc)
        : shared_(std::move(shared)), req_(req), is_recv_(is_recv), expected_(expected_bytes), peer_(peer),
          desc_(std::move(desc)) {}

    bool poll(Status* result) override {
        std::lock_guard<std::mutex> lock(shared_->mu);
        while (ucp_worker_progress(shared_->worker) != 0) {
        }
        ucs_status_t st;
        ucp_tag_recv_info_t info{};
        if (is_recv_) {
            st = ucp_tag_recv_request_test(req_, &info);
        } else {
            st = ucp_request_check_status(req_);
        }
        if (st == UCS_INPROGRESS) {
            ucs_status_t peer_st = static_cast<ucs_status_t>(shared_->peer_status[static_cast<size_t>(peer_)].load());
            if (peer_st == UCS_OK || is_recv_) {
                return false;  // a receive from a dead peer is left to the deadline (it may be cancelled)
            }
            ucp_request_cancel(shared_->worker, req_);
            return false;
        }
        ucp_request_free(req_);
        req_ = nullptr;
        if (st != UCS_OK) {
            *result = Status(StatusCode::kUcx, desc_ + ": " + ucs_status_string(st));
            shared_->poison_locked(result->message());
        } else if (is_recv_ && info.length != expected_) {
            *result = protocol_error(desc_ + ": expected " + std::to_string(expected_) + " bytes, peer sent " +
                                     std::to_string(info.length));
        } else {
            *result = ok_status();
        }
        return true;
    }

    void abandon(const Status& why) noexcept override {
        std::lock_guard<std::mutex> lock(shared_->mu);
        if (!req_) {
            return;
        }
        ucp_request_cancel(shared_->worker, req_);
        auto until = Clock::now() + std::chrono::milliseconds(200);
        while (ucp_request_check_status(req_) == UCS_INPROGRESS && Clock::now() < until) {
            ucp_worker_progress(shared_->worker);
        }
        if (ucp_request_check_status(req_) == UCS_INPROGRESS) {
            spdlog::error("comm: {}: UCX request did not cancel; leaking it", desc_);
            shared_->poison_locked(why.message());
        } else {
            ucp_request_free(req_);
            // A cancelled receive leaves nothing behind; a cancelled send lost data for the peer.
            if (!is_recv_) {
                shared_->poison_locked(why.message());
            }
        }
        req_ = nullptr;
    }

    std::string describe() const override { return desc_; }

private:
    std::shared_ptr<UcxShared> shared_;
    void* req_;
    bool is_recv_;
    size_t expected_;
    int peer_;
    std::string desc_;
};

}  // namespace

UcxP2p::UcxP2p(int rank, int size, std::string name)
    : rank_(rank), size_(size), name_(std::move(name)),
      shared_(std::make_shared<UcxShared>(static_cast<size_t>(size))) {}

UcxP2p::~UcxP2p() {
    {
        std::lock_guard<std::mutex> lock(shared_->mu);
        endpoints_.clear();
    }
    worker_.reset();
    context_.reset();
}

bool UcxP2p::poisoned() const {
    return shared_->poisoned();
}

StatusOr<std::unique_ptr<UcxP2p>> UcxP2p::create(Communicator& bootstrap, std::string name) {
    auto self = std::unique_ptr<UcxP2p>(new UcxP2p(bootstrap.rank(), bootstrap.size(), std::move(name)));
    self->set_timeout(bootstrap.timeout());
    DS_ASSIGN_OR_RETURN(UcxContext ctx, UcxContext::create());
    self->context_.emplace(std::move(ctx));
    DS_ASSIGN_OR_RETURN(UcxWorker worker, UcxWorker::create(*self->context_));
    self->worker_.emplace(std::move(worker));
    self->shared_->worker = self->worker_->get();
    DS_ASSIGN_OR_RETURN(std::vector<uint8_t> addr, self->worker_->address());

    // Addresses have different lengths: allgather the lengths, then padded blobs.
    const size_t n = static_cast<size_t>(self->size_);
    uint64_t my_len = addr.size();
    std::vector<uint64_t> lens(n);
    DS_RETURN_IF_ERROR(bootstrap.allgather(&my_len, lens.data(), 8, DataType::kByte).with_context("ucx bootstrap"));
    uint64_t max_len = 0;
    for (uint64_t l : lens) {
        max_len = std::max(max_len, l);
    }
    addr.resize(max_len, 0);
    std::vector<uint8_t> all(max_len * n);
    DS_RETURN_IF_ERROR(
        bootstrap.allgather(addr.data(), all.data(), max_len, DataType::kByte).with_context("ucx bootstrap"));

    self->endpoints_.resize(n);
    self->shared_->peers.resize(n);
    for (size_t r = 0; r < n; ++r) {
        if (static_cast<int>(r) == self->rank_) {
            continue;
        }
        if (lens[r] == 0 || lens[r] > max_len) {
            return protocol_error("ucx bootstrap: rank " + std::to_string(r) + " sent a bad address length");
        }
        auto peer = std::make_unique<internal::UcxPeer>();
        peer->shared = self->shared_.get();
        peer->peer = static_cast<int>(r);
        std::vector<uint8_t> remote(all.begin() + static_cast<ptrdiff_t>(r * max_len),
                                    all.begin() + static_cast<ptrdiff_t>(r * max_len + lens[r]));
        DS_ASSIGN_OR_RETURN(self->endpoints_[r],
                            UcxEndpoint::create(*self->worker_, remote, on_endpoint_error, peer.get()));
        self->shared_->peers[r] = std::move(peer);
    }
    DS_RETURN_IF_ERROR(bootstrap.barrier().with_context("ucx bootstrap"));
    return self;
}

Status UcxP2p::check_usable(const char* what, int peer) const {
    DS_RETURN_IF_ERROR(check_peer(what, peer));
    if (peer == rank_) {
        return invalid_argument(std::string(what) + " on rank " + std::to_string(rank_) +
                                ": the UCX backend does not send to self");
    }
    if (shared_->poisoned()) {
        std::lock_guard<std::mutex> lock(shared_->mu);
        return unavailable(describe_op(what, rank_, size_, name_, "ucx", peer) +
                           ": unusable after an earlier failure: " + shared_->error());
    }
    ucs_status_t st = static_cast<ucs_status_t>(shared_->peer_status[static_cast<size_t>(peer)].load());
    if (st != UCS_OK) {
        return Status(StatusCode::kUcx, describe_op(what, rank_, size_, name_, "ucx", peer) +
                                            ": endpoint failed earlier: " + ucs_status_string(st));
    }
    return ok_status();
}

StatusOr<Request> UcxP2p::isend(const void* buf, size_t count, DataType type, int peer, Tag tag) {
    DS_RETURN_IF_ERROR(check_usable("send", peer));
    DS_RETURN_IF_ERROR(check_tag("send", tag));
    const size_t bytes = count * data_type_size(type);
    std::string desc = describe_op("send(" + std::to_string(count) + " " + data_type_name(type) + ", tag " +
                                       std::to_string(tag.value) + ")",
                                   rank_, size_, name_, "ucx", peer);
    ucp_request_param_t param;
    std::memset(&param, 0, sizeof(param));
    std::lock_guard<std::mutex> lock(shared_->mu);
    void* req = ucp_tag_send_nbx(endpoints_[static_cast<size_t>(peer)].get(), buf, bytes, make_tag(tag, rank_), &param);
    if (req == nullptr) {
        return Request();  // completed in place
    }
    if (UCS_PTR_IS_ERR(req)) {
        return Status(StatusCode::kUcx, desc + ": ucp_tag_send_nbx: " + ucs_status_string(UCS_PTR_STATUS(req)));
    }
    return Request(std::make_unique<UcxRequest>(shared_, req, false, bytes, peer, desc), next_deadline());
}

StatusOr<Request> UcxP2p::irecv(void* buf, size_t count, DataType type, int peer, Tag tag) {
    DS_RETURN_IF_ERROR(check_usable("recv", peer));
    DS_RETURN_IF_ERROR(check_tag("recv", tag));
    const size_t bytes = count * data_type_size(type);
    std::string desc = describe_op("recv(" + std::to_string(count) + " " + data_type_name(type) + ", tag " +
                                       std::to_string(tag.value) + ")",
                                   rank_, size_, name_, "ucx", peer);
    ucp_request_param_t param;
    std::memset(&param, 0, sizeof(param));
    // Always get a request: the received length is read from it (ucp_tag_recv_request_test), which
    // is reliable on every UCX version, unlike recv_info on immediate completion.
    param.op_attr_mask = UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    std::lock_guard<std::mutex> lock(shared_->mu);
    void* req = ucp_tag_recv_nbx(shared_->worker, buf, bytes, make_tag(tag, peer), ~uint64_t{0}, &param);
    if (req == nullptr) {
        return internal_error(desc + ": ucp_tag_recv_nbx completed in place despite NO_IMM_CMPL");
    }
    if (UCS_PTR_IS_ERR(req)) {
        return Status(StatusCode::kUcx, desc + ": ucp_tag_recv_nbx: " + ucs_status_string(UCS_PTR_STATUS(req)));
    }
    return Request(std::make_unique<UcxRequest>(shared_, req, true, bytes, peer, desc), next_deadline());
}

}  // namespace deepshard::comm
