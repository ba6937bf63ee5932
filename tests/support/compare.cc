// Test support: comparing files page by page.
#include "tests/support/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>

#include "core/unique_fd.h"
#include "tests/support/fd_io.h"

namespace ferry::test {

// ---- Comparison ------------------------------------------------------------------------

namespace {

// Produces `n` expected bytes at `rel` (relative to the compared range).
using ExpectedFn = std::function<Status(uint64_t rel, uint8_t* buf, size_t n)>;

std::string Hex16(const uint8_t* p, size_t avail) {
  std::string s;
  char b[4];
  for (size_t i = 0; i < std::min<size_t>(16, avail); ++i) {
    std::snprintf(b, sizeof(b), "%02x", p[i]);
    if (i) s += ' ';
    s += b;
  }
  return s;
}

std::string OffsetText(uint64_t off) {
  char b[96];
  std::snprintf(b, sizeof(b), "%" PRIu64 " (0x%" PRIx64 ", page %" PRIu64 ")", off, off, off / kPage);
  return b;
}

bool AllZero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

::testing::AssertionResult CompareRange(const std::string& actual, uint64_t actual_offset,
                                        uint64_t len, const std::string& expected_desc,
                                        uint64_t expected_offset, const ExpectedFn& expected) {
  UniqueFd fd(::open(actual.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return ::testing::AssertionFailure() << "cannot open " << actual << ": " << std::strerror(errno);
  }
  constexpr size_t kChunk = 4 << 20;
  std::unique_ptr<uint8_t[]> a(new uint8_t[kChunk]), e(new uint8_t[kChunk]);

  bool have_first = false;
  std::string first;
  uint64_t pages_differing = 0, zero_in_actual = 0;
  std::vector<uint64_t> first_pages;

  for (uint64_t rel = 0; rel < len; rel += kChunk) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, len - rel));
    ssize_t got = PreadFull(fd.get(), a.get(), n, actual_offset + rel);
    if (got < 0) {
      return ::testing::AssertionFailure() << "read " << actual << ": " << std::strerror(errno);
    }
    if (static_cast<size_t>(got) < n) {
      return ::testing::AssertionFailure()
             << actual << " ends at " << (actual_offset + rel + static_cast<uint64_t>(got))
             << " bytes, before the end of the compared range (" << (actual_offset + len) << ")";
    }
    if (Status st = expected(rel, e.get(), n); !st.ok()) {
      return ::testing::AssertionFailure() << "expected data (" << expected_desc << "): " << st.ToString();
    }
    if (std::memcmp(a.get(), e.get(), n) == 0) continue;
    // Walk page by page (pages of the actual file) to count and locate.
    size_t pos = 0;
    while (pos < n) {
      const uint64_t abs = actual_offset + rel + pos;
      const size_t seg = static_cast<size_t>(std::min<uint64_t>(n - pos, kPage - abs % kPage));
      if (std::memcmp(a.get() + pos, e.get() + pos, seg) != 0) {
        ++pages_differing;
        if (AllZero(a.get() + pos, seg)) ++zero_in_actual;
        if (first_pages.size() < 8) first_pages.push_back(abs / kPage);
        if (!have_first) {
          size_t i = 0;
          while (a[pos + i] == e[pos + i]) ++i;
          const size_t at = pos + i;
          const uint64_t rel_at = rel + at;
          first = "first difference at " + actual + " offset " + OffsetText(actual_offset + rel_at) +
                  ", " + expected_desc + " offset " + OffsetText(expected_offset + rel_at) +
                  "\n  actual:   " + Hex16(a.get() + at, n - at) +
                  "\n  expected: " + Hex16(e.get() + at, n - at);
          have_first = true;
        }
      }
      pos += seg;
    }
  }
  if (!have_first) return ::testing::AssertionSuccess();
  std::string pages;
  for (uint64_t p : first_pages) pages += (pages.empty() ? "" : ", ") + std::to_string(p);
  const uint64_t total_pages = (len + kPage - 1) / kPage;
  return ::testing::AssertionFailure()
         << actual << " differs from " << expected_desc << " (" << len << " bytes compared)\n  "
         << first << "\n  " << pages_differing << " of ~" << total_pages << " pages differ ("
         << zero_in_actual << " of them are all-zero in the actual file); first differing pages: "
         << pages;
}

}  // namespace

::testing::AssertionResult FileRangeEquals(const std::string& actual, uint64_t actual_offset,
                                           const std::string& expected, uint64_t expected_offset,
                                           uint64_t len) {
  UniqueFd efd(::open(expected.c_str(), O_RDONLY | O_CLOEXEC));
  if (!efd.valid()) {
    return ::testing::AssertionFailure() << "cannot open " << expected << ": " << std::strerror(errno);
  }
  return CompareRange(actual, actual_offset, len, expected, expected_offset,
                      [&](uint64_t rel, uint8_t* buf, size_t n) -> Status {
                        ssize_t got = PreadFull(efd.get(), buf, n, expected_offset + rel);
                        if (got < 0) return ErrnoStatus("read " + expected);
                        if (static_cast<size_t>(got) < n) {
                          return Status::InvalidArgument(expected + " is shorter than the compared range");
                        }
                        return Status::Ok();
                      });
}

::testing::AssertionResult FilesEqual(const std::string& actual, const std::string& expected) {
  Result<uint64_t> as = FileSize(actual);
  Result<uint64_t> es = FileSize(expected);
  if (!as.ok()) return ::testing::AssertionFailure() << as.status().ToString();
  if (!es.ok()) return ::testing::AssertionFailure() << es.status().ToString();
  if (*as != *es) {
    ::testing::AssertionResult prefix = FileRangeEquals(actual, 0, expected, 0, std::min(*as, *es));
    return ::testing::AssertionFailure()
           << actual << " is " << *as << " bytes but " << expected << " is " << *es << " bytes; "
           << (prefix ? std::string("the common prefix is identical")
                      : std::string("and in the common prefix: ") + prefix.message());
  }
  return FileRangeEquals(actual, 0, expected, 0, *as);
}

::testing::AssertionResult FileEqualsBuffer(const std::string& actual, uint64_t offset,
                                            const void* data, size_t len) {
  return CompareRange(actual, offset, len, "the expected buffer", 0,
                      [&](uint64_t rel, uint8_t* buf, size_t n) -> Status {
                        std::memcpy(buf, static_cast<const uint8_t*>(data) + rel, n);
                        return Status::Ok();
                      });
}

::testing::AssertionResult FileMatchesPattern(const std::string& actual, const PatternSpec& spec) {
  Result<uint64_t> as = FileSize(actual);
  if (!as.ok()) return ::testing::AssertionFailure() << as.status().ToString();
  const std::string desc = "pattern(seed=" + std::to_string(spec.seed) + ")";
  const uint64_t common = std::min(*as, spec.size);
  ::testing::AssertionResult r =
      CompareRange(actual, 0, common, desc, 0, [&](uint64_t rel, uint8_t* buf, size_t n) -> Status {
        GeneratePattern(spec, rel, buf, n);
        return Status::Ok();
      });
  if (*as != spec.size) {
    return ::testing::AssertionFailure()
           << actual << " is " << *as << " bytes, expected " << spec.size << "; "
           << (r ? std::string("the common prefix matches") : std::string("and: ") + r.message());
  }
  return r;
}

}  // namespace ferry::test
