#include "rdma/verbs.h"

#include <string>

namespace ferry::rdma {

Result<MemoryRegion> RegisterMemory(ibv_pd* pd, void* addr, size_t len, int access) {
  MemoryRegion mr(ibv_reg_mr(pd, addr, len, access));
  if (!mr) {
    return ErrnoStatus("rdma: cannot register " + std::to_string(len) +
                       " bytes of memory (ibv_reg_mr; check `ulimit -l`)");
  }
  return mr;
}

Result<int> RequireDevice() {
  int n = 0;
  ibv_device** list = ibv_get_device_list(&n);
  if (list == nullptr) {
    int err = errno;
    if (err == ENOSYS) return Status::Unsupported("no RDMA device: the kernel has no RDMA support (ib_uverbs)");
    return ErrnoStatus("no RDMA device: ibv_get_device_list", err);
  }
  ibv_free_device_list(list);
  if (n == 0) {
    return Status::Unsupported(
        "no RDMA device: this host has no InfiniBand/RoCE/iWARP device (for soft-RoCE: "
        "`rdma link add rxe0 type rxe netdev IFACE`)");
  }
  return n;
}

Result<EventChannel> CreateEventChannel() {
  EventChannel ch(rdma_create_event_channel());
  if (!ch) return ErrnoStatus("rdma: cannot create an RDMA CM event channel (is rdma_ucm loaded?)");
  return ch;
}

Result<CmEvent> WaitCmEvent(rdma_event_channel* ch, rdma_cm_event_type want, const char* what) {
  rdma_cm_event* raw = nullptr;
  if (rdma_get_cm_event(ch, &raw) != 0) return ErrnoStatus(std::string("rdma: ") + what);
  CmEvent ev(raw);
  if (ev->event != want) {
    std::string msg = std::string("rdma: ") + what + ": expected " + rdma_event_str(want) + ", got " +
                      rdma_event_str(ev->event);
    if (ev->event == RDMA_CM_EVENT_REJECTED) msg += " (peer refused the connection)";
    if (ev->status != 0) msg += " (status " + std::to_string(ev->status) + ")";
    Code code = ev->event == RDMA_CM_EVENT_REJECTED || ev->event == RDMA_CM_EVENT_DISCONNECTED ? Code::kClosed
                                                                                                : Code::kProtocol;
    return code == Code::kClosed ? Status::Closed(msg) : Status::Protocol(msg);
  }
  return ev;
}

}  // namespace ferry::rdma
