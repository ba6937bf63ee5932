// Tests for DirtyBitmap and the dirty trackers (core/dirty_tracker.h).
//
// uffd-wp tests skip, naming the reason, when the kernel cannot do it; set
// FERRY_REQUIRE_UFFD_WP=1 to turn such a skip into a failure (CI machines
// that are known to have Linux >= 6.7).

#include "core/dirty_tracker.h"
#include "core/unique_fd.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace ferry {
namespace {

// --------------------------------------------------------------------------
// Helpers

// Owns an mmap'd area.
class Mapping {
 public:
  Mapping() = default;
  Mapping(uint8_t* p, size_t len) : p_(p), len_(len) {}
  Mapping(Mapping&& o) noexcept : p_(std::exchange(o.p_, nullptr)), len_(std::exchange(o.len_, 0)) {}
  Mapping& operator=(Mapping&& o) noexcept {
    std::swap(p_, o.p_);
    std::swap(len_, o.len_);
    return *this;
  }
  ~Mapping() {
    if (p_) ::munmap(p_, len_);
  }
  uint8_t* get() const { return p_; }
  size_t size() const { return len_; }
  uint64_t pages() const { return len_ / kPageSize; }
  uint8_t* page(uint64_t i) const { return p_ + i * kPageSize; }

 private:
  uint8_t* p_ = nullptr;
  size_t len_ = 0;
};

Mapping MapAnon(size_t len) {
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return {};
  return Mapping(static_cast<uint8_t*>(p), len);
}

Mapping MapSharedFd(int fd, size_t len) {
  if (::ftruncate(fd, static_cast<off_t>(len)) != 0) {
    ::close(fd);
    return {};
  }
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  ::close(fd);
  if (p == MAP_FAILED) return {};
  return Mapping(static_cast<uint8_t*>(p), len);
}

// A MAP_SHARED mapping of a (then unlinked) file in /dev/shm.
Mapping MapDevShm(size_t len) {
  std::string path = "/dev/shm/ferry-dirty-test-" + std::to_string(::getpid()) + "-XXXXXX";
  int fd = ::mkstemp(path.data());
  if (fd < 0) return {};
  ::unlink(path.c_str());
  return MapSharedFd(fd, len);
}

// A MAP_SHARED mapping of a (then unlinked) regular file in the temp
// directory, typically on a disk file system rather than tmpfs.
Mapping MapTempFile(size_t len) {
  std::string path = std::filesystem::temp_directory_path().string() + "/ferry-dirty-test-XXXXXX";
  int fd = ::mkstemp(path.data());
  if (fd < 0) return {};
  ::unlink(path.c_str());
  return MapSharedFd(fd, len);
}

Mapping MapMemfd(size_t len) {
  int fd = ::memfd_create("ferry-dirty-test", MFD_CLOEXEC);
  if (fd < 0) return {};
  return MapSharedFd(fd, len);
}

// Evicts the cache line holding `p` from every cache, so that the next store
// to it has to fetch the line first (x86; elsewhere a no-op).
void EvictLine(const void* p) {
#if defined(__x86_64__) || defined(__i386__)
  _mm_clflush(p);
#else
  (void)p;
#endif
}

std::vector<uint64_t> SetBits(const DirtyBitmap& bm) {
  std::vector<uint64_t> out;
  for (uint64_t i = bm.FindNextSet(0); i < bm.size(); i = bm.FindNextSet(i + 1)) out.push_back(i);
  return out;
}

// Clears every block's dirty bitmap, syncs, and returns the pages the sync
// reported, per block (in list order).
struct SyncOutcome {
  uint64_t reported = 0;
  std::vector<std::vector<uint64_t>> pages;
};

SyncOutcome SyncFresh(DirtyTracker& t, RamBlockList& blocks) {
  SyncOutcome out;
  for (RamBlock& b : blocks) b.dirty.ClearAll();
  Result<uint64_t> n = t.Sync(blocks);
  EXPECT_TRUE(n.ok()) << n.status().ToString();
  if (n.ok()) out.reported = *n;
  for (RamBlock& b : blocks) out.pages.push_back(SetBits(b.dirty));
  return out;
}

Status UffdWpAvailability() {
  static const Status probe = ProbeUffdWp();
  return probe;
}

bool RequireUffdWp() {
  const char* v = std::getenv("FERRY_REQUIRE_UFFD_WP");
  return v && *v && std::string(v) != "0";
}

#define SKIP_UNLESS_UFFD_WP()                                                          \
  do {                                                                                 \
    const Status _probe = UffdWpAvailability();                                        \
    if (!_probe.ok()) {                                                                \
      if (RequireUffdWp()) FAIL() << "uffd-wp required: " << _probe.message();         \
      GTEST_SKIP() << "uffd-wp unavailable: " << _probe.message();                     \
    }                                                                                  \
  } while (0)

std::string KindName(DirtyTrackerKind k) {
  switch (k) {
    case DirtyTrackerKind::kBest: return "Best";
    case DirtyTrackerKind::kUffdWp: return "UffdWp";
    case DirtyTrackerKind::kBitmap: return "Bitmap";
    case DirtyTrackerKind::kAllOnce: return "AllOnce";
  }
  return "Unknown";
}

// --------------------------------------------------------------------------
// DirtyBitmap

TEST(DirtyBitmapTest, SetRangeAcrossWordBoundaries) {
  DirtyBitmap bm(200);
  EXPECT_EQ(bm.SetRange(60, 70), 70u);  // words 0, 1 and 2
  EXPECT_EQ(bm.Count(), 70u);
  for (uint64_t i = 0; i < 200; ++i) EXPECT_EQ(bm.Test(i), i >= 60 && i < 130) << i;
  // Overlap: only the new bits count.
  EXPECT_EQ(bm.SetRange(120, 20), 10u);
  EXPECT_EQ(bm.Count(), 80u);
  // A whole aligned word.
  EXPECT_EQ(bm.SetRange(0, 64), 60u);
  EXPECT_EQ(bm.words()[0], ~0ull);
  EXPECT_EQ(bm.Count(), 140u);
}

TEST(DirtyBitmapTest, SetRangeClampsToSize) {
  DirtyBitmap bm(70);
  EXPECT_EQ(bm.SetRange(65, 100), 5u);
  EXPECT_EQ(bm.Count(), 5u);
  EXPECT_EQ(bm.words()[1], 0b111110ull);  // bits 65..69, nothing past 69
  EXPECT_EQ(bm.SetRange(70, 10), 0u);
  EXPECT_EQ(bm.SetRange(0, 0), 0u);
}

TEST(DirtyBitmapTest, SetAllOnOddSizeAndClearAll) {
  DirtyBitmap bm(131);
  bm.SetAll();
  EXPECT_EQ(bm.Count(), 131u);
  EXPECT_EQ(bm.words()[2], 0b111ull);
  bm.ClearAll();
  EXPECT_EQ(bm.Count(), 0u);
  EXPECT_EQ(bm.FindNextSet(0), 131u);
}

TEST(DirtyBitmapTest, FindNextClear) {
  DirtyBitmap bm(300);
  EXPECT_EQ(bm.FindNextClear(0), 0u);
  bm.SetAll();
  EXPECT_EQ(bm.FindNextClear(0), 300u);  // the spare bits of the last word do not count
  bm.Clear(5);
  bm.Clear(64);
  bm.Clear(250);
  EXPECT_EQ(bm.FindNextClear(0), 5u);
  EXPECT_EQ(bm.FindNextClear(5), 5u);
  EXPECT_EQ(bm.FindNextClear(6), 64u);
  EXPECT_EQ(bm.FindNextClear(65), 250u);  // skips the full words 2 and 3
  EXPECT_EQ(bm.FindNextClear(251), 300u);
  EXPECT_EQ(bm.FindNextClear(1000), 300u);
}

TEST(DirtyBitmapTest, FindNextSet) {
  DirtyBitmap bm(300);
  EXPECT_EQ(bm.FindNextSet(0), 300u);
  bm.Set(0);
  bm.Set(63);
  bm.Set(64);
  bm.Set(200);
  bm.Set(299);
  EXPECT_EQ(bm.FindNextSet(0), 0u);
  EXPECT_EQ(bm.FindNextSet(1), 63u);
  EXPECT_EQ(bm.FindNextSet(64), 64u);
  EXPECT_EQ(bm.FindNextSet(65), 200u);  // skips the empty word 2
  EXPECT_EQ(bm.FindNextSet(201), 299u);
  EXPECT_EQ(bm.FindNextSet(300), 300u);
  EXPECT_EQ(bm.FindNextSet(1000), 300u);
  EXPECT_EQ(SetBits(bm), (std::vector<uint64_t>{0, 63, 64, 200, 299}));
  bm.Clear(63);
  EXPECT_EQ(bm.FindNextSet(1), 64u);
  EXPECT_EQ(bm.Count(), 4u);
}

TEST(DirtyBitmapTest, CountMatchesTest) {
  DirtyBitmap bm(1000);
  std::mt19937_64 rng(7);
  uint64_t expect = 0;
  for (int i = 0; i < 300; ++i) {
    uint64_t b = rng() % 1000;
    if (!bm.Test(b)) ++expect;
    bm.Set(b);
  }
  EXPECT_EQ(bm.Count(), expect);
  EXPECT_EQ(SetBits(bm).size(), expect);
}

// --------------------------------------------------------------------------
// Factory and probe

TEST(MakeDirtyTrackerTest, BestPicksUffdWpOrAnnouncesBitmap) {
  std::vector<std::string> notes;
  auto t = MakeDirtyTracker(DirtyTrackerKind::kBest,
                            [&](std::string_view s) { notes.emplace_back(s); });
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  const Status probe = UffdWpAvailability();
  if (probe.ok()) {
    EXPECT_EQ((*t)->name(), "uffd-wp");
    EXPECT_FALSE((*t)->needs_mark_dirty());
    EXPECT_TRUE(notes.empty());
  } else {
    EXPECT_EQ((*t)->name(), "bitmap");
    EXPECT_TRUE((*t)->needs_mark_dirty());
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_EQ(notes[0], "dirty tracking: userfaultfd write-protect unavailable (" + probe.message() +
                            "); using the cooperative bitmap");
  }
}

TEST(MakeDirtyTrackerTest, BestWithoutNoteCallback) {
  auto t = MakeDirtyTracker(DirtyTrackerKind::kBest);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
}

TEST(MakeDirtyTrackerTest, UffdWpFailsWithProbeStatus) {
  auto t = MakeDirtyTracker(DirtyTrackerKind::kUffdWp);
  const Status probe = UffdWpAvailability();
  if (probe.ok()) {
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    EXPECT_EQ((*t)->name(), "uffd-wp");
  } else {
    ASSERT_FALSE(t.ok());
    EXPECT_EQ(t.status().code(), Code::kUnsupported);
    EXPECT_EQ(t.status().message(), probe.message());
  }
}

TEST(MakeDirtyTrackerTest, ExplicitKinds) {
  int notes = 0;
  auto note = [&](std::string_view) { ++notes; };
  auto b = MakeDirtyTracker(DirtyTrackerKind::kBitmap, note);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ((*b)->name(), "bitmap");
  EXPECT_TRUE((*b)->needs_mark_dirty());
  auto a = MakeDirtyTracker(DirtyTrackerKind::kAllOnce, note);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ((*a)->name(), "all-once");
  EXPECT_FALSE((*a)->needs_mark_dirty());
  EXPECT_EQ(notes, 0);
}

TEST(ProbeUffdWpTest, AvailableOrExplains) {
  const Status st = ProbeUffdWp();
  if (st.ok()) return;
  EXPECT_EQ(st.code(), Code::kUnsupported) << st.ToString();
  EXPECT_FALSE(st.message().empty());
  if (RequireUffdWp()) ADD_FAILURE() << st.ToString();
}

TEST(ProbeUffdWpTest, RepeatableAndLeavesNoState) {
  SKIP_UNLESS_UFFD_WP();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(ProbeUffdWp().ok());
}

// --------------------------------------------------------------------------
// Behaviour common to uffd-wp and bitmap

class TrackerTest : public ::testing::TestWithParam<DirtyTrackerKind> {
 protected:
  void SetUp() override {
    if (GetParam() == DirtyTrackerKind::kUffdWp) SKIP_UNLESS_UFFD_WP();
    auto t = MakeDirtyTracker(GetParam());
    ASSERT_TRUE(t.ok()) << t.status().ToString();
    tracker_ = std::move(*t);
  }

  // A guest write: store, then (cooperative trackers only) mark.
  void Write(uint8_t* p, uint8_t v) {
    *reinterpret_cast<volatile uint8_t*>(p) = v;
    if (tracker_->needs_mark_dirty()) tracker_->MarkDirty(p, 1);
  }

  void StartOrDie(RamBlockList& blocks) {
    Status st = tracker_->Start(blocks);
    ASSERT_TRUE(st.ok()) << st.ToString();
  }

  std::unique_ptr<DirtyTracker> tracker_;
};

TEST_P(TrackerTest, WriteAfterStartIsReportedOthersNot) {
  Mapping m = MapAnon(64 * kPageSize);
  ASSERT_TRUE(m.get());
  std::memset(m.get(), 0x11, m.size());  // populated before tracking
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", m.get(), m.size()).ok());
  StartOrDie(blocks);

  Write(m.page(3), 1);
  Write(m.page(10) + 4095, 2);  // last byte of a page
  Write(m.page(63), 3);
  Write(m.page(3) + 100, 4);  // same page twice
  SyncOutcome s = SyncFresh(*tracker_, blocks);
  EXPECT_EQ(s.pages[0], (std::vector<uint64_t>{3, 10, 63}));
  EXPECT_EQ(s.reported, 3u);

  // Nothing written since: nothing reported, and dirty is left alone.
  blocks[0].dirty.ClearAll();
  blocks[0].dirty.Set(5);
  Result<uint64_t> n = tracker_->Sync(blocks);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 0u);
  EXPECT_EQ(SetBits(blocks[0].dirty), (std::vector<uint64_t>{5}));

  // Re-armed: the same page written again is reported again.
  Write(m.page(10), 5);
  s = SyncFresh(*tracker_, blocks);
  EXPECT_EQ(s.pages[0], (std::vector<uint64_t>{10}));
  EXPECT_EQ(s.reported, 1u);

  // Sync ORs into dirty: bits already set stay set and still count.
  blocks[0].dirty.ClearAll();
  blocks[0].dirty.Set(10);
  blocks[0].dirty.Set(20);
  Write(m.page(10), 6);
  n = tracker_->Sync(blocks);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 1u);
  EXPECT_EQ(SetBits(blocks[0].dirty), (std::vector<uint64_t>{10, 20}));
  tracker_->Stop();
}

TEST_P(TrackerTest, UnpopulatedPagesWrittenLaterAreReported) {
  Mapping m = MapAnon(2048 * kPageSize);  // several page tables' worth, never touched
  ASSERT_TRUE(m.get());
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", m.get(), m.size()).ok());
  StartOrDie(blocks);
  SyncOutcome s = SyncFresh(*tracker_, blocks);
  EXPECT_EQ(s.reported, 0u);

  // Reading never-populated memory is not a write.
  volatile uint8_t sink = 0;
  for (uint64_t i = 0; i < m.pages(); i += 7) sink = sink + *m.page(i);
  (void)sink;
  s = SyncFresh(*tracker_, blocks);
  EXPECT_EQ(s.reported, 0u);
  EXPECT_TRUE(s.pages[0].empty());

  const std::vector<uint64_t> written = {0, 1, 511, 512, 700, 1023, 1024, 2047};
  for (uint64_t p : written) Write(m.page(p) + 17, 0xAB);
  // 7 was read above (zero page) and is written now.
  Write(m.page(7), 1);
  std::vector<uint64_t> expect = written;
  expect.push_back(7);
  std::sort(expect.begin(), expect.end());
  s = SyncFresh(*tracker_, blocks);
  EXPECT_EQ(s.pages[0], expect);
  EXPECT_EQ(s.reported, expect.size());
  EXPECT_EQ(SyncFresh(*tracker_, blocks).reported, 0u);
}

TEST_P(TrackerTest, LargeRangeScatteredWritesAllReportedExactly) {
  constexpr size_t kLen = 256ull << 20;  // 65536 pages
  Mapping m = MapAnon(kLen);
  ASSERT_TRUE(m.get());
  std::memset(m.get(), 0x5A, kLen / 2);  // first half populated, second half not
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", m.get(), kLen).ok());
  StartOrDie(blocks);

  // Round 1: every 3rd page -> ~21800 separate regions, far beyond one
  // 512-entry scan vector, so the scan has to be resumed many times.
  std::vector<uint64_t> expect;
  for (uint64_t p = 0; p < m.pages(); p += 3) {
    Write(m.page(p), 1);
    expect.push_back(p);
  }
  SyncOutcome s = SyncFresh(*tracker_, blocks);
  EXPECT_EQ(s.reported, expect.size());
  EXPECT_TRUE(s.pages[0] == expect) << "reported " << s.pages[0].size() << " pages, expected "
                                    << expect.size();

  // Round 2: a different pattern, including runs that merge into regions.
  expect.clear();
  for (uint64_t p = 1; p < m.pages(); p += 5) {
    Write(m.page(p), 2);
    expect.push_back(p);
    if (p % 4 == 0 && p + 1 < m.pages()) {  // a two-page run
      Write(m.page(p + 1), 2);
      expect.push_back(p + 1);
    }
  }
  s = SyncFresh(*tracker_, blocks);
  EXPECT_EQ(s.reported, expect.size());
  EXPECT_TRUE(s.pages[0] == expect) << "reported " << s.pages[0].size() << " pages, expected "
                                    << expect.size();

  EXPECT_EQ(SyncFresh(*tracker_, blocks).reported, 0u);
}

// Region counts around the scan vector's size (512): exactly full, one more,
// two full vectors, ... The last page is always written so the final region
// ends at the block's end.
TEST_P(TrackerTest, RegionCountsAroundScanVectorSize) {
  constexpr uint64_t kPages = 16384;
  Mapping m = MapAnon(kPages * kPageSize);
  ASSERT_TRUE(m.get());
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", m.get(), m.size()).ok());
  StartOrDie(blocks);
  for (uint64_t regions : {1, 511, 512, 513, 1023, 1024, 1025, 1536, 4096}) {
    std::vector<uint64_t> expect;
    // `regions` isolated pages, the last one at the very end of the block.
    const uint64_t stride = (kPages - 1) / regions;
    ASSERT_GE(stride, 2u);
    for (uint64_t r = 0; r < regions; ++r) {
      const uint64_t p = kPages - 1 - (regions - 1 - r) * stride;
      Write(m.page(p), static_cast<uint8_t>(r));
      expect.push_back(p);
    }
    SyncOutcome s = SyncFresh(*tracker_, blocks);
    EXPECT_EQ(s.reported, regions) << regions << " regions";
    EXPECT_TRUE(s.pages[0] == expect) << regions << " regions";
  }
  // A single region covering the whole block.
  for (uint64_t p = 0; p < kPages; ++p) Write(m.page(p), 9);
  SyncOutcome s = SyncFresh(*tracker_, blocks);
  EXPECT_EQ(s.reported, kPages);
  EXPECT_EQ(s.pages[0].size(), kPages);
}

void SharedMemoryCase(Mapping m, std::unique_ptr<DirtyTracker>& tracker,
                      const std::function<void(uint8_t*, uint8_t)>& write) {
  ASSERT_TRUE(m.get());
  // Half the pages exist in the file before tracking starts.
  for (uint64_t p = 0; p < m.pages(); p += 2) *m.page(p) = 1;
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", m.get(), m.size()).ok());
  Status st = tracker->Start(blocks);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(SyncFresh(*tracker, blocks).reported, 0u);
  std::vector<uint64_t> expect;
  for (uint64_t p = 0; p < m.pages(); p += 3) {
    write(m.page(p) + 1, 7);  // mixes pages that existed and ones that did not
    expect.push_back(p);
  }
  SyncOutcome s = SyncFresh(*tracker, blocks);
  EXPECT_EQ(s.reported, expect.size());
  EXPECT_TRUE(s.pages[0] == expect);
  EXPECT_EQ(SyncFresh(*tracker, blocks).reported, 0u);
  write(m.page(4), 8);
  s = SyncFresh(*tracker, blocks);
  EXPECT_EQ(s.pages[0], (std::vector<uint64_t>{4}));
  tracker->Stop();
  // Tracking did not change the memory.
  EXPECT_EQ(*m.page(2), 1);
  EXPECT_EQ(m.page(3)[1], 7);
  EXPECT_EQ(*m.page(4), 8);
}

TEST_P(TrackerTest, SharedMemoryFileInDevShm) {
  SharedMemoryCase(MapDevShm(3000 * kPageSize), tracker_,
                   [this](uint8_t* p, uint8_t v) { Write(p, v); });
}

TEST_P(TrackerTest, SharedMemoryMemfd) {
  SharedMemoryCase(MapMemfd(3000 * kPageSize), tracker_,
                   [this](uint8_t* p, uint8_t v) { Write(p, v); });
}

// With async write-protect the kernel accepts any memory type, so a shared
// mapping of an ordinary file (ferry's --memory-file) can be tracked too.
TEST_P(TrackerTest, SharedRegularFile) {
  SharedMemoryCase(MapTempFile(3000 * kPageSize), tracker_,
                   [this](uint8_t* p, uint8_t v) { Write(p, v); });
}

TEST_P(TrackerTest, MultipleBlocks) {
  Mapping a = MapAnon(100 * kPageSize);
  Mapping b = MapDevShm(600 * kPageSize);
  Mapping c = MapMemfd(70 * kPageSize);
  Mapping d = MapAnon(1 * kPageSize);
  ASSERT_TRUE(a.get() && b.get() && c.get() && d.get());
  std::memset(a.get(), 1, a.size());
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("pc.ram", a.get(), a.size()).ok());
  ASSERT_TRUE(blocks.Add("shm", b.get(), b.size()).ok());
  ASSERT_TRUE(blocks.Add("memfd", c.get(), c.size()).ok());
  ASSERT_TRUE(blocks.Add("tiny", d.get(), d.size()).ok());
  StartOrDie(blocks);

  Write(a.page(0), 1);
  Write(a.page(99), 1);
  Write(b.page(512), 1);
  Write(c.page(69), 1);
  SyncOutcome s = SyncFresh(*tracker_, blocks);
  EXPECT_EQ(s.reported, 4u);
  EXPECT_EQ(s.pages[0], (std::vector<uint64_t>{0, 99}));
  EXPECT_EQ(s.pages[1], (std::vector<uint64_t>{512}));
  EXPECT_EQ(s.pages[2], (std::vector<uint64_t>{69}));
  EXPECT_TRUE(s.pages[3].empty());

  Write(d.page(0), 1);
  Write(b.page(0), 1);
  s = SyncFresh(*tracker_, blocks);
  EXPECT_EQ(s.reported, 2u);
  EXPECT_TRUE(s.pages[0].empty());
  EXPECT_EQ(s.pages[1], (std::vector<uint64_t>{0}));
  EXPECT_TRUE(s.pages[2].empty());
  EXPECT_EQ(s.pages[3], (std::vector<uint64_t>{0}));
  tracker_->Stop();
}

TEST_P(TrackerTest, SyncRejectsBlockNotTrackedAtStart) {
  Mapping a = MapAnon(16 * kPageSize);
  Mapping b = MapAnon(16 * kPageSize);
  ASSERT_TRUE(a.get() && b.get());
  RamBlockList started;
  ASSERT_TRUE(started.Add("a", a.get(), a.size()).ok());
  StartOrDie(started);
  RamBlockList other;
  ASSERT_TRUE(other.Add("b", b.get(), b.size()).ok());
  Result<uint64_t> n = tracker_->Sync(other);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), Code::kInvalidArgument);
  EXPECT_NE(n.status().message().find("'b'"), std::string::npos) << n.status().message();
  // The tracked block still works.
  Write(a.page(2), 1);
  EXPECT_EQ(SyncFresh(*tracker_, started).pages[0], (std::vector<uint64_t>{2}));
}

TEST_P(TrackerTest, StopIsIdempotentAndKeepsMemory) {
  Mapping m = MapAnon(32 * kPageSize);
  ASSERT_TRUE(m.get());
  for (size_t i = 0; i < m.size(); ++i) m.get()[i] = static_cast<uint8_t>(i * 31);
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", m.get(), m.size()).ok());
  StartOrDie(blocks);
  Write(m.page(1), 0xEE);
  tracker_->Stop();
  tracker_->Stop();
  m.page(2)[5] = 0xDD;  // writes after Stop simply work
  for (size_t i = 0; i < m.size(); ++i) {
    uint8_t expect = static_cast<uint8_t>(i * 31);
    if (i == kPageSize) expect = 0xEE;
    if (i == 2 * kPageSize + 5) expect = 0xDD;
    ASSERT_EQ(m.get()[i], expect) << i;
  }
  EXPECT_FALSE(tracker_->Sync(blocks).ok());  // not running any more
}

// "Nothing missed across a sync", phrased as what migration needs: keep a
// shadow copy (the destination); copy everything once after Start, then after
// every Sync copy each reported page. Writers run the whole time. After they
// stop and one last Sync, the shadow must equal the memory.
struct RaceParam {
  DirtyTrackerKind kind;
  int backing;  // 0 anonymous, 1 /dev/shm file
};

class NothingMissedTest : public ::testing::TestWithParam<RaceParam> {};

TEST_P(NothingMissedTest, ShadowCopyEqualsMemoryAtTheEnd) {
  const RaceParam param = GetParam();
  if (param.kind == DirtyTrackerKind::kUffdWp) SKIP_UNLESS_UFFD_WP();
  auto made = MakeDirtyTracker(param.kind);
  ASSERT_TRUE(made.ok()) << made.status().ToString();
  DirtyTracker& tracker = **made;

  constexpr uint64_t kPages = 4096;
  constexpr uint64_t kWindow = 16;
  constexpr uint64_t kWordsPerPage = kPageSize / 8;
  Mapping m = param.backing == 0 ? MapAnon(kPages * kPageSize) : MapDevShm(kPages * kPageSize);
  ASSERT_TRUE(m.get());
  std::memset(m.get(), 0, m.size() / 4);  // some pages populated, most not
  auto* mem = reinterpret_cast<uint64_t*>(m.get());
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", m.get(), m.size()).ok());
  Status st = tracker.Start(blocks);
  ASSERT_TRUE(st.ok()) << st.ToString();

  std::vector<uint64_t> shadow(kPages * kWordsPerPage);
  auto copy_page = [&](uint64_t p) {
    for (uint64_t w = p * kWordsPerPage; w < (p + 1) * kWordsPerPage; ++w) {
      shadow[w] = std::atomic_ref<uint64_t>(mem[w]).load(std::memory_order_relaxed);
    }
  };

  // Two writers; writer k uses word slots with index % 2 == k so their last
  // writes never overwrite each other. Each remembers, per page, the slot and
  // value it wrote last.
  constexpr int kWriters = 2;
  struct Last {
    std::vector<uint64_t> slot = std::vector<uint64_t>(kPages, ~0ull);
    std::vector<uint64_t> value = std::vector<uint64_t>(kPages, 0);
  };
  std::vector<Last> last(kWriters);
  std::atomic<bool> stop{false};
  std::atomic<uint64_t> writes{0};
  const bool mark = tracker.needs_mark_dirty();
  std::vector<std::thread> writers;
  for (int k = 0; k < kWriters; ++k) {
    writers.emplace_back([&, k] {
      std::mt19937_64 rng(1234 + k);
      uint64_t counter = 0;
      // Writes land in a small window of pages that slides along memory, so
      // pages keep getting their last write (the one that must not be lost)
      // while syncs are going on, rather than all at the very end.
      uint64_t base = k * kPages / kWriters;
      while (!stop.load(std::memory_order_relaxed)) {
        for (int burst = 0; burst < 64; ++burst) {
          const uint64_t page = (base + rng() % kWindow) % kPages;
          const uint64_t slot = (rng() % (kWordsPerPage / 2)) * 2 + k;
          const uint64_t w = page * kWordsPerPage + slot;
          ++counter;
          const uint64_t value = (counter << 1) | static_cast<uint64_t>(k);
          std::atomic_ref<uint64_t>(mem[w]).store(value, std::memory_order_relaxed);
          if (mark) tracker.MarkDirty(&mem[w], sizeof(uint64_t));
          last[k].slot[page] = slot;
          last[k].value[page] = value;
        }
        base = (base + 1) % kPages;
        writes.fetch_add(64, std::memory_order_relaxed);
      }
    });
  }

  for (uint64_t p = 0; p < kPages; ++p) copy_page(p);  // the first full pass

  uint64_t rounds = 0;
  uint64_t total_reported = 0;
  auto sync_and_copy = [&] {
    blocks[0].dirty.ClearAll();
    Result<uint64_t> n = tracker.Sync(blocks);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    total_reported += *n;
    const DirtyBitmap& d = blocks[0].dirty;
    for (uint64_t p = d.FindNextSet(0); p < d.size(); p = d.FindNextSet(p + 1)) copy_page(p);
    ++rounds;
  };
  // Progress conditions, not timing: enough syncs and enough writes that the
  // two really interleaved.
  while (rounds < 200 || writes.load(std::memory_order_relaxed) < 200000) {
    sync_and_copy();
    if (HasFatalFailure()) break;
    std::this_thread::yield();
  }
  stop.store(true);
  for (auto& t : writers) t.join();
  ASSERT_FALSE(HasFatalFailure());
  sync_and_copy();  // the final, guest-stopped round
  tracker.Stop();

  EXPECT_GT(total_reported, 0u);
  uint64_t bad_pages = 0;
  for (uint64_t p = 0; p < kPages; ++p) {
    if (std::memcmp(&shadow[p * kWordsPerPage], &mem[p * kWordsPerPage], kPageSize) != 0) {
      ++bad_pages;
    }
  }
  EXPECT_EQ(bad_pages, 0u) << "pages whose last write was never reported";
  uint64_t touched = 0;
  for (int k = 0; k < kWriters; ++k) {
    for (uint64_t p = 0; p < kPages; ++p) {
      if (last[k].slot[p] == ~0ull) continue;
      ++touched;
      ASSERT_EQ(shadow[p * kWordsPerPage + last[k].slot[p]], last[k].value[p]) << "page " << p;
    }
  }
  EXPECT_GT(touched, 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Trackers, TrackerTest, ::testing::Values(DirtyTrackerKind::kUffdWp, DirtyTrackerKind::kBitmap),
    [](const ::testing::TestParamInfo<DirtyTrackerKind>& i) { return KindName(i.param); });

INSTANTIATE_TEST_SUITE_P(
    Trackers, NothingMissedTest,
    ::testing::Values(RaceParam{DirtyTrackerKind::kUffdWp, 0}, RaceParam{DirtyTrackerKind::kUffdWp, 1},
                      RaceParam{DirtyTrackerKind::kBitmap, 0}),
    [](const ::testing::TestParamInfo<RaceParam>& i) {
      return KindName(i.param.kind) + (i.param.backing == 0 ? "Anon" : "DevShm");
    });

// --------------------------------------------------------------------------
// uffd-wp specifics

TEST(UffdWpTrackerTest, KernelWritesAreTracked) {
  SKIP_UNLESS_UFFD_WP();
  auto t = MakeDirtyTracker(DirtyTrackerKind::kUffdWp);
  ASSERT_TRUE(t.ok());
  Mapping m = MapAnon(16 * kPageSize);
  ASSERT_TRUE(m.get());
  *m.page(3) = 1;  // populated; page 9 stays empty
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", m.get(), m.size()).ok());
  ASSERT_TRUE((*t)->Start(blocks).ok());
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const char msg[] = "written by the kernel";
  ASSERT_EQ(::write(fds[1], msg, sizeof(msg)), static_cast<ssize_t>(sizeof(msg)));
  ASSERT_EQ(::write(fds[1], msg, sizeof(msg)), static_cast<ssize_t>(sizeof(msg)));
  ASSERT_EQ(::read(fds[0], m.page(3) + 8, sizeof(msg)), static_cast<ssize_t>(sizeof(msg)));
  ASSERT_EQ(::read(fds[0], m.page(9) + 8, sizeof(msg)), static_cast<ssize_t>(sizeof(msg)));
  ::close(fds[0]);
  ::close(fds[1]);
  SyncOutcome s = SyncFresh(**t, blocks);
  EXPECT_EQ(s.pages[0], (std::vector<uint64_t>{3, 9}));
  EXPECT_EQ(std::memcmp(m.page(9) + 8, msg, sizeof(msg)), 0);
}

// Pages in [first, first + count) of `m` the kernel shows as swap entries:
// on memory nobody swapped out, the tracker's markers.
uint64_t SwapEntries(const Mapping& m, uint64_t first, uint64_t count) {
  UniqueFd pm(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  EXPECT_TRUE(pm.valid());
  uint64_t n = 0;
  for (uint64_t i = first; i < first + count; ++i) {
    uint64_t e = 0;
    const off_t at = static_cast<off_t>((reinterpret_cast<uint64_t>(m.page(i)) >> kPageShift) * 8);
    EXPECT_EQ(::pread(pm.get(), &e, 8, at), 8);
    n += (e >> 62) & 1;
  }
  return n;
}

// Anonymous memory: the tracker protects only what is populated. Untouched
// pages get no marker (no page tables built for them), a read of one is no
// write, and the first real write to one is reported.
TEST(UffdWpTrackerTest, AnonymousUntouchedMemoryIsLeftAlone) {
  SKIP_UNLESS_UFFD_WP();
  auto t = MakeDirtyTracker(DirtyTrackerKind::kUffdWp);
  ASSERT_TRUE(t.ok());
  constexpr uint64_t kPages = 2048;  // 8 MiB: four page tables' worth
  Mapping m = MapAnon(kPages * kPageSize);
  ASSERT_TRUE(m.get());
  ASSERT_EQ(::madvise(m.get(), m.size(), MADV_NOHUGEPAGE), 0);
  *m.page(1) = 1;  // one page table with one page in it; the rest untouched
  *m.page(600) = 1;
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", m.get(), m.size()).ok());
  ASSERT_TRUE((*t)->Start(blocks).ok());
  EXPECT_EQ(SwapEntries(m, 0, kPages), 0u) << "markers in never-populated slots";
  volatile uint8_t sink = *m.page(5) + *m.page(1500);  // reads map the zero page
  (void)sink;
  SyncOutcome s = SyncFresh(**t, blocks);
  EXPECT_EQ(s.reported, 0u);
  EXPECT_TRUE(s.pages[0].empty());
  *m.page(5) = 2;      // was read (zero page): a write replaces it
  *m.page(1000) = 3;   // never touched, no page table before
  *m.page(600) = 4;    // protected at start
  *m.page(2) = 5;      // empty slot in a table that has a page
  s = SyncFresh(**t, blocks);
  EXPECT_EQ(s.pages[0], (std::vector<uint64_t>{2, 5, 600, 1000}));
  s = SyncFresh(**t, blocks);
  EXPECT_TRUE(s.pages[0].empty()) << "reported pages are protected again";
  *m.page(1000) = 6;
  s = SyncFresh(**t, blocks);
  EXPECT_EQ(s.pages[0], (std::vector<uint64_t>{1000}));
  EXPECT_EQ(SwapEntries(m, 0, kPages), 0u);
}

TEST(UffdWpTrackerTest, StopUnregistersSoMemoryCanBeTrackedAgain) {
  SKIP_UNLESS_UFFD_WP();
  Mapping m = MapAnon(64 * kPageSize);
  ASSERT_TRUE(m.get());
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", m.get(), m.size()).ok());
  for (int round = 0; round < 3; ++round) {
    auto t = MakeDirtyTracker(DirtyTrackerKind::kUffdWp);
    ASSERT_TRUE(t.ok());
    Status st = (*t)->Start(blocks);
    ASSERT_TRUE(st.ok()) << "round " << round << ": " << st.ToString();
    *m.page(round) = 1;
    SyncOutcome s = SyncFresh(**t, blocks);
    EXPECT_EQ(s.pages[0], (std::vector<uint64_t>{static_cast<uint64_t>(round)}));
    if (round == 1) (*t)->Stop();  // other rounds: the destructor stops it
  }
}

TEST(UffdWpTrackerTest, SecondTrackerOnSameMemoryFailsCleanly) {
  SKIP_UNLESS_UFFD_WP();
  Mapping m = MapAnon(8 * kPageSize);
  ASSERT_TRUE(m.get());
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", m.get(), m.size()).ok());
  auto t1 = MakeDirtyTracker(DirtyTrackerKind::kUffdWp);
  auto t2 = MakeDirtyTracker(DirtyTrackerKind::kUffdWp);
  ASSERT_TRUE(t1.ok() && t2.ok());
  ASSERT_TRUE((*t1)->Start(blocks).ok());
  Status st = (*t2)->Start(blocks);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("RAM block 'ram'"), std::string::npos) << st.message();
  // The first tracker is unaffected.
  *m.page(5) = 1;
  EXPECT_EQ(SyncFresh(**t1, blocks).pages[0], (std::vector<uint64_t>{5}));
}

TEST(UffdWpTrackerTest, FailedStartLeavesEarlierBlocksUnprotected) {
  SKIP_UNLESS_UFFD_WP();
  Mapping good = MapAnon(8 * kPageSize);
  ASSERT_TRUE(good.get());
  // A hole in the address space cannot be registered: map three pages and
  // punch out the middle one.
  Mapping around = MapAnon(3 * kPageSize);
  ASSERT_TRUE(around.get());
  ASSERT_EQ(::munmap(around.page(1), kPageSize), 0);
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("good", good.get(), good.size()).ok());
  ASSERT_TRUE(blocks.Add("bad", around.page(1), kPageSize).ok());
  auto t = MakeDirtyTracker(DirtyTrackerKind::kUffdWp);
  ASSERT_TRUE(t.ok());
  Status st = (*t)->Start(blocks);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("'bad'"), std::string::npos) << st.message();
  // "good" was registered and must have been released: a new tracker can take it.
  RamBlockList only_good;
  ASSERT_TRUE(only_good.Add("good", good.get(), good.size()).ok());
  auto t2 = MakeDirtyTracker(DirtyTrackerKind::kUffdWp);
  ASSERT_TRUE(t2.ok());
  st = (*t2)->Start(only_good);
  EXPECT_TRUE(st.ok()) << st.ToString();
}

// --------------------------------------------------------------------------
// bitmap specifics

TEST(BitmapTrackerTest, MarkDirtyRangesAndBounds) {
  Mapping a = MapAnon(130 * kPageSize);
  ASSERT_TRUE(a.get());
  // Two blocks inside one mapping with a gap between them: [0,50) and [60,130).
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("hi", a.page(60), 70 * kPageSize).ok());  // out of address order
  ASSERT_TRUE(blocks.Add("lo", a.page(0), 50 * kPageSize).ok());
  auto t = MakeDirtyTracker(DirtyTrackerKind::kBitmap);
  ASSERT_TRUE(t.ok());
  DirtyTracker& tr = **t;
  tr.MarkDirty(a.page(1), 1);  // before Start: ignored
  ASSERT_TRUE(tr.Start(blocks).ok());

  tr.MarkDirty(a.page(3) + 4000, 200);  // unaligned, straddles pages 3 and 4
  tr.MarkDirty(a.page(10), kPageSize);  // exactly one page
  tr.MarkDirty(a.page(20), 0);          // empty: nothing
  tr.MarkDirty(a.page(45), 20 * kPageSize);  // lo 45..49, gap, hi 0..4
  tr.MarkDirty(a.page(60) + 63 * kPageSize, 2 * kPageSize);  // hi 63, 64: word boundary
  tr.MarkDirty(a.page(129) + 4095, 1);  // last byte of hi
  tr.MarkDirty(a.page(55), kPageSize);  // in the gap: ignored
  tr.MarkDirty(a.get() + a.size(), kPageSize);  // past everything: ignored
  tr.MarkDirty(a.get() - kPageSize, kPageSize);  // before everything: ignored
  SyncOutcome s = SyncFresh(tr, blocks);
  EXPECT_EQ(s.pages[0], (std::vector<uint64_t>{0, 1, 2, 3, 4, 63, 64, 69}));  // hi
  EXPECT_EQ(s.pages[1], (std::vector<uint64_t>{3, 4, 10, 45, 46, 47, 48, 49}));  // lo
  EXPECT_EQ(s.reported, 16u);

  // A huge length that would overflow the address space.
  tr.MarkDirty(a.page(49), SIZE_MAX);
  s = SyncFresh(tr, blocks);
  EXPECT_EQ(s.pages[1], (std::vector<uint64_t>{49}));
  EXPECT_EQ(s.pages[0].size(), 70u);

  // A range covering everything.
  tr.MarkDirty(a.get(), a.size());
  EXPECT_EQ(SyncFresh(tr, blocks).reported, 120u);
  EXPECT_EQ(SyncFresh(tr, blocks).reported, 0u);

  tr.Stop();
  tr.MarkDirty(a.page(2), 1);  // after Stop: ignored, harmless
  tr.Stop();
}

TEST(BitmapTrackerTest, WritesWithoutMarkAreInvisible) {
  Mapping a = MapAnon(4 * kPageSize);
  ASSERT_TRUE(a.get());
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", a.get(), a.size()).ok());
  auto t = MakeDirtyTracker(DirtyTrackerKind::kBitmap);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE((*t)->Start(blocks).ok());
  *a.page(1) = 1;
  EXPECT_EQ(SyncFresh(**t, blocks).reported, 0u);
}

TEST(BitmapTrackerTest, RejectsOverlappingBlocks) {
  Mapping a = MapAnon(8 * kPageSize);
  ASSERT_TRUE(a.get());
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("x", a.page(0), 4 * kPageSize).ok());
  ASSERT_TRUE(blocks.Add("y", a.page(2), 4 * kPageSize).ok());
  auto t = MakeDirtyTracker(DirtyTrackerKind::kBitmap);
  ASSERT_TRUE(t.ok());
  Status st = (*t)->Start(blocks);
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
}

TEST(BitmapTrackerTest, ConcurrentMarkersAllSeen) {
  constexpr uint64_t kPages = 4096;
  Mapping a = MapAnon(kPages * kPageSize);
  ASSERT_TRUE(a.get());
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", a.get(), a.size()).ok());
  auto t = MakeDirtyTracker(DirtyTrackerKind::kBitmap);
  ASSERT_TRUE(t.ok());
  DirtyTracker& tr = **t;
  ASSERT_TRUE(tr.Start(blocks).ok());
  // Each thread marks its own interleaved set of pages once; a syncing loop
  // runs meanwhile. The union of everything reported must be all pages.
  std::atomic<int> done{0};
  std::vector<std::thread> th;
  for (int k = 0; k < 3; ++k) {
    th.emplace_back([&, k] {
      for (uint64_t p = k; p < kPages; p += 3) tr.MarkDirty(a.page(p), 1);
      done.fetch_add(1);
    });
  }
  DirtyBitmap seen(kPages);
  uint64_t reported = 0;
  while (done.load() < 3) {
    blocks[0].dirty.ClearAll();
    Result<uint64_t> n = tr.Sync(blocks);
    ASSERT_TRUE(n.ok());
    reported += *n;
    for (uint64_t p : SetBits(blocks[0].dirty)) seen.Set(p);
  }
  for (auto& x : th) x.join();
  blocks[0].dirty.ClearAll();
  Result<uint64_t> n = tr.Sync(blocks);
  ASSERT_TRUE(n.ok());
  reported += *n;
  for (uint64_t p : SetBits(blocks[0].dirty)) seen.Set(p);
  EXPECT_EQ(seen.Count(), kPages);
  EXPECT_EQ(reported, kPages);  // each page marked once, reported once
}

// The lost-write stress for the bitmap tracker. Writers stamp pages with
// increasing counters while a syncer keeps syncing and copying the reported
// pages into a shadow (the destination's memory).
//
// Each writer owns a region of pages and goes through it a group of pages at
// a time: a few rounds of one stamp into every page of the group, then the
// marks for them (a writer may mark after a batch of writes, as after a
// memcpy); all rounds after the first find the pages' bits already set. Then
// it seals the group: it will not touch those pages again until the syncer
// has checked them. The syncer, having seen the seal, syncs and copies once
// more and then requires the shadow of every sealed page to equal memory:
// the syncs so far must have reported each page after its last stamp was
// visible. At the end, after a final sync, the whole shadow must equal memory.
//
// What it catches: a write that slips past Sync's clear unmarked. A tracker
// whose writers skip the atomic OR when the bit already looks set loses
// writes here: the writer's peek saw the bit set, Sync cleared it and copied
// the page before the writer's store was visible (still in its core's store
// buffer), and nothing reported the page again. That window is a store's way
// to memory, shorter than Sync's path from the clear to the copy unless the
// store misses the caches, so the writers make every stamp miss: they evict
// the lines they are about to stamp (clflush on x86), and the regions are
// small (one bitmap word each) so that the syncer's path is short.
//
// FERRY_DIRTY_STRESS_SECONDS sets how long it runs (default 3; longer to
// hunt for rare interleavings).
TEST(BitmapTrackerTest, StressNoWriteLostAcrossSyncs) {
  double seconds = 3;
  if (const char* v = std::getenv("FERRY_DIRTY_STRESS_SECONDS"); v && *v) seconds = std::atof(v);
  constexpr int kWriters = 2;
  constexpr uint64_t kPagesPerWriter = 64;  // one bitmap word each
  constexpr uint64_t kPages = kWriters * kPagesPerWriter;
  constexpr uint64_t kWordsPerPage = kPageSize / 8;
  constexpr uint64_t kLinesPerPage = kPageSize / 64;
  constexpr uint64_t kGroup = 16;  // pages stamped before their marks
  constexpr uint64_t kGroupsPerWriter = kPagesPerWriter / kGroup;
  constexpr uint64_t kRounds = 4;  // stamps per page per visit, each in its own cache line
  static_assert(kPagesPerWriter % kGroup == 0);
  Mapping m = MapAnon(kPages * kPageSize);
  ASSERT_TRUE(m.get());
  std::memset(m.get(), 0, m.size());
  auto* mem = reinterpret_cast<uint64_t*>(m.get());
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", m.get(), m.size()).ok());
  auto made = MakeDirtyTracker(DirtyTrackerKind::kBitmap);
  ASSERT_TRUE(made.ok());
  DirtyTracker& tracker = **made;
  ASSERT_TRUE(tracker.Start(blocks).ok());

  std::vector<uint64_t> shadow(kPages * kWordsPerPage, 0);  // memory is all zeros now
  auto copy_page = [&](uint64_t p) {
    for (uint64_t w = p * kWordsPerPage; w < (p + 1) * kWordsPerPage; ++w) {
      shadow[w] = std::atomic_ref<uint64_t>(mem[w]).load(std::memory_order_relaxed);
    }
  };
  auto page_matches = [&](uint64_t p) {
    for (uint64_t w = p * kWordsPerPage; w < (p + 1) * kWordsPerPage; ++w) {
      if (shadow[w] != std::atomic_ref<uint64_t>(mem[w]).load(std::memory_order_relaxed)) return false;
    }
    return true;
  };
  uint64_t syncs = 0;
  uint64_t copies = 0;
  auto sync_and_copy = [&] {
    blocks[0].dirty.ClearAll();
    Result<uint64_t> n = tracker.Sync(blocks);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    const DirtyBitmap& d = blocks[0].dirty;
    for (uint64_t p = d.FindNextSet(0); p < d.size(); p = d.FindNextSet(p + 1)) {
      copy_page(p);
      ++copies;
    }
    ++syncs;
  };

  // Per writer, counted in groups since the start (a writer's group i is
  // group i % kGroupsPerWriter of its region): how many it has sealed, and
  // how many the syncer has checked. A writer stays less than a region
  // ahead of the checks.
  struct alignas(64) Progress {
    std::atomic<uint64_t> sealed{0};
    std::atomic<uint64_t> checked{0};
  };
  std::vector<Progress> progress(kWriters);
  std::atomic<bool> stop{false};
  std::vector<std::thread> writers;
  for (int k = 0; k < kWriters; ++k) {
    writers.emplace_back([&, k] {
      uint64_t counter = 0;
      for (uint64_t i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        while (i - progress[k].checked.load(std::memory_order_acquire) >= kGroupsPerWriter) {
          if (stop.load(std::memory_order_relaxed)) return;
          std::this_thread::yield();
        }
        const uint64_t first = k * kPagesPerWriter + (i % kGroupsPerWriter) * kGroup;
        for (uint64_t r = 0; r < kRounds; ++r) {
          // Each visit and round stamps another cache line of each page; the
          // last round one near the start, which the copy reads first.
          const uint64_t line = (kRounds - 1 - r) * (kLinesPerPage / kRounds) + (i / kGroupsPerWriter) % 16;
          const uint64_t slot = (line % kLinesPerPage) * 8;
          for (uint64_t p = first; p < first + kGroup; ++p) EvictLine(&mem[p * kWordsPerPage + slot]);
          // Highest page first: the lowest, which the syncer copies first,
          // is stored last and so is the longest on its way.
          for (uint64_t p = first + kGroup; p-- > first;) {
            std::atomic_ref<uint64_t>(mem[p * kWordsPerPage + slot]).store(++counter, std::memory_order_relaxed);
          }
          for (uint64_t p = first + kGroup; p-- > first;) {
            tracker.MarkDirty(&mem[p * kWordsPerPage + slot], sizeof(uint64_t));
          }
        }
        progress[k].sealed.store(i + 1, std::memory_order_release);
      }
    });
  }

  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::duration<double>(seconds);
  uint64_t checked_groups = 0;
  uint64_t bad_pages = 0;
  std::string first_bad;
  auto check = [&](int k, uint64_t from, uint64_t to) {
    for (uint64_t i = from; i < to; ++i) {
      const uint64_t first = k * kPagesPerWriter + (i % kGroupsPerWriter) * kGroup;
      for (uint64_t p = first; p < first + kGroup; ++p) {
        if (page_matches(p)) continue;
        if (first_bad.empty()) first_bad = "page " + std::to_string(p) + " after " + std::to_string(syncs) + " syncs";
        ++bad_pages;
        copy_page(p);  // resynchronise so it is counted once
      }
    }
    checked_groups += to - from;
  };
  // Progress conditions besides the time: every region gone through a few
  // times.
  while (Clock::now() < deadline || checked_groups < 8 * kWriters * kGroupsPerWriter) {
    uint64_t sealed[kWriters];
    for (int k = 0; k < kWriters; ++k) sealed[k] = progress[k].sealed.load(std::memory_order_acquire);
    sync_and_copy();
    if (HasFatalFailure()) break;
    for (int k = 0; k < kWriters; ++k) {
      const uint64_t from = progress[k].checked.load(std::memory_order_relaxed);
      if (sealed[k] == from) continue;
      check(k, from, sealed[k]);
      progress[k].checked.store(sealed[k], std::memory_order_release);
    }
  }
  stop.store(true);
  for (auto& t : writers) t.join();
  ASSERT_FALSE(HasFatalFailure());
  sync_and_copy();  // the guest is stopped: the final round
  for (int k = 0; k < kWriters; ++k) check(k, progress[k].checked.load(), progress[k].sealed.load());
  uint64_t bad_at_end = 0;
  for (uint64_t p = 0; p < kPages; ++p) bad_at_end += page_matches(p) ? 0 : 1;
  tracker.Stop();
  std::printf("bitmap stress: %llu syncs, %llu page copies, %llu pages checked after sealing "
              "(%llu stamps); lost writes: %llu pages\n",
              static_cast<unsigned long long>(syncs), static_cast<unsigned long long>(copies),
              static_cast<unsigned long long>(checked_groups * kGroup),
              static_cast<unsigned long long>(checked_groups * kGroup * kRounds),
              static_cast<unsigned long long>(bad_pages));
  EXPECT_EQ(bad_pages, 0u) << "pages whose last write was never reported; first: " << first_bad;
  EXPECT_EQ(bad_at_end, 0u) << "pages that differ after the final sync";
}

// --------------------------------------------------------------------------
// all-once

TEST(AllOnceTrackerTest, ReportsNothing) {
  Mapping a = MapAnon(4 * kPageSize);
  ASSERT_TRUE(a.get());
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", a.get(), a.size()).ok());
  auto t = MakeDirtyTracker(DirtyTrackerKind::kAllOnce);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ((*t)->name(), "all-once");
  ASSERT_TRUE((*t)->Start(blocks).ok());
  *a.page(2) = 1;
  (*t)->MarkDirty(a.page(2), 1);
  Result<uint64_t> n = (*t)->Sync(blocks);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  EXPECT_EQ(blocks[0].dirty.Count(), 0u);
  (*t)->Stop();
  (*t)->Stop();
}

}  // namespace
}  // namespace ferry
