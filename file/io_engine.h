// IoEngine: positioned page I/O for the mapped-ram layout, batched.
//
// One engine per thread (multifd file channels each own one). The caller
// queues page-sized writes or reads (memory, length, file offset); the engine
// merges runs that are contiguous both in memory and in the file into larger
// requests, keeps up to queue_depth of them in flight, and reports the first
// error. Two implementations, chosen at run time:
//  - io_uring (liburing): registered buffers over the guest's memory regions
//    (IORING_OP_WRITE_FIXED/READ_FIXED), queue depth `queue_depth`;
//  - pwritev/preadv, synchronous, when io_uring is unavailable (announced in
//    one line through `note`).
// O_DIRECT: pass an O_DIRECT descriptor; every request's memory, length and
// offset must then be multiples of the alignment (pages always are).
//
//   FERRY_ASSIGN_OR_RETURN(auto io, MakeIoEngine({.fd = fd, .regions = guest}, note));
//   FERRY_RETURN_IF_ERROR(io->Write(page, 4096, off));
//   FERRY_RETURN_IF_ERROR(io->Drain());
#pragma once

#include <sys/uio.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace ferry {

struct IoEngineOptions {
  int fd = -1;                   // not owned
  unsigned queue_depth = 16;     // requests in flight
  size_t max_request = 1 << 20;  // merge limit per request, bytes
  std::vector<iovec> regions;    // memory to register as fixed buffers (guest RAM blocks)
  bool allow_uring = true;       // false: force the pwritev/preadv engine
};

class IoEngine {
 public:
  virtual ~IoEngine() = default;
  // Queues a write of [buf, buf+len) at `offset`. Returns an earlier
  // request's error if one failed. buf must stay valid until Drain().
  virtual Status Write(const void* buf, size_t len, uint64_t offset) = 0;
  // Queues a read into [buf, buf+len) from `offset`; a short read (file
  // too small) is kProtocol naming the offset.
  virtual Status Read(void* buf, size_t len, uint64_t offset) = 0;
  // Submits what is queued and waits for all of it; the first error.
  virtual Status Drain() = 0;
  // "io_uring" or "pwritev".
  virtual std::string_view name() const = 0;

  // Counters since creation, for tests and benchmarks.
  struct Stats {
    uint64_t requests = 0;        // requests issued after merging (SQEs or syscalls)
    uint64_t fixed_requests = 0;  // of those, READ_FIXED/WRITE_FIXED on registered buffers
    uint64_t continuations = 0;   // extra submissions finishing short transfers
    uint64_t bytes = 0;           // bytes transferred
    bool registered = false;      // `regions` are registered as fixed buffers
  };
  virtual Stats stats() const { return {}; }
};

Result<std::unique_ptr<IoEngine>> MakeIoEngine(const IoEngineOptions& options,
                                               const std::function<void(std::string_view)>& note = {});

}  // namespace ferry
