// One RDMA connection speaking QEMU's control protocol: a reliable-connected
// QP made through librdmacm, its PD and CQ, and registered buffers for the
// control messages (SEND/RECV). The RAM itself travels as RDMA WRITEs into
// memory the destination registers (rdma/registration.h); this class only
// moves control messages.
//
// QEMU's rule for control messages: a side that wants a message first sends
// READY; the other side sends a message only after it received READY, except
// the answers to RAM BLOCKS REQUEST, REGISTER REQUEST and UNREGISTER REQUEST,
// which follow the request directly (the requester posted a receive for them).
//
//   FERRY_ASSIGN_OR_RETURN(auto listener, RdmaListener::Listen(uri));
//   FERRY_ASSIGN_OR_RETURN(auto conn, listener->Accept(timeout));   // destination
//   FERRY_ASSIGN_OR_RETURN(Message m, conn->ReceiveAfterReady());  // READY, then the source's message
//   FERRY_RETURN_IF_ERROR(conn->Send(EncodeEmpty(ControlType::kRegisterFinished)));
//
// One thread drives a connection; Shutdown() may come from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <stop_token>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/unique_fd.h"
#include "core/uri.h"
#include "rdma/protocol.h"
#include "rdma/verbs.h"

namespace ferry::rdma {

// What a connection asks for or accepts beyond QEMU's protocol (ferry's
// multifd channels, docs/rdma-multifd.md).
struct ConnectOptions {
  uint32_t extra_flags = 0;  // source: kCapFerry* flags to ask for; destination: to accept
  uint32_t channel = 0, channels = 0;
  // Share this protection domain (the main connection's) instead of
  // allocating one, so that memory registered once serves every QP. Not
  // owned: the sharing connection must go first.
  ibv_pd* shared_pd = nullptr;
};

class RdmaConnection {
 public:
  ~RdmaConnection();
  RdmaConnection(const RdmaConnection&) = delete;
  RdmaConnection& operator=(const RdmaConnection&) = delete;

  // Capabilities both sides agreed on (pin-all or not).
  const Capabilities& capabilities() const { return caps_; }
  bool pin_all() const { return (caps_.flags & kCapPinAll) != 0; }
  // What the peer asked for in its connection request (destination side:
  // flags, channel, channels as sent; source side: its answer).
  const Capabilities& requested() const { return requested_; }
  ibv_pd* pd() const { return pd_raw_; }
  const std::string& peer() const { return peer_; }

  // The source's (active) side: connects to HOST:PORT asking for pin-all or
  // not; the destination's answer decides (pin_all()). A refused connection
  // (nobody listening yet) is retried until `timeout`.
  // `stop` ends the retries (kCancelled).
  static Result<std::unique_ptr<RdmaConnection>> Connect(const Uri& uri, bool pin_all,
                                                          std::chrono::milliseconds timeout,
                                                          std::stop_token stop = {},
                                                          const ConnectOptions& options = {});

  // Sends one encoded control message and waits for its completion.
  Status Send(std::span<const uint8_t> message);
  // The source's way to send: waits for the peer's READY, then sends.
  Status SendWhenReady(std::span<const uint8_t> message);
  // SendWhenReady, then waits for the answer, which must be of type `answer`.
  Result<Message> Request(std::span<const uint8_t> message, ControlType answer);

  // RDMA WRITE of [local, local+len) (registered with lkey) to remote memory.
  // WRITEs are posted kSignalEvery at a time as one chain whose last one
  // only is signalled (its completion retires the whole chain); waits for
  // older chains when kMaxWritesInFlight are in flight.
  Status Write(const void* local, uint32_t len, uint32_t lkey, uint64_t remote, uint32_t rkey);
  // Posts the WRITEs not posted yet (the last one signalled) and waits until
  // every WRITE so far has completed.
  Status DrainWrites();
  static constexpr int kSignalEvery = 16;
  // WRITEs posted and signalled so far (for counters).
  uint64_t writes_posted() const { return writes_posted_; }
  uint64_t writes_signalled() const { return writes_signalled_; }
  // The destination's way to receive: sends READY, waits for the next
  // message (any type) and posts the receive buffer again. The returned
  // payload stays valid until the next call that receives.
  Result<Message> ReceiveAfterReady();

  // Every blocking wait fails with kTimeout after this long without a
  // completion (0: wait forever).
  void SetTimeout(std::chrono::milliseconds t) { timeout_ = t; }
  // Wakes a blocked wait (it fails with kCancelled) and disconnects.
  void Shutdown();

 private:
  friend class RdmaListener;
  RdmaConnection() = default;
  static Result<std::unique_ptr<RdmaConnection>> ConnectOnce(const Uri& uri, bool pin_all,
                                                              std::chrono::milliseconds timeout,
                                                              const ConnectOptions& options);
  // PD (or `shared_pd`), CQ, QP, `receives` receive buffers posted; id's
  // ownership is already ours.
  Status Setup(rdma_cm_id* id, int receives, ibv_pd* shared_pd);
  Status PostPendingWrites();
  Status PostRecv(size_t slot);
  // Waits for the completion of work request `wr_id` (kAnyRecv: any
  // receive); returns {wr_id, byte_len}.
  Result<std::pair<uint64_t, uint32_t>> WaitFor(uint64_t wr_id, const char* what);
  // The next control message the peer sent, in arrival order.
  Result<Message> NextMessage(const char* what);

  std::string peer_;
  Capabilities caps_;
  Capabilities requested_;
  ibv_pd* pd_raw_ = nullptr;
  std::chrono::milliseconds timeout_{30000};
  std::atomic<bool> shutdown_{false};
  UniqueFd wake_;  // eventfd: Shutdown() wakes the poll

  // Declaration order is release order reversed: MRs and the QP (in cm_id_)
  // go before the CQ, the completion channel and the PD.
  EventChannel events_;
  ProtectionDomain pd_;
  CompletionChannel comp_;
  CompletionQueue cq_;
  CmId cm_id_;
  std::vector<std::vector<uint8_t>> recv_buf_;
  std::vector<uint8_t> send_buf_;
  std::vector<MemoryRegion> recv_mr_;
  MemoryRegion send_mr_;
  uint64_t writes_in_flight_ = 0;
  ibv_send_wr pending_wr_[kSignalEvery] = {};
  ibv_sge pending_sge_[kSignalEvery] = {};
  int pending_ = 0;
  uint64_t writes_posted_ = 0, writes_signalled_ = 0;
  // Completions that arrived while another one was awaited: wr_id -> byte_len.
  std::vector<std::pair<uint64_t, uint32_t>> early_;
  std::vector<uint8_t> last_;  // the last message received (ReceiveAfterReady)
};

class RdmaListener {
 public:
  // Checks that an RDMA device exists (else one line: "no RDMA device: ..."),
  // binds HOST:PORT (port 0: any) and listens.
  static Result<std::unique_ptr<RdmaListener>> Listen(const Uri& uri);
  // "rdma:HOST:PORT" with the port actually bound.
  std::string address() const { return address_; }
  // Waits for the source's connection request, checks its capabilities
  // (version 1; pin-all is accepted), sets up the QP and accepts.
  // `options`: ferry flags accepted besides QEMU's, a PD to share.
  Result<std::unique_ptr<RdmaConnection>> Accept(std::chrono::milliseconds timeout,
                                                 const ConnectOptions& options = {});
  // Makes a waiting (or later) Accept fail with kCancelled. Any thread.
  void Shutdown();

 private:
  RdmaListener() = default;
  UniqueFd wake_;
  EventChannel events_;
  CmId id_;
  std::string address_;
};

}  // namespace ferry::rdma
