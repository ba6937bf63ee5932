// A fake RDMA migration destination for the soft-RoCE VM: it accepts one
// connection (QEMU's capability private data, pin-all granted when asked),
// serves the source's control messages like a destination (READY before every
// wait) and answers every memory key with a wrong one, so that the source's
// first RDMA WRITE completes with a remote access error:
//
//   RAM BLOCKS REQUEST -> RAM BLOCKS RESULT: one block per LENGTH argument, all
//                         at the address of a 4 KiB buffer registered here,
//                         with that buffer's rkey XOR 0x00ff0000 (pin-all)
//   REGISTER REQUEST   -> REGISTER RESULT: the same wrong rkey for every entry
//   anything else      -> ignored (QEMU FILE, REGISTER FINISHED, COMPRESS)
//
// It stops when the source disconnects (or after 60 s) and exits 0 only if it
// answered with a wrong key and the source went away afterwards.
//
//   rdma_bad_rkey_dest 192.0.2.1 4460 16777216
#include <infiniband/verbs.h>
#include <poll.h>
#include <rdma/rdma_cma.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "rdma/protocol.h"

namespace {

using namespace ferry::rdma;

int Fail(const char* what) {
  std::fprintf(stderr, "rdma_bad_rkey_dest: %s: %s\n", what, std::strerror(errno));
  return 1;
}

rdma_cm_event_type NextEvent(rdma_event_channel* ch, rdma_cm_event** out) {
  if (rdma_get_cm_event(ch, out) != 0) return RDMA_CM_EVENT_DEVICE_REMOVAL;
  return (*out)->event;
}

struct Peer {
  rdma_cm_id* id = nullptr;
  rdma_event_channel* ch = nullptr;
  ibv_cq* cq = nullptr;
  std::vector<uint8_t> recv, send;
  ibv_mr* recv_mr = nullptr;
  ibv_mr* send_mr = nullptr;
  bool gone = false;

  bool PostRecv() {
    ibv_sge sge{reinterpret_cast<uintptr_t>(recv.data()), static_cast<uint32_t>(recv.size()), recv_mr->lkey};
    ibv_recv_wr wr{};
    wr.wr_id = 1;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    ibv_recv_wr* bad = nullptr;
    return ibv_post_recv(id->qp, &wr, &bad) == 0;
  }

  // Polls the CQ for a completion of `wr_id` (1 receive, 2 send); watches
  // the CM channel for DISCONNECTED. Returns the byte count, or -1 when the
  // peer is gone, a work request failed or 60 s passed.
  long Wait(uint64_t wr_id) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      ibv_wc wc{};
      int n = ibv_poll_cq(cq, 1, &wc);
      if (n < 0) return -1;
      if (n == 1) {
        if (wc.status != IBV_WC_SUCCESS) {
          std::printf("rdma_bad_rkey_dest: work request %llu: %s\n", static_cast<unsigned long long>(wc.wr_id),
                      ibv_wc_status_str(wc.status));
          gone = true;
          return -1;
        }
        if (wc.wr_id == wr_id) return wc.byte_len;
        continue;
      }
      pollfd p{ch->fd, POLLIN, 0};
      if (poll(&p, 1, 1) == 1) {
        rdma_cm_event* ev = nullptr;
        rdma_cm_event_type t = NextEvent(ch, &ev);
        std::printf("rdma_bad_rkey_dest: %s\n", rdma_event_str(t));
        if (ev) rdma_ack_cm_event(ev);
        if (t == RDMA_CM_EVENT_DISCONNECTED || t == RDMA_CM_EVENT_DEVICE_REMOVAL) {
          gone = true;
          return -1;
        }
      }
    }
    std::printf("rdma_bad_rkey_dest: nothing for 60 s\n");
    return -1;
  }

  bool Send(const std::vector<uint8_t>& msg) {
    std::memcpy(send.data(), msg.data(), msg.size());
    ibv_sge sge{reinterpret_cast<uintptr_t>(send.data()), static_cast<uint32_t>(msg.size()), send_mr->lkey};
    ibv_send_wr wr{};
    wr.wr_id = 2;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = IBV_SEND_SIGNALED;
    ibv_send_wr* bad = nullptr;
    if (ibv_post_send(id->qp, &wr, &bad) != 0) return false;
    return Wait(2) >= 0;
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: rdma_bad_rkey_dest HOST PORT LENGTH...\n");
    return 2;
  }
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  std::vector<uint64_t> lengths;
  for (int i = 3; i < argc; ++i) lengths.push_back(std::strtoull(argv[i], nullptr, 0));

  Peer peer;
  peer.ch = rdma_create_event_channel();
  if (peer.ch == nullptr) return Fail("rdma_create_event_channel");
  rdma_cm_id* listen_id = nullptr;
  if (rdma_create_id(peer.ch, &listen_id, nullptr, RDMA_PS_TCP) != 0) return Fail("rdma_create_id");
  rdma_addrinfo hints{};
  hints.ai_flags = RAI_PASSIVE | RAI_NUMERICHOST;
  hints.ai_port_space = RDMA_PS_TCP;
  rdma_addrinfo* res = nullptr;
  if (rdma_getaddrinfo(argv[1], argv[2], &hints, &res) != 0) return Fail("rdma_getaddrinfo");
  if (rdma_bind_addr(listen_id, res->ai_src_addr) != 0) return Fail("rdma_bind_addr");
  if (rdma_listen(listen_id, 1) != 0) return Fail("rdma_listen");
  std::printf("rdma_bad_rkey_dest: listening on %s:%s\n", argv[1], argv[2]);

  rdma_cm_event* ev = nullptr;
  if (NextEvent(peer.ch, &ev) != RDMA_CM_EVENT_CONNECT_REQUEST) return Fail("waiting for CONNECT_REQUEST");
  peer.id = ev->id;
  Capabilities asked{};
  if (auto caps = DecodeCapabilities(std::span(static_cast<const uint8_t*>(ev->param.conn.private_data),
                                               ev->param.conn.private_data_len));
      caps.ok()) {
    asked = *caps;
  }
  rdma_ack_cm_event(ev);
  ibv_pd* pd = ibv_alloc_pd(peer.id->verbs);
  peer.cq = pd ? ibv_create_cq(peer.id->verbs, 16, nullptr, nullptr, 0) : nullptr;
  if (peer.cq == nullptr) return Fail("ibv_alloc_pd/ibv_create_cq");
  ibv_qp_init_attr attr{};
  attr.cap.max_send_wr = attr.cap.max_recv_wr = 4;
  attr.cap.max_send_sge = attr.cap.max_recv_sge = 1;
  attr.send_cq = attr.recv_cq = peer.cq;
  attr.qp_type = IBV_QPT_RC;
  if (rdma_create_qp(peer.id, pd, &attr) != 0) return Fail("rdma_create_qp");
  peer.recv.resize(kControlMaxBuffer);
  peer.send.resize(kControlMaxBuffer);
  std::vector<uint8_t> target(4096);
  peer.recv_mr = ibv_reg_mr(pd, peer.recv.data(), peer.recv.size(), IBV_ACCESS_LOCAL_WRITE);
  peer.send_mr = ibv_reg_mr(pd, peer.send.data(), peer.send.size(), IBV_ACCESS_LOCAL_WRITE);
  ibv_mr* target_mr = ibv_reg_mr(pd, target.data(), target.size(), IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
  if (!peer.recv_mr || !peer.send_mr || !target_mr) return Fail("ibv_reg_mr");
  const uint32_t wrong_rkey = target_mr->rkey ^ 0x00ff0000u;
  const uint64_t addr = reinterpret_cast<uintptr_t>(target.data());
  if (!peer.PostRecv()) return Fail("ibv_post_recv");
  Capabilities granted = AcceptCapabilities(asked);
  auto priv = EncodeCapabilities(granted);
  rdma_conn_param param{};
  param.responder_resources = 2;
  param.private_data = priv.data();
  param.private_data_len = priv.size();
  if (rdma_accept(peer.id, &param) != 0) return Fail("rdma_accept");
  if (NextEvent(peer.ch, &ev) != RDMA_CM_EVENT_ESTABLISHED) return Fail("waiting for ESTABLISHED");
  rdma_ack_cm_event(ev);
  std::printf("rdma_bad_rkey_dest: connected (%s)\n", (granted.flags & kCapPinAll) ? "pin-all" : "dynamic");

  bool answered_wrong = false;
  while (!peer.gone) {
    if (!peer.Send(EncodeEmpty(ControlType::kReady))) break;
    long n = peer.Wait(1);
    if (n < 0) break;
    std::vector<uint8_t> got(peer.recv.begin(), peer.recv.begin() + n);
    if (!peer.PostRecv()) break;
    auto m = DecodeMessage(got);
    if (!m.ok()) {
      std::printf("rdma_bad_rkey_dest: %s\n", m.status().message().c_str());
      break;
    }
    if (m->type == ControlType::kRamBlocksRequest) {
      std::vector<DestBlock> blocks;
      uint64_t offset = 0;
      for (uint64_t len : lengths) {
        blocks.push_back({addr, offset, len, (granted.flags & kCapPinAll) ? wrong_rkey : 0});
        offset += len;
      }
      if (!peer.Send(*EncodeRamBlocksResult(blocks))) break;
      if (granted.flags & kCapPinAll) answered_wrong = true;
      std::printf("rdma_bad_rkey_dest: RAM BLOCKS RESULT sent (%zu blocks)\n", blocks.size());
    } else if (m->type == ControlType::kRegisterRequest) {
      auto entries = DecodeRegisterRequest(*m);
      if (!entries.ok()) break;
      std::vector<RegisterResult> results(entries->size(), RegisterResult{wrong_rkey, addr});
      if (!peer.Send(*EncodeRegisterResults(results))) break;
      if (!answered_wrong) std::printf("rdma_bad_rkey_dest: REGISTER RESULT with a wrong rkey sent\n");
      answered_wrong = true;
    } else if (m->type == ControlType::kError) {
      std::printf("rdma_bad_rkey_dest: the source sent ERROR\n");
    }
  }
  std::printf("rdma_bad_rkey_dest: %s\n", peer.gone ? "the source went away" : "stopped");
  rdma_disconnect(peer.id);
  rdma_destroy_qp(peer.id);
  ibv_dereg_mr(target_mr);
  ibv_dereg_mr(peer.send_mr);
  ibv_dereg_mr(peer.recv_mr);
  ibv_destroy_cq(peer.cq);
  ibv_dealloc_pd(pd);
  rdma_destroy_id(peer.id);
  rdma_destroy_id(listen_id);
  rdma_freeaddrinfo(res);
  rdma_destroy_event_channel(peer.ch);
  return answered_wrong && peer.gone ? 0 : 1;
}
