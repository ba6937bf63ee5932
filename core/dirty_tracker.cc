// Dirty trackers: userfaultfd async write-protect + PAGEMAP_SCAN, a
// cooperative atomic bitmap, and the "nothing changes" tracker for a stopped
// guest. See core/dirty_tracker.h for the contract.

#include "core/dirty_tracker.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "core/pagemap_scan.h"
#include "core/unique_fd.h"
#include "core/unpopulated.h"

// ---------------------------------------------------------------------------
// Kernel ABI that Debian 12's headers predate (userfaultfd.h and fs.h of
// Linux 6.7). Values are fixed by the ABI; the guards let newer headers win.
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif

namespace ferry {
namespace {

// PAGEMAP_SCAN (core/pagemap_scan.h).
using ScanArgs = pagemap::ScanArg;
using ScanRegion = pagemap::Region;
constexpr unsigned long kPagemapScanIoctl = pagemap::kScanIoctl;
using pagemap::kScanCheckWpAsync;
using pagemap::kScanWpMatching;
constexpr uint64_t kPageWritten = pagemap::kPageIsWritten;
constexpr uint64_t kPagePresent = pagemap::kPageIsPresent;
constexpr uint64_t kPageSwapped = pagemap::kPageIsSwapped;
constexpr uint64_t kPageZeroPfn = pagemap::kPageIsPfnZero;

// At most this many regions per PAGEMAP_SCAN call; a full vector means the
// walk stopped early and has to be resumed.
constexpr size_t kScanVectorLen = 512;

std::string Strerror(int err) {
  char buf[128];
  return strerror_r(err, buf, sizeof(buf));
}

int UffdCreate() {
  return static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
}

int RetryIoctl(int fd, unsigned long req, void* arg) {
  int r;
  do {
    r = ::ioctl(fd, req, arg);
  } while (r < 0 && errno == EINTR);
  return r;
}

// Opens a userfaultfd configured for asynchronous write-protect tracking.
// UFFDIO_API may only be issued once per descriptor, so the features the
// kernel offers are read on a throw-away descriptor first; then the real one
// asks for exactly what it needs plus shmem support when that is offered.
// (Linux 6.7+ accepts any memory type for a WP-only registration in async
// mode, shared files on disk included; the shmem flag is for older rules.)
// Failures come back as kUnsupported with a message naming what is missing.
Result<UniqueFd> OpenAsyncWpUffd() {
  UniqueFd probe(UffdCreate());
  if (!probe.valid()) return Status::Unsupported("userfaultfd: " + Strerror(errno));
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = 0;
  if (RetryIoctl(probe.get(), UFFDIO_API, &api) < 0) {
    return Status::Unsupported("userfaultfd UFFDIO_API: " + Strerror(errno));
  }
  const uint64_t offered = api.features;
  if (!(offered & UFFD_FEATURE_WP_ASYNC)) {
    return Status::Unsupported("kernel lacks UFFD_FEATURE_WP_ASYNC (Linux < 6.7)");
  }
  if (!(offered & UFFD_FEATURE_WP_UNPOPULATED)) {
    return Status::Unsupported("kernel lacks UFFD_FEATURE_WP_UNPOPULATED (Linux < 6.4)");
  }
  probe.Reset();

  UniqueFd fd(UffdCreate());
  if (!fd.valid()) return Status::Unsupported("userfaultfd: " + Strerror(errno));
  uint64_t wanted = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
  if (offered & UFFD_FEATURE_WP_HUGETLBFS_SHMEM) wanted |= UFFD_FEATURE_WP_HUGETLBFS_SHMEM;
  api = {};
  api.api = UFFD_API;
  api.features = wanted;
  if (RetryIoctl(fd.get(), UFFDIO_API, &api) < 0) {
    return Status::Unsupported("userfaultfd UFFDIO_API (async write-protect): " + Strerror(errno));
  }
  if (!(api.ioctls & (1ull << _UFFDIO_REGISTER))) {
    return Status::Unsupported("userfaultfd does not offer UFFDIO_REGISTER");
  }
  return fd;
}

int UffdRegisterWp(int uffd, uint64_t start, uint64_t len) {
  uffdio_register reg{};
  reg.range.start = start;
  reg.range.len = len;
  reg.mode = UFFDIO_REGISTER_MODE_WP;
  return RetryIoctl(uffd, UFFDIO_REGISTER, &reg);
}

int UffdUnregister(int uffd, uint64_t start, uint64_t len) {
  uffdio_range range{};
  range.start = start;
  range.len = len;
  return RetryIoctl(uffd, UFFDIO_UNREGISTER, &range);
}

int UffdProtect(int uffd, uint64_t start, uint64_t len) {
  uffdio_writeprotect wp{};
  wp.range.start = start;
  wp.range.len = len;
  wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
  return RetryIoctl(uffd, UFFDIO_WRITEPROTECT, &wp);
}

// Which pages a PAGEMAP_SCAN call matches, and what it returns of them.
struct Query {
  uint64_t inverted = 0;
  uint64_t all_of = 0;
  uint64_t any_of = 0;
  uint64_t returned = 0;
};

// One PAGEMAP_SCAN call over [start, end) that write-protects the pages
// matching `q` in the same pass and stores them in `vec`. Returns the number
// of regions stored, or -1 with errno set. A vector is always passed: without
// one the kernel protects every slot, empty ones included.
int ScanAndProtect(int pagemap, uint64_t start, uint64_t end, ScanRegion* vec, size_t vec_len,
                   uint64_t* walk_end, const Query& q) {
  ScanArgs a{};
  a.size = sizeof(a);
  a.flags = kScanWpMatching | kScanCheckWpAsync;
  a.start = start;
  a.end = end;
  a.vec = reinterpret_cast<uint64_t>(vec);
  a.vec_len = vec_len;
  a.max_pages = 0;  // unlimited
  a.category_inverted = q.inverted;
  a.category_mask = q.all_of;
  a.category_anyof_mask = q.any_of;
  a.return_mask = q.returned;
  const int n = RetryIoctl(pagemap, kPagemapScanIoctl, &a);
  if (n >= 0) *walk_end = a.walk_end;
  return n;
}

// Written pages, protected again. "Written" is a present or swapped page
// without the protection bit. The kernel also counts an empty page-table slot
// (and a stretch without page tables) as written, so the query asks for "any
// of present, swapped" too: an empty slot of an unprotected stretch (see
// Start) holds nothing yet. Pages mapped to the shared zero page are left out
// (inverted mask): a read of memory the guest never wrote maps it, and that
// is no write; a later write replaces it with a page of its own, which is
// reported.
int ScanWritten(int pagemap, uint64_t start, uint64_t end, ScanRegion* vec, size_t vec_len,
                uint64_t* walk_end) {
  return ScanAndProtect(pagemap, start, end, vec, vec_len, walk_end,
                        Query{.inverted = kPageZeroPfn,
                              .all_of = kPageWritten | kPageZeroPfn,
                              .any_of = kPagePresent | kPageSwapped,
                              .returned = kPageWritten});
}

// The populated pages (present or swapped), protected; empty slots and
// page-table holes are left alone.
int ProtectPopulated(int pagemap, uint64_t start, uint64_t end, ScanRegion* vec, size_t vec_len,
                     uint64_t* walk_end) {
  return ScanAndProtect(pagemap, start, end, vec, vec_len, walk_end,
                        Query{.any_of = kPagePresent | kPageSwapped,
                              .returned = kPagePresent | kPageSwapped | kPageZeroPfn});
}

bool IsNotSupportedErrno(int err) { return err == ENOTTY || err == EINVAL || err == EOPNOTSUPP; }

// ---------------------------------------------------------------------------
// "uffd-wp"
//
// Start registers every block with a userfaultfd in async write-protect mode
// and write-protects it. From then on the kernel handles a write fault by
// just dropping the page's protection, no message, no waiting thread. Sync
// asks PAGEMAP_SCAN for the pages whose protection is gone and has it protect
// them again atomically under the page table lock, so a write either lands
// before the scan (and is reported now) or faults afterwards (and is reported
// by the next Sync). The kernel also resolves writes done by the kernel
// itself (read() into guest memory, ...) the same way: UFFD_USER_MODE_ONLY
// does not matter in async mode.
//
// What "protects" means depends on the memory:
//  - anonymous (RamBlock::backing_fd < 0): only populated pages are
//    protected. An empty slot needs nothing: the first write fills it with a
//    page that has no protection bit, which Sync reports as written. Leaving
//    them alone is what keeps a sparse guest cheap: protecting an empty slot
//    means a marker in it, so page tables for every never-touched 2 MiB (32
//    MiB of them for 16 GiB) and walks over them at each Sync; and a read of
//    a marker allocates a page where an empty slot maps the shared zero page.
//  - a mapped file (shmem, memfd, a file on disk): every slot, empty ones
//    get a marker (WP_UNPOPULATED). There an empty slot is not unwritten
//    memory: the page may sit in the file and the first read maps it, and
//    without the marker that mapping would carry no protection bit and count
//    as a write.
//
// Not seen: writes through another mapping of the same memory (a second
// mmap of a shared file, write() to that file), as tracking lives in this
// process's page tables.
class UffdWpTracker final : public DirtyTracker {
 public:
  ~UffdWpTracker() override { Stop(); }

  Status Start(RamBlockList& blocks) override {
    if (started_) return Status::Internal("uffd-wp dirty tracker started twice");
    started_ = true;
    FERRY_ASSIGN_OR_RETURN(uffd_, OpenAsyncWpUffd());
    pagemap_.Reset(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
    if (!pagemap_.valid()) return Fail(ErrnoStatus("open /proc/self/pagemap"));

    for (const RamBlock& b : blocks) {
      const uint64_t start = reinterpret_cast<uint64_t>(b.host);
      if (UffdRegisterWp(uffd_.get(), start, b.used_length) < 0) {
        const int err = errno;
        std::string ctx = "userfaultfd write-protect registration of RAM block '" + b.name + "'";
        if (err == EINVAL) ctx += " (memory not mapped, or of a kind userfaultfd cannot track)";
        return Fail(ErrnoStatus(ctx, err));
      }
      ranges_.push_back(Range{start, b.used_length, b.name});
    }
    // Protect only once everything is registered so a failure above leaves no
    // protected memory behind (Stop unregisters what was registered).
    vec_.resize(kScanVectorLen);
    for (RamBlock& b : blocks) {
      const uint64_t start = reinterpret_cast<uint64_t>(b.host);
      if (b.backing_fd >= 0) {
        if (UffdProtect(uffd_.get(), start, b.used_length) < 0) {
          return Fail(ErrnoStatus("userfaultfd write-protect of RAM block '" + b.name + "'"));
        }
        continue;
      }
      // Anonymous: protect what is populated; the protection pass sees each
      // page atomically, so a page populated behind it is unprotected and
      // shows up as written. What it found populated is not known zero.
      Status st = Walk(b, ProtectPopulated, [&](const ScanRegion& r, uint64_t rs, uint64_t re) {
        const bool zero_pfn = (r.categories & kPageZeroPfn) && !(r.categories & kPageSwapped);
        if (!zero_pfn) ClearKnownZero(b, (rs - start) >> kPageShift, (re - rs) >> kPageShift);
      });
      if (!st.ok()) return Fail(st.WithContext("userfaultfd write-protect of RAM block '" + b.name + "'"));
    }
    std::sort(ranges_.begin(), ranges_.end(),
              [](const Range& a, const Range& b) { return a.start < b.start; });
    return Status::Ok();
  }

  Result<uint64_t> Sync(RamBlockList& blocks) override {
    if (!pagemap_.valid()) return Status::Internal("uffd-wp dirty tracker synced while not running");
    uint64_t reported = 0;
    for (RamBlock& b : blocks) {
      const uint64_t base = reinterpret_cast<uint64_t>(b.host);
      if (!Tracked(base, b.used_length)) {
        return Status::InvalidArgument("RAM block '" + b.name +
                                       "' was not registered when dirty tracking started");
      }
      Status st = Walk(b, ScanWritten, [&](const ScanRegion&, uint64_t rs, uint64_t re) {
        const uint64_t pages = (re - rs) >> kPageShift;
        b.dirty.SetRange((rs - base) >> kPageShift, pages);
        ClearKnownZero(b, (rs - base) >> kPageShift, pages);  // written: no longer known zero
        reported += pages;
      });
      if (!st.ok()) return st;
    }
    return reported;
  }

  void Stop() override {
    if (uffd_.valid()) {
      // Unregistering drops the protection bits, so the guest's pages behave
      // exactly as before. Errors (memory already unmapped by the embedder)
      // are harmless: closing the descriptor releases whatever is left.
      for (const Range& r : ranges_) (void)UffdUnregister(uffd_.get(), r.start, r.len);
    }
    ranges_.clear();
    uffd_.Reset();
    pagemap_.Reset();
    vec_.clear();
    vec_.shrink_to_fit();
  }

  std::string_view name() const override { return "uffd-wp"; }

 private:
  struct Range {
    uint64_t start;
    uint64_t len;
    std::string name;
  };

  Status Fail(Status st) {
    Stop();
    return st;
  }

  using ScanFn = int (*)(int, uint64_t, uint64_t, ScanRegion*, size_t, uint64_t*);

  // Runs `scan` over block `b` (resuming while the result vector comes back
  // full) and hands each region, clipped to the block, to `each`.
  template <typename Each>
  Status Walk(const RamBlock& b, ScanFn scan, Each&& each) {
    const uint64_t base = reinterpret_cast<uint64_t>(b.host);
    const uint64_t end = base + b.used_length;
    uint64_t cur = base;
    while (cur < end) {
      uint64_t walk_end = 0;
      const int n = scan(pagemap_.get(), cur, end, vec_.data(), vec_.size(), &walk_end);
      if (n < 0) return ErrnoStatus("PAGEMAP_SCAN of RAM block '" + b.name + "'");
      uint64_t last_end = cur;
      for (int i = 0; i < n; ++i) {
        const uint64_t rs = std::max(vec_[i].start, cur);
        const uint64_t re = std::min(vec_[i].end, end);
        if (re <= rs) continue;
        each(vec_[i], rs, re);
        last_end = std::max(last_end, re);
      }
      // Fewer regions than the vector holds: the walk reached `end`. The
      // kernel's walk_end is not reliable in that case, so ignore it.
      if (static_cast<size_t>(n) < vec_.size()) break;
      // Vector full: the walk stopped at walk_end, just before the first
      // region that did not fit. Should walk_end ever be out of range, the
      // end of the last reported region is a safe restart point (at worst a
      // stretch is walked twice); it always makes progress.
      const uint64_t next =
          (walk_end >= last_end && walk_end <= end && walk_end > cur) ? walk_end : last_end;
      if (next <= cur) {
        return Status::Internal("PAGEMAP_SCAN of RAM block '" + b.name + "' made no progress");
      }
      cur = next;
    }
    return Status::Ok();
  }

  bool Tracked(uint64_t start, uint64_t len) const {
    auto it = std::lower_bound(ranges_.begin(), ranges_.end(), start,
                               [](const Range& r, uint64_t s) { return r.start < s; });
    return it != ranges_.end() && it->start == start && it->len == len;
  }

  bool started_ = false;
  UniqueFd uffd_;
  UniqueFd pagemap_;
  std::vector<Range> ranges_;  // sorted by start once Start succeeded
  std::vector<ScanRegion> vec_;
};

// ---------------------------------------------------------------------------
// "bitmap"
//
// One atomic word per 64 pages per block. Writers call MarkDirty after
// writing; Sync swaps each word with zero and ORs what it got into the block's
// `dirty` bitmap.
//
// Ordering, which is what makes "no write is lost" hold:
//   writer:  store to guest page;  word.fetch_or(bit, release)
//   Sync:    v = word.exchange(0, acquire);  ... later copies the page
// All updates of one word form a single modification order. If Sync's
// exchange comes after the writer's fetch_or in that order, it reads the bit
// and, release pairing with acquire, everything the writer stored before
// marking happens-before Sync's later copy of the page: the copy holds that
// write (or a newer one). If the exchange comes first, the bit survives it
// and the next Sync reports the page. Either way the last write to every page
// is followed by a Sync that reports it, which is what migration needs.
// Writers must therefore mark AFTER writing: marking first leaves a window in
// which Sync clears the bit, the page is copied, and only then the write lands.
//
// And the mark must always be that read-modify-write, even when the bit is
// already set. A writer that peeks first (relaxed load, bit set, no RMW) has
// no release after its store: nothing orders the store before the peek (on
// x86 the store can still sit in the core's store buffer while the peek
// reads the bitmap). Sync can then clear the bit, get it back as set by the
// earlier write, and copy the page before the new store is visible; the bit
// is clear afterwards, so no later Sync reports the page and the last write
// never reaches the destination (BitmapTrackerTest.StressNoWriteLostAcrossSyncs
// loses 2-3 % of its pages that way). The RMW's cost, measured with 8-byte
// writes each followed by MarkDirty: one writer, +3 ns per write on a hot
// set that stays in cache (5.8 -> 8.8 ns), +5 ns on a 64 MiB one (cache
// misses dominate); two writers marking pages of the same bitmap line pay
// for that line moving between their cores (up to 3x on a 1 MiB hot set).
// At ferry's dirty rates (a write per page dirtied) that is noise.
class BitmapTracker final : public DirtyTracker {
 public:
  ~BitmapTracker() override { Stop(); }

  Status Start(RamBlockList& blocks) override {
    if (owned_) return Status::Internal("bitmap dirty tracker started twice");
    auto table = std::make_unique<Table>();
    for (const RamBlock& b : blocks) {
      Slot s;
      s.begin = reinterpret_cast<uintptr_t>(b.host);
      s.end = s.begin + b.used_length;
      s.pages = b.pages();
      s.nwords = (s.pages + 63) / 64;
      s.words = std::make_unique<std::atomic<uint64_t>[]>(s.nwords);  // zeroed
      table->slots.push_back(std::move(s));
    }
    std::sort(table->slots.begin(), table->slots.end(),
              [](const Slot& a, const Slot& b) { return a.begin < b.begin; });
    for (size_t i = 1; i < table->slots.size(); ++i) {
      if (table->slots[i].begin < table->slots[i - 1].end) {
        return Status::InvalidArgument("RAM blocks overlap; cannot track them");
      }
    }
    owned_ = std::move(table);
    // Publishes the fully built table to MarkDirty callers on other threads.
    table_.store(owned_.get(), std::memory_order_release);
    return Status::Ok();
  }

  Result<uint64_t> Sync(RamBlockList& blocks) override {
    const Table* t = table_.load(std::memory_order_relaxed);  // only we store it
    if (!t) return Status::Internal("bitmap dirty tracker synced while not running");
    uint64_t reported = 0;
    for (RamBlock& b : blocks) {
      const Slot* s = t->Find(reinterpret_cast<uintptr_t>(b.host));
      if (!s || s->begin != reinterpret_cast<uintptr_t>(b.host) || s->pages != b.pages()) {
        return Status::InvalidArgument("RAM block '" + b.name +
                                       "' was not registered when dirty tracking started");
      }
      std::vector<uint64_t>& out = b.dirty.words();
      if (out.size() < s->nwords) {
        return Status::Internal("RAM block '" + b.name + "' dirty bitmap is smaller than the block");
      }
      for (size_t w = 0; w < s->nwords; ++w) {
        // Cheap relaxed peek first, so clean words cost no write to the
        // shared cache line. A bit that shows up after the peek is simply
        // left for the next Sync.
        if (s->words[w].load(std::memory_order_relaxed) == 0) continue;
        const uint64_t v = s->words[w].exchange(0, std::memory_order_acquire);
        out[w] |= v;
        if (w < b.known_zero.words().size()) b.known_zero.words()[w] &= ~v;  // written: not known zero
        reported += std::popcount(v);
      }
    }
    return reported;
  }

  void Stop() override {
    // The table stays allocated until destruction: a MarkDirty that loaded it
    // just before this store may still be setting bits.
    table_.store(nullptr, std::memory_order_release);
  }

  void MarkDirty(const void* addr, size_t len) override {
    const Table* t = table_.load(std::memory_order_acquire);
    if (!t || len == 0) return;
    const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
    const uintptr_t e = (len > UINTPTR_MAX - a) ? UINTPTR_MAX : a + len;
    // First block that ends after `a` (blocks are sorted and disjoint, so
    // their ends are sorted too); then every block that starts before `e`.
    auto it = std::partition_point(t->slots.begin(), t->slots.end(),
                                   [a](const Slot& s) { return s.end <= a; });
    for (; it != t->slots.end() && it->begin < e; ++it) {
      const uint64_t first = (std::max(a, it->begin) - it->begin) >> kPageShift;
      const uint64_t last = (std::min(e, it->end) - 1 - it->begin) >> kPageShift;  // inclusive
      SetBits(*it, first, last);
    }
  }

  bool needs_mark_dirty() const override { return true; }
  std::string_view name() const override { return "bitmap"; }

 private:
  struct Slot {
    uintptr_t begin = 0;
    uintptr_t end = 0;
    uint64_t pages = 0;
    size_t nwords = 0;
    std::unique_ptr<std::atomic<uint64_t>[]> words;
  };
  struct Table {
    std::vector<Slot> slots;  // sorted by begin, disjoint
    // The slot starting at or before `addr` with the highest start, if any.
    const Slot* Find(uintptr_t addr) const {
      auto it = std::upper_bound(slots.begin(), slots.end(), addr,
                                 [](uintptr_t x, const Slot& s) { return x < s.begin; });
      return it == slots.begin() ? nullptr : &*(it - 1);
    }
  };

  static void SetBits(const Slot& s, uint64_t first, uint64_t last) {
    uint64_t i = first;
    while (i <= last) {
      const uint64_t w = i >> 6;
      const uint64_t lo = i & 63;
      const uint64_t n = std::min<uint64_t>(64 - lo, last - i + 1);
      const uint64_t mask = (n == 64 ? ~0ull : ((1ull << n) - 1)) << lo;
      // Always the RMW, even when the bits look set already: see the
      // ordering note above the class for why a relaxed "already set" peek
      // that skips it can lose the write.
      s.words[w].fetch_or(mask, std::memory_order_release);
      i += n;
    }
  }

  std::unique_ptr<Table> owned_;
  std::atomic<const Table*> table_{nullptr};
};

// ---------------------------------------------------------------------------
// "all-once": the guest is stopped, nothing ever changes.
class AllOnceTracker final : public DirtyTracker {
 public:
  Status Start(RamBlockList&) override { return Status::Ok(); }
  Result<uint64_t> Sync(RamBlockList&) override { return uint64_t{0}; }
  void Stop() override {}
  std::string_view name() const override { return "all-once"; }
};

}  // namespace

Status ProbeUffdWp() {
  FERRY_ASSIGN_OR_RETURN(UniqueFd uffd, OpenAsyncWpUffd());
  UniqueFd pagemap(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  if (!pagemap.valid()) {
    return Status::Unsupported("/proc/self/pagemap: " + Strerror(errno));
  }

  // A scratch mapping of our own: 4 pages, page 0 populated before tracking
  // starts, page 2 never touched until written under tracking.
  constexpr size_t kPages = 4;
  const size_t len = kPages * kPageSize;
  void* mem = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return ErrnoStatus("mmap of the uffd-wp probe area");
  struct Unmap {
    void* p;
    size_t n;
    ~Unmap() { ::munmap(p, n); }
  } unmap{mem, len};
  auto* p = static_cast<volatile uint8_t*>(mem);
  p[0] = 1;

  const uint64_t start = reinterpret_cast<uint64_t>(mem);
  if (UffdRegisterWp(uffd.get(), start, len) < 0) {
    return Status::Unsupported("userfaultfd write-protect registration: " + Strerror(errno));
  }
  if (UffdProtect(uffd.get(), start, len) < 0) {
    return Status::Unsupported("UFFDIO_WRITEPROTECT: " + Strerror(errno));
  }
  p[0] = 2;
  p[2 * kPageSize] = 3;

  ScanRegion vec[kPages];
  uint64_t walk_end = 0;
  const int n = ScanWritten(pagemap.get(), start, start + len, vec, kPages, &walk_end);
  if (n < 0) {
    const int err = errno;
    if (IsNotSupportedErrno(err)) {
      return Status::Unsupported("PAGEMAP_SCAN ioctl not supported (Linux < 6.7)");
    }
    return Status::Unsupported("PAGEMAP_SCAN: " + Strerror(err));
  }
  uint64_t seen = 0;  // bit per probe page
  for (int i = 0; i < n; ++i) {
    for (uint64_t a = vec[i].start; a < vec[i].end; a += kPageSize) {
      if (a >= start && a < start + len) seen |= 1ull << ((a - start) >> kPageShift);
    }
  }
  if (seen != 0b101) {
    return Status::Unsupported("PAGEMAP_SCAN did not report writes to write-protected pages as expected");
  }
  // A second scan must come back empty: the first one re-protected the pages.
  const int again = ScanWritten(pagemap.get(), start, start + len, vec, kPages, &walk_end);
  if (again < 0) return Status::Unsupported("PAGEMAP_SCAN: " + Strerror(errno));
  if (again != 0) {
    return Status::Unsupported("PAGEMAP_SCAN did not write-protect the pages it reported");
  }
  (void)UffdUnregister(uffd.get(), start, len);
  return Status::Ok();
}

Result<std::unique_ptr<DirtyTracker>> MakeDirtyTracker(
    DirtyTrackerKind kind, const std::function<void(std::string_view)>& note) {
  switch (kind) {
    case DirtyTrackerKind::kBest: {
      Status probe = ProbeUffdWp();
      if (probe.ok()) return std::unique_ptr<DirtyTracker>(std::make_unique<UffdWpTracker>());
      if (note) {
        note("dirty tracking: userfaultfd write-protect unavailable (" + probe.message() +
             "); using the cooperative bitmap");
      }
      return std::unique_ptr<DirtyTracker>(std::make_unique<BitmapTracker>());
    }
    case DirtyTrackerKind::kUffdWp: {
      FERRY_RETURN_IF_ERROR(ProbeUffdWp());
      return std::unique_ptr<DirtyTracker>(std::make_unique<UffdWpTracker>());
    }
    case DirtyTrackerKind::kBitmap:
      return std::unique_ptr<DirtyTracker>(std::make_unique<BitmapTracker>());
    case DirtyTrackerKind::kAllOnce:
      return std::unique_ptr<DirtyTracker>(std::make_unique<AllOnceTracker>());
  }
  return Status::InvalidArgument("unknown dirty tracker kind");
}

}  // namespace ferry
