// UnpopulatedFinder: RamBlock::known_zero is exactly the set of pages the
// guest never populated, found without touching them, and stays exact while
// a dirty tracker runs (the tracker's Sync clears the bits of written pages).
#include "core/unpopulated.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include <gtest/gtest.h>

#include "core/dirty_tracker.h"

namespace ferry {
namespace {

constexpr uint64_t kPages = 1024;  // 4 MiB

uint64_t MinorFaults() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return static_cast<uint64_t>(r.ru_minflt);
}

struct Anon {
  uint8_t* p = nullptr;
  size_t len = kPages * kPageSize;
  Anon() {
    p = static_cast<uint8_t*>(mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    (void)madvise(p, len, MADV_NOHUGEPAGE);  // page-exact population
  }
  ~Anon() { munmap(p, len); }
};

// Pages 0, 3, 500..599 and 1023 written; page 7 only read (the zero page).
void Touch(uint8_t* p) {
  for (uint64_t i : {0ull, 3ull, 1023ull}) p[i * kPageSize + 5] = 1;
  for (uint64_t i = 500; i < 600; ++i) p[i * kPageSize] = static_cast<uint8_t>(i);
  volatile uint8_t x = p[7 * kPageSize];
  (void)x;
}

bool Written(uint64_t i) { return i == 0 || i == 3 || i == 1023 || (i >= 500 && i < 600); }

TEST(UnpopulatedTest, AnonymousMemoryExactlyTheUntouchedPages) {
  Anon a;
  Touch(a.p);
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", a.p, a.len).ok());
  UnpopulatedFinder f;
  const uint64_t faults0 = MinorFaults();
  f.Begin(blocks);
  f.Confirm(blocks, /*markers_look_swapped=*/false);
  EXPECT_LE(MinorFaults() - faults0, 64u) << "the scan must not touch the pages";
  const RamBlock& b = blocks[0];
  ASSERT_EQ(b.known_zero.size(), kPages) << "method: " << f.stats().method;
  // Page 7 was only read: mapped to the zero pfn, which PAGEMAP_SCAN tells
  // apart (PAGE_IS_PFNZERO) and plain pagemap reads do not.
  const bool pfnzero_known = f.stats().method == "pagemap-scan";
  for (uint64_t i = 0; i < kPages; ++i) {
    const bool want = !Written(i) && (i != 7 || pfnzero_known);
    EXPECT_EQ(b.KnownZero(i), want) << "page " << i << " (" << f.stats().method << ")";
  }
  EXPECT_EQ(f.stats().pages, kPages - 103 - (pfnzero_known ? 0 : 1));
}

TEST(UnpopulatedTest, MemfdHolesAreKnownZero) {
  const int fd = memfd_create("ferry-unpopulated-test", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, kPages * kPageSize), 0);
  auto* p = static_cast<uint8_t*>(mmap(nullptr, kPages * kPageSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  ASSERT_NE(p, MAP_FAILED);
  Touch(p);
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", p, kPages * kPageSize).ok());
  blocks[0].backing_fd = fd;
  UnpopulatedFinder f;
  f.Begin(blocks);
  f.Confirm(blocks, false);
  EXPECT_EQ(f.stats().method, "seek-hole");
  const RamBlock& b = blocks[0];
  ASSERT_EQ(b.known_zero.size(), kPages);
  for (uint64_t i = 0; i < kPages; ++i) {
    if (Written(i)) {
      EXPECT_FALSE(b.KnownZero(i)) << "page " << i << " holds data";
    }
  }
  // Holes are whole pages here (tmpfs), the read one allocated a page: all
  // other untouched pages are known zero.
  for (uint64_t i = 8; i < 500; ++i) EXPECT_TRUE(b.KnownZero(i)) << "page " << i;
  munmap(p, kPages * kPageSize);
  close(fd);
}

// Under every tracker: pages populated between Begin and the tracker's start
// lose their bit at Confirm; writes after the start lose it at Sync; the
// untouched rest keeps it, and nobody read it (no fault in the untouched
// pages: writing them afterwards still faults once each).
class TrackedTest : public ::testing::TestWithParam<DirtyTrackerKind> {};

TEST_P(TrackedTest, BitsFollowWrites) {
  auto t = MakeDirtyTracker(GetParam());
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  if (GetParam() == DirtyTrackerKind::kUffdWp) {
    if (Status s = ProbeUffdWp(); !s.ok()) {
      const char* v = std::getenv("FERRY_REQUIRE_UFFD_WP");
      if (v && *v && std::string(v) != "0") FAIL() << s.message();
      GTEST_SKIP() << s.message();
    }
  }
  Anon a;
  Touch(a.p);
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", a.p, a.len).ok());
  UnpopulatedFinder f;
  f.Begin(blocks);
  a.p[100 * kPageSize] = 9;  // populated after Begin, before tracking
  ASSERT_TRUE((*t)->Start(blocks).ok());
  f.Confirm(blocks, (*t)->name() == "uffd-wp");
  RamBlock& b = blocks[0];
  ASSERT_EQ(b.known_zero.size(), kPages);
  EXPECT_FALSE(b.KnownZero(100));
  EXPECT_TRUE(b.KnownZero(200));
  EXPECT_TRUE(b.KnownZero(300));
  // The guest writes a page the source saw as unpopulated.
  a.p[200 * kPageSize + 8] = 7;
  (*t)->MarkDirty(a.p + 200 * kPageSize + 8, 1);
  if (GetParam() == DirtyTrackerKind::kAllOnce) {
    (*t)->Stop();
    return;  // nothing is ever reported: the guest must be stopped
  }
  Result<uint64_t> n = (*t)->Sync(blocks);
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_TRUE(b.dirty.Test(200));
  EXPECT_FALSE(b.KnownZero(200)) << "a written page must lose its known-zero bit";
  EXPECT_TRUE(b.KnownZero(300));
  for (uint64_t i = 0; i < kPages; ++i) {
    if (Written(i) || i == 100) {
      EXPECT_FALSE(b.KnownZero(i)) << "page " << i;
    }
  }
  (*t)->Stop();
}

INSTANTIATE_TEST_SUITE_P(Kinds, TrackedTest,
                         ::testing::Values(DirtyTrackerKind::kUffdWp, DirtyTrackerKind::kBitmap,
                                           DirtyTrackerKind::kAllOnce),
                         [](const auto& info) {
                           switch (info.param) {
                             case DirtyTrackerKind::kUffdWp: return std::string("uffd_wp");
                             case DirtyTrackerKind::kBitmap: return std::string("bitmap");
                             case DirtyTrackerKind::kAllOnce: return std::string("all_once");
                             default: return std::string("best");
                           }
                         });

}  // namespace
}  // namespace ferry
