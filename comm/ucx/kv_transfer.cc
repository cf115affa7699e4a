// KvTransfer: one UCX context and worker per object, touched only by its progress thread, so the
// worker runs without locks and no caller thread can ever block inside UCX. Callers hand fetches
// over through a queue and an eventfd. A request is an Active Message (header only, sent with
// UCP_AM_SEND_FLAG_REPLY so the exporter gets an endpoint back to the importer without knowing its
// address); the answer is one tag message per fetch, carrying a fixed status header and then the
// rows, both sides using IOV datatypes so that neither copies the (possibly GB-sized) rows.
#include "comm/ucx/kv_transfer.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <new>

#include "comm/ucx/kv_transfer_impl.h"
#include "common/logging.h"

namespace deepshard::comm {

// ---- setup / teardown ------------------------------------------------------------------------

Status KvTransfer::Impl::init() {
    // WAKEUP lets the idle progress thread sleep in epoll instead of spinning next to compute threads.
    auto ctx = UcxContext::create(UCP_FEATURE_TAG | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP);
    if (!ctx.ok()) {
        ctx = UcxContext::create(UCP_FEATURE_TAG | UCP_FEATURE_AM);
    }
    if (!ctx.ok()) {
        return ctx.status().with_context("kv transfer");
    }
    context_.emplace(std::move(ctx).value());
    DS_ASSIGN_OR_RETURN(UcxWorker worker, UcxWorker::create(*context_));
    worker_.emplace(std::move(worker));
    ucp_worker_h w = worker_->get();

    ucp_am_handler_param_t am;
    std::memset(&am, 0, sizeof(am));
    am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG |
                    UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
    am.id = kRequestAmId;
    am.flags = UCP_AM_FLAG_WHOLE_MSG;
    am.cb = &Impl::on_request_am;
    am.arg = this;
    DS_UCS_RETURN_IF_ERROR(ucp_worker_set_am_recv_handler(w, &am));

    if (!opts_.listen_host.empty()) {
        DS_ASSIGN_OR_RETURN(auto sa, make_sockaddr(opts_.listen_host, opts_.listen_port));
        ucp_listener_params_t lp;
        std::memset(&lp, 0, sizeof(lp));
        lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
        lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&sa.first);
        lp.sockaddr.addrlen = sa.second;
        lp.conn_handler.cb = &Impl::on_conn_request;
        lp.conn_handler.arg = this;
        ucs_status_t st = ucp_listener_create(w, &lp, &listener_);
        if (st != UCS_OK) {
            listener_ = nullptr;
            return Status(StatusCode::kUnavailable, "kv transfer: cannot listen on " + opts_.listen_host + ":" +
                                                        std::to_string(opts_.listen_port) + ": " +
                                                        ucs_status_string(st));
        }
        ucp_listener_attr_t attr;
        std::memset(&attr, 0, sizeof(attr));
        attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
        DS_UCS_RETURN_IF_ERROR(ucp_listener_query(listener_, &attr));
        uint16_t port = attr.sockaddr.ss_family == AF_INET6
                            ? ntohs(reinterpret_cast<const sockaddr_in6*>(&attr.sockaddr)->sin6_port)
                            : ntohs(reinterpret_cast<const sockaddr_in*>(&attr.sockaddr)->sin_port);
        endpoint_ = (sa.first.ss_family == AF_INET6 ? "[" + opts_.listen_host + "]" : opts_.listen_host) + ":" +
                    std::to_string(port);
    }

    event_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
    if (event_fd_ < 0 || epoll_fd_ < 0) {
        return internal_error(std::string("kv transfer: eventfd/epoll: ") + std::strerror(errno));
    }
    epoll_event ev{};
    ev.events = EPOLLIN;
    epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, event_fd_, &ev);
    if (ucp_worker_get_efd(w, &worker_fd_) == UCS_OK) {
        epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, worker_fd_, &ev);
    } else {
        worker_fd_ = -1;  // no wakeup support: run() polls every millisecond instead
        spdlog::info("kv transfer: UCX transports cannot signal events; polling every 1 ms");
    }
    thread_ = std::thread([this] { run(); });
    return ok_status();
}

KvTransfer::Impl::~Impl() {
    if (thread_.joinable()) {
        stop_.store(true);
        uint64_t one = 1;
        ssize_t n = write(event_fd_, &one, sizeof(one));
        (void)n;
        thread_.join();  // run() returns within ~1 s: shutdown() bounds its own waits
    } else if (listener_) {
        ucp_listener_destroy(listener_);  // init() failed after creating the listener
    }
    if (epoll_fd_ >= 0) {
        close(epoll_fd_);
    }
    if (event_fd_ >= 0) {
        close(event_fd_);
    }
    worker_.reset();  // destroys whatever endpoints shutdown() could not close in time
    context_.reset();
}

// Runs on the progress thread after stop_: fail what waits, stop accepting, close endpoints.
void KvTransfer::Impl::shutdown() {
    std::vector<std::shared_ptr<FetchState>> left;
    {
        std::lock_guard<std::mutex> lock(queue_mu_);
        left.swap(queue_);
    }
    for (auto& f : left) {
        finish(*f, cancelled(f->what + ": KvTransfer is shutting down"));
    }
    std::vector<std::shared_ptr<FetchState>> pend;
    for (auto& [tag, f] : pending_) {
        pend.push_back(f);
    }
    for (auto& f : pend) {
        fail_fetch(*f, cancelled(f->what + ": KvTransfer is shutting down"));
    }
    for (ucp_conn_request_h r : conn_requests_) {
        ucp_listener_reject(listener_, r);
    }
    conn_requests_.clear();
    if (listener_) {
        ucp_listener_destroy(listener_);
        listener_ = nullptr;
    }
    std::vector<Peer*> all;
    for (auto& [p, owned] : peers_) {
        all.push_back(p);
    }
    for (Peer* p : all) {
        close_peer(p, p->failed);  // flush live endpoints so replies in flight finish, force dead ones
    }
    const auto until = SteadyClock::now() + std::chrono::seconds(1);
    while ((!closing_.empty() || inflight_ > 0) && SteadyClock::now() < until) {
        ucp_worker_progress(worker_->get());
        reap_closing();
    }
    if (!closing_.empty() || inflight_ > 0) {
        spdlog::warn("kv transfer: shutdown left {} endpoint closes and {} requests unfinished", closing_.size(),
                     inflight_);
    }
}

// ---- progress thread -------------------------------------------------------------------------

void KvTransfer::Impl::run() {
    ucp_worker_h w = worker_->get();
    while (!stop_.load()) {
        bool busy = false;
        std::vector<std::shared_ptr<FetchState>> fresh;
        {
            std::lock_guard<std::mutex> lock(queue_mu_);
            fresh.swap(queue_);
        }
        for (auto& f : fresh) {
            launch(f);
            busy = true;
        }
        while (ucp_worker_progress(w) != 0) {
            busy = true;
        }
        // Deferred from callbacks: UCX forbids closing endpoints inside them, and replies are sent
        // here rather than inside the AM handler so no send re-enters the worker from a callback.
        for (ucp_conn_request_h r : conn_requests_) {
            accept(r);
            busy = true;
        }
        conn_requests_.clear();
        std::vector<Incoming> in;
        in.swap(incoming_);
        for (const Incoming& i : in) {
            serve(i);
            busy = true;
        }
        handle_failed_peers();
        reap_closing();
        // Deadlines: the caller returns on its own; its receive is cancelled after the grace.
        const auto now = SteadyClock::now();
        std::vector<std::shared_ptr<FetchState>> late;
        for (auto& [tag, f] : pending_) {
            bool expired = false;
            {
                std::lock_guard<std::mutex> lock(f->mu);
                expired = !f->done && (f->abandoned || now >= f->deadline);
            }
            if (expired) {
                finish(*f, deadline_exceeded(f->what + ": deadline passed"));
                f->cancel_at = now + kLateReplyGrace;
            }
            if (now >= f->cancel_at) {
                late.push_back(f);
            }
        }
        for (auto& f : late) {
            fail_fetch(*f, deadline_exceeded(f->what + ": deadline passed"));
        }
        {
            std::lock_guard<std::mutex> lock(mu_);
            sweep_locked(now);
        }
        if (!busy) {
            wait_for_events();
        }
    }
    shutdown();
}

// Sleeps until UCX or a caller has something for us (a caller whose deadline passes writes the
// eventfd too). The timeouts are only a safety net against a missed event (10 ms while requests are
// in flight, 100 ms idle for the ttl sweep), so an idle KvTransfer costs ~10 wakeups a second.
bool KvTransfer::Impl::wait_for_events() {
    int timeout_ms = (pending_.empty() && inflight_ == 0 && closing_.empty()) ? 100 : 10;
    if (worker_fd_ >= 0) {
        ucs_status_t st = ucp_worker_arm(worker_->get());
        if (st == UCS_ERR_BUSY) {
            return true;  // events arrived meanwhile: progress again
        }
        if (st != UCS_OK) {
            timeout_ms = 1;
        }
    } else {
        timeout_ms = 1;
    }
    epoll_event evs[2];
    int n = epoll_wait(epoll_fd_, evs, 2, timeout_ms);
    uint64_t drain = 0;
    while (read(event_fd_, &drain, sizeof(drain)) > 0) {
    }
    return n > 0;
}

void KvTransfer::Impl::finish(FetchState& f, Status s) {
    std::lock_guard<std::mutex> lock(f.mu);
    if (f.done) {
        return;
    }
    f.result = std::move(s);
    f.done = true;
    f.cv.notify_all();
}

// Ends a fetch early: the caller gets `s`; a receive not yet matched is cancelled (its callback
// then frees the request), one already matched runs to completion into buffers we still hold.
void KvTransfer::Impl::fail_fetch(FetchState& f, Status s) {
    finish(f, std::move(s));
    if (f.recv_req) {
        ucp_request_cancel(worker_->get(), f.recv_req);
    }
    pending_.erase(f.req.reply_tag);
}

StatusOr<Peer*> KvTransfer::Impl::client_peer(const std::string& ep) {
    auto it = clients_.find(ep);
    if (it != clients_.end()) {
        return it->second;
    }
    DS_ASSIGN_OR_RETURN(auto sa, parse_endpoint(ep));
    auto peer = std::make_unique<Peer>();
    peer->owner = this;
    peer->name = ep;
    ucp_ep_params_t params;
    std::memset(&params, 0, sizeof(params));
    params.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                        UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
    params.sockaddr.addr = reinterpret_cast<const sockaddr*>(&sa.first);
    params.sockaddr.addrlen = sa.second;
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;  // a dead exporter fails requests instead of hanging
    params.err_handler.cb = &Impl::on_peer_error;
    params.err_handler.arg = peer.get();
    ucs_status_t st = ucp_ep_create(worker_->get(), &params, &peer->ep);
    if (st != UCS_OK) {
        return unavailable("cannot connect to " + ep + ": " + ucs_status_string(st));
    }
    Peer* p = peer.get();
    peers_[p] = std::move(peer);
    clients_[ep] = p;
    return p;
}

void KvTransfer::Impl::launch(const std::shared_ptr<FetchState>& f) {
    {
        std::lock_guard<std::mutex> lock(f->mu);
        if (f->abandoned || f->done) {
            return;
        }
    }
    auto peer = client_peer(f->endpoint);
    if (!peer.ok()) {
        finish(*f, peer.status().with_context(f->what));
        return;
    }
    f->peer = *peer;
    f->owner = this;
    // Post the receive before sending the request, so the reply lands straight in f->out and the
    // tag match bounds it to exactly the size this request implies (a longer one is truncated).
    f->iov[0].buffer = &f->reply;
    f->iov[0].length = sizeof(WireReply);
    f->iov[1].buffer = f->out.data();
    f->iov[1].length = f->out.size();
    ucp_request_param_t rp;
    std::memset(&rp, 0, sizeof(rp));
    rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_DATATYPE |
                      UCP_OP_ATTR_FLAG_NO_IMM_CMPL;
    rp.cb.recv = &Impl::on_reply_received;
    rp.datatype = ucp_dt_make_iov();
    auto* recv_ref = new std::shared_ptr<FetchState>(f);
    rp.user_data = recv_ref;
    void* r = ucp_tag_recv_nbx(worker_->get(), f->iov, 2, f->req.reply_tag, ~uint64_t{0}, &rp);
    if (r == nullptr || UCS_PTR_IS_ERR(r)) {
        delete recv_ref;
        finish(*f, Status(StatusCode::kUcx, f->what + ": ucp_tag_recv_nbx: " +
                                                ucs_status_string(r ? UCS_PTR_STATUS(r) : UCS_ERR_NO_MESSAGE)));
        return;
    }
    f->recv_req = r;
    ++inflight_;
    pending_[f->req.reply_tag] = f;

    ucp_request_param_t sp;
    std::memset(&sp, 0, sizeof(sp));
    sp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    sp.flags = UCP_AM_SEND_FLAG_REPLY;
    sp.cb.send = &Impl::on_request_sent;
    auto* send_ref = new std::shared_ptr<FetchState>(f);
    sp.user_data = send_ref;
    void* s = ucp_am_send_nbx(f->peer->ep, kRequestAmId, &f->req, sizeof(f->req), nullptr, 0, &sp);
    if (s == nullptr) {
        delete send_ref;  // completed in place
    } else if (UCS_PTR_IS_ERR(s)) {
        delete send_ref;
        fail_fetch(*f, unavailable(f->what + ": cannot reach the exporter: " + ucs_status_string(UCS_PTR_STATUS(s))));
    } else {
        ++inflight_;
    }
}

void KvTransfer::Impl::on_request_sent(void* request, ucs_status_t st, void* user_data) {
    auto* ref = static_cast<std::shared_ptr<FetchState>*>(user_data);
    std::shared_ptr<FetchState> f = std::move(*ref);
    delete ref;
    ucp_request_free(request);
    Impl* self = f->owner;
    --self->inflight_;
    if (st != UCS_OK && st != UCS_ERR_CANCELED) {
        self->fail_fetch(*f, unavailable(f->what + ": cannot reach the exporter: " + ucs_status_string(st)));
    }
}

void KvTransfer::Impl::on_reply_received(void* request,
                                         ucs_status_t st,
                                         const ucp_tag_recv_info_t* info,
                                         void* user_data) {
    auto* ref = static_cast<std::shared_ptr<FetchState>*>(user_data);
    std::shared_ptr<FetchState> f = std::move(*ref);
    delete ref;
    f->recv_req = nullptr;
    const size_t length = (st == UCS_OK && info) ? info->length : 0;
    ucp_request_free(request);
    --f->owner->inflight_;
    f->owner->reply_done(*f, st, length);
}

// Everything from the exporter is untrusted: check magic, tag echo and the exact size.
void KvTransfer::Impl::reply_done(FetchState& f, ucs_status_t st, size_t length) {
    Status s;
    const WireReply& r = f.reply;
    if (st == UCS_ERR_CANCELED) {
        s = cancelled(f.what + ": cancelled");
    } else if (st == UCS_ERR_MESSAGE_TRUNCATED) {
        s = protocol_error(f.what + ": the exporter sent more than the " + std::to_string(f.expected) +
                           " bytes requested");
    } else if (st != UCS_OK) {
        s = unavailable(f.what + ": receiving the reply failed: " + ucs_status_string(st));
    } else if (length < sizeof(WireReply) || r.magic != kReplyMagic || r.version != kWireVersion ||
               r.reply_tag != f.req.reply_tag) {
        s = protocol_error(f.what + ": malformed reply (" + std::to_string(length) + " bytes)");
    } else if (r.code != 0) {
        std::string msg(r.message, strnlen(r.message, sizeof(r.message)));
        const bool known = r.code > 0 && r.code <= static_cast<int32_t>(StatusCode::kInternal);
        s = Status(known ? static_cast<StatusCode>(r.code) : StatusCode::kProtocol, f.what + ": refused: " + msg);
    } else if (r.data_bytes != f.expected || length != sizeof(WireReply) + f.expected) {
        s = protocol_error(f.what + ": expected " + std::to_string(f.expected) + " bytes of rows, the exporter sent " +
                           std::to_string(length - sizeof(WireReply)));
    }
    finish(f, std::move(s));
    pending_.erase(f.req.reply_tag);
}

// ---- exporter side ---------------------------------------------------------------------------

void KvTransfer::Impl::on_conn_request(ucp_conn_request_h req, void* arg) {
    static_cast<Impl*>(arg)->conn_requests_.push_back(req);
}

void KvTransfer::Impl::accept(ucp_conn_request_h req) {
    auto peer = std::make_unique<Peer>();
    peer->owner = this;
    peer->server = true;
    peer->name = "importer";
    ucp_ep_params_t params;
    std::memset(&params, 0, sizeof(params));
    params.field_mask =
        UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.conn_request = req;
    params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    params.err_handler.cb = &Impl::on_peer_error;
    params.err_handler.arg = peer.get();
    ucs_status_t st = ucp_ep_create(worker_->get(), &params, &peer->ep);
    if (st != UCS_OK) {
        spdlog::warn("kv transfer: accepting a connection failed: {}", ucs_status_string(st));
        return;
    }
    Peer* p = peer.get();
    peers_[p] = std::move(peer);
}

ucs_status_t KvTransfer::Impl::on_request_am(void* arg,
                                             const void* header,
                                             size_t header_length,
                                             void* /*data*/,
                                             size_t length,
                                             const ucp_am_recv_param_t* param) {
    auto* self = static_cast<Impl*>(arg);
    // Without a reply endpoint or with the wrong size we cannot even answer safely: count and drop.
    if (!(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) || param->reply_ep == nullptr ||
        header_length != sizeof(WireRequest) || length != 0) {
        std::lock_guard<std::mutex> lock(self->mu_);
        ++self->stats_.fetches_refused;
        spdlog::warn("kv transfer: dropped a malformed request ({} header bytes, {} data bytes)", header_length,
                     length);
        return UCS_OK;
    }
    Incoming in;
    std::memcpy(&in.req, header, sizeof(WireRequest));  // header may be unaligned
    in.reply_ep = param->reply_ep;
    self->incoming_.push_back(in);
    return UCS_OK;
}

void KvTransfer::Impl::serve(const Incoming& in) {
    auto ctx = std::make_unique<ReplyCtx>();
    ctx->owner = this;
    ctx->hdr.magic = kReplyMagic;
    ctx->hdr.version = kWireVersion;
    ctx->hdr.reply_tag = in.req.reply_tag;
    int64_t bytes = 0;
    Status st;
    {
        std::lock_guard<std::mutex> lock(mu_);
        sweep_locked(SteadyClock::now());
        st = validate_locked(in.req, &ctx->staged, &bytes);
        if (st.ok()) {
            ++stats_.fetches_served;
            stats_.bytes_served += static_cast<uint64_t>(bytes);
        } else {
            ++stats_.fetches_refused;
        }
    }
    ctx->iov.push_back({&ctx->hdr, sizeof(WireReply)});
    if (st.ok()) {
        // Rows of one layer are contiguous; whole-layer requests merge into one chunk.
        const Staged& s = *ctx->staged;
        const WireRequest& r = in.req;
        const size_t chunk = static_cast<size_t>((r.pos_end - r.pos_begin) * s.row_bytes);
        for (int64_t l = r.layer_begin; l < r.layer_end; ++l) {
            const size_t off = static_cast<size_t>(((l - s.layer_begin) * s.positions + r.pos_begin) * s.row_bytes);
            const uint8_t* p = s.data.data() + off;
            ucp_dt_iov_t& last = ctx->iov.back();
            if (ctx->iov.size() > 1 && static_cast<const uint8_t*>(last.buffer) + last.length == p) {
                last.length += chunk;
            } else {
                ctx->iov.push_back({const_cast<uint8_t*>(p), chunk});
            }
        }
        ctx->hdr.data_bytes = static_cast<uint64_t>(bytes);
    } else {
        ctx->hdr.code = static_cast<int32_t>(st.code());
        std::snprintf(ctx->hdr.message, sizeof(ctx->hdr.message), "%s", st.message().c_str());
    }
    ucp_request_param_t p;
    std::memset(&p, 0, sizeof(p));
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_DATATYPE;
    p.cb.send = &Impl::on_reply_sent;
    p.datatype = ucp_dt_make_iov();
    p.user_data = ctx.get();
    void* r = ucp_tag_send_nbx(in.reply_ep, ctx->iov.data(), ctx->iov.size(), in.req.reply_tag, &p);
    if (UCS_PTR_IS_PTR(r)) {
        ctx.release();  // on_reply_sent frees it
        ++inflight_;
    } else if (UCS_PTR_IS_ERR(r)) {
        spdlog::warn("kv transfer: reply to an importer failed: {}", ucs_status_string(UCS_PTR_STATUS(r)));
    }
}

void KvTransfer::Impl::on_reply_sent(void* request, ucs_status_t st, void* user_data) {
    auto* ctx = static_cast<ReplyCtx*>(user_data);
    --ctx->owner->inflight_;
    if (st != UCS_OK) {
        spdlog::debug("kv transfer: reply not delivered: {}", ucs_status_string(st));
    }
    delete ctx;
    ucp_request_free(request);
}

// ---- endpoint failures -----------------------------------------------------------------------

void KvTransfer::Impl::on_peer_error(void* arg, ucp_ep_h /*ep*/, ucs_status_t st) {
    auto* p = static_cast<Peer*>(arg);
    if (!p->failed) {
        p->failed = true;
        p->fail_status = st;
        p->owner->failed_.push_back(p);
    }
}

void KvTransfer::Impl::handle_failed_peers() {
    std::vector<Peer*> failed;
    failed.swap(failed_);
    for (Peer* p : failed) {
        if (!p->ep) {
            continue;  // already closing
        }
        if (!p->server) {
            auto it = clients_.find(p->name);
            if (it != clients_.end() && it->second == p) {
                clients_.erase(it);  // the next fetch to this endpoint reconnects
            }
            std::vector<std::shared_ptr<FetchState>> lost;
            for (auto& [tag, f] : pending_) {
                if (f->peer == p) {
                    lost.push_back(f);
                }
            }
            for (auto& f : lost) {
                fail_fetch(
                    *f,
                    unavailable(f->what + ": connection to the exporter failed: " + ucs_status_string(p->fail_status)));
            }
        }
        close_peer(p, true);
    }
}

void KvTransfer::Impl::close_peer(Peer* p, bool force) {
    if (!p->ep) {
        return;
    }
    if (!p->server) {
        auto it = clients_.find(p->name);
        if (it != clients_.end() && it->second == p) {
            clients_.erase(it);
        }
    }
    ucp_request_param_t param;
    std::memset(&param, 0, sizeof(param));
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    void* r = ucp_ep_close_nbx(p->ep, &param);
    p->ep = nullptr;
    if (UCS_PTR_IS_PTR(r)) {
        closing_.emplace_back(r, p);  // the Peer stays alive: UCX may still call its error handler
    } else {
        peers_.erase(p);
    }
}

void KvTransfer::Impl::reap_closing() {
    for (size_t i = 0; i < closing_.size();) {
        if (ucp_request_check_status(closing_[i].first) == UCS_INPROGRESS) {
            ++i;
            continue;
        }
        ucp_request_free(closing_[i].first);
        Peer* p = closing_[i].second;
        failed_.erase(std::remove(failed_.begin(), failed_.end(), p), failed_.end());
        peers_.erase(p);
        closing_[i] = closing_.back();
        closing_.pop_back();
    }
}

// ---- importer entry point --------------------------------------------------------------------

StatusOr<std::vector<uint8_t>> KvTransfer::Impl::fetch(const std::string& ep,
                                                       uint64_t id,
                                                       const KvKey& key,
                                                       int32_t lb,
                                                       int32_t le,
                                                       int64_t pb,
                                                       int64_t pe,
                                                       int64_t row_bytes,
                                                       SteadyClock::time_point deadline) {
    auto f = std::make_shared<FetchState>();
    f->what = "kv fetch of transfer " + std::to_string(id) + " from " + ep;
    int64_t bytes = 0;
    if (lb < 0 || lb >= le || pb < 0 || pb >= pe || row_bytes <= 0 ||
        !checked_bytes(int64_t{le} - lb, pe - pb, row_bytes, &bytes)) {
        return invalid_argument(f->what + ": bad range: layers " + range_str(lb, le) + ", positions " +
                                range_str(pb, pe) + ", row_bytes " + std::to_string(row_bytes));
    }
    DS_RETURN_IF_ERROR(parse_endpoint(ep).status().with_context(f->what));
    if (SteadyClock::now() >= deadline) {
        return deadline_exceeded(f->what + ": deadline already passed");
    }
    try {
        f->out.resize(static_cast<size_t>(bytes));
    } catch (const std::bad_alloc&) {
        return resource_exhausted(f->what + ": cannot allocate " + std::to_string(bytes) + " bytes");
    }
    f->endpoint = ep;
    f->expected = static_cast<size_t>(bytes);
    f->deadline = deadline;
    WireRequest& r = f->req;
    r.magic = kRequestMagic;
    r.version = kWireVersion;
    r.transfer_id = id;
    r.reply_tag = next_tag_.fetch_add(1);  // unique per fetch on this worker: replies cannot cross
    std::memcpy(r.key, key.data(), key.size());
    r.layer_begin = lb;
    r.layer_end = le;
    r.pos_begin = pb;
    r.pos_end = pe;
    r.row_bytes = row_bytes;
    {
        std::lock_guard<std::mutex> lock(queue_mu_);
        queue_.push_back(f);
    }
    uint64_t one = 1;
    ssize_t n = write(event_fd_, &one, sizeof(one));
    (void)n;

    std::unique_lock<std::mutex> lock(f->mu);
    if (!f->cv.wait_until(lock, deadline, [&] { return f->done; })) {
        f->abandoned = true;  // the progress thread cancels the receive; the buffers stay in f
        lock.unlock();
        n = write(event_fd_, &one, sizeof(one));
        return deadline_exceeded(f->what + ": no reply by the deadline");
    }
    if (!f->result.ok()) {
        return f->result;
    }
    {
        std::lock_guard<std::mutex> slock(mu_);
        stats_.bytes_fetched += f->expected;
    }
    return std::move(f->out);
}

// ---- public wrappers -------------------------------------------------------------------------

KvTransfer::KvTransfer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
KvTransfer::~KvTransfer() = default;

StatusOr<std::unique_ptr<KvTransfer>> KvTransfer::start(const KvTransferOptions& options) {
    auto impl = std::make_unique<Impl>(options);
    DS_RETURN_IF_ERROR(impl->init());
    return std::unique_ptr<KvTransfer>(new KvTransfer(std::move(impl)));
}

std::string KvTransfer::endpoint() const { return impl_->endpoint_; }

Status KvTransfer::stage(uint64_t transfer_id,
                         const KvKey& key,
                         int32_t layer_begin,
                         int32_t layer_end,
                         int64_t positions,
                         int64_t row_bytes,
                         std::vector<uint8_t> data) {
    return impl_->stage(transfer_id, key, layer_begin, layer_end, positions, row_bytes, std::move(data));
}

void KvTransfer::drop(uint64_t transfer_id) { impl_->drop(transfer_id); }

StatusOr<std::vector<uint8_t>> KvTransfer::fetch(const std::string& endpoint,
                                                 uint64_t transfer_id,
                                                 const KvKey& key,
                                                 int32_t layer_begin,
                                                 int32_t layer_end,
                                                 int64_t pos_begin,
                                                 int64_t pos_end,
                                                 int64_t row_bytes,
                                                 std::chrono::steady_clock::time_point deadline) {
    return impl_->fetch(endpoint, transfer_id, key, layer_begin, layer_end, pos_begin, pos_end, row_bytes, deadline);
}

KvTransferStats KvTransfer::stats() const { return impl_->stats(); }

}  // namespace deepshard::comm
