// The source's side of the RAM data path over one QP, shared by the single
// connection (RdmaSink, QEMU's protocol) and ferry's multifd channels
// (docs/rdma-multifd.md):
//
//   LocalMemory  the source's guest memory registered where it is, so that
//                WRITEs go straight from it (no bounce copy): 1 MiB chunks on
//                first use, or every block whole at setup (pin-all). One per
//                migration, shared by every QP (they share one PD); thread-safe.
//   PageWriter   per QP: a run of contiguous pages inside one chunk becomes
//                one RDMA WRITE (the connection signals one WRITE in
//                kSignalEvery); dynamic: a REGISTER REQUEST on this QP the
//                first time it writes into a destination chunk; zero pages
//                become COMPRESS entries instead (see ZeroPolicy).
//
//   LocalMemory local(conn.pd(), pin_all);
//   local.AddBlock(block.host, block.used_length);      // in the block list's order
//   PageWriter w(conn, local, remote_blocks, ZeroPolicy::kQemu);
//   w.Run(0, offset, length);                           // inside one chunk
//   w.EndRound();                                       // every WRITE of the round completed
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

#include "rdma/connection.h"
#include "rdma/protocol.h"
#include "rdma/verbs.h"

namespace ferry::rdma {

class LocalMemory {
 public:
  LocalMemory(ibv_pd* pd, bool pin_all) : pd_(pd), pin_all_(pin_all) {}
  void AddBlock(uint8_t* host, uint64_t length);
  // pin-all: registers every block whole (at setup).
  Status PinAll();
  // The lkey for the chunk of block `b` holding `offset`; registers it on
  // first use. nullopt: the block cannot be registered (a read-only shared
  // mapping, send --memory-file, on kernels before 6.2, which pin read-only
  // memory for a forced write): its pages are copied through registered
  // bounce buffers instead. Any thread.
  Result<std::optional<uint32_t>> Lkey(uint32_t b, uint64_t offset);
  uint8_t* host(uint32_t b) const { return blocks_[b].host; }
  uint64_t registrations() const;
  // Blocks that could not be registered (copied through bounce buffers).
  uint64_t copied_blocks() const;
  uint64_t registered_bytes() const;

 private:
  struct Block {
    uint8_t* host = nullptr;
    uint64_t length = 0;
    MemoryRegion whole;
    bool copy = false;  // cannot be registered: bounce buffers
    std::vector<MemoryRegion> chunk;
  };
  // Writable memory is registered for local write (the pin breaks
  // copy-on-write and populates the range, so the MR keeps following the
  // guest's pages); a read-only mapping (send --memory-file) read-only.
  // An empty region: the memory cannot be pinned (EFAULT).
  Result<MemoryRegion> Register(uint8_t* addr, uint64_t len);

  ibv_pd* pd_;
  bool pin_all_;
  mutable std::mutex mu_;
  std::vector<Block> blocks_;
  uint64_t registrations_ = 0, registered_bytes_ = 0;
};

enum class ZeroPolicy {
  // QEMU's rule: a run that is all zeros in a destination chunk not
  // registered yet becomes one COMPRESS message (one entry: QEMU's
  // destination reads one); zero pages elsewhere are written as data.
  kQemu,
  // ferry's multifd channels: every run of zero pages becomes a COMPRESS
  // entry, up to 4096 per message; only non-zero pages are written.
  kPages,
  // No detection: everything is written (zero-page-detection=none).
  kNone,
};

struct WriterCounters {
  uint64_t bytes_written = 0;    // by RDMA WRITE
  uint64_t zero_bytes = 0;       // sent as COMPRESS entries
  uint64_t writes = 0;           // RDMA WRITEs
  uint64_t compress_messages = 0;
  uint64_t register_requests = 0;
  uint64_t bytes_copied = 0;     // through bounce buffers (memory that cannot be registered)
};

class PageWriter {
 public:
  // `remote`: the destination's blocks (RAM BLOCKS RESULT), in the order of
  // `local`'s blocks; with pin-all their rkeys.
  PageWriter(RdmaConnection& conn, LocalMemory& local, std::vector<DestBlock> remote, ZeroPolicy zero);
  // [offset, offset+len) of block `b`, inside one chunk, whole pages.
  Status Run(uint32_t b, uint64_t offset, uint64_t len);
  // Sends the COMPRESS entries left and waits until every WRITE completed.
  Status EndRound();
  const WriterCounters& counters() const { return counters_; }
  // The REGISTER FINISHED ending a round on this connection: with
  // kCapFerryCounts it tells the pages written since the previous one.
  std::vector<uint8_t> FinishedMessage();

 private:
  Result<uint32_t> RemoteKey(uint32_t b, uint64_t offset);
  Status Write(uint32_t b, uint64_t offset, uint64_t len);
  Status AddZero(uint32_t b, uint64_t offset, uint64_t len);
  Status SendCompress();
  // A copy into the next bounce slot (1 MiB; all reused after a drain).
  Status WriteCopy(uint32_t b, uint64_t offset, uint64_t len, uint32_t rkey);

  RdmaConnection& conn_;
  LocalMemory& local_;
  std::vector<DestBlock> remote_;
  ZeroPolicy zero_;
  std::vector<std::vector<uint32_t>> rkey_;  // dynamic: per block, per chunk; 0 = not registered
  std::vector<CompressEntry> compress_;
  WriterCounters counters_;
  uint64_t reported_bytes_ = 0;  // bytes_written told in REGISTER FINISHED so far
  static constexpr size_t kBounceSlots = 8;
  std::vector<uint8_t> bounce_;
  MemoryRegion bounce_mr_;  // after bounce_: deregistered first
  size_t next_slot_ = 0;
};

}  // namespace ferry::rdma
