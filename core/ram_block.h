// Guest RAM as ferry sees it: named blocks of host memory, each with the
// bitmap of pages that still have to be sent.
//
// ferry does not own guest memory: the embedder (or the CLI's synthetic
// guest) maps it and registers it here. Page size is 4 KiB (TARGET_PAGE_SIZE
// of x86 in QEMU's stream).
//
//   RamBlockList blocks;
//   FERRY_RETURN_IF_ERROR(blocks.Add("ram", host, 1ull << 30));
//   for (RamBlock& b : blocks) { ... b.dirty.Test(i) ... }
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "status.h"

namespace ferry {

inline constexpr uint64_t kPageShift = 12;
inline constexpr uint64_t kPageSize = 1ull << kPageShift;
inline constexpr uint64_t kPageMask = ~(kPageSize - 1);

// A plain bitmap, one bit per page. Not thread-safe: owned by the migration
// thread. Words are host-endian unsigned 64-bit (also the mapped-ram layout).
class DirtyBitmap {
 public:
  DirtyBitmap() = default;
  explicit DirtyBitmap(uint64_t bits) { Resize(bits); }
  void Resize(uint64_t bits) {
    bits_ = bits;
    words_.assign((bits + 63) / 64, 0);
  }
  uint64_t size() const { return bits_; }
  bool Test(uint64_t i) const { return (words_[i >> 6] >> (i & 63)) & 1; }
  void Set(uint64_t i) { words_[i >> 6] |= 1ull << (i & 63); }
  void Clear(uint64_t i) { words_[i >> 6] &= ~(1ull << (i & 63)); }
  // For bitmaps that several threads update at once (multifd receivers
  // marking the pages they wrote): atomic on the word.
  void ClearAtomic(uint64_t i) {
    std::atomic_ref<uint64_t>(words_[i >> 6]).fetch_and(~(1ull << (i & 63)), std::memory_order_relaxed);
  }
  void SetAtomic(uint64_t i) {
    std::atomic_ref<uint64_t>(words_[i >> 6]).fetch_or(1ull << (i & 63), std::memory_order_relaxed);
  }
  // Test for a bitmap other threads may be updating with the calls above.
  bool TestAtomic(uint64_t i) const {
    return (std::atomic_ref<uint64_t>(const_cast<uint64_t&>(words_[i >> 6])).load(std::memory_order_relaxed) >>
            (i & 63)) & 1;
  }
  // Sets bits [first, first+count); returns how many were not set before.
  uint64_t SetRange(uint64_t first, uint64_t count);
  // Clears bits [first, first+count).
  void ClearRange(uint64_t first, uint64_t count);
  void SetAll() { SetRange(0, bits_); }
  void ClearAll() { std::fill(words_.begin(), words_.end(), 0); }
  uint64_t Count() const;
  // Index of the first set bit at or after `from`, or size() if none.
  uint64_t FindNextSet(uint64_t from) const;
  // Index of the first clear bit at or after `from`, or size() if none.
  uint64_t FindNextClear(uint64_t from) const { return FindNextClear(from, bits_); }
  // The same, looking no further than `limit` (returned if all are set).
  uint64_t FindNextClear(uint64_t from, uint64_t limit) const;
  const std::vector<uint64_t>& words() const { return words_; }
  std::vector<uint64_t>& words() { return words_; }

 private:
  uint64_t bits_ = 0;
  std::vector<uint64_t> words_;
};

// One XXH3-64 per page of a destination's block, recorded by whoever writes
// the page (the loader, multifd receivers) while it is still in the cache,
// so that verification need not read guest memory again. 0 = not recorded
// (that page is hashed from memory). Disabled (no storage) unless the
// destination verifies and every writer of its pages records. The storage
// is reserved lazily: only entries written take memory (8 bytes per 4 KiB,
// in 2 MiB huge pages where the kernel has them).
// Writers of distinct pages may run on different threads at once.
class PageHashes {
 public:
  PageHashes() = default;
  PageHashes(const PageHashes&) = delete;
  PageHashes& operator=(const PageHashes&) = delete;
  ~PageHashes() { Reset(); }
  // Reserves room for `pages` entries, all "not recorded". False when the
  // memory could not be reserved (then it stays disabled).
  bool Enable(uint64_t pages);
  void Reset();
  bool enabled() const { return data_ != nullptr; }
  void Set(uint64_t i, uint64_t h) { data_[i] = h; }
  uint64_t Get(uint64_t i) const { return data_[i]; }

 private:
  uint64_t* data_ = nullptr;
  uint64_t bytes_ = 0;  // of the mapping at data_
};

struct RamBlock {
  std::string name;        // 1..255 bytes, unique in its list
  uint8_t* host = nullptr; // used_length bytes of host memory
  uint64_t used_length = 0;
  uint64_t page_size = kPageSize;
  DirtyBitmap dirty;       // pages not yet sent in the current round
  // Pages known to hold only zeros without reading them: on a source, pages
  // the guest never populated (found by PAGEMAP_SCAN, SEEK_HOLE or mincore;
  // a bit is cleared when the dirty tracker reports a write to the page); on
  // a destination, fresh pages not yet written in this migration. Empty (size
  // 0) when nothing is known. Readers that find a bit set must not touch the
  // page (a read of an unpopulated page allocates or faults it in).
  DirtyBitmap known_zero;
  // The file behind the block when it is a MAP_SHARED mapping of one (shmem,
  // memfd, a file on disk), and where in that file the block starts; -1 for
  // anonymous memory. Set by the embedder; lets the source find the block's
  // never-written pages with SEEK_HOLE instead of the page tables. Not owned.
  int backing_fd = -1;
  uint64_t backing_offset = 0;
  // Destination only: the hashes of pages as they were written (see
  // PageHashes); verification uses them instead of reading the pages.
  PageHashes page_hashes;

  uint64_t pages() const { return used_length >> kPageShift; }
  uint8_t* page(uint64_t index) const { return host + (index << kPageShift); }
  bool KnownZero(uint64_t index) const { return known_zero.size() != 0 && known_zero.Test(index); }
  // About to write `count` pages from `first` on: if the first one is still
  // known to be zero (on a fresh destination: never written) and not
  // resident (not preallocated), populates them in one call
  // (MADV_POPULATE_WRITE) rather than one fault per page as the write
  // reaches them. A hint: where the kernel says no, the write faults as
  // before. `atomic`: other threads update known_zero meanwhile (multifd
  // receivers).
  void PopulateForWrite(uint64_t first, uint64_t count, bool atomic) const;
};

class RamBlockList {
 public:
  // Registers a block. The name must be 1..255 bytes and unique; the length a
  // non-zero multiple of the page size; host page-aligned.
  Status Add(std::string name, uint8_t* host, uint64_t used_length);
  RamBlock* Find(std::string_view name);
  const RamBlock* Find(std::string_view name) const;
  uint64_t total_bytes() const;
  uint64_t total_pages() const { return total_bytes() >> kPageShift; }
  size_t size() const { return blocks_.size(); }
  bool empty() const { return blocks_.empty(); }
  RamBlock& operator[](size_t i) { return *blocks_[i]; }
  const RamBlock& operator[](size_t i) const { return *blocks_[i]; }

  template <typename It>
  struct Iter {
    It it;
    auto& operator*() const { return **it; }
    auto* operator->() const { return it->get(); }
    Iter& operator++() { ++it; return *this; }
    bool operator!=(const Iter& o) const { return it != o.it; }
  };
  auto begin() { return Iter<decltype(blocks_.begin())>{blocks_.begin()}; }
  auto end() { return Iter<decltype(blocks_.end())>{blocks_.end()}; }
  auto begin() const { return Iter<decltype(blocks_.cbegin())>{blocks_.cbegin()}; }
  auto end() const { return Iter<decltype(blocks_.cend())>{blocks_.cend()}; }

 private:
  std::vector<std::unique_ptr<RamBlock>> blocks_;
};

}  // namespace ferry
