// RamLoader: the destination half of QEMU's "ram" section (version 4).
//
// Every record is checked before memory is touched: known flags in a valid
// combination, the block known and of the right size, the page inside the
// block. Errors name the block, the offset and the stream position.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "ram_block.h"
#include "section.h"
#include "stats.h"

namespace ferry {

// Creates a block the stream names when the destination was not told its
// RAM size in advance (ferry recv without --ram).
class RamBlockAllocator {
 public:
  virtual ~RamBlockAllocator() = default;
  // Returns page-aligned memory of `length` bytes, all zeros.
  virtual Result<uint8_t*> Allocate(const std::string& name, uint64_t length) = 0;
};

// The destination's side channels for pages: multifd receiver threads.
// The RamLoader drives it from the main stream.
class PageReceiver {
 public:
  virtual ~PageReceiver() = default;
  // Starts the receiver threads. `on_error` is called once, from a receiver
  // thread, with the first failure (the destination then stops reading the
  // main stream).
  virtual Status Start(std::function<void(const Status&)> on_error) = 0;
  // After each block's entry in the setup list, with the main stream
  // positioned right behind it (mapped-ram reads its per-block header here,
  // loads the block's pages and moves the stream past the page region).
  virtual Status OnBlockListed(StreamReader& r, RamBlock& block) {
    (void)r;
    (void)block;
    return Status::Ok();
  }
  // A RAM_SAVE_FLAG_HOOK record (QEMU's RDMA transport: the source's
  // registration requests follow on the transport's control channel until
  // it says the round's registrations are finished). Only a receiver that
  // carries such a control channel accepts it.
  virtual Status OnRamHook(StreamReader& r) {
    (void)r;
    return Status::Protocol("RAM_SAVE_FLAG_HOOK record (QEMU's RDMA registration hook) in a stream that is not "
                            "received over rdma:");
  }
  // RAM record flags this stream must not contain (mapped-ram: pages and
  // MULTIFD_FLUSH never appear in its main stream).
  virtual uint64_t forbidden_flags() const { return 0; }
  // Capabilities this receiver implies, expected in the stream's
  // configuration section (mapped-ram's "mapped-ram").
  virtual std::vector<std::string> announced_capabilities() const { return {}; }
  // Every EOS is a barrier (QEMU <= 7.2's placement, multifd's
  // multifd-flush-after-each-section), not only MULTIFD_FLUSH records.
  virtual bool sync_on_eos() const { return false; }
  // True when this receiver records RamBlock::page_hashes for every page it
  // writes (and zeroes), so verification may use them instead of reading.
  virtual bool records_page_hashes() const { return false; }
  // The block list is known (after the MEM_SIZE record): pages may be
  // placed from now on. Receivers wait for this before touching memory.
  virtual void BlocksReady(RamBlockList& blocks) = 0;
  // The barrier: returns once every channel has delivered its SYNC packet
  // and applied everything sent before it, then lets the channels go on.
  virtual Status Sync() = 0;
  // Wakes and stops every receiver thread; later calls fail. Any thread.
  virtual void Abort() = 0;
  // Joins the threads; the first error of any of them.
  virtual Status Finish() = 0;
  // Adds multifd counters. Any thread.
  virtual void FillStats(MigrationStats& stats) const { (void)stats; }
  // Bounds the receivers' waits like the main stream's, sharing its clock
  // (core/progress.h). Called before Start().
  virtual void SetProgressBound(const ProgressBound& bound) { (void)bound; }
};

struct RamLoaderCounters {
  uint64_t normal_pages = 0;
  uint64_t zero_pages = 0;
};

class RamLoader final : public SectionLoader {
 public:
  // `fresh_memory`: every block starts all zeros (a new mapping): the block
  // list sets each block's known_zero bits, writes clear them (here, in the
  // multifd receivers, in mapped-ram load), and a ZERO record for a page
  // whose bit is still set costs nothing. Without it known_zero is left as
  // the embedder set it (empty: every ZERO record checks its page).
  // `receiver`: multifd receivers (null without multifd); `sync_on_eos`:
  // every EOS is a barrier (QEMU <= 7.2, multifd-flush-after-each-section)
  // rather than only MULTIFD_FLUSH records. A source using the other
  // placement is reported at once instead of leaving the barrier waiting: a
  // MULTIFD_FLUSH with sync_on_eos, or (without it) a setup section that
  // ends without a MULTIFD_FLUSH.
  RamLoader(RamBlockList& blocks, RamBlockAllocator* allocator, bool fresh_memory,
            PageReceiver* receiver = nullptr, bool sync_on_eos = false)
      : blocks_(blocks),
        allocator_(allocator),
        fresh_(fresh_memory),
        receiver_(receiver),
        sync_on_eos_(sync_on_eos) {}

  std::string idstr() const override { return "ram"; }
  uint32_t version() const override { return 4; }
  Status Load(StreamReader& r, uint32_t version) override;

  // Refuse a block list announcing more than `bytes` of RAM (0 = no limit),
  // before any block is allocated; `source` says where the limit comes from.
  void SetMaxRam(uint64_t bytes, std::string source) {
    max_ram_ = bytes;
    max_ram_source_ = std::move(source);
  }

  // Record each page's hash as it is written (RamBlock::page_hashes), for a
  // destination that verifies: set before the block list arrives. Only
  // where every writer records (no receiver, or one that says it does).
  void RecordPageHashes(bool on) { record_hashes_ = on; }

  bool setup_seen() const { return setup_seen_; }
  const RamLoaderCounters& counters() const { return counters_; }

 private:
  Status LoadBlockList(StreamReader& r, uint64_t total);
  RamBlock* BlockFor(StreamReader& r, uint64_t flags, uint64_t at);
  size_t IndexOf(const RamBlock* b) const;
  // A ZERO_RUN record's pages [first, first + count) of `b`.
  void ZeroRun(RamBlock& b, uint64_t first, uint64_t count);
  // A PAGE_RUN record's pages [first, first + count) of `b`, read from `r`.
  Status PageRun(StreamReader& r, RamBlock& b, uint64_t first, uint64_t count);

  RamBlockList& blocks_;
  RamBlockAllocator* allocator_;
  bool fresh_;
  PageReceiver* receiver_;
  bool sync_on_eos_;
  bool record_hashes_ = false;
  bool setup_seen_ = false;
  bool eos_seen_ = false;    // the first RAM section (setup) has ended
  bool flush_seen_ = false;  // a MULTIFD_FLUSH record was read
  RamBlock* last_block_ = nullptr;
  RamLoaderCounters counters_;
  uint64_t max_ram_ = 0;
  std::string max_ram_source_;
};

}  // namespace ferry
