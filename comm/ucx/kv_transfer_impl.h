// Internals of KvTransfer shared by its two translation units: kv_transfer.cc (UCX, progress
// thread, fetch) and kv_staging.cc (staged transfers, request validation, address parsing).
#pragma once

#include <sys/socket.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <type_traits>
#include <unordered_map>

#include "comm/ucx/kv_transfer.h"
#include "comm/ucx/ucx_p2p.h"

namespace deepshard::comm {
namespace kv_internal {

using SteadyClock = std::chrono::steady_clock;

constexpr uint32_t kRequestMagic = 0x5152564bu;  // "KVRQ"
constexpr uint32_t kReplyMagic = 0x5052564bu;    // "KVRP"
constexpr uint16_t kWireVersion = 1;
constexpr unsigned kRequestAmId = 7;    // UCX keeps AM handlers in an array indexed by id: keep it small
constexpr size_t kRecentlyGone = 1024;  // remembered dropped ids, so errors can say "expired"/"evicted"
// After a fetch's deadline its receive stays posted this long before it is cancelled, so that a
// reply already on its way lands in the (abandoned) fetch's own buffer and the exporter's send
// completes, instead of parking in UCX's unexpected queue and pinning the exporter's staged rows.
constexpr std::chrono::seconds kLateReplyGrace{10};

struct WireRequest {
    uint32_t magic;
    uint16_t version;
    uint16_t reserved;
    uint64_t transfer_id;
    uint64_t reply_tag;
    uint8_t key[16];
    int32_t layer_begin;
    int32_t layer_end;
    int64_t pos_begin;
    int64_t pos_end;
    int64_t row_bytes;
};
static_assert(std::is_trivially_copyable_v<WireRequest> && sizeof(WireRequest) == 72);

struct WireReply {
    uint32_t magic;
    uint16_t version;
    uint16_t reserved;
    uint64_t reply_tag;
    int32_t code;  // StatusCode; 0 = rows follow
    uint32_t reserved2;
    uint64_t data_bytes;
    char message[224];  // NUL-terminated reason when code != 0
};
static_assert(std::is_trivially_copyable_v<WireReply> && sizeof(WireReply) == 256);

// a * b * c for non-negative factors; false on overflow.
bool checked_bytes(int64_t a, int64_t b, int64_t c, int64_t* out);
// "[b, e)"
std::string range_str(int64_t b, int64_t e);
// IP literal + port -> sockaddr (no DNS: the coordinator hands out addresses, and a resolver call
// could block the caller for seconds).
StatusOr<std::pair<sockaddr_storage, socklen_t>> make_sockaddr(const std::string& host, uint16_t port);
// "IP:PORT" or "[IPv6]:PORT" -> sockaddr.
StatusOr<std::pair<sockaddr_storage, socklen_t>> parse_endpoint(const std::string& ep);

struct Staged {
    KvKey key;
    int32_t layer_begin = 0;
    int32_t layer_end = 0;
    int64_t positions = 0;
    int64_t row_bytes = 0;
    std::vector<uint8_t> data;
    SteadyClock::time_point expires;
    uint64_t seq = 0;  // staging order: with one ttl for all, also expiry order
};

struct Peer;

// One fetch. Owned jointly by the caller (waiting), the progress thread's pending map and each UCX
// request's user_data: a request that cannot be cancelled (a reply already streaming in) keeps the
// receive buffers alive until UCX lets go, so a timed-out caller's memory is never written.
struct FetchState {
    // Set before queuing, read-only afterwards.
    std::string endpoint;
    std::string what;   // "kv fetch of transfer N from EP", prefix of every error
    WireRequest req{};  // also the AM header buffer: must live until the send completes
    size_t expected = 0;
    SteadyClock::time_point deadline;
    // Receive targets.
    WireReply reply{};
    std::vector<uint8_t> out;
    ucp_dt_iov_t iov[2]{};
    // Progress thread only.
    class KvTransfer::Impl* owner = nullptr;
    Peer* peer = nullptr;
    void* recv_req = nullptr;
    SteadyClock::time_point cancel_at = SteadyClock::time_point::max();
    // Shared with the waiting caller.
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    bool abandoned = false;  // the caller gave up (deadline); its result no longer matters
    Status result;
};

// One UCX endpoint, client (cached by endpoint string) or server (accepted). Heap-stable: it is
// the endpoint's error-handler argument until the endpoint is closed.
struct Peer {
    class KvTransfer::Impl* owner = nullptr;
    std::string name;
    bool server = false;
    ucp_ep_h ep = nullptr;
    bool failed = false;
    ucs_status_t fail_status = UCS_OK;
};

// The exporter's answer to one request: header + the staged rows it points into (kept alive here).
struct ReplyCtx {
    class KvTransfer::Impl* owner = nullptr;
    WireReply hdr{};
    std::shared_ptr<const Staged> staged;
    std::vector<ucp_dt_iov_t> iov;
};

struct Incoming {
    WireRequest req;
    ucp_ep_h reply_ep;
};

}  // namespace kv_internal

// Private header: only kv_transfer.cc and kv_staging.cc include it.
using namespace kv_internal;  // NOLINT(google-build-using-namespace)

class KvTransfer::Impl {
public:
    explicit Impl(const KvTransferOptions& o) : opts_(o) {}
    ~Impl();
    Status init();

    std::string endpoint_;  // set by init(), read-only afterwards

    // Caller side.
    Status stage(uint64_t id,
                 const KvKey& key,
                 int32_t lb,
                 int32_t le,
                 int64_t positions,
                 int64_t row_bytes,
                 std::vector<uint8_t> data);
    void drop(uint64_t id);
    StatusOr<std::vector<uint8_t>> fetch(const std::string& ep,
                                         uint64_t id,
                                         const KvKey& key,
                                         int32_t lb,
                                         int32_t le,
                                         int64_t pb,
                                         int64_t pe,
                                         int64_t row_bytes,
                                         SteadyClock::time_point deadline);
    KvTransferStats stats();

    // UCX callbacks (progress thread).
    static void on_conn_request(ucp_conn_request_h req, void* arg);
    static void on_peer_error(void* arg, ucp_ep_h ep, ucs_status_t st);
    static ucs_status_t on_request_am(void* arg,
                                      const void* header,
                                      size_t header_length,
                                      void* data,
                                      size_t length,
                                      const ucp_am_recv_param_t* param);
    static void on_request_sent(void* request, ucs_status_t st, void* user_data);
    static void on_reply_received(void* request, ucs_status_t st, const ucp_tag_recv_info_t* info, void* user_data);
    static void on_reply_sent(void* request, ucs_status_t st, void* user_data);

private:
    // Progress thread.
    void run();
    bool wait_for_events();
    void launch(const std::shared_ptr<FetchState>& f);
    void fail_fetch(FetchState& f, Status s);
    void finish(FetchState& f, Status s);
    void reply_done(FetchState& f, ucs_status_t st, size_t length);
    void serve(const Incoming& in);
    Status validate_locked(const WireRequest& r, std::shared_ptr<const Staged>* out, int64_t* bytes);
    StatusOr<Peer*> client_peer(const std::string& ep);
    void accept(ucp_conn_request_h req);
    void handle_failed_peers();
    void close_peer(Peer* p, bool force);
    void reap_closing();
    void shutdown();

    // Under mu_.
    void sweep_locked(SteadyClock::time_point now);
    void remove_locked(uint64_t id, const char* why);

    const KvTransferOptions opts_;
    std::optional<UcxContext> context_;
    std::optional<UcxWorker> worker_;
    ucp_listener_h listener_ = nullptr;
    int event_fd_ = -1;  // wakes the progress thread (new fetch, shutdown)
    int epoll_fd_ = -1;
    int worker_fd_ = -1;  // ucp_worker_get_efd, -1 when the transports cannot signal (then we poll)
    std::thread thread_;
    std::atomic<bool> stop_{false};
    std::atomic<uint64_t> next_tag_{1};

    // Fetches handed to the progress thread.
    std::mutex queue_mu_;
    std::vector<std::shared_ptr<FetchState>> queue_;

    // Staged transfers and counters.
    mutable std::mutex mu_;
    std::unordered_map<uint64_t, std::shared_ptr<const Staged>> staged_;
    std::map<uint64_t, uint64_t> order_;  // seq -> id, oldest first
    std::deque<std::pair<uint64_t, const char*>> gone_;
    uint64_t next_seq_ = 0;
    KvTransferStats stats_;

    // Progress-thread state.
    std::unordered_map<uint64_t, std::shared_ptr<FetchState>> pending_;  // by reply tag
    std::unordered_map<std::string, Peer*> clients_;
    std::unordered_map<Peer*, std::unique_ptr<Peer>> peers_;
    std::vector<ucp_conn_request_h> conn_requests_;
    std::vector<Incoming> incoming_;
    std::vector<Peer*> failed_;
    std::vector<std::pair<void*, Peer*>> closing_;
    size_t inflight_ = 0;  // our UCX requests whose callback has not run yet
};

}  // namespace deepshard::comm
