#include "core/unpopulated.h"

#include "core/pagemap_scan.h"

#include <fcntl.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

namespace ferry {
namespace {

// PAGEMAP_SCAN (core/pagemap_scan.h).
using PmScanArg = pagemap::ScanArg;
using PageRegion = pagemap::Region;
constexpr unsigned long kPagemapScan = pagemap::kScanIoctl;
using pagemap::kPageIsFile;
using pagemap::kPageIsHuge;
using pagemap::kPageIsPfnZero;
using pagemap::kPageIsPresent;
using pagemap::kPageIsSoftDirty;
using pagemap::kPageIsSwapped;
using pagemap::kPageIsWpAllowed;
using pagemap::kPageIsWritten;
[[maybe_unused]] constexpr uint64_t kAllCategories = kPageIsWpAllowed | kPageIsWritten | kPageIsFile |
                                                     kPageIsPresent | kPageIsSwapped | kPageIsPfnZero |
                                                     kPageIsHuge | kPageIsSoftDirty;

// /proc/self/pagemap entries.
constexpr uint64_t kPmPresent = 1ull << 63;
constexpr uint64_t kPmSwap = 1ull << 62;

// Regions per ioctl: 64 Ki regions (1.5 MiB) cover a 4 GiB block of
// alternating pages in 8 calls.
constexpr size_t kVecLen = 64 * 1024;
// Entries per pagemap read (512 KiB, 256 MiB of guest memory).
constexpr size_t kPagemapChunk = 64 * 1024;

}  // namespace

void UnpopulatedFinder::Begin(RamBlockList& blocks) {
  for (RamBlock& b : blocks) Scan(b, Pass::kBegin, false);
}

void UnpopulatedFinder::Confirm(RamBlockList& blocks, bool markers_look_swapped) {
  for (RamBlock& b : blocks) {
    // Confirm only clears bits: a block without any (a memory file that is
    // all data) needs no second walk of its page cache or page tables.
    if (b.known_zero.size() != 0 && b.known_zero.FindNextSet(0) < b.known_zero.size()) {
      Scan(b, Pass::kConfirm, markers_look_swapped);
    }
  }
  stats_.pages = 0;
  for (const RamBlock& b : blocks) stats_.pages += b.known_zero.size() ? b.known_zero.Count() : 0;
}

void UnpopulatedFinder::Scan(RamBlock& b, Pass pass, bool markers_look_swapped) {
  if (pass == Pass::kBegin) {
    b.known_zero.Resize(b.pages());  // all clear: nothing known yet
  }
  bool ok = false;
  if (b.backing_fd >= 0) {
    ok = ScanHoles(b, pass);
  } else {
    if (!opened_) {
      opened_ = true;
      pagemap_.Reset(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    }
    if (pagemap_.valid()) {
      ok = ioctl_works_ && ScanIoctl(b, pass, markers_look_swapped);
      if (!ok) ok = ScanPagemapReads(b, pass, markers_look_swapped);
    }
  }
  // Nothing reliable: nothing known (every page is read).
  if (!ok) b.known_zero = DirtyBitmap();
}

// Begin: sets the bits of unpopulated pages (bits start clear). Confirm:
// clears the bits of populated ones.
bool UnpopulatedFinder::ScanIoctl(RamBlock& b, Pass pass, bool markers_look_swapped) {
  // Not zeroed: the kernel writes only the regions it returns, so only the
  // pages of the vector it fills are ever faulted in.
  if (!regions_) regions_ = std::make_unique_for_overwrite<uint8_t[]>(kVecLen * sizeof(PageRegion));
  auto* vec = reinterpret_cast<PageRegion*>(regions_.get());
  const uint64_t base = reinterpret_cast<uint64_t>(b.host);
  const uint64_t end = base + b.used_length;
  // The regions returned are the populated ones ("any of" present, swapped);
  // what lies between them is unpopulated. A present page mapped to the zero
  // pfn reads as zero without populating anything: it counts as unpopulated.
  const uint64_t populated = (pass == Pass::kConfirm && markers_look_swapped) ? kPageIsPresent
                                                                              : (kPageIsPresent | kPageIsSwapped);
  DirtyBitmap& kz = b.known_zero;
  uint64_t cur = base;     // walk position
  uint64_t gap_from = base;  // start of the unpopulated stretch not yet recorded
  auto record_gap = [&](uint64_t to) {
    if (pass == Pass::kBegin && to > gap_from) {
      kz.SetRange((gap_from - base) >> kPageShift, (to - gap_from) >> kPageShift);
    }
  };
  while (cur < end) {
    PmScanArg a{};
    a.size = sizeof(a);
    a.start = cur;
    a.end = end;
    a.vec = reinterpret_cast<uint64_t>(vec);
    a.vec_len = kVecLen;
    a.category_anyof_mask = populated;
    a.return_mask = populated | kPageIsPfnZero;
    int n;
    do {
      n = ::ioctl(pagemap_.get(), kPagemapScan, &a);
    } while (n < 0 && errno == EINTR);
    ++stats_.calls;
    if (n < 0) {
      if (errno == ENOTTY || errno == EINVAL || errno == EOPNOTSUPP) ioctl_works_ = false;
      if (pass == Pass::kBegin) kz.ClearAll();
      return false;
    }
    for (int i = 0; i < n; ++i) {
      const uint64_t rs = std::max(vec[i].start, cur), re = std::min(vec[i].end, end);
      if (re <= rs) continue;
      const bool zero_pfn = (vec[i].categories & kPageIsPfnZero) && !(vec[i].categories & kPageIsSwapped);
      if (zero_pfn) continue;  // part of the unpopulated stretch
      record_gap(rs);
      gap_from = re;
      if (pass == Pass::kConfirm) ClearKnownZero(b, (rs - base) >> kPageShift, (re - rs) >> kPageShift);
    }
    if (static_cast<size_t>(n) < kVecLen) break;  // walked to the end
    // Vector full: resume where the walk stopped.
    const uint64_t next = std::max(a.walk_end, gap_from);
    if (next <= cur || next > end) {
      if (pass == Pass::kBegin) kz.ClearAll();
      return false;
    }
    cur = next;
  }
  record_gap(end);
  if (stats_.method.empty() || pass == Pass::kBegin) stats_.method = "pagemap-scan";
  return true;
}

bool UnpopulatedFinder::ScanPagemapReads(RamBlock& b, Pass pass, bool markers_look_swapped) {
  auto e = std::make_unique_for_overwrite<uint64_t[]>(kPagemapChunk);
  const uint64_t first_vpn = reinterpret_cast<uint64_t>(b.host) >> kPageShift;
  const uint64_t pages = b.pages();
  const uint64_t populated = (pass == Pass::kConfirm && markers_look_swapped) ? kPmPresent : (kPmPresent | kPmSwap);
  for (uint64_t i = 0; i < pages;) {
    const uint64_t n = std::min<uint64_t>(kPagemapChunk, pages - i);
    const ssize_t want = static_cast<ssize_t>(n * 8);
    ssize_t got;
    do {
      got = ::pread(pagemap_.get(), e.get(), want, static_cast<off_t>((first_vpn + i) * 8));
    } while (got < 0 && errno == EINTR);
    ++stats_.calls;
    if (got != want) {
      if (pass == Pass::kBegin) b.known_zero.ClearAll();
      return false;
    }
    for (uint64_t k = 0; k < n; ++k) {
      const bool pop = e[k] & populated;
      if (pass == Pass::kBegin && !pop) b.known_zero.Set(i + k);
      if (pass == Pass::kConfirm && pop) b.known_zero.Clear(i + k);
    }
    i += n;
  }
  if (stats_.method.empty() || pass == Pass::kBegin) stats_.method = "pagemap";
  return true;
}

bool UnpopulatedFinder::ScanHoles(RamBlock& b, Pass pass) {
  const int fd = b.backing_fd;
  const off_t start = static_cast<off_t>(b.backing_offset);
  const off_t end = static_cast<off_t>(b.backing_offset + b.used_length);
  // Pages are 4 KiB; holes are reported at the filesystem's block size, which
  // is at least that on every filesystem that has holes.
  auto page_of = [&](off_t off) { return static_cast<uint64_t>(off - start) >> kPageShift; };
  DirtyBitmap& kz = b.known_zero;
  off_t pos = start;
  while (pos < end) {
    off_t data = ::lseek(fd, pos, SEEK_DATA);
    ++stats_.calls;
    if (data < 0) {
      if (errno == ENXIO) data = end;  // no data after pos: a hole to the end
      else {
        if (pass == Pass::kBegin) kz.ClearAll();
        return false;
      }
    }
    data = std::min(data, end);
    // [pos, data) is a hole. Whole pages only (a hole boundary inside a page
    // keeps that page as data).
    const uint64_t hole_first = (static_cast<uint64_t>(pos - start) + kPageSize - 1) >> kPageShift;
    const uint64_t hole_end = page_of(data);
    if (pass == Pass::kBegin && hole_end > hole_first) kz.SetRange(hole_first, hole_end - hole_first);
    if (data >= end) break;
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    ++stats_.calls;
    if (hole < 0) {
      if (pass == Pass::kBegin) kz.ClearAll();
      return false;
    }
    hole = std::min(hole, end);
    // [data, hole) holds data: whole pages it touches.
    if (pass == Pass::kConfirm) {
      const uint64_t f = page_of(data);
      const uint64_t l = (static_cast<uint64_t>(hole - start) + kPageSize - 1) >> kPageShift;
      ClearKnownZero(b, f, l - f);
    }
    if (hole <= data) break;  // cannot happen; no endless loop
    pos = hole;
  }
  if (stats_.method.empty() || pass == Pass::kBegin) stats_.method = "seek-hole";
  return true;
}

}  // namespace ferry
