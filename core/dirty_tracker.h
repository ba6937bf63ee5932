// DirtyTracker: tells the RAM saver which guest pages were written since the
// last sync.
//
// Implementations (see MakeDirtyTracker):
//  - "uffd-wp": userfaultfd write-protect in async mode + the PAGEMAP_SCAN
//    ioctl (Linux 6.7+). The kernel records writes itself; one ioctl per sync
//    returns the written ranges and write-protects them again atomically.
//  - "bitmap": cooperative fallback; the guest's writers call MarkDirty().
//  - "all-once": for a non-live save: reports nothing ever changes (the saver
//    sends every page once; the guest must be stopped).
//
// Usage, migration thread only (MarkDirty is the exception: any thread):
//   auto t = MakeDirtyTracker(DirtyTrackerKind::kBest, blocks, note);
//   FERRY_RETURN_IF_ERROR((*t)->Start(blocks));   // from here writes are seen
//   ... send everything once ...
//   Result<uint64_t> n = (*t)->Sync(blocks);       // ORs writes into b.dirty
//   (*t)->Stop();
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "ram_block.h"
#include "status.h"

namespace ferry {

class DirtyTracker {
 public:
  virtual ~DirtyTracker() = default;

  // Begins tracking the given blocks. Every write after Start returns is
  // reported by a later Sync. Called once.
  virtual Status Start(RamBlockList& blocks) = 0;

  // Sets, in each block's `dirty` bitmap, the pages written since the
  // previous Sync (or since Start), clears their `known_zero` bits, and
  // re-arms tracking for them. Returns the
  // number of pages it reported (including ones already set in `dirty`).
  // No write is lost: a write racing with Sync shows up in this or the next.
  virtual Result<uint64_t> Sync(RamBlockList& blocks) = 0;

  // Stops tracking; the guest's memory stays as it is. Idempotent.
  virtual void Stop() = 0;

  // Cooperative hook for writers: a no-op for kernel-backed trackers.
  // Thread-safe, lock-free.
  virtual void MarkDirty(const void* addr, size_t len) { (void)addr; (void)len; }

  // True if writers must call MarkDirty for their writes to be seen.
  virtual bool needs_mark_dirty() const { return false; }

  virtual std::string_view name() const = 0;
};

enum class DirtyTrackerKind {
  kBest,     // uffd-wp if the kernel has it, else bitmap (announced via `note`)
  kUffdWp,   // fail if unavailable
  kBitmap,
  kAllOnce,
};

// `note` receives one human-readable line when a fallback is chosen.
Result<std::unique_ptr<DirtyTracker>> MakeDirtyTracker(
    DirtyTrackerKind kind, const std::function<void(std::string_view)>& note = {});

// Probes the kernel (userfaultfd with WP async and PAGEMAP_SCAN) without
// touching guest memory. Returns OK or an explanation of what is missing.
Status ProbeUffdWp();

}  // namespace ferry
