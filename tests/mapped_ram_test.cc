// mapped-ram end to end: a real MigrationSource saves into a real file on
// ext4 (/var/tmp, so O_DIRECT works) through MappedRamSink, a real
// MigrationDestination loads it back through the mapped-ram receiver. Every
// round trip is checked twice: memcmp of the guest memory and ferry's
// verification section (per-page hashes) inside the stream.
//
// Also: the file layout byte by byte, a live save with a writer dirtying
// pages while the save runs, cancel, and damaged files (truncated anywhere,
// corrupted headers and bitmaps, wrong block lists, plain vs mapped-ram
// streams), each of which must fail with a clear message and never crash.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <future>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/migration.h"
#include "core/wire.h"
#include "file/file_channel.h"
#include "file/mapped_ram.h"
#include "file/stats.h"

namespace ferry {
namespace {

using namespace std::chrono_literals;
using mapped_ram::FileOptions;
using mapped_ram::Header;

constexpr uint64_t kMiB = 1 << 20;

// ---------------------------------------------------------------------------
// Helpers

class ScratchDir {
 public:
  ScratchDir() {
    char tmpl[] = "/var/tmp/ferry-mram-XXXXXX";
    const char* p = ::mkdtemp(tmpl);
    if (p) path_ = p;
  }
  ~ScratchDir() {
    if (!path_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  bool ok() const { return !path_.empty(); }
  std::string Path(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Anonymous, page-aligned, zero-filled memory (a fresh guest mapping).
class Mapping {
 public:
  explicit Mapping(uint64_t size) : size_(size) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) data_ = static_cast<uint8_t*>(p);
  }
  ~Mapping() {
    if (data_) ::munmap(data_, size_);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // Back to all zeros (as a fresh mapping).
  void Reset() { ::madvise(data_, size_, MADV_DONTNEED); }

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_;
};

struct BlockSpec {
  std::string name;
  uint64_t length;
};

struct Guest {
  explicit Guest(const std::vector<BlockSpec>& specs) {
    for (const BlockSpec& s : specs) {
      mem.push_back(std::make_unique<Mapping>(s.length));
      EXPECT_NE(mem.back()->data(), nullptr);
      Status st = blocks.Add(s.name, mem.back()->data(), s.length);
      EXPECT_TRUE(st.ok()) << st.ToString();
    }
  }
  void Reset() {
    for (auto& m : mem) m->Reset();
  }
  std::vector<std::unique_ptr<Mapping>> mem;
  RamBlockList blocks;
};

bool PageIsZero(const uint8_t* p) {
  for (size_t i = 0; i < kPageSize; ++i) {
    if (p[i]) return false;
  }
  return true;
}

// Fills pages: `zero_percent` of them stay zero, a few hold a single
// non-zero byte (zero detection must not drop them), the rest are random.
void Fill(uint8_t* p, uint64_t len, uint64_t seed, int zero_percent) {
  std::mt19937_64 rng(seed);
  for (uint64_t off = 0; off < len; off += kPageSize) {
    uint8_t* page = p + off;
    const int pick = static_cast<int>(rng() % 100);
    if (pick < zero_percent) {
      std::memset(page, 0, kPageSize);
    } else if (pick < zero_percent + 3) {
      std::memset(page, 0, kPageSize);
      page[rng() % kPageSize] = static_cast<uint8_t>(1 + rng() % 255);
    } else {
      for (size_t i = 0; i < kPageSize; i += 8) {
        const uint64_t v = rng();
        std::memcpy(page + i, &v, 8);
      }
    }
  }
}

void FillGuest(Guest& g, uint64_t seed, int zero_percent) {
  for (size_t i = 0; i < g.blocks.size(); ++i) Fill(g.blocks[i].host, g.blocks[i].used_length, seed + i, zero_percent);
}

uint64_t NonZeroPages(const Guest& g) {
  uint64_t n = 0;
  for (const RamBlock& b : g.blocks) {
    for (uint64_t i = 0; i < b.pages(); ++i) n += !PageIsZero(b.page(i));
  }
  return n;
}

// Zero pages in runs of zero pages shorter than `min_run` (per block): the
// space a preallocated save keeps for them.
uint64_t ShortGapPages(const Guest& g, uint64_t min_run) {
  uint64_t n = 0;
  for (const RamBlock& b : g.blocks) {
    uint64_t run = 0;
    for (uint64_t i = 0; i <= b.pages(); ++i) {
      if (i < b.pages() && PageIsZero(b.page(i))) {
        ++run;
        continue;
      }
      if (run < min_run) n += run;
      run = 0;
    }
  }
  return n;
}

// Compares two guests block by block; names the first differing page.
::testing::AssertionResult SameMemory(const Guest& a, const Guest& b) {
  if (a.blocks.size() != b.blocks.size()) return ::testing::AssertionFailure() << "block counts differ";
  for (size_t i = 0; i < a.blocks.size(); ++i) {
    const RamBlock& x = a.blocks[i];
    const RamBlock& y = b.blocks[i];
    if (x.used_length != y.used_length) return ::testing::AssertionFailure() << "block sizes differ";
    if (std::memcmp(x.host, y.host, x.used_length) == 0) continue;
    for (uint64_t p = 0; p < x.pages(); ++p) {
      if (std::memcmp(x.page(p), y.page(p), kPageSize) != 0) {
        return ::testing::AssertionFailure() << "block '" << x.name << "' page " << p << " differs";
      }
    }
  }
  return ::testing::AssertionSuccess();
}

struct SaveResult {
  Status status;
  MigrationStats stats;
};

// Saves `g` into `path` with mapped-ram.
SaveResult SaveMapped(const std::string& path, Guest& g, const FileOptions& opts, MigrationParams params = {},
                      DirtyTracker* tracker = nullptr, GuestControl* control = nullptr, uint64_t file_offset = 0,
                      std::function<void(MigrationSource&)> during = {}) {
  SaveResult out;
  auto f = CreateFileForSave(path, file_offset);
  if (!f.ok()) {
    out.status = f.status();
    return out;
  }
  std::unique_ptr<DirtyTracker> own;
  if (!tracker) {
    auto t = MakeDirtyTracker(DirtyTrackerKind::kAllOnce);
    if (!t.ok()) {
      out.status = t.status();
      return out;
    }
    own = std::move(*t);
    tracker = own.get();
  }
  mapped_ram::MappedRamSinkFactory factory(**f, opts);
  MigrationSource src(std::move(params), g.blocks, *tracker, control, {}, &factory);
  if (during) {
    auto run = std::async(std::launch::async, [&] { return src.Run(**f, false); });
    during(src);
    out.status = run.get();
  } else {
    out.status = src.Run(**f, false);
  }
  out.stats = src.Stats();
  if (out.status.ok()) out.status = (*f)->Finish();
  return out;
}

// Saves `g` as a plain stream (no mapped-ram). `claim_mapped_ram`: the
// configuration section says mapped-ram anyway (a stream that lies, to reach
// the loader's own checks behind the configuration check).
Status SavePlain(const std::string& path, Guest& g, bool claim_mapped_ram = false) {
  auto f = CreateFileForSave(path, 0);
  if (!f.ok()) return f.status();
  auto t = MakeDirtyTracker(DirtyTrackerKind::kAllOnce);
  if (!t.ok()) return t.status();
  // Page records in the main stream, announcing mapped-ram when asked to.
  class Sinks final : public PageSinkFactory {
   public:
    explicit Sinks(bool claim) : claim_(claim) {}
    Result<std::unique_ptr<PageSink>> Make(StreamWriter& w) override {
      return std::unique_ptr<PageSink>(std::make_unique<StreamSink>(w));
    }
    std::vector<std::string> announced_capabilities() const override {
      return claim_ ? std::vector<std::string>{"mapped-ram"} : std::vector<std::string>{};
    }

   private:
    bool claim_;
  } sinks(claim_mapped_ram);
  MigrationSource src(MigrationParams{}, g.blocks, **t, nullptr, {}, &sinks);
  FERRY_RETURN_IF_ERROR(src.Run(**f, false));
  return (*f)->Finish();
}

struct LoadResult {
  Status status;
  MigrationStats stats;
};

// Loads `path` into `g`; `mapped` false: without the mapped-ram receiver.
// `claim_mapped_ram`: the destination expects mapped-ram in the stream's
// configuration even without the receiver (which announces it itself).
LoadResult Load(const std::string& path, Guest& g, const FileOptions& opts, bool mapped = true,
                uint64_t file_offset = 0, bool claim_mapped_ram = false) {
  LoadResult out;
  auto f = OpenFileForLoad(path, file_offset);
  if (!f.ok()) {
    out.status = f.status();
    return out;
  }
  auto receiver = mapped_ram::MakeMappedRamReceiver(**f, opts);
  DestinationOptions d;
  d.expect_verify = true;
  d.send_verdict = false;
  d.receiver = mapped ? receiver.get() : nullptr;
  if (claim_mapped_ram) d.capabilities = {"mapped-ram"};
  MigrationDestination dst(d, g.blocks, nullptr);
  out.status = dst.Run(**f);
  out.stats = dst.Stats();
  return out;
}

std::vector<uint8_t> ReadFile(const std::string& path) {
  std::vector<uint8_t> out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  struct stat st {};
  ::fstat(fd, &st);
  out.resize(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < out.size()) {
    ssize_t n = ::pread(fd, out.data() + got, out.size() - got, static_cast<off_t>(got));
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  ::close(fd);
  out.resize(got);
  return out;
}

void WriteFile(const std::string& path, const std::vector<uint8_t>& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    ASSERT_GT(n, 0);
    done += static_cast<size_t>(n);
  }
  ::close(fd);
}

struct stat StatOf(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0);
  return st;
}

uint64_t Be(const std::vector<uint8_t>& b, uint64_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | b.at(at + i);
  return v;
}

void PutBe(std::vector<uint8_t>& b, uint64_t at, uint64_t v, int bytes) {
  for (int i = bytes - 1; i >= 0; --i) {
    b.at(at + i) = static_cast<uint8_t>(v);
    v >>= 8;
  }
}

uint64_t RoundUp(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// What the parser found for one block of a mapped-ram file.
struct ParsedBlock {
  std::string name;
  uint64_t length = 0;
  uint64_t header_offset = 0;
  Header header;
};
struct ParsedFile {
  std::vector<ParsedBlock> blocks;
  uint64_t after_blocks = 0;  // where the main stream resumes after the last block
};

// Walks a ferry mapped-ram file from `start` up to the end of the block list.
void ParseFile(const std::vector<uint8_t>& f, uint64_t start, ParsedFile* out) {
  uint64_t at = start;
  ASSERT_EQ(Be(f, at, 4), wire::kMagic);
  ASSERT_EQ(Be(f, at + 4, 4), wire::kVersion);
  at += 8;
  ASSERT_EQ(f.at(at), wire::kConfiguration);
  const uint64_t mlen = Be(f, at + 1, 4);
  at += 5 + mlen;
  // The capabilities subsection: the sink announces "mapped-ram".
  ASSERT_EQ(f.at(at), wire::kSubsection);
  const std::string caps_name = "configuration/capabilities";
  ASSERT_EQ(f.at(at + 1), caps_name.size());
  ASSERT_EQ(std::string(f.begin() + at + 2, f.begin() + at + 2 + caps_name.size()), caps_name);
  at += 2 + caps_name.size() + 4;  // name, be32 version
  ASSERT_EQ(Be(f, at, 4), 1u) << "one capability";
  at += 4;
  ASSERT_EQ(std::string(f.begin() + at + 1, f.begin() + at + 1 + f.at(at)), "mapped-ram");
  at += 1 + f.at(at);
  ASSERT_EQ(f.at(at), wire::kSectionStart);
  at += 5;  // type, id
  ASSERT_EQ(f.at(at), 3);
  ASSERT_EQ(std::string(f.begin() + at + 1, f.begin() + at + 4), "ram");
  at += 4 + 8;  // name, instance, version
  const uint64_t mem = Be(f, at, 8);
  ASSERT_EQ(mem & wire::kRamFlagMask, wire::kRamMemSize);
  const uint64_t total = mem & kPageMask;
  at += 8;
  uint64_t sum = 0;
  while (sum < total) {
    ParsedBlock b;
    const uint8_t len = f.at(at);
    b.name.assign(f.begin() + at + 1, f.begin() + at + 1 + len);
    b.length = Be(f, at + 1 + len, 8);
    at += 1 + len + 8;
    b.header_offset = at;
    auto h = mapped_ram::DecodeHeader(&f.at(at));
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    b.header = *h;
    at = b.header.pages_offset + b.length;
    sum += b.length;
    out->blocks.push_back(b);
  }
  out->after_blocks = at;
}

FileOptions Opts(uint32_t channels, bool direct) {
  FileOptions o;
  o.channels = channels;
  o.direct_io = direct;
  o.note = [](std::string_view line) { std::fprintf(stderr, "note: %.*s\n", int(line.size()), line.data()); };
  return o;
}

// ---------------------------------------------------------------------------
// Header, bitmap size, layout arithmetic

TEST(MappedRamFormat, HeaderBytesAreBigEndianAndPacked) {
  Header h;
  h.bitmap_offset = 0x1122334455667788ull;
  h.pages_offset = 0x0000000000100000ull;
  uint8_t raw[mapped_ram::kHeaderSize];
  mapped_ram::EncodeHeader(h, raw);
  const uint8_t want[28] = {0x00, 0x00, 0x00, 0x01,                          // version
                            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00,  // page size
                            0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88,  // bitmap offset
                            0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x00, 0x00}; // pages offset
  EXPECT_EQ(std::memcmp(raw, want, sizeof(want)), 0);
  auto back = mapped_ram::DecodeHeader(raw);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->version, 1u);
  EXPECT_EQ(back->page_size, 4096u);
  EXPECT_EQ(back->bitmap_offset, h.bitmap_offset);
  EXPECT_EQ(back->pages_offset, h.pages_offset);
}

TEST(MappedRamFormat, DecodeRejectsVersionAndPageSize) {
  Header h;
  uint8_t raw[mapped_ram::kHeaderSize];

  h.version = 2;
  mapped_ram::EncodeHeader(h, raw);
  auto r = mapped_ram::DecodeHeader(raw);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kProtocol);
  EXPECT_EQ(r.status().message(), "mapped-ram header version 2 is not supported (expected 1)");

  h.version = 0;
  mapped_ram::EncodeHeader(h, raw);
  r = mapped_ram::DecodeHeader(raw);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("version 0 is not supported (expected 1)"), std::string::npos);
  EXPECT_NE(r.status().message().find("is this a plain stream? load without -c mapped-ram=on"), std::string::npos);

  h.version = 1;
  h.page_size = 8192;
  mapped_ram::EncodeHeader(h, raw);
  r = mapped_ram::DecodeHeader(raw);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kProtocol);
  EXPECT_NE(r.status().message().find("page size 8192 is not 4096"), std::string::npos) << r.status().message();
}

TEST(MappedRamFormat, BitmapBytesAndLayout) {
  EXPECT_EQ(mapped_ram::BitmapBytes(1), 8u);
  EXPECT_EQ(mapped_ram::BitmapBytes(64), 8u);
  EXPECT_EQ(mapped_ram::BitmapBytes(65), 16u);
  EXPECT_EQ(mapped_ram::BitmapBytes(262144), 32768u);

  Header h = mapped_ram::LayoutFor(0, 4096);
  EXPECT_EQ(h.version, 1u);
  EXPECT_EQ(h.page_size, 4096u);
  EXPECT_EQ(h.bitmap_offset, 28u);
  EXPECT_EQ(h.pages_offset, kMiB);

  // A bitmap that ends exactly on a MiB boundary needs no padding.
  const uint64_t pages = 64 * 100;  // 800 bytes of bitmap
  h = mapped_ram::LayoutFor(kMiB - 28 - 800, pages * kPageSize);
  EXPECT_EQ(h.bitmap_offset, kMiB - 800);
  EXPECT_EQ(h.pages_offset, kMiB);
  h = mapped_ram::LayoutFor(kMiB - 28 - 800 + 1, pages * kPageSize);
  EXPECT_EQ(h.pages_offset, 2 * kMiB);

  // 1 TiB block: 32 MiB of bitmap.
  h = mapped_ram::LayoutFor(5 * kMiB + 77, 1ull << 40);
  EXPECT_EQ(h.bitmap_offset, 5 * kMiB + 105);
  EXPECT_EQ(h.pages_offset, 38 * kMiB);
}

// ---------------------------------------------------------------------------
// Round trips

struct RoundTripCase {
  uint32_t channels;
  bool direct;
};

class MappedRamRoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(MappedRamRoundTrip, SaveThenLoad) {
  const RoundTripCase c = GetParam();
  ScratchDir dir;
  ASSERT_TRUE(dir.ok());
  const std::vector<BlockSpec> specs = {{"pc.ram", 40 * kMiB}, {"vga.vram", kMiB + kPageSize}, {"pc.rom", 65 * kPageSize}};
  Guest src(specs);
  FillGuest(src, 1000 + c.channels * 10 + c.direct, 30);
  const uint64_t nonzero = NonZeroPages(src);
  const std::string path = dir.Path("vm.mig");

  SaveResult saved = SaveMapped(path, src, Opts(c.channels, c.direct));
  ASSERT_TRUE(saved.status.ok()) << saved.status.ToString();
  EXPECT_EQ(saved.stats.state, MigrationState::kCompleted);
  EXPECT_EQ(saved.stats.ram.normal, nonzero);
  EXPECT_GE(saved.stats.ram.transferred, nonzero * kPageSize);
  if (c.channels > 0) {
    // Stats() after Run: the sink is gone; counters are checked below via
    // the destination instead.
  }

  // The file holds the non-zero pages and little else. With direct-io the
  // page regions were preallocated: short gaps between data keep their
  // space, long runs of zero pages were given back.
  const struct stat st = StatOf(path);
  const uint64_t ram = src.blocks.total_bytes();
  EXPECT_LE(static_cast<uint64_t>(st.st_size), ram + 4 * kMiB);
  const uint64_t allocated = static_cast<uint64_t>(st.st_blocks) * 512;
  const uint64_t kept = c.direct ? ShortGapPages(src, mapped_ram::kMinPunchPages) : 0;
  EXPECT_GE(allocated, (nonzero + kept) * kPageSize);
  EXPECT_LE(allocated, (nonzero + kept) * kPageSize + 2 * kMiB);

  Guest dst(specs);
  LoadResult loaded = Load(path, dst, Opts(c.channels, c.direct));
  ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
  EXPECT_TRUE(loaded.stats.verified);
  EXPECT_EQ(loaded.stats.ram.normal, nonzero);
  EXPECT_TRUE(SameMemory(src, dst));

  // The same file loads with any other channel count and I/O mode.
  Guest dst2(specs);
  LoadResult again = Load(path, dst2, Opts(c.channels ? 0 : 3, !c.direct));
  ASSERT_TRUE(again.status.ok()) << again.status.ToString();
  EXPECT_TRUE(again.stats.verified);
  EXPECT_TRUE(SameMemory(src, dst2));
}

INSTANTIATE_TEST_SUITE_P(Modes, MappedRamRoundTrip,
                         ::testing::Values(RoundTripCase{0, false}, RoundTripCase{0, true}, RoundTripCase{2, false},
                                           RoundTripCase{2, true}, RoundTripCase{4, false},
                                           RoundTripCase{4, true}),
                         [](const ::testing::TestParamInfo<RoundTripCase>& i) {
                           return "channels" + std::to_string(i.param.channels) +
                                  (i.param.direct ? "_direct" : "_buffered");
                         });

TEST(MappedRam, ThreadCountersReachTheStats) {
  ScratchDir dir;
  ASSERT_TRUE(dir.ok());
  const std::vector<BlockSpec> specs = {{"pc.ram", 16 * kMiB}};
  Guest src(specs);
  FillGuest(src, 7, 0);
  const std::string path = dir.Path("vm.mig");
  std::vector<FileThread> seen;
  MigrationParams params;
  params.max_bandwidth = 64 * kMiB;  // a quarter of a second to look at it
  SaveResult saved = SaveMapped(path, src, Opts(3, false), params, nullptr, nullptr, 0,
                                [&](MigrationSource& s) {
                                  // Sample while it runs (hang guard only).
                                  for (int i = 0; i < 2000; ++i) {
                                    MigrationStats st = s.Stats();
                                    const auto& threads = FileThreadStats::Of(st).threads;
                                    if (!threads.empty()) seen = threads;
                                    if (IsTerminal(st.state)) break;
                                    std::this_thread::sleep_for(1ms);
                                  }
                                });
  ASSERT_TRUE(saved.status.ok()) << saved.status.ToString();
  ASSERT_EQ(seen.size(), 3u) << "per-thread counters never showed up in the source's stats";
  uint64_t sent = 0;
  for (const FileThread& c : seen) sent += c.bytes;
  EXPECT_GT(sent, 0u);

  Guest dst(specs);
  LoadResult loaded = Load(path, dst, Opts(3, false));
  ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
  ASSERT_EQ(FileThreadStats::Of(loaded.stats).threads.size(), 3u);
  uint64_t pages = 0;
  for (const FileThread& c : FileThreadStats::Of(loaded.stats).threads) pages += c.pages;
  EXPECT_EQ(pages, src.blocks.total_pages());
  EXPECT_TRUE(SameMemory(src, dst));
}

TEST(MappedRam, PwritevEngineRoundTrip) {
  ScratchDir dir;
  ASSERT_TRUE(dir.ok());
  const std::vector<BlockSpec> specs = {{"pc.ram", 8 * kMiB}, {"rom", 5 * kPageSize}};
  Guest src(specs);
  FillGuest(src, 17, 25);
  const std::string path = dir.Path("vm.mig");
  for (uint32_t channels : {0u, 2u}) {
    FileOptions o = Opts(channels, channels != 0);
    o.allow_uring = false;
    SaveResult saved = SaveMapped(path, src, o);
    ASSERT_TRUE(saved.status.ok()) << saved.status.ToString();
    Guest dst(specs);
    LoadResult loaded = Load(path, dst, o);
    ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
    EXPECT_TRUE(loaded.stats.verified);
    EXPECT_TRUE(SameMemory(src, dst));
  }
}

// Preallocation: reserved page regions, long zero runs given back at
// completion, short gaps kept (and written with the data around them); off:
// the file is exactly as sparse as the guest. Registered buffers (off by
// default) still round-trip.
TEST(MappedRam, PreallocationKeepsOnlyShortGaps) {
  ScratchDir dir;
  ASSERT_TRUE(dir.ok());
  const std::vector<BlockSpec> specs = {{"pc.ram", 16 * kMiB}, {"rom", 7 * kPageSize}};
  Guest src(specs);
  // 1 MiB of data, 1 MiB of zeros, ...; inside each data MiB one isolated
  // zero page and a gap of 8 zero pages (both shorter than kMinPunchPages).
  std::mt19937_64 rng(99);
  RamBlock& ram = src.blocks[0];
  for (uint64_t p = 0; p < ram.pages(); ++p) {
    const uint64_t in_mib = p % 256;
    const bool data_mib = (p / 256) % 2 == 0;
    if (!data_mib || in_mib == 17 || (in_mib >= 100 && in_mib < 108)) continue;
    for (size_t i = 0; i < kPageSize; i += 8) {
      const uint64_t v = rng() | 1;
      std::memcpy(ram.page(p) + i, &v, 8);
    }
  }
  std::memset(src.blocks[1].host, 0x5a, src.blocks[1].used_length);
  const uint64_t nonzero = NonZeroPages(src);
  const uint64_t kept = ShortGapPages(src, mapped_ram::kMinPunchPages);
  ASSERT_EQ(kept, 8u * 9);  // 8 data MiB x (1 + 8) pages
  const std::string path = dir.Path("vm.mig");

  struct Case {
    const char* name;
    FileOptions::Preallocate mode;
    bool direct;
    bool register_buffers;
    bool expect_reserved;
  };
  for (const Case& c : {Case{"auto+direct", FileOptions::Preallocate::kAuto, true, false, true},
                        Case{"auto", FileOptions::Preallocate::kAuto, false, false, false},
                        Case{"on", FileOptions::Preallocate::kOn, false, true, true},
                        Case{"off+direct", FileOptions::Preallocate::kOff, true, true, false}}) {
    SCOPED_TRACE(c.name);
    FileOptions o = Opts(2, c.direct);
    o.preallocate = c.mode;
    o.register_buffers = c.register_buffers;
    SaveResult saved = SaveMapped(path, src, o);
    ASSERT_TRUE(saved.status.ok()) << saved.status.ToString();
    // Requests: in reserved space the short gaps are written with the data
    // around them, so each data MiB is one request; otherwise three.
    uint64_t requests = 0;
    for (const auto& ch : FileThreadStats::Of(saved.stats).threads) requests += ch.requests;
    EXPECT_EQ(requests, c.expect_reserved ? 8u + 1 : 8u * 3 + 1);
    const uint64_t allocated = static_cast<uint64_t>(StatOf(path).st_blocks) * 512;
    const uint64_t expected = (nonzero + (c.expect_reserved ? kept : 0)) * kPageSize;
    EXPECT_GE(allocated, expected);
    EXPECT_LE(allocated, expected + 2 * kMiB);
    Guest dst(specs);
    LoadResult loaded = Load(path, dst, o);
    ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
    EXPECT_TRUE(loaded.stats.verified);
    EXPECT_EQ(loaded.stats.ram.normal, nonzero);
    EXPECT_TRUE(SameMemory(src, dst));
  }

  // The loader reads short gaps along with the data around them: whatever
  // the file holds at a page whose bit is clear (here: garbage at the
  // isolated zero page 17 and inside the 8-page gap) must not reach memory.
  ParsedFile pf;
  const std::vector<uint8_t> bytes = ReadFile(path);
  ASSERT_NO_FATAL_FAILURE(ParseFile(bytes, 0, &pf));
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  ASSERT_TRUE(fd.valid());
  std::vector<uint8_t> junk(kPageSize, 0xee);
  for (uint64_t page : {17u, 103u, 256u * 2 + 17}) {
    const uint64_t at = pf.blocks[0].header.pages_offset + page * kPageSize;
    ASSERT_EQ(::pwrite(fd.get(), junk.data(), junk.size(), static_cast<off_t>(at)), ssize_t(kPageSize));
  }
  fd.Reset();
  for (uint32_t channels : {0u, 2u}) {
    Guest dst(specs);
    LoadResult loaded = Load(path, dst, Opts(channels, true));
    ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
    EXPECT_TRUE(loaded.stats.verified);
    EXPECT_TRUE(SameMemory(src, dst));
  }
}

TEST(MappedRam, LoadIntoUsedMemory) {
  // fresh_memory = false: pages whose bit is clear are zeroed by the
  // receiver, whatever the memory held before.
  ScratchDir dir;
  ASSERT_TRUE(dir.ok());
  const std::vector<BlockSpec> specs = {{"pc.ram", 4 * kMiB}};
  Guest src(specs);
  FillGuest(src, 23, 50);
  const std::string path = dir.Path("vm.mig");
  SaveResult saved = SaveMapped(path, src, Opts(0, false));
  ASSERT_TRUE(saved.status.ok()) << saved.status.ToString();
  for (uint32_t channels : {0u, 3u}) {
    Guest dst(specs);
    std::memset(dst.blocks[0].host, 0xee, dst.blocks[0].used_length);
    FileOptions o = Opts(channels, false);
    o.fresh_memory = false;
    LoadResult loaded = Load(path, dst, o);
    ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
    EXPECT_TRUE(SameMemory(src, dst));
  }
}

TEST(MappedRam, SaveAtAFileOffset) {
  ScratchDir dir;
  ASSERT_TRUE(dir.ok());
  const std::string path = dir.Path("vm.mig");
  const uint64_t offset = 12345;
  ASSERT_NO_FATAL_FAILURE(WriteFile(path, std::vector<uint8_t>(offset, 0xab)));
  const std::vector<BlockSpec> specs = {{"pc.ram", 4 * kMiB}, {"extra", 3 * kPageSize}};
  Guest src(specs);
  FillGuest(src, 99, 40);
  SaveResult saved = SaveMapped(path, src, Opts(2, true), MigrationParams{}, nullptr, nullptr, offset);
  ASSERT_TRUE(saved.status.ok()) << saved.status.ToString();
  const std::vector<uint8_t> bytes = ReadFile(path);
  ASSERT_GT(bytes.size(), offset);
  for (uint64_t i = 0; i < offset; ++i) ASSERT_EQ(bytes[i], 0xab) << "prefix byte " << i << " changed";
  ParsedFile pf;
  ASSERT_NO_FATAL_FAILURE(ParseFile(bytes, offset, &pf));
  ASSERT_EQ(pf.blocks.size(), 2u);
  for (const ParsedBlock& b : pf.blocks) {
    EXPECT_EQ(b.header.bitmap_offset, b.header_offset + 28);  // absolute offsets
    EXPECT_EQ(b.header.pages_offset % kMiB, 0u);
  }
  Guest dst(specs);
  LoadResult loaded = Load(path, dst, Opts(0, false), true, offset);
  ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
  EXPECT_TRUE(loaded.stats.verified);
  EXPECT_TRUE(SameMemory(src, dst));
}

// ---------------------------------------------------------------------------
// Layout on disk

TEST(MappedRam, LayoutOfOddSizedBlocks) {
  ScratchDir dir;
  ASSERT_TRUE(dir.ok());
  const std::vector<BlockSpec> specs = {{"a", kPageSize}, {"bb", kMiB + kPageSize}, {"ccc", 65 * kPageSize}};
  Guest src(specs);
  FillGuest(src, 5, 35);
  // Make sure each block has both kinds, and the 65th page of "ccc" (bit 0
  // of its bitmap's second word) has data.
  std::memset(src.blocks[0].host, 0x5a, kPageSize);
  std::memset(src.blocks[1].page(0), 0, kPageSize);
  std::memset(src.blocks[1].page(256), 0x11, kPageSize);
  std::memset(src.blocks[2].page(3), 0, kPageSize);
  std::memset(src.blocks[2].page(64), 0x77, kPageSize);
  const std::string path = dir.Path("vm.mig");
  SaveResult saved = SaveMapped(path, src, Opts(0, false));
  ASSERT_TRUE(saved.status.ok()) << saved.status.ToString();

  const std::vector<uint8_t> f = ReadFile(path);
  ParsedFile pf;
  ASSERT_NO_FATAL_FAILURE(ParseFile(f, 0, &pf));
  ASSERT_EQ(pf.blocks.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    const ParsedBlock& pb = pf.blocks[i];
    const RamBlock& b = src.blocks[i];
    SCOPED_TRACE("block " + b.name);
    EXPECT_EQ(pb.name, b.name);
    EXPECT_EQ(pb.length, b.used_length);
    const Header want = mapped_ram::LayoutFor(pb.header_offset, b.used_length);
    EXPECT_EQ(pb.header.version, 1u);
    EXPECT_EQ(pb.header.page_size, 4096u);
    EXPECT_EQ(pb.header.bitmap_offset, pb.header_offset + 28);
    EXPECT_EQ(pb.header.bitmap_offset, want.bitmap_offset);
    EXPECT_EQ(pb.header.pages_offset, want.pages_offset);
    EXPECT_EQ(pb.header.pages_offset % kMiB, 0u);
    EXPECT_EQ(pb.header.pages_offset,
              RoundUp(pb.header.bitmap_offset + mapped_ram::BitmapBytes(b.pages()), kMiB));
    if (i > 0) {
      // The next block's entry starts right after the previous page region.
      const ParsedBlock& prev = pf.blocks[i - 1];
      EXPECT_EQ(pb.header_offset, prev.header.pages_offset + prev.length + 1 + b.name.size() + 8);
    }
    // Bitmap: little-endian 64-bit words, bit i = page i has data.
    const uint64_t words = mapped_ram::BitmapBytes(b.pages()) / 8;
    for (uint64_t w = 0; w < words; ++w) {
      uint64_t word = 0;
      std::memcpy(&word, &f.at(pb.header.bitmap_offset + w * 8), 8);
      for (uint64_t bit = 0; bit < 64; ++bit) {
        const uint64_t page = w * 64 + bit;
        const bool set = (word >> bit) & 1;
        if (page >= b.pages()) {
          EXPECT_FALSE(set) << "bit " << page << " beyond the page count";
          continue;
        }
        EXPECT_EQ(set, !PageIsZero(b.page(page))) << "page " << page;
        if (set) {
          EXPECT_EQ(std::memcmp(&f.at(pb.header.pages_offset + page * kPageSize), b.page(page), kPageSize), 0)
              << "page " << page << " is not at its place";
        }
      }
    }
  }
  // After the last page region: the rest of the setup section (EOS, footer).
  EXPECT_EQ(Be(f, pf.after_blocks, 8), wire::kRamEos);
  EXPECT_EQ(f.at(pf.after_blocks + 8), wire::kFooter);

  Guest dst(specs);
  LoadResult loaded = Load(path, dst, Opts(2, false));
  ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
  EXPECT_TRUE(SameMemory(src, dst));
}

// ---------------------------------------------------------------------------
// Live save: the guest writes while the save runs.

class WriterGuest final : public GuestControl {
 public:
  WriterGuest(RamBlock& block, DirtyTracker& tracker) : block_(block), tracker_(tracker) {}
  ~WriterGuest() override { Stop(); }

  void Start(MigrationSource* src) {
    src_ = src;
    {
      std::lock_guard<std::mutex> lock(mu_);
      running_ = true;
    }
    thread_ = std::thread([this] { Loop(); });
  }
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  void Pause() override {
    std::unique_lock<std::mutex> lock(mu_);
    pause_ = true;
    pause_flag_.store(true);
    cv_.wait(lock, [&] { return parked_ || stop_ || !running_; });
    paused_seen_ = true;
  }
  void Resume() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      pause_ = false;
      pause_flag_.store(false);
    }
    cv_.notify_all();
  }
  bool paused_seen() const { return paused_seen_; }
  uint64_t writes() const { return writes_.load(); }
  // Pages the writer ever made non-zero that started zero.
  uint64_t touched_zero_pages() const { return touched_zero_.size(); }

  // Layout of what the writer does: a hot set in the first half (data
  // pages), a few pages of the second half (zero pages, made non-zero), and
  // now and then a hot page rewritten to all zeros.
  static constexpr uint64_t kHotPages = 4096;  // 16 MiB
  static constexpr uint64_t kColdTouched = 64;

 private:
  void Loop() {
    std::mt19937_64 rng(42);
    const uint64_t half = block_.pages() / 2;
    const bool mark = tracker_.needs_mark_dirty();
    while (true) {
      if (pause_flag_.load()) {
        std::unique_lock<std::mutex> lock(mu_);
        parked_ = true;
        cv_.notify_all();
        cv_.wait(lock, [&] { return !pause_ || stop_; });
        parked_ = false;
        if (stop_) break;
        continue;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stop_) break;
      }
      // Hot while the source is in its first rounds, then calm so that it
      // converges.
      const bool hot = src_->Stats().ram.dirty_sync_count < 5;
      const int burst = hot ? 64 : 1;
      for (int k = 0; k < burst; ++k) {
        uint64_t page;
        const uint64_t pick = rng() % 1000;
        if (pick < 5) {
          page = half + rng() % kColdTouched;
          touched_zero_.push_back(page);
        } else {
          page = rng() % (hot ? kHotPages : 64);
        }
        uint8_t* p = block_.page(page);
        if (pick >= 5 && pick < 25) {
          std::memset(p, 0, kPageSize);  // becomes a zero page
        } else {
          const uint64_t v = rng() | 1;
          for (size_t i = 0; i < kPageSize; i += 512) std::memcpy(p + i, &v, 8);
        }
        if (mark) tracker_.MarkDirty(p, kPageSize);
        writes_.fetch_add(1);
      }
      std::this_thread::sleep_for(hot ? 100us : 2ms);
    }
    std::lock_guard<std::mutex> lock(mu_);
    running_ = false;
    cv_.notify_all();
  }

  RamBlock& block_;
  DirtyTracker& tracker_;
  MigrationSource* src_ = nullptr;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false, pause_ = false, parked_ = false, running_ = false;
  std::atomic<bool> pause_flag_{false};
  bool paused_seen_ = false;
  std::atomic<uint64_t> writes_{0};
  std::vector<uint64_t> touched_zero_;  // writer thread only until joined
};

class MappedRamLive : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(MappedRamLive, DirtyPagesRewrittenInPlace) {
  const RoundTripCase c = GetParam();
  ScratchDir dir;
  ASSERT_TRUE(dir.ok());
  const std::vector<BlockSpec> specs = {{"pc.ram", 64 * kMiB}};
  Guest src(specs);
  RamBlock& b = src.blocks[0];
  // First half data, second half zero.
  Fill(b.host, b.used_length / 2, 3, 0);
  const uint64_t initial_nonzero = NonZeroPages(src);

  auto tracker = MakeDirtyTracker(DirtyTrackerKind::kBest,
                                  [](std::string_view l) { std::fprintf(stderr, "note: %.*s\n", int(l.size()), l.data()); });
  ASSERT_TRUE(tracker.ok()) << tracker.status().ToString();
  WriterGuest writer(b, **tracker);

  MigrationParams params;
  params.max_bandwidth = 64 * kMiB;  // slow enough for several dirty rounds
  params.downtime_limit_ms = 50;
  const std::string path = dir.Path("live.mig");
  SaveResult saved = SaveMapped(path, src, Opts(c.channels, c.direct), params, tracker->get(), &writer, 0,
                                [&](MigrationSource& s) { writer.Start(&s); });
  writer.Stop();
  ASSERT_TRUE(saved.status.ok()) << saved.status.ToString();
  EXPECT_TRUE(writer.paused_seen());
  EXPECT_GT(writer.writes(), 100u);
  EXPECT_GE(saved.stats.ram.dirty_sync_count, 4u) << "the writer should have forced several rounds";
  std::fprintf(stderr,
               "live save: tracker %s, %" PRIu64 " syncs, %" PRIu64 " pages sent, %" PRIu64 " zero pages, %" PRIu64
               " writes, %" PRIu64 " bytes\n",
               std::string((*tracker)->name()).c_str(), saved.stats.ram.dirty_sync_count, saved.stats.ram.normal,
               saved.stats.ram.duplicate, writer.writes(), saved.stats.ram.transferred);

  // Rewritten in place: the file is no bigger than RAM plus metadata, and
  // holds about the non-zero pages.
  const struct stat st = StatOf(path);
  EXPECT_LE(static_cast<uint64_t>(st.st_size), b.used_length + 3 * kMiB);
  const uint64_t allocated = static_cast<uint64_t>(st.st_blocks) * 512;
  const uint64_t final_nonzero = NonZeroPages(src);
  EXPECT_GE(allocated, final_nonzero * kPageSize);
  EXPECT_LE(allocated, (initial_nonzero + writer.touched_zero_pages()) * kPageSize + 3 * kMiB);

  Guest dst(specs);
  LoadResult loaded = Load(path, dst, Opts(c.channels, c.direct));
  ASSERT_TRUE(loaded.status.ok()) << loaded.status.ToString();
  EXPECT_TRUE(loaded.stats.verified);
  EXPECT_TRUE(SameMemory(src, dst));
}

INSTANTIATE_TEST_SUITE_P(Modes, MappedRamLive,
                         ::testing::Values(RoundTripCase{0, false}, RoundTripCase{2, true},
                                           RoundTripCase{4, false}),
                         [](const ::testing::TestParamInfo<RoundTripCase>& i) {
                           return "channels" + std::to_string(i.param.channels) +
                                  (i.param.direct ? "_direct" : "_buffered");
                         });

TEST(MappedRam, CancelStopsTheWriters) {
  ScratchDir dir;
  ASSERT_TRUE(dir.ok());
  const std::vector<BlockSpec> specs = {{"pc.ram", 64 * kMiB}};
  Guest src(specs);
  FillGuest(src, 8, 0);
  MigrationParams params;
  params.max_bandwidth = 32 * kMiB;
  const std::string path = dir.Path("cancel.mig");
  SaveResult saved = SaveMapped(path, src, Opts(4, false), params, nullptr, nullptr, 0, [&](MigrationSource& s) {
    for (int i = 0; i < 5000 && s.Stats().ram.transferred < 8 * kMiB; ++i) std::this_thread::sleep_for(1ms);
    s.Cancel();
  });
  EXPECT_EQ(saved.status.code(), Code::kCancelled) << saved.status.ToString();
  EXPECT_EQ(saved.stats.state, MigrationState::kCancelled);
  // An unfinished save never loads.
  Guest dst(specs);
  LoadResult loaded = Load(path, dst, Opts(2, false));
  EXPECT_FALSE(loaded.status.ok());
}

// ---------------------------------------------------------------------------
// Damaged and mismatched files

class MappedRamBadFile : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(dir_.ok());
    src_ = std::make_unique<Guest>(specs_);
    FillGuest(*src_, 21, 30);
    good_path_ = dir_.Path("good.mig");
    SaveResult saved = SaveMapped(good_path_, *src_, Opts(0, false));
    ASSERT_TRUE(saved.status.ok()) << saved.status.ToString();
    good_ = ReadFile(good_path_);
    ASSERT_NO_FATAL_FAILURE(ParseFile(good_, 0, &parsed_));
    ASSERT_EQ(parsed_.blocks.size(), 2u);
    dst_ = std::make_unique<Guest>(specs_);
  }

  // Loads `bytes` (written to a file) and expects a failure whose message
  // contains `keyword`.
  void ExpectFailure(const std::vector<uint8_t>& bytes, const std::string& keyword, const FileOptions& o,
                     bool mapped = true) {
    const std::string path = dir_.Path("bad.mig");
    ASSERT_NO_FATAL_FAILURE(WriteFile(path, bytes));
    dst_->Reset();
    LoadResult r = Load(path, *dst_, o, mapped);
    ASSERT_FALSE(r.status.ok()) << "a damaged file loaded successfully (expected: " << keyword << ")";
    EXPECT_NE(r.status.message().find(keyword), std::string::npos)
        << "expected '" << keyword << "' in: " << r.status.ToString();
  }

  void ExpectHeaderFailure(size_t block, size_t field_at, uint64_t value, int bytes, const std::string& keyword) {
    std::vector<uint8_t> f = good_;
    PutBe(f, parsed_.blocks[block].header_offset + field_at, value, bytes);
    SCOPED_TRACE("block " + std::to_string(block) + " field at " + std::to_string(field_at));
    ASSERT_NO_FATAL_FAILURE(ExpectFailure(f, keyword, Opts(0, false)));
    ASSERT_NO_FATAL_FAILURE(ExpectFailure(f, keyword, Opts(2, true)));
  }

  const std::vector<BlockSpec> specs_ = {{"pc.ram", 2 * kMiB}, {"pc.rom", 65 * kPageSize}};
  ScratchDir dir_;
  std::unique_ptr<Guest> src_, dst_;
  std::string good_path_;
  std::vector<uint8_t> good_;
  ParsedFile parsed_;
};

TEST_F(MappedRamBadFile, GoodFileLoads) {
  LoadResult r = Load(good_path_, *dst_, Opts(2, true));
  ASSERT_TRUE(r.status.ok()) << r.status.ToString();
  EXPECT_TRUE(SameMemory(*src_, *dst_));
}

TEST_F(MappedRamBadFile, TruncatedAnywhereFails) {
  const std::string path = dir_.Path("cut.mig");
  ASSERT_NO_FATAL_FAILURE(WriteFile(path, good_));
  const uint64_t size = good_.size();
  std::vector<uint64_t> cuts;
  for (uint64_t at = 0; at < 160 && at < size; ++at) cuts.push_back(at);            // stream head, headers
  for (uint64_t at = 0; at < kMiB && at < size; at += kPageSize) cuts.push_back(at);  // first MiB
  for (uint64_t at = kMiB; at < size; at += 61 * kPageSize + 123) cuts.push_back(at);  // then a stride
  for (const ParsedBlock& b : parsed_.blocks) {
    for (uint64_t at : {b.header_offset, b.header_offset + 27, b.header.bitmap_offset + 1,
                        b.header.pages_offset, b.header.pages_offset + b.length - 1, b.header.pages_offset + b.length}) {
      cuts.push_back(at);
    }
  }
  for (uint64_t at = size > 200 ? size - 200 : 0; at < size; ++at) cuts.push_back(at);  // stream tail
  std::sort(cuts.begin(), cuts.end(), std::greater<>());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());

  size_t n = 0;
  for (uint64_t at : cuts) {
    if (at >= size) continue;
    ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(at)), 0);
    dst_->Reset();
    const FileOptions o = Opts(n % 3 == 0 ? 0 : 2, n % 2 == 0);
    LoadResult r = Load(path, *dst_, o);
    ASSERT_FALSE(r.status.ok()) << "a file truncated at " << at << " of " << size << " bytes loaded successfully";
    ASSERT_FALSE(r.status.message().empty());
    if (at >= parsed_.blocks[0].header.bitmap_offset && at < parsed_.blocks[0].header.pages_offset + parsed_.blocks[0].length) {
      EXPECT_NE(r.status.message().find("past the end of the file"), std::string::npos)
          << "cut at " << at << ": " << r.status.ToString();
    }
    ++n;
  }
  EXPECT_GT(n, 400u);
}

TEST_F(MappedRamBadFile, HeaderVersion) {
  ExpectHeaderFailure(0, 0, 2, 4, "mapped-ram header version 2 is not supported (expected 1)");
  ExpectHeaderFailure(1, 0, 0, 4, "is this a plain stream?");
  ExpectHeaderFailure(1, 0, 0, 4, "block 'pc.rom'");
}

TEST_F(MappedRamBadFile, HeaderPageSize) {
  ExpectHeaderFailure(0, 4, 8192, 8, "page size 8192 is not 4096");
  ExpectHeaderFailure(1, 4, 0, 8, "page size 0 is not 4096");
}

TEST_F(MappedRamBadFile, BitmapOffsets) {
  const uint64_t size = good_.size();
  ExpectHeaderFailure(0, 12, size, 8, "runs past the end of the file");
  ExpectHeaderFailure(1, 12, size - 4, 8, "bitmap at");
  ExpectHeaderFailure(1, 12, ~uint64_t{0} - 3, 8, "runs past the end of the file");
  ExpectHeaderFailure(0, 12, 0, 8, "before the end of its header");
  // The bitmap inside the page region.
  ExpectHeaderFailure(0, 12, parsed_.blocks[0].header.pages_offset, 8, "overlaps its bitmap");
}

TEST_F(MappedRamBadFile, PageRegionOffsets) {
  const uint64_t size = good_.size();
  const ParsedBlock& b0 = parsed_.blocks[0];
  ExpectHeaderFailure(0, 20, b0.header.pages_offset + 1, 8, "not page-aligned");
  ExpectHeaderFailure(0, 20, RoundUp(size, kPageSize), 8, "the save did not finish?");
  ExpectHeaderFailure(1, 20, RoundUp(size, kPageSize) - kPageSize, 8, "runs past the end of the file");
  ExpectHeaderFailure(0, 20, 0xfffffffffffff000ull, 8, "runs past the end of the file");
  ExpectHeaderFailure(0, 20, b0.header_offset & kPageMask, 8, "overlaps its bitmap");
}

TEST_F(MappedRamBadFile, BitBeyondThePageCount) {
  // "pc.rom" has 65 pages: its bitmap's second word may only use bit 0.
  const ParsedBlock& rom = parsed_.blocks[1];
  for (uint64_t bit : {65u, 100u, 127u}) {
    std::vector<uint8_t> f = good_;
    f.at(rom.header.bitmap_offset + bit / 8) |= static_cast<uint8_t>(1u << (bit % 8));
    SCOPED_TRACE("bit " + std::to_string(bit));
    ExpectFailure(f, "bitmap has bit " + std::to_string(bit) + " set, beyond the block's 65 pages", Opts(0, false));
    ExpectFailure(f, "block 'pc.rom'", Opts(4, true));
  }
}

TEST_F(MappedRamBadFile, CorruptPageIsCaughtByVerification) {
  std::vector<uint8_t> f = good_;
  const ParsedBlock& ram = parsed_.blocks[0];
  uint64_t page = 0;
  while (PageIsZero(src_->blocks[0].page(page))) ++page;
  f.at(ram.header.pages_offset + page * kPageSize + 100) ^= 0x40;
  const std::string path = dir_.Path("flip.mig");
  ASSERT_NO_FATAL_FAILURE(WriteFile(path, f));
  LoadResult r = Load(path, *dst_, Opts(2, false));
  ASSERT_FALSE(r.status.ok());
  EXPECT_EQ(r.status.code(), Code::kMismatch) << r.status.ToString();
  EXPECT_NE(r.status.message().find("pc.ram"), std::string::npos) << r.status.ToString();
}

TEST_F(MappedRamBadFile, ClearedBitIsCaughtByVerification) {
  // A page whose bit is clear loads as zeros: the digest tells.
  std::vector<uint8_t> f = good_;
  const ParsedBlock& ram = parsed_.blocks[0];
  uint64_t page = 0;
  while (PageIsZero(src_->blocks[0].page(page))) ++page;
  f.at(ram.header.bitmap_offset + page / 8) &= static_cast<uint8_t>(~(1u << (page % 8)));
  const std::string path = dir_.Path("clear.mig");
  ASSERT_NO_FATAL_FAILURE(WriteFile(path, f));
  LoadResult r = Load(path, *dst_, Opts(0, false));
  ASSERT_FALSE(r.status.ok());
  EXPECT_EQ(r.status.code(), Code::kMismatch) << r.status.ToString();
}

TEST_F(MappedRamBadFile, WrongBlockList) {
  {
    Guest other({{"pc.ram", 2 * kMiB}, {"other.rom", 65 * kPageSize}});
    LoadResult r = Load(good_path_, other, Opts(2, false));
    ASSERT_FALSE(r.status.ok());
    EXPECT_EQ(r.status.code(), Code::kMismatch) << r.status.ToString();
    EXPECT_NE(r.status.message().find("pc.rom"), std::string::npos) << r.status.ToString();
  }
  {
    Guest other({{"pc.ram", 2 * kMiB + kPageSize}, {"pc.rom", 65 * kPageSize}});
    LoadResult r = Load(good_path_, other, Opts(0, true));
    ASSERT_FALSE(r.status.ok());
    EXPECT_NE(r.status.message().find("size mismatch"), std::string::npos) << r.status.ToString();
  }
  {
    Guest other({{"pc.ram", 2 * kMiB}});
    LoadResult r = Load(good_path_, other, Opts(0, false));
    ASSERT_FALSE(r.status.ok());
    EXPECT_EQ(r.status.code(), Code::kMismatch) << r.status.ToString();
  }
}

TEST_F(MappedRamBadFile, PlainStreamWithMappedRamReceiver) {
  // A plain stream with a mapped-ram receiver: the configuration check
  // catches it first...
  {
    const std::string honest = dir_.Path("honest.mig");
    ASSERT_TRUE(SavePlain(honest, *src_).ok());
    LoadResult r = Load(honest, *dst_, Opts(0, false));
    ASSERT_FALSE(r.status.ok());
    EXPECT_NE(r.status.message().find("Capability mapped-ram is on, but received capability is off"),
              std::string::npos)
        << r.status.ToString();
  }
  // ... and when the configuration claims mapped-ram, the loader still does.
  const std::string path = dir_.Path("plain.mig");
  Status s = SavePlain(path, *src_, /*claim_mapped_ram=*/true);
  ASSERT_TRUE(s.ok()) << s.ToString();
  // The plain stream itself is fine.
  {
    Guest plain_dst(specs_);
    LoadResult r = Load(path, plain_dst, Opts(0, false), false, 0, /*claim_mapped_ram=*/true);
    ASSERT_TRUE(r.status.ok()) << r.status.ToString();
    EXPECT_TRUE(SameMemory(*src_, plain_dst));
  }
  for (const FileOptions& o : {Opts(0, false), Opts(2, true)}) {
    dst_->Reset();
    LoadResult r = Load(path, *dst_, o);
    ASSERT_FALSE(r.status.ok());
    EXPECT_EQ(r.status.code(), Code::kProtocol);
    EXPECT_NE(r.status.message().find("is this a plain stream?"), std::string::npos) << r.status.ToString();
    // Behind the first block's entry a plain stream has the second block's.
    EXPECT_NE(r.status.message().find("block 'pc.rom'"), std::string::npos) << r.status.ToString();
  }
  // One block: the plain stream's EOS follows the entry (version 0).
  Guest one({{"solo", 4 * kPageSize}});
  FillGuest(one, 4, 0);
  const std::string one_path = dir_.Path("plain-one.mig");
  ASSERT_TRUE(SavePlain(one_path, one, /*claim_mapped_ram=*/true).ok());
  Guest one_dst({{"solo", 4 * kPageSize}});
  LoadResult r = Load(one_path, one_dst, Opts(0, false));
  ASSERT_FALSE(r.status.ok());
  EXPECT_NE(r.status.message().find("the end of the block list"), std::string::npos) << r.status.ToString();
  EXPECT_NE(r.status.message().find("is this a plain stream? load without -c mapped-ram=on"), std::string::npos)
      << r.status.ToString();
}

TEST_F(MappedRamBadFile, MappedRamFileWithoutReceiver) {
  // The sink announced mapped-ram: a plain destination refuses at the
  // configuration section.
  LoadResult c = Load(good_path_, *dst_, Opts(0, false), false);
  ASSERT_FALSE(c.status.ok());
  EXPECT_EQ(c.status.code(), Code::kMismatch) << c.status.ToString();
  EXPECT_NE(c.status.message().find("Capability mapped-ram is off, but received capability is on"),
            std::string::npos)
      << c.status.ToString();
  // A destination that expects mapped-ram but has no receiver: the loader.
  dst_->Reset();
  LoadResult r = Load(good_path_, *dst_, Opts(0, false), false, 0, /*claim_mapped_ram=*/true);
  ASSERT_FALSE(r.status.ok());
  EXPECT_EQ(r.status.code(), Code::kProtocol) << r.status.ToString();
  EXPECT_NE(r.status.message().find("RAM"), std::string::npos) << r.status.ToString();
}

TEST_F(MappedRamBadFile, PageRecordsAreForbidden) {
  // A plain stream whose block list was followed by a forged mapped-ram
  // header still carries page records: the receiver's forbidden flags stop
  // them.
  Guest one({{"x", 2 * kPageSize}});
  FillGuest(one, 3, 0);
  const std::string plain_path = dir_.Path("plain1.mig");
  ASSERT_TRUE(SavePlain(plain_path, one, /*claim_mapped_ram=*/true).ok());
  std::vector<uint8_t> p = ReadFile(plain_path);
  // Find the block entry: u8 1, "x", be64 8192.
  size_t at = 0;
  for (; at + 10 < p.size(); ++at) {
    if (p[at] == 1 && p[at + 1] == 'x' && Be(p, at + 2, 8) == 2 * kPageSize) break;
  }
  ASSERT_LT(at + 10, p.size());
  const uint64_t header_at = at + 10;
  // Splice a header pointing at an empty page region placed at the end of
  // the file: bitmap all clear, then the stream goes on from there.
  std::vector<uint8_t> f(p.begin(), p.begin() + header_at);
  const uint64_t region = RoundUp(header_at + 28 + 8, kMiB);
  Header h;
  h.bitmap_offset = header_at + 28;
  h.pages_offset = region;
  uint8_t raw[28];
  mapped_ram::EncodeHeader(h, raw);
  f.insert(f.end(), raw, raw + 28);
  f.resize(region + 2 * kPageSize, 0);
  f.insert(f.end(), p.begin() + header_at, p.end());  // EOS, then page records
  Guest dst(std::vector<BlockSpec>{{"x", 2 * kPageSize}});
  const std::string path = dir_.Path("forged.mig");
  ASSERT_NO_FATAL_FAILURE(WriteFile(path, f));
  LoadResult r = Load(path, dst, Opts(0, false));
  ASSERT_FALSE(r.status.ok());
  EXPECT_NE(r.status.message().find("not allowed in this stream"), std::string::npos) << r.status.ToString();
}

}  // namespace
}  // namespace ferry
