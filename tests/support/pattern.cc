// Test support: deterministic page patterns and pattern files.
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

// ---- Pattern ---------------------------------------------------------------------------

namespace {

uint64_t Mix64(uint64_t x) {
  x ^= x >> 31;
  x *= 0x7fb5d329728ea185ULL;
  x ^= x >> 27;
  x *= 0x81dadef4bc2d9d45ULL;
  x ^= x >> 33;
  return x;
}

uint64_t Hash2(uint64_t a, uint64_t b) { return Mix64(a * 0xd1342543de82ef95ULL ^ Mix64(b + 0x632be59bd9b4e019ULL)); }

enum class PageKind { kRandom, kZero, kText };

PageKind KindFor(const PatternSpec& s, uint64_t h) {
  const unsigned r = static_cast<unsigned>(h % 100);
  if (r < s.random_pct) return PageKind::kRandom;
  if (r < s.random_pct + s.zero_pct) return PageKind::kZero;
  return PageKind::kText;
}

PageKind PageKindAt(const PatternSpec& s, uint64_t page) {
  // A quarter of the 2 MiB runs are one kind throughout (long zero runs,
  // long random runs); the rest mix kinds every 64 KiB.
  const uint64_t run = Hash2(s.seed ^ 0x2b1d, page / 512);
  if ((run >> 40) % 4 == 0) return KindFor(s, run);
  return KindFor(s, Hash2(s.seed ^ 0x64c0, page / 16));
}

void FillRandom(uint64_t state, uint8_t* out, size_t len) {
  for (size_t i = 0; i < len; i += 8) {
    state += 0x9e3779b97f4a7c15ULL;
    uint64_t v = Mix64(state);
    std::memcpy(out + i, &v, std::min<size_t>(8, len - i));
  }
}

constexpr const char* kWords[] = {"alpha", "bravo",  "charlie", "delta",  "echo",   "foxtrot",
                                  "golf",  "hotel",  "india",   "juliet", "kilo",   "lima",
                                  "mike",  "kernel", "page",    "dirty",  "bitmap", "ferry"};

void FillText(const PatternSpec& s, uint64_t page, uint8_t* out) {
  char buf[kPage + 256];
  size_t used = 0;
  uint64_t h = Hash2(s.seed ^ 0x7e47, page);
  for (unsigned line = 0; used < kPage; ++line) {
    h = Mix64(h + line);
    const char* w1 = kWords[h % std::size(kWords)];
    const char* w2 = kWords[(h >> 16) % std::size(kWords)];
    const char* w3 = kWords[(h >> 32) % std::size(kWords)];
    int n = std::snprintf(buf + used, sizeof(buf) - used,
                          "ferry pattern seed=%" PRIu64 " page=%09" PRIu64 " line=%02u: %s %s %s %" PRIu64 "\n",
                          s.seed, page, line, w1, w2, w3, (h >> 48));
    if (n <= 0) break;
    used += static_cast<size_t>(n);
  }
  std::memcpy(out, buf, kPage);
}

void GeneratePage(const PatternSpec& s, uint64_t page, uint8_t* out) {
  switch (PageKindAt(s, page)) {
    case PageKind::kZero:
      std::memset(out, 0, kPage);
      return;
    case PageKind::kText: {
      FillText(s, page, out);
      // A quarter of the text pages are part zero: text then zeros (a page
      // mostly unused), or zeros then text (the first bytes are zero, the page
      // is not).
      const uint64_t h = Hash2(s.seed ^ 0x7e58, page);
      const size_t cut = 1 + static_cast<size_t>((h >> 8) % (kPage - 1));
      if (h % 8 == 0) std::memset(out + cut, 0, kPage - cut);
      if (h % 8 == 1) std::memset(out, 0, cut);
      return;
    }
    case PageKind::kRandom: {
      const uint64_t h = Hash2(s.seed ^ 0x4a4d, page);
      switch ((h >> 56) % 64) {
        case 0:  // zero but for one byte
          std::memset(out, 0, kPage);
          out[(h >> 8) % kPage] = static_cast<uint8_t>(1 + (h >> 24) % 255);
          return;
        case 1:  // random first half, zero second half
          FillRandom(h, out, kPage / 2);
          std::memset(out + kPage / 2, 0, kPage / 2);
          return;
        case 2:  // one non-zero byte value throughout
          std::memset(out, 0xff, kPage);
          return;
        default:
          FillRandom(h, out, kPage);
          return;
      }
    }
  }
}

}  // namespace

void GeneratePattern(const PatternSpec& spec, uint64_t offset, uint8_t* out, size_t len) {
  uint8_t tmp[kPage];
  while (len > 0) {
    const uint64_t page = offset / kPage;
    const size_t in_page = static_cast<size_t>(offset % kPage);
    const size_t n = std::min<size_t>(len, kPage - in_page);
    if (in_page == 0 && n == kPage) {
      GeneratePage(spec, page, out);
    } else {
      GeneratePage(spec, page, tmp);
      std::memcpy(out, tmp + in_page, n);
    }
    out += n;
    offset += n;
    len -= n;
  }
}

Status WritePatternFile(const std::string& path, const PatternSpec& spec) {
  if (spec.random_pct + spec.zero_pct + spec.text_pct != 100) {
    return Status::InvalidArgument("PatternSpec percentages must add up to 100");
  }
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoStatus("open " + path);
  constexpr size_t kChunk = 4 << 20;
  std::unique_ptr<uint8_t[]> buf(new uint8_t[kChunk]);
  for (uint64_t off = 0; off < spec.size; off += kChunk) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, spec.size - off));
    GeneratePattern(spec, off, buf.get(), n);
    FERRY_RETURN_IF_ERROR(WriteFull(fd.get(), buf.get(), n, path));
  }
  if (::fsync(fd.get()) != 0 && errno != EINVAL) return ErrnoStatus("fsync " + path);
  return Status::Ok();
}

}  // namespace ferry::test
