// A test client for the soft-RoCE VM: connects to rdma:HOST:PORT with QEMU's
// capability private data but protocol version 2, and reports what the
// destination did. Exit 0 only if the connection was rejected.
//
//   rdma_version_client 192.0.2.1 4460
#include <rdma/rdma_cma.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "rdma/protocol.h"

namespace {

int Fail(const char* what) {
  std::perror(what);
  return 1;
}

bool Wait(rdma_event_channel* ch, rdma_cm_event_type want, rdma_cm_event_type* got) {
  rdma_cm_event* ev = nullptr;
  if (rdma_get_cm_event(ch, &ev) != 0) return false;
  *got = ev->event;
  rdma_ack_cm_event(ev);
  return *got == want;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: rdma_version_client HOST PORT\n");
    return 2;
  }
  rdma_event_channel* ch = rdma_create_event_channel();
  if (ch == nullptr) return Fail("rdma_create_event_channel");
  rdma_cm_id* id = nullptr;
  if (rdma_create_id(ch, &id, nullptr, RDMA_PS_TCP) != 0) return Fail("rdma_create_id");
  rdma_addrinfo hints{};
  hints.ai_flags = RAI_NUMERICHOST;
  hints.ai_port_space = RDMA_PS_TCP;
  rdma_addrinfo* res = nullptr;
  if (rdma_getaddrinfo(argv[1], argv[2], &hints, &res) != 0) return Fail("rdma_getaddrinfo");
  rdma_cm_event_type got{};
  if (rdma_resolve_addr(id, nullptr, res->ai_dst_addr, 5000) != 0 ||
      !Wait(ch, RDMA_CM_EVENT_ADDR_RESOLVED, &got)) {
    return Fail("rdma_resolve_addr");
  }
  if (rdma_resolve_route(id, 5000) != 0 || !Wait(ch, RDMA_CM_EVENT_ROUTE_RESOLVED, &got)) {
    return Fail("rdma_resolve_route");
  }
  ibv_qp_init_attr attr{};
  attr.cap.max_send_wr = attr.cap.max_recv_wr = 1;
  attr.cap.max_send_sge = attr.cap.max_recv_sge = 1;
  attr.qp_type = IBV_QPT_RC;
  if (rdma_create_qp(id, nullptr, &attr) != 0) return Fail("rdma_create_qp");
  auto priv = ferry::rdma::EncodeCapabilities({2, 0});
  rdma_conn_param param{};
  param.initiator_depth = 2;
  param.retry_count = 5;
  param.private_data = priv.data();
  param.private_data_len = priv.size();
  if (rdma_connect(id, &param) != 0) return Fail("rdma_connect");
  bool rejected = Wait(ch, RDMA_CM_EVENT_REJECTED, &got);
  std::printf("rdma_version_client: %s\n", rdma_event_str(got));
  rdma_destroy_qp(id);
  rdma_destroy_id(id);
  rdma_freeaddrinfo(res);
  rdma_destroy_event_channel(ch);
  return rejected ? 0 : 1;
}
