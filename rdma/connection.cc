#include "rdma/connection.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cstring>
#include <thread>

namespace ferry::rdma {
namespace {

constexpr uint64_t kSendWrId = 2;
// A WRITE chain's signalled last WRITE: the tag and the chain's length.
constexpr uint64_t kWriteWrId = uint64_t{1} << 62;
constexpr uint64_t kWriteCountMask = 0xffff;
constexpr uint64_t kRecvWrId = 16;  // + slot
constexpr uint64_t kAnyRecv = ~uint64_t{0};
// WRITEs in flight before the source waits for the oldest (QEMU: 512).
constexpr uint64_t kMaxWritesInFlight = 128;
// Work requests: QEMU's source keeps up to 512 WRITEs in flight on its side;
// the destination only sends control messages and posts one receive.
constexpr int kCqEntries = 64;

Status SetNonBlocking(int fd, const char* what) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return ErrnoStatus(std::string("rdma: fcntl ") + what);
  return Status();
}

// Waits until `fd` is readable; kTimeout after `timeout` (0 = forever),
// kCancelled once `wake` (an eventfd, or -1) is.
Status WaitReadable(int fd, std::chrono::milliseconds timeout, const std::string& what, int wake = -1) {
  pollfd p[2] = {{fd, POLLIN, 0}, {wake, POLLIN, 0}};
  int ms = timeout.count() > 0 ? static_cast<int>(timeout.count()) : -1;
  while (true) {
    int n = poll(p, wake >= 0 ? 2 : 1, ms);
    if (n > 0 && (p[1].revents & POLLIN)) return Status::Cancelled("rdma: cancelled while " + what);
    if (n > 0) return Status();
    if (n == 0) return Status::Timeout("rdma: " + what + ": nothing within " + std::to_string(timeout.count() / 1000) + " s");
    if (errno != EINTR) return ErrnoStatus("rdma: poll");
  }
}

std::string AddressOf(const sockaddr* sa, uint16_t port) {
  char buf[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, buf, sizeof buf);
    return std::string(buf) + ":" + std::to_string(port);
  }
  inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, buf, sizeof buf);
  return "[" + std::string(buf) + "]:" + std::to_string(port);
}

}  // namespace

RdmaConnection::~RdmaConnection() {
  if (cm_id_) rdma_disconnect(cm_id_.get());
}

void RdmaConnection::Shutdown() {
  if (shutdown_.exchange(true)) return;
  if (wake_.get() >= 0) {
    uint64_t one = 1;
    (void)!write(wake_.get(), &one, sizeof one);
  }
}

Status RdmaConnection::Setup(rdma_cm_id* id, int receives, ibv_pd* shared_pd) {
  wake_ = UniqueFd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (wake_.get() < 0) return ErrnoStatus("rdma: eventfd");
  if (shared_pd != nullptr) {
    if (shared_pd->context != id->verbs) {
      return Status::Unsupported("rdma: a multifd channel is on another RDMA device than the main connection");
    }
    pd_raw_ = shared_pd;
  } else {
    pd_ = ProtectionDomain(ibv_alloc_pd(id->verbs));
    if (!pd_) return ErrnoStatus("rdma: ibv_alloc_pd");
    pd_raw_ = pd_.get();
  }
  comp_ = CompletionChannel(ibv_create_comp_channel(id->verbs));
  if (!comp_) return ErrnoStatus("rdma: ibv_create_comp_channel");
  FERRY_RETURN_IF_ERROR(SetNonBlocking(comp_->fd, "completion channel"));
  cq_ = CompletionQueue(ibv_create_cq(id->verbs, kCqEntries + kMaxWritesInFlight, nullptr, comp_.get(), 0));
  if (!cq_) return ErrnoStatus("rdma: ibv_create_cq");
  ibv_qp_init_attr attr{};
  attr.cap.max_send_wr = kMaxWritesInFlight + 8;
  attr.cap.max_recv_wr = 3;
  attr.cap.max_send_sge = 1;
  attr.cap.max_recv_sge = 1;
  attr.send_cq = cq_.get();
  attr.recv_cq = cq_.get();
  attr.qp_type = IBV_QPT_RC;
  if (rdma_create_qp(id, pd_raw_, &attr) != 0) return ErrnoStatus("rdma: rdma_create_qp");
  send_buf_.resize(kControlMaxBuffer);
  FERRY_ASSIGN_OR_RETURN(send_mr_, RegisterMemory(pd_raw_, send_buf_.data(), send_buf_.size(), IBV_ACCESS_LOCAL_WRITE));
  recv_buf_.resize(receives);
  recv_mr_.resize(receives);
  for (int i = 0; i < receives; ++i) {
    recv_buf_[i].resize(kControlMaxBuffer);
    FERRY_ASSIGN_OR_RETURN(recv_mr_[i],
                           RegisterMemory(pd_raw_, recv_buf_[i].data(), recv_buf_[i].size(), kRemoteWriteAccess));
    FERRY_RETURN_IF_ERROR(PostRecv(i));
  }
  return Status();
}

Status RdmaConnection::PostRecv(size_t slot) {
  ibv_sge sge{reinterpret_cast<uintptr_t>(recv_buf_[slot].data()), static_cast<uint32_t>(recv_buf_[slot].size()),
              recv_mr_[slot]->lkey};
  ibv_recv_wr wr{};
  wr.wr_id = kRecvWrId + slot;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  ibv_recv_wr* bad = nullptr;
  int rc = ibv_post_recv(cm_id_->qp, &wr, &bad);
  if (rc != 0) return ErrnoStatus("rdma: ibv_post_recv", rc);
  return Status();
}

Status RdmaConnection::Send(std::span<const uint8_t> message) {
  if (message.size() > send_buf_.size()) return Status::Internal("rdma: control message larger than its buffer");
  std::memcpy(send_buf_.data(), message.data(), message.size());
  ibv_sge sge{reinterpret_cast<uintptr_t>(send_buf_.data()), static_cast<uint32_t>(message.size()), send_mr_->lkey};
  ibv_send_wr wr{};
  wr.wr_id = kSendWrId;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_SEND;
  wr.send_flags = IBV_SEND_SIGNALED;
  ibv_send_wr* bad = nullptr;
  int rc = ibv_post_send(cm_id_->qp, &wr, &bad);
  if (rc != 0) return ErrnoStatus("rdma: ibv_post_send", rc);
  return WaitFor(kSendWrId, "sending a control message").status();
}

Result<Message> RdmaConnection::NextMessage(const char* what) {
  FERRY_ASSIGN_OR_RETURN(auto done, WaitFor(kAnyRecv, what));
  const size_t slot = done.first - kRecvWrId;
  // Keep the message where the next receive cannot overwrite it, then give
  // the buffer back to the QP.
  last_.assign(recv_buf_[slot].begin(), recv_buf_[slot].begin() + done.second);
  FERRY_RETURN_IF_ERROR(PostRecv(slot));
  return DecodeMessage(last_);
}

Result<Message> RdmaConnection::ReceiveAfterReady() {
  FERRY_RETURN_IF_ERROR(Send(EncodeEmpty(ControlType::kReady)));
  return NextMessage("waiting for the source's control message");
}

Status RdmaConnection::SendWhenReady(std::span<const uint8_t> message) {
  FERRY_ASSIGN_OR_RETURN(Message m, NextMessage("waiting for the destination's READY"));
  FERRY_RETURN_IF_ERROR(ExpectType(m, ControlType::kReady));
  return Send(message);
}

Result<Message> RdmaConnection::Request(std::span<const uint8_t> message, ControlType answer) {
  FERRY_RETURN_IF_ERROR(SendWhenReady(message));
  FERRY_ASSIGN_OR_RETURN(Message m, NextMessage("waiting for the destination's answer"));
  FERRY_RETURN_IF_ERROR(ExpectType(m, answer));
  return m;
}

Status RdmaConnection::Write(const void* local, uint32_t len, uint32_t lkey, uint64_t remote, uint32_t rkey) {
  ibv_sge& sge = pending_sge_[pending_];
  sge = {reinterpret_cast<uintptr_t>(local), len, lkey};
  ibv_send_wr& wr = pending_wr_[pending_];
  wr = {};
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.opcode = IBV_WR_RDMA_WRITE;
  // Tagged even when unsignalled: a failed WRITE completes with its own wr_id (count 0).
  wr.wr_id = kWriteWrId;
  wr.wr.rdma.remote_addr = remote;
  wr.wr.rdma.rkey = rkey;
  if (++pending_ == kSignalEvery) return PostPendingWrites();
  return Status();
}

Status RdmaConnection::PostPendingWrites() {
  if (pending_ == 0) return Status();
  while (writes_in_flight_ + pending_ > kMaxWritesInFlight) {
    FERRY_RETURN_IF_ERROR(WaitFor(kWriteWrId, "writing guest memory").status());
  }
  for (int i = 0; i + 1 < pending_; ++i) pending_wr_[i].next = &pending_wr_[i + 1];
  ibv_send_wr& last = pending_wr_[pending_ - 1];
  last.next = nullptr;
  last.wr_id = kWriteWrId | static_cast<uint64_t>(pending_);
  last.send_flags = IBV_SEND_SIGNALED;
  ibv_send_wr* bad = nullptr;
  int rc = ibv_post_send(cm_id_->qp, &pending_wr_[0], &bad);
  if (rc != 0) return ErrnoStatus("rdma: ibv_post_send (RDMA WRITE)", rc);
  writes_in_flight_ += pending_;
  writes_posted_ += pending_;
  ++writes_signalled_;
  pending_ = 0;
  return Status();
}

Status RdmaConnection::DrainWrites() {
  FERRY_RETURN_IF_ERROR(PostPendingWrites());
  while (writes_in_flight_ > 0) FERRY_RETURN_IF_ERROR(WaitFor(kWriteWrId, "writing guest memory").status());
  return Status();
}

Result<std::pair<uint64_t, uint32_t>> RdmaConnection::WaitFor(uint64_t wr_id, const char* what) {
  auto matches = [wr_id](uint64_t id) {
    return id == wr_id || (wr_id == kAnyRecv && id >= kRecvWrId && !(id & kWriteWrId));
  };
  for (auto it = early_.begin(); it != early_.end(); ++it) {
    if (matches(it->first)) {
      auto done = *it;
      early_.erase(it);
      return done;
    }
  }
  auto last_progress = std::chrono::steady_clock::now();
  bool armed = false;
  while (true) {
    if (shutdown_.load()) return Status::Cancelled("rdma: connection shut down");
    ibv_wc wc{};
    int n = ibv_poll_cq(cq_.get(), 1, &wc);
    if (n < 0) return Status::Io("rdma: ibv_poll_cq failed", EIO);
    if (n == 1) {
      if (wc.status != IBV_WC_SUCCESS) {
        // A failed WRITE surfaces in whatever wait polls next: name it, not the wait.
        if ((wc.wr_id & kWriteWrId) && wc.status != IBV_WC_WR_FLUSH_ERR) {
          return Status::Closed(std::string("rdma: RDMA WRITE into the peer's memory failed: ") +
                                ibv_wc_status_str(wc.status) +
                                (wc.status == IBV_WC_REM_ACCESS_ERR ? " (the peer refused the memory key or address)" : ""));
        }
        return Status::Closed(std::string("rdma: ") + what + ": work request failed: " + ibv_wc_status_str(wc.status) +
                              (wc.status == IBV_WC_WR_FLUSH_ERR ? " (the connection is gone)" : ""));
      }
      if (wc.wr_id & kWriteWrId) {
        writes_in_flight_ -= std::min<uint64_t>(writes_in_flight_, wc.wr_id & kWriteCountMask);
        if (wr_id == kWriteWrId) return std::pair<uint64_t, uint32_t>(wc.wr_id, wc.byte_len);
        continue;
      }
      if (matches(wc.wr_id)) return std::pair<uint64_t, uint32_t>(wc.wr_id, wc.byte_len);
      early_.emplace_back(wc.wr_id, wc.byte_len);
      last_progress = std::chrono::steady_clock::now();
      continue;
    }
    if (!armed) {  // arm, then poll once more: a completion may have slipped in
      if (ibv_req_notify_cq(cq_.get(), 0) != 0) return Status::Io("rdma: ibv_req_notify_cq failed", EIO);
      armed = true;
      continue;
    }
    pollfd fds[3] = {{comp_->fd, POLLIN, 0}, {events_->fd, POLLIN, 0}, {wake_.get(), POLLIN, 0}};
    int ms = 1000;
    int rc = poll(fds, 3, ms);
    if (rc < 0 && errno != EINTR) return ErrnoStatus("rdma: poll");
    if (rc <= 0) {
      if (timeout_.count() > 0 && std::chrono::steady_clock::now() - last_progress > timeout_) {
        return Status::Timeout(std::string("rdma: ") + what + ": no completion for " +
                               std::to_string(timeout_.count() / 1000) + " s");
      }
      continue;
    }
    if (fds[0].revents & POLLIN) {
      ibv_cq* cq = nullptr;
      void* ctx = nullptr;
      if (ibv_get_cq_event(comp_.get(), &cq, &ctx) == 0) ibv_ack_cq_events(cq, 1);
      armed = false;
    }
    if (fds[1].revents & POLLIN) {
      rdma_cm_event* raw = nullptr;
      if (rdma_get_cm_event(events_.get(), &raw) == 0) {
        CmEvent ev(raw);
        if (ev->event == RDMA_CM_EVENT_DISCONNECTED || ev->event == RDMA_CM_EVENT_DEVICE_REMOVAL ||
            ev->event == RDMA_CM_EVENT_TIMEWAIT_EXIT) {
          return Status::Closed(std::string("rdma: ") + what + ": the peer disconnected (" +
                                rdma_event_str(ev->event) + ")");
        }
      }
    }
  }
}

Result<std::unique_ptr<RdmaConnection>> RdmaConnection::Connect(const Uri& uri, bool pin_all,
                                                                 std::chrono::milliseconds timeout,
                                                                 std::stop_token stop,
                                                                 const ConnectOptions& options) {
  FERRY_RETURN_IF_ERROR(RequireDevice().status());
  // Like tcp:, a destination that is not listening yet is tried again until
  // the timeout (a refusal is kClosed; anything else fails at once).
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    Result<std::unique_ptr<RdmaConnection>> c = ConnectOnce(uri, pin_all, timeout, options);
    if (c.ok() || c.status().code() != Code::kClosed || std::chrono::steady_clock::now() >= deadline) return c;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    if (stop.stop_requested()) return Status::Cancelled("rdma: cancelled while connecting to " + uri.text);
  }
}

Result<std::unique_ptr<RdmaConnection>> RdmaConnection::ConnectOnce(const Uri& uri, bool pin_all,
                                                                     std::chrono::milliseconds timeout,
                                                                     const ConnectOptions& options) {
  std::unique_ptr<RdmaConnection> c(new RdmaConnection());
  FERRY_ASSIGN_OR_RETURN(c->events_, CreateEventChannel());
  rdma_cm_id* raw = nullptr;
  if (rdma_create_id(c->events_.get(), &raw, nullptr, RDMA_PS_TCP) != 0) return ErrnoStatus("rdma: rdma_create_id");
  c->cm_id_ = CmId(raw);
  rdma_addrinfo hints{};
  hints.ai_flags = RAI_NUMERICHOST;
  hints.ai_port_space = RDMA_PS_TCP;
  rdma_addrinfo* res = nullptr;
  std::string port = std::to_string(uri.port);
  if (rdma_getaddrinfo(uri.host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr) {
    return Status::InvalidArgument("rdma: cannot use '" + uri.host + "' as a peer address (numeric IPv4 or IPv6)");
  }
  const int ms = static_cast<int>(std::min<int64_t>(timeout.count() > 0 ? timeout.count() : 10000, 10000));
  int rc = rdma_resolve_addr(raw, nullptr, res->ai_dst_addr, ms);
  int err = errno;
  rdma_freeaddrinfo(res);
  if (rc != 0) return ErrnoStatus("rdma: cannot resolve " + uri.text, err);
  FERRY_RETURN_IF_ERROR(WaitCmEvent(c->events_.get(), RDMA_CM_EVENT_ADDR_RESOLVED, "resolving the address").status());
  if (rdma_resolve_route(raw, ms) != 0) return ErrnoStatus("rdma: cannot resolve a route to " + uri.text);
  FERRY_RETURN_IF_ERROR(WaitCmEvent(c->events_.get(), RDMA_CM_EVENT_ROUTE_RESOLVED, "resolving the route").status());
  // Two receives: an answer and the READY after it may both be on the way.
  FERRY_RETURN_IF_ERROR(c->Setup(raw, 2, options.shared_pd));
  const uint32_t asked = (pin_all ? kCapPinAll : 0) | options.extra_flags;
  auto priv = EncodeConnectData({kProtocolVersion, asked, options.channel, options.channels});
  rdma_conn_param param{};
  param.initiator_depth = 2;
  param.retry_count = 5;
  param.private_data = priv.data();
  param.private_data_len = priv.size();
  if (rdma_connect(raw, &param) != 0) return ErrnoStatus("rdma: rdma_connect to " + uri.text);
  const std::string what = "connecting to " + uri.text;
  Result<CmEvent> est = WaitCmEvent(c->events_.get(), RDMA_CM_EVENT_ESTABLISHED, what.c_str());
  if (!est.ok()) return est.status();
  FERRY_ASSIGN_OR_RETURN(Capabilities answer,
                         DecodeCapabilities(std::span(static_cast<const uint8_t*>((*est)->param.conn.private_data),
                                                      (*est)->param.conn.private_data_len)));
  c->requested_ = answer;
  c->caps_ = {kProtocolVersion, answer.flags & asked, options.channel, options.channels};
  c->peer_ = AddressOf(rdma_get_peer_addr(raw), uri.port);
  est->reset();
  FERRY_RETURN_IF_ERROR(SetNonBlocking(c->events_->fd, "event channel"));
  return c;
}

Result<std::unique_ptr<RdmaListener>> RdmaListener::Listen(const Uri& uri) {
  FERRY_RETURN_IF_ERROR(RequireDevice().status());
  std::unique_ptr<RdmaListener> l(new RdmaListener());
  l->wake_ = UniqueFd(eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (l->wake_.get() < 0) return ErrnoStatus("rdma: eventfd");
  FERRY_ASSIGN_OR_RETURN(l->events_, CreateEventChannel());
  FERRY_RETURN_IF_ERROR(SetNonBlocking(l->events_->fd, "event channel"));
  rdma_cm_id* raw = nullptr;
  if (rdma_create_id(l->events_.get(), &raw, nullptr, RDMA_PS_TCP) != 0) return ErrnoStatus("rdma: rdma_create_id");
  l->id_ = CmId(raw);
  rdma_addrinfo hints{};
  hints.ai_flags = RAI_PASSIVE | RAI_NUMERICHOST;
  hints.ai_port_space = RDMA_PS_TCP;
  rdma_addrinfo* res = nullptr;
  std::string port = std::to_string(uri.port);
  if (rdma_getaddrinfo(uri.host.c_str(), port.c_str(), &hints, &res) != 0 || res == nullptr) {
    return Status::InvalidArgument("rdma: cannot use '" + uri.host + "' as a local address (numeric IPv4 or IPv6)");
  }
  int rc = rdma_bind_addr(l->id_.get(), res->ai_src_addr);
  int err = errno;
  rdma_freeaddrinfo(res);
  if (rc != 0) return ErrnoStatus("rdma: cannot bind " + uri.text + " (no RDMA device has this address?)", err);
  if (rdma_listen(l->id_.get(), 4) != 0) return ErrnoStatus("rdma: rdma_listen on " + uri.text);
  l->address_ = "rdma:" + AddressOf(rdma_get_local_addr(l->id_.get()), ntohs(rdma_get_src_port(l->id_.get())));
  return l;
}

void RdmaListener::Shutdown() {
  uint64_t one = 1;
  (void)!write(wake_.get(), &one, sizeof one);
}

Result<std::unique_ptr<RdmaConnection>> RdmaListener::Accept(std::chrono::milliseconds timeout,
                                                             const ConnectOptions& options) {
  FERRY_RETURN_IF_ERROR(WaitReadable(events_->fd, timeout, "waiting for the source to connect", wake_.get()));
  FERRY_ASSIGN_OR_RETURN(CmEvent req, WaitCmEvent(events_.get(), RDMA_CM_EVENT_CONNECT_REQUEST, "accepting"));
  rdma_cm_id* id = req->id;
  Result<Capabilities> caps = DecodeCapabilities(
      std::span(static_cast<const uint8_t*>(req->param.conn.private_data), req->param.conn.private_data_len));
  if (!caps.ok()) {
    rdma_reject(id, nullptr, 0);
    req.reset();
    rdma_destroy_id(id);
    return caps.status();
  }
  req.reset();  // acknowledged: the id may now move to the connection's own channel

  std::unique_ptr<RdmaConnection> c(new RdmaConnection());
  c->cm_id_ = CmId(id);
  c->requested_ = *caps;
  c->caps_ = AcceptCapabilities(*caps);
  c->caps_.flags |= caps->flags & options.extra_flags;
  c->caps_.channel = caps->channel;
  c->caps_.channels = caps->channels;
  c->peer_ = AddressOf(rdma_get_peer_addr(id), ntohs(rdma_get_dst_port(id)));
  FERRY_ASSIGN_OR_RETURN(c->events_, CreateEventChannel());
  if (rdma_migrate_id(id, c->events_.get()) != 0) return ErrnoStatus("rdma: rdma_migrate_id");
  FERRY_RETURN_IF_ERROR(c->Setup(id, 1, options.shared_pd));

  auto priv = EncodeConnectData(c->caps_);
  rdma_conn_param param{};
  param.responder_resources = 2;
  param.private_data = priv.data();
  param.private_data_len = priv.size();
  if (rdma_accept(id, &param) != 0) return ErrnoStatus("rdma: rdma_accept");
  FERRY_RETURN_IF_ERROR(
      WaitReadable(c->events_->fd, timeout, "waiting for the connection to be established", wake_.get()));
  FERRY_ASSIGN_OR_RETURN(CmEvent est, WaitCmEvent(c->events_.get(), RDMA_CM_EVENT_ESTABLISHED, "accepting"));
  FERRY_RETURN_IF_ERROR(SetNonBlocking(c->events_->fd, "event channel"));
  return c;
}

}  // namespace ferry::rdma
