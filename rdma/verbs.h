// Move-only owners of the rdma-core objects ferry's RDMA transport uses, so
// that every PD, CQ, completion channel, QP, CM id and MR is released on every
// path (the "every MR, QP, CQ and PD is released").
//
//   FERRY_ASSIGN_OR_RETURN(EventChannel ec, EventChannel::Create());
//   ProtectionDomain pd(ibv_alloc_pd(ctx));
//   if (!pd) return ErrnoStatus("rdma: ibv_alloc_pd");
//   FERRY_ASSIGN_OR_RETURN(MemoryRegion mr, RegisterMemory(pd.get(), buf, len, access));
//
// Destruction order is the caller's: declare owners so that MRs and QPs go
// before the PD and CQ they use (members are destroyed in reverse order).
#pragma once

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include <cstddef>
#include <utility>

#include "core/status.h"

namespace ferry::rdma {

// Owns one T*, freed with Free(T*) unless released. Move-only.
template <typename T, auto Free>
class VerbsOwner {
 public:
  VerbsOwner() = default;
  explicit VerbsOwner(T* p) : p_(p) {}
  VerbsOwner(VerbsOwner&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  VerbsOwner& operator=(VerbsOwner&& o) noexcept {
    if (this != &o) reset(std::exchange(o.p_, nullptr));
    return *this;
  }
  VerbsOwner(const VerbsOwner&) = delete;
  VerbsOwner& operator=(const VerbsOwner&) = delete;
  ~VerbsOwner() { reset(); }

  T* get() const { return p_; }
  T* operator->() const { return p_; }
  explicit operator bool() const { return p_ != nullptr; }
  T* release() { return std::exchange(p_, nullptr); }
  void reset(T* p = nullptr) {
    if (p_ != nullptr) Free(p_);
    p_ = p;
  }

 private:
  T* p_ = nullptr;
};

namespace detail {
inline void DestroyEventChannel(rdma_event_channel* c) { rdma_destroy_event_channel(c); }
inline void AckEvent(rdma_cm_event* e) { rdma_ack_cm_event(e); }
inline void FreeDeviceList(ibv_device** l) { ibv_free_device_list(l); }
// A CM id with a QP: the QP goes first.
inline void DestroyCmId(rdma_cm_id* id) {
  if (id->qp != nullptr) rdma_destroy_qp(id);
  rdma_destroy_id(id);
}
}  // namespace detail

using ProtectionDomain = VerbsOwner<ibv_pd, ibv_dealloc_pd>;
using CompletionChannel = VerbsOwner<ibv_comp_channel, ibv_destroy_comp_channel>;
using CompletionQueue = VerbsOwner<ibv_cq, ibv_destroy_cq>;
using MemoryRegion = VerbsOwner<ibv_mr, ibv_dereg_mr>;
using EventChannel = VerbsOwner<rdma_event_channel, detail::DestroyEventChannel>;
// A CM id and, once rdma_create_qp made one, its QP (cm_id->qp).
using CmId = VerbsOwner<rdma_cm_id, detail::DestroyCmId>;
// A CM event that must be acknowledged once read.
using CmEvent = VerbsOwner<rdma_cm_event, detail::AckEvent>;

// Access for memory the peer WRITEs into (destination RAM, receive buffers).
inline constexpr int kRemoteWriteAccess = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE;

// ibv_reg_mr with a clear error naming the size.
Result<MemoryRegion> RegisterMemory(ibv_pd* pd, void* addr, size_t len, int access);

// Fails with kUnsupported and one line ("no RDMA device: ...") when the
// host has no verbs device (no /sys/class/infiniband entry, no provider),
// before anything else is tried; the number of devices otherwise.
Result<int> RequireDevice();

// Creates an event channel, failing with a clear message (no rdma_ucm module).
Result<EventChannel> CreateEventChannel();

// Waits for the next CM event on `ch` and checks it is `want`; a different
// event becomes a one-line error naming both (and the peer's reject reason).
Result<CmEvent> WaitCmEvent(rdma_event_channel* ch, rdma_cm_event_type want, const char* what);

}  // namespace ferry::rdma
