// The PAGEMAP_SCAN ioctl on /proc/self/pagemap (Linux 6.7+,
// include/uapi/linux/fs.h), declared here because Debian 12's headers predate
// it: one copy for the dirty tracker (written pages, re-protecting them) and
// the unpopulated-memory scan (present / swapped / zero-pfn pages). Private
// header. Names are ferry's so a newer <linux/fs.h> does not collide.
#pragma once

#include <sys/ioctl.h>

#include <cstdint>

namespace ferry::pagemap {

// struct pm_scan_arg.
struct ScanArg {
  uint64_t size;  // sizeof(ScanArg)
  uint64_t flags;
  uint64_t start;
  uint64_t end;
  uint64_t walk_end;  // out: where the walk stopped
  uint64_t vec;       // Region array
  uint64_t vec_len;
  uint64_t max_pages;
  uint64_t category_inverted;
  uint64_t category_mask;
  uint64_t category_anyof_mask;
  uint64_t return_mask;
};
static_assert(sizeof(ScanArg) == 96, "struct pm_scan_arg is 12 u64s");

// struct page_region: [start, end) with the categories it has.
struct Region {
  uint64_t start;
  uint64_t end;
  uint64_t categories;
};
static_assert(sizeof(Region) == 24, "struct page_region is 3 u64s");

inline constexpr unsigned long kScanIoctl = _IOWR('f', 16, ScanArg);

// Scan flags.
inline constexpr uint64_t kScanWpMatching = 1ull << 0;    // write-protect what matched
inline constexpr uint64_t kScanCheckWpAsync = 1ull << 1;  // EPERM unless async-WP registered

// Page categories.
inline constexpr uint64_t kPageIsWpAllowed = 1ull << 0;
inline constexpr uint64_t kPageIsWritten = 1ull << 1;
inline constexpr uint64_t kPageIsFile = 1ull << 2;
inline constexpr uint64_t kPageIsPresent = 1ull << 3;
inline constexpr uint64_t kPageIsSwapped = 1ull << 4;
inline constexpr uint64_t kPageIsPfnZero = 1ull << 5;
inline constexpr uint64_t kPageIsHuge = 1ull << 6;
inline constexpr uint64_t kPageIsSoftDirty = 1ull << 7;

}  // namespace ferry::pagemap
