// Finding guest memory that was never populated, without touching it.
//
// A page the guest never wrote reads as zero, and reading it is what would
// populate it: an anonymous read maps the zero page (a fault per page; a
// fresh zeroed page where a uffd-wp marker sits in the slot), a shmem read a
// page in the page cache. So the source asks the kernel which pages hold nothing:
//  - anonymous memory: the PAGEMAP_SCAN ioctl on /proc/self/pagemap (Linux
//    6.7+), one call per block (resumed when its result vector fills):
//    pages neither present nor swapped, or mapped to the shared zero page;
//    without the ioctl, /proc/self/pagemap entries (bit 63 present, 62 swap);
//  - a block backed by a file (RamBlock::backing_fd): lseek SEEK_DATA /
//    SEEK_HOLE: holes read as zero (tmpfs counts swapped-out pages as data).
//
// The result goes into RamBlock::known_zero, which readers must honour: a
// page whose bit is set is sent as zero (or left a hole) and never read.
//
// Exactness against a running guest (see MarkUnpopulated): call Begin before
// the dirty tracker starts and Confirm right after. A page the guest populates
// between the two is present at Confirm and loses its bit; every later write
// is the tracker's to report, and its Sync clears the bit
// (ClearKnownZero below). Confirm cannot use "not swapped" on a block under
// uffd-wp: the kernel shows the tracker's markers in empty slots as swap
// entries, so there it only drops pages that became present.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>

#include "core/ram_block.h"
#include "core/status.h"
#include "core/unique_fd.h"

namespace ferry {

struct UnpopulatedStats {
  uint64_t pages = 0;   // pages found unpopulated (known zero) in total
  uint64_t calls = 0;   // ioctl / lseek / read calls it took
  std::string method;   // "pagemap-scan", "pagemap", "seek-hole", or "" (nothing known)
};

class UnpopulatedFinder {
 public:
  // Sets each block's known_zero to the pages unpopulated right now. A block
  // whose memory cannot be examined gets an empty known_zero (nothing known):
  // never an error, the pages are then simply read.
  void Begin(RamBlockList& blocks);
  // After the dirty tracker started: clears the bits of pages populated since
  // Begin. `markers_look_swapped`: the tracker is uffd-wp (see above).
  void Confirm(RamBlockList& blocks, bool markers_look_swapped);
  const UnpopulatedStats& stats() const { return stats_; }

 private:
  enum class Pass { kBegin, kConfirm };
  void Scan(RamBlock& b, Pass pass, bool markers_look_swapped);
  bool ScanIoctl(RamBlock& b, Pass pass, bool markers_look_swapped);
  bool ScanPagemapReads(RamBlock& b, Pass pass, bool markers_look_swapped);
  bool ScanHoles(RamBlock& b, Pass pass);

  UniqueFd pagemap_;
  std::unique_ptr<uint8_t[]> regions_;  // PAGEMAP_SCAN result vector
  bool opened_ = false;
  bool ioctl_works_ = true;
  UnpopulatedStats stats_;
};

// For dirty trackers: the pages [first, first+count) of `b` were written.
inline void ClearKnownZero(RamBlock& b, uint64_t first, uint64_t count) {
  if (b.known_zero.size() == 0) return;
  for (uint64_t i = first, e = std::min(first + count, b.known_zero.size()); i < e;) {
    if ((i & 63) == 0 && i + 64 <= e) {
      b.known_zero.words()[i >> 6] = 0;
      i += 64;
    } else {
      b.known_zero.Clear(i++);
    }
  }
}

}  // namespace ferry
