// Tests for file/file_channel.cc and file/io_engine.cc.
//
// Everything runs against real files in a scratch directory under /var/tmp
// (a disk filesystem, so O_DIRECT is meaningful there). The disk-full tests
// mount a 4 MiB tmpfs of their own and skip, saying why, when mounting is
// not allowed.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "core/status.h"
#include "core/unique_fd.h"
#include "file/file_channel.h"
#include "file/io_engine.h"
#include "tests/support/text.h"

namespace ferry {
namespace {

using test::Contains;

namespace fs = std::filesystem;

constexpr size_t kPage = 4096;
constexpr size_t kMiB = size_t{1} << 20;

#define ASSERT_OK(expr)                                 \
  do {                                                  \
    ::ferry::Status _st = (expr);                       \
    ASSERT_TRUE(_st.ok()) << #expr << ": " << _st.ToString(); \
  } while (0)
#define EXPECT_OK(expr)                                 \
  do {                                                  \
    ::ferry::Status _st = (expr);                       \
    EXPECT_TRUE(_st.ok()) << #expr << ": " << _st.ToString(); \
  } while (0)

// ---------------------------------------------------------------------------
// Helpers

// A scratch directory, removed with everything in it.
class ScratchDir {
 public:
  ScratchDir() {
    std::string tmpl = "/var/tmp/ferry-file-io-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      ADD_FAILURE() << "mkdtemp under /var/tmp: " << std::strerror(errno);
      return;
    }
    path_ = tmpl;
  }
  ~ScratchDir() {
    if (path_.empty()) return;
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// Page-aligned anonymous memory (what guest RAM looks like to us).
class Memory {
 public:
  explicit Memory(size_t len, int prot = PROT_READ | PROT_WRITE) : len_(len) {
    void* p = ::mmap(nullptr, len, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      ADD_FAILURE() << "mmap " << len << " bytes: " << std::strerror(errno);
      return;
    }
    p_ = static_cast<char*>(p);
  }
  ~Memory() {
    if (p_ != nullptr) ::munmap(p_, len_);
  }
  Memory(const Memory&) = delete;
  Memory& operator=(const Memory&) = delete;

  char* data() const { return p_; }
  size_t size() const { return len_; }
  iovec region() const { return {p_, len_}; }

 private:
  char* p_ = nullptr;
  size_t len_;
};

void FillRandom(char* p, size_t len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t v = rng();
    std::memcpy(p + i, &v, 8);
  }
  for (; i < len; ++i) p[i] = static_cast<char>(rng());
}

std::string ReadWholeFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  EXPECT_TRUE(fd.valid()) << path << ": " << std::strerror(errno);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

void WriteWholeFile(const std::string& path, const std::string& data) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd.valid()) << path << ": " << std::strerror(errno);
  ASSERT_EQ(::write(fd.get(), data.data(), data.size()), static_cast<ssize_t>(data.size()));
}

// Runs of 1..max_run consecutive pages covering [0, pages), shuffled: many
// contiguous runs (which the engines merge) visited in scattered order.
std::vector<std::pair<size_t, size_t>> ScatteredRuns(size_t pages, size_t max_run, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::pair<size_t, size_t>> runs;
  for (size_t first = 0; first < pages;) {
    size_t n = std::min<size_t>(pages - first, 1 + rng() % max_run);
    runs.emplace_back(first, n);
    first += n;
  }
  std::shuffle(runs.begin(), runs.end(), rng);
  return runs;
}

// ---------------------------------------------------------------------------
// FileChannel

TEST(FileChannelTest, WriteThenReadBack) {
  ScratchDir dir;
  std::string path = dir.File("stream");
  {
    auto f = CreateFileForSave(path, 0);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    FileChannel& ch = **f;
    EXPECT_EQ(ch.Describe(), "file:" + path);
    EXPECT_EQ(ch.path(), path);
    EXPECT_GE(ch.fd(), 0);
    EXPECT_EQ(ch.position(), 0u);

    std::string a = "hello ", b = "mapped ", c = "world";
    iovec iov[4] = {{a.data(), a.size()}, {nullptr, 0}, {b.data(), b.size()}, {c.data(), c.size()}};
    ASSERT_OK(ch.WriteAll(std::span<iovec>(iov, 4)));
    ASSERT_OK(ch.WriteAll("!", 1));
    EXPECT_EQ(ch.position(), 19u);
    auto size = ch.Size();
    ASSERT_TRUE(size.ok());
    EXPECT_EQ(*size, 19u);
    ASSERT_OK(ch.Finish());
  }
  EXPECT_EQ(ReadWholeFile(path), "hello mapped world!");

  auto f = OpenFileForLoad(path, 6);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->position(), 6u);
  char buf[32] = {};
  ASSERT_OK((*f)->ReadExact(buf, 13));
  EXPECT_EQ(std::string(buf, 13), "mapped world!");
  EXPECT_EQ((*f)->position(), 19u);
  auto n = (*f)->ReadSome(buf, sizeof(buf));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u) << "end of file reads as a clean end of stream";
  Status st = (*f)->ReadExact(buf, 1);
  EXPECT_EQ(st.code(), Code::kProtocol) << st.ToString();
}

TEST(FileChannelTest, WriteAllWithMoreBuffersThanOneSyscallTakes) {
  ScratchDir dir;
  std::string path = dir.File("many");
  auto f = CreateFileForSave(path, 0);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  constexpr size_t kCount = 5000;
  std::string data(kCount * 3, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>('a' + i % 26);
  std::vector<iovec> iov;
  for (size_t i = 0; i < kCount; ++i) iov.push_back({data.data() + i * 3, 3});
  ASSERT_OK((*f)->WriteAll(iov));
  EXPECT_EQ((*f)->position(), data.size());
  EXPECT_EQ(ReadWholeFile(path), data);
}

TEST(FileChannelTest, PositionedIoLeavesTheStreamPositionAlone) {
  ScratchDir dir;
  std::string path = dir.File("positioned");
  auto f = CreateFileForSave(path, 0);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  FileChannel& ch = **f;
  ASSERT_OK(ch.WriteAll("0123456789", 10));

  std::string x = "XX", y = "YYY";
  iovec iov[2] = {{x.data(), x.size()}, {y.data(), y.size()}};
  ASSERT_OK(ch.PwriteAll(std::span<iovec>(iov, 2), 100));
  EXPECT_EQ(ch.position(), 10u);
  auto size = ch.Size();
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, 105u);

  char buf[8] = {};
  ASSERT_OK(ch.PreadExact(buf, 5, 100));
  EXPECT_EQ(std::string(buf, 5), "XXYYY");
  ASSERT_OK(ch.PreadExact(buf, 4, 3));
  EXPECT_EQ(std::string(buf, 4), "3456");
  EXPECT_EQ(ch.position(), 10u);

  // The hole between 10 and 100 reads as zeros.
  ASSERT_OK(ch.PreadExact(buf, 8, 50));
  EXPECT_EQ(std::string(buf, 8), std::string(8, '\0'));

  ASSERT_OK(ch.Seek(4));
  EXPECT_EQ(ch.position(), 4u);
  ASSERT_OK(ch.WriteAll("ab", 2));
  EXPECT_EQ(ch.position(), 6u);
  ASSERT_OK(ch.Seek(0));
  ASSERT_OK(ch.ReadExact(buf, 8));
  EXPECT_EQ(std::string(buf, 8), "0123ab67");
  EXPECT_EQ(ch.position(), 8u);
}

TEST(FileChannelTest, PreadPastTheEndIsAProtocolErrorNamingTheBytes) {
  ScratchDir dir;
  std::string path = dir.File("short");
  WriteWholeFile(path, std::string(1000, 'z'));
  auto f = OpenFileForLoad(path, 0);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  std::vector<char> buf(200);
  Status st = (*f)->PreadExact(buf.data(), 200, 900);
  EXPECT_EQ(st.code(), Code::kProtocol) << st.ToString();
  EXPECT_TRUE(Contains(st.message(), "file " + path + " ends at 1000, wanted bytes 900..1100")) << st.message();
  st = (*f)->PreadExact(buf.data(), 10, 5000);
  EXPECT_TRUE(Contains(st.message(), "ends at 5000, wanted bytes 5000..5010")) << st.message();
  EXPECT_OK((*f)->PreadExact(buf.data(), 100, 900));
}

TEST(FileChannelTest, SaveAtAnOffsetKeepsThePrefixAndDropsTheTail) {
  ScratchDir dir;
  std::string path = dir.File("offset");
  std::string old(3 * kMiB, 'o');
  for (size_t i = 0; i < 4096; ++i) old[i] = static_cast<char>('A' + i % 26);
  WriteWholeFile(path, old);

  auto f = CreateFileForSave(path, 4096);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->position(), 4096u);
  auto size = (*f)->Size();
  ASSERT_TRUE(size.ok());
  EXPECT_EQ(*size, 4096u) << "a stale longer file must not leave old data behind";
  ASSERT_OK((*f)->WriteAll("new", 3));
  ASSERT_OK((*f)->Finish());
  f = Result<std::unique_ptr<FileChannel>>(Status::Cancelled("closed"));

  std::string now = ReadWholeFile(path);
  ASSERT_EQ(now.size(), 4099u);
  EXPECT_EQ(now.substr(0, 4096), old.substr(0, 4096));
  EXPECT_EQ(now.substr(4096), "new");

  // Loading from the same offset sees only the new stream.
  auto in = OpenFileForLoad(path, 4096);
  ASSERT_TRUE(in.ok()) << in.status().ToString();
  char buf[3];
  ASSERT_OK((*in)->ReadExact(buf, 3));
  EXPECT_EQ(std::string(buf, 3), "new");
}

TEST(FileChannelTest, SaveAtAnOffsetPastTheEndLeavesAHole) {
  ScratchDir dir;
  std::string path = dir.File("grow");
  WriteWholeFile(path, "abc");
  auto f = CreateFileForSave(path, 8192);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ((*f)->position(), 8192u);
  ASSERT_OK((*f)->WriteAll("x", 1));
  std::string now = ReadWholeFile(path);
  ASSERT_EQ(now.size(), 8193u);
  EXPECT_EQ(now.substr(0, 3), "abc");
  EXPECT_EQ(now.substr(3, 8189), std::string(8189, '\0'));
}

TEST(FileChannelTest, SaveCreatesTheFileWithMode0644) {
  ScratchDir dir;
  std::string path = dir.File("fresh");
  mode_t old = ::umask(022);
  auto f = CreateFileForSave(path, 0);
  ::umask(old);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u);
  EXPECT_TRUE(S_ISREG(st.st_mode));
}

TEST(FileChannelTest, OpeningFailuresAreClear) {
  ScratchDir dir;
  std::string path = dir.File("small");
  WriteWholeFile(path, std::string(100, 's'));

  auto f = OpenFileForLoad(path, 101);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), Code::kInvalidArgument);
  EXPECT_TRUE(Contains(f.status().message(), "shorter than offset 101")) << f.status().message();
  EXPECT_TRUE(OpenFileForLoad(path, 100).ok()) << "an offset right at the end is fine";

  f = OpenFileForLoad(dir.path(), 0);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), Code::kInvalidArgument);
  EXPECT_TRUE(Contains(f.status().message(), "not a regular file")) << f.status().message();

  f = OpenFileForLoad(dir.File("missing"), 0);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), Code::kIo);
  EXPECT_EQ(f.status().sys_errno(), ENOENT);
  EXPECT_TRUE(Contains(f.status().message(), dir.File("missing"))) << f.status().message();

  f = CreateFileForSave(dir.File("no/such/dir/file"), 0);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().sys_errno(), ENOENT);

  f = CreateFileForSave(dir.path(), 0);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().sys_errno(), EISDIR) << f.status().ToString();

  f = CreateFileForSave("", 0);
  ASSERT_FALSE(f.ok());
  EXPECT_EQ(f.status().code(), Code::kInvalidArgument);
}

TEST(FileChannelTest, ShutdownMakesLaterCallsFailAsCancelled) {
  ScratchDir dir;
  std::string path = dir.File("shut");
  auto f = CreateFileForSave(path, 0);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  FileChannel& ch = **f;
  ASSERT_OK(ch.WriteAll("abc", 3));
  ch.Shutdown();
  ch.Shutdown();  // idempotent
  EXPECT_EQ(ch.WriteAll("d", 1).code(), Code::kCancelled);
  char buf[4];
  auto n = ch.ReadSome(buf, 4);
  EXPECT_EQ(n.status().code(), Code::kCancelled);
  iovec iov{buf, 1};
  EXPECT_EQ(ch.PwriteAll(std::span<iovec>(&iov, 1), 0).code(), Code::kCancelled);
  EXPECT_EQ(ch.PreadExact(buf, 1, 0).code(), Code::kCancelled);
  EXPECT_EQ(ch.Seek(0).code(), Code::kCancelled);
  EXPECT_EQ(ch.Finish().code(), Code::kCancelled);
  EXPECT_TRUE(Contains(ch.WriteAll("d", 1).message(), "file:" + path)) << "names the channel";
}

// ---------------------------------------------------------------------------
// O_DIRECT probing

TEST(DirectIoTest, ProbeReportsPowerOfTwoAlignments) {
  ScratchDir dir;
  std::string path = dir.File("dio");
  auto missing = ProbeDirectIo(path);  // not created yet: probes the directory
  if (!missing.ok()) {
    ASSERT_EQ(missing.status().code(), Code::kUnsupported) << missing.status().ToString();
    GTEST_SKIP() << "O_DIRECT unsupported under /var/tmp: " << missing.status().message();
  }
  EXPECT_FALSE(fs::exists(path)) << "probing must not create the file";
  for (uint32_t a : {missing->memory, missing->offset}) {
    EXPECT_GE(a, 1u);
    EXPECT_LE(a, 4096u);
    EXPECT_EQ(a & (a - 1), 0u) << a;
  }
  auto on_dir = ProbeDirectIo(dir.path());
  ASSERT_TRUE(on_dir.ok()) << on_dir.status().ToString();

  WriteWholeFile(path, std::string(8192, 'd'));
  auto existing = ProbeDirectIo(path);
  ASSERT_TRUE(existing.ok()) << existing.status().ToString();
  EXPECT_EQ(existing->offset, missing->offset);
  EXPECT_EQ(ReadWholeFile(path), std::string(8192, 'd')) << "probing leaves the file alone";

  auto w = OpenDirect(path, true);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_TRUE(::fcntl(w->get(), F_GETFL) & O_DIRECT);
  EXPECT_EQ(::fcntl(w->get(), F_GETFL) & O_ACCMODE, O_WRONLY);
  auto r = OpenDirect(path, false);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(::fcntl(r->get(), F_GETFL) & O_ACCMODE, O_RDONLY);
}

TEST(DirectIoTest, FailuresNameThePath) {
  ScratchDir dir;
  auto p = ProbeDirectIo(dir.File("no/such/dir/file"));
  ASSERT_FALSE(p.ok());
  EXPECT_TRUE(Contains(p.status().message(), dir.File("no/such/dir"))) << p.status().message();

  auto fd = OpenDirect(dir.File("missing"), false);
  ASSERT_FALSE(fd.ok());
  EXPECT_EQ(fd.status().sys_errno(), ENOENT);
  EXPECT_TRUE(Contains(fd.status().message(), dir.File("missing"))) << fd.status().message();

  auto fifo = dir.File("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  p = ProbeDirectIo(fifo);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), Code::kUnsupported);
}

// ---------------------------------------------------------------------------
// IoEngine

struct EngineCase {
  bool uring;
  bool direct;
};

std::string CaseName(const testing::TestParamInfo<EngineCase>& info) {
  return std::string(info.param.uring ? "uring" : "pwritev") + (info.param.direct ? "_direct" : "_buffered");
}

class EngineTest : public testing::TestWithParam<EngineCase> {
 protected:
  void SetUp() override {
    if (GetParam().direct) {
      auto probe = ProbeDirectIo(dir_.path());
      if (!probe.ok()) GTEST_SKIP() << "O_DIRECT unsupported here: " << probe.status().message();
    }
  }

  // A descriptor for `path` as the case wants it (the file must exist).
  UniqueFd Open(const std::string& path, bool write) {
    if (GetParam().direct) {
      auto fd = OpenDirect(path, write);
      EXPECT_TRUE(fd.ok()) << fd.status().ToString();
      return fd.ok() ? std::move(fd).value() : UniqueFd();
    }
    UniqueFd fd(::open(path.c_str(), (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC));
    EXPECT_TRUE(fd.valid()) << path << ": " << std::strerror(errno);
    return fd;
  }

  std::unique_ptr<IoEngine> Make(int fd, std::vector<iovec> regions = {}, size_t max_request = kMiB,
                                 unsigned depth = 16) {
    IoEngineOptions o;
    o.fd = fd;
    o.queue_depth = depth;
    o.max_request = max_request;
    o.regions = std::move(regions);
    o.allow_uring = GetParam().uring;
    notes_.clear();
    auto e = MakeIoEngine(o, [this](std::string_view n) { notes_.emplace_back(n); });
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    if (!e.ok()) return nullptr;
    if (GetParam().uring && (*e)->name() != "io_uring") {
      ADD_FAILURE() << "io_uring is unavailable here: " << (notes_.empty() ? "(no notice)" : notes_[0]);
    }
    if (!GetParam().uring) {
      EXPECT_EQ((*e)->name(), "pwritev");
      EXPECT_TRUE(notes_.empty()) << "forcing pwritev is not worth a notice";
    }
    return std::move(e).value();
  }

  std::string NewFile(const std::string& name) {
    std::string path = dir_.File(name);
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    EXPECT_TRUE(fd.valid()) << path << ": " << std::strerror(errno);
    return path;
  }

  ScratchDir dir_;
  std::vector<std::string> notes_;
};

// 64 MiB of pages written in scattered order (with many contiguous runs)
// at a 1 MiB base offset, then read back in a different order, byte-exact.
TEST_P(EngineTest, ScatteredPagesRoundTrip) {
  constexpr size_t kBytes = 64 * kMiB;
  constexpr size_t kPages = kBytes / kPage;
  constexpr uint64_t kBase = kMiB;
  Memory src(kBytes), dst(kBytes);
  ASSERT_NE(src.data(), nullptr);
  ASSERT_NE(dst.data(), nullptr);
  FillRandom(src.data(), kBytes, 42);
  std::memset(dst.data(), 0x5a, kBytes);
  std::string path = NewFile("pages");

  auto write_runs = ScatteredRuns(kPages, 64, 1);
  {
    UniqueFd fd = Open(path, true);
    ASSERT_TRUE(fd.valid());
    auto io = Make(fd.get(), {src.region(), dst.region()});
    ASSERT_NE(io, nullptr);
    for (auto [first, n] : write_runs) {
      for (size_t p = first; p < first + n; ++p) {
        ASSERT_OK(io->Write(src.data() + p * kPage, kPage, kBase + p * kPage));
      }
    }
    ASSERT_OK(io->Drain());
    IoEngine::Stats s = io->stats();
    EXPECT_EQ(s.bytes, kBytes);
    EXPECT_LE(s.requests, write_runs.size()) << "contiguous pages are merged";
    EXPECT_GE(s.requests, kBytes / kMiB) << "no request exceeds max_request";
    if (GetParam().uring) {
      EXPECT_TRUE(s.registered);
      EXPECT_EQ(s.fixed_requests, s.requests) << "every request lies in a registered region";
    } else {
      EXPECT_FALSE(s.registered);
      EXPECT_EQ(s.fixed_requests, 0u);
    }
  }
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(static_cast<uint64_t>(st.st_size), kBase + kBytes);

  {
    UniqueFd fd = Open(path, false);
    ASSERT_TRUE(fd.valid());
    auto io = Make(fd.get(), {dst.region()});
    ASSERT_NE(io, nullptr);
    for (auto [first, n] : ScatteredRuns(kPages, 200, 2)) {
      for (size_t p = first; p < first + n; ++p) {
        ASSERT_OK(io->Read(dst.data() + p * kPage, kPage, kBase + p * kPage));
      }
    }
    ASSERT_OK(io->Drain());
    EXPECT_EQ(io->stats().bytes, kBytes);
  }
  for (size_t p = 0; p < kPages; ++p) {
    ASSERT_EQ(std::memcmp(src.data() + p * kPage, dst.data() + p * kPage, kPage), 0) << "page " << p;
  }
}

// Pages whose memory is not contiguous but whose file offsets are: the
// pwritev engine gathers them, io_uring issues them separately; both land.
TEST_P(EngineTest, FileContiguousPagesFromScatteredMemory) {
  constexpr size_t kPages = 512;
  Memory src(kPages * kPage), dst(kPages * kPage);
  FillRandom(src.data(), src.size(), 7);
  std::string path = NewFile("gather");
  std::vector<size_t> order(kPages);
  for (size_t i = 0; i < kPages; ++i) order[i] = i;
  std::shuffle(order.begin(), order.end(), std::mt19937_64(3));
  {
    UniqueFd fd = Open(path, true);
    auto io = Make(fd.get(), {src.region()});
    ASSERT_NE(io, nullptr);
    // File page i comes from memory page order[i].
    for (size_t i = 0; i < kPages; ++i) ASSERT_OK(io->Write(src.data() + order[i] * kPage, kPage, i * kPage));
    ASSERT_OK(io->Drain());
  }
  {
    UniqueFd fd = Open(path, false);
    auto io = Make(fd.get());
    ASSERT_NE(io, nullptr);
    ASSERT_OK(io->Read(dst.data(), dst.size(), 0));
    ASSERT_OK(io->Drain());
  }
  for (size_t i = 0; i < kPages; ++i) {
    ASSERT_EQ(std::memcmp(dst.data() + i * kPage, src.data() + order[i] * kPage, kPage), 0) << "page " << i;
  }
}

TEST_P(EngineTest, SequentialPagesMergeUpToMaxRequest) {
  constexpr size_t kBytes = 16 * kMiB;
  Memory src(kBytes);
  FillRandom(src.data(), kBytes, 9);
  std::string path = NewFile("seq");
  UniqueFd fd = Open(path, true);
  auto io = Make(fd.get(), {src.region()}, 2 * kMiB);
  ASSERT_NE(io, nullptr);
  for (size_t off = 0; off < kBytes; off += kPage) ASSERT_OK(io->Write(src.data() + off, kPage, off));
  ASSERT_OK(io->Drain());
  EXPECT_EQ(io->stats().requests, kBytes / (2 * kMiB));
  // A single request larger than the merge limit is issued whole, not cut.
  ASSERT_OK(io->Write(src.data(), 4 * kMiB, 0));
  ASSERT_OK(io->Drain());
  EXPECT_EQ(io->stats().requests, kBytes / (2 * kMiB) + 1);
  EXPECT_EQ(io->stats().bytes, kBytes + 4 * kMiB);
  fd.Reset();
  EXPECT_EQ(ReadWholeFile(path), std::string(src.data(), kBytes));
}

TEST_P(EngineTest, QueueDepthOneStillWorks) {
  constexpr size_t kPages = 300;
  Memory src(kPages * kPage), dst(kPages * kPage);
  FillRandom(src.data(), src.size(), 11);
  std::string path = NewFile("qd1");
  {
    UniqueFd fd = Open(path, true);
    auto io = Make(fd.get(), {src.region()}, kMiB, 1);
    ASSERT_NE(io, nullptr);
    for (auto [first, n] : ScatteredRuns(kPages, 5, 4)) {
      ASSERT_OK(io->Write(src.data() + first * kPage, n * kPage, first * kPage));
    }
    ASSERT_OK(io->Drain());
  }
  UniqueFd fd = Open(path, false);
  auto io = Make(fd.get(), {dst.region()}, kMiB, 1);
  ASSERT_NE(io, nullptr);
  for (size_t p = kPages; p-- > 0;) ASSERT_OK(io->Read(dst.data() + p * kPage, kPage, p * kPage));
  ASSERT_OK(io->Drain());
  EXPECT_EQ(std::memcmp(src.data(), dst.data(), src.size()), 0);
}

TEST_P(EngineTest, ReadingPastTheEndIsAProtocolError) {
  Memory buf(16 * kPage);
  std::string path = NewFile("eof");
  {
    UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_EQ(::ftruncate(fd.get(), 8 * kPage), 0);
  }
  UniqueFd fd = Open(path, false);
  auto io = Make(fd.get(), {buf.region()});
  ASSERT_NE(io, nullptr);
  ASSERT_OK(io->Read(buf.data(), 4 * kPage, 0));
  ASSERT_OK(io->Drain());
  ASSERT_OK(io->Read(buf.data(), 8 * kPage, 4 * kPage));  // 4 pages exist, 4 do not
  Status st = io->Drain();
  EXPECT_EQ(st.code(), Code::kProtocol) << st.ToString();
  EXPECT_TRUE(Contains(st.message(), "ends at offset " + std::to_string(8 * kPage))) << st.message();
  EXPECT_TRUE(Contains(st.message(), path)) << st.message();
  // The first error stays.
  EXPECT_EQ(io->Read(buf.data(), kPage, 0).code(), Code::kProtocol);
  EXPECT_EQ(io->Drain().code(), Code::kProtocol);
}

TEST_P(EngineTest, OsErrorsNameFileAndOffset) {
  Memory buf(4 * kPage);
  std::string path = NewFile("ro");
  UniqueFd fd = Open(path, false);  // read-only: writes fail with EBADF
  auto io = Make(fd.get(), {buf.region()});
  ASSERT_NE(io, nullptr);
  ASSERT_OK(io->Write(buf.data(), kPage, 3 * kPage));
  Status st = io->Drain();
  ASSERT_EQ(st.code(), Code::kIo) << st.ToString();
  EXPECT_EQ(st.sys_errno(), EBADF);
  EXPECT_TRUE(Contains(st.message(), "writing " + path + " at offset " + std::to_string(3 * kPage))) << st.message();
  EXPECT_EQ(io->Write(buf.data(), kPage, 0).code(), Code::kIo) << "later calls report the first error";
}

TEST_P(EngineTest, DestructorFinishesQueuedWrites) {
  Memory src(64 * kPage);
  FillRandom(src.data(), src.size(), 5);
  std::string path = NewFile("dtor");
  {
    UniqueFd fd = Open(path, true);
    auto io = Make(fd.get(), {src.region()});
    ASSERT_NE(io, nullptr);
    for (size_t p = 0; p < 64; ++p) ASSERT_OK(io->Write(src.data() + p * kPage, kPage, p * kPage));
    // No Drain(): the engine goes away with writes queued.
  }
  EXPECT_EQ(ReadWholeFile(path), std::string(src.data(), src.size()));
}

INSTANTIATE_TEST_SUITE_P(Engines, EngineTest,
                         testing::Values(EngineCase{true, false}, EngineCase{true, true}, EngineCase{false, false},
                                         EngineCase{false, true}),
                         CaseName);

// ---------------------------------------------------------------------------
// io_uring specifics

class UringTest : public testing::Test {
 protected:
  std::unique_ptr<IoEngine> Make(int fd, std::vector<iovec> regions, size_t max_request = kMiB) {
    IoEngineOptions o;
    o.fd = fd;
    o.max_request = max_request;
    o.regions = std::move(regions);
    auto e = MakeIoEngine(o, [this](std::string_view n) { notes_.emplace_back(n); });
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    if (!e.ok()) return nullptr;
    return std::move(e).value();
  }
  void SetUp() override {
    path_ = dir_.File("u");
    fd_.Reset(::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    ASSERT_TRUE(fd_.valid());
    auto probe = Make(fd_.get(), {});
    if (probe == nullptr || probe->name() != "io_uring") {
      GTEST_SKIP() << "io_uring unavailable: " << (notes_.empty() ? "?" : notes_[0]);
    }
    notes_.clear();
  }

  ScratchDir dir_;
  std::string path_;
  UniqueFd fd_;
  std::vector<std::string> notes_;
};

TEST_F(UringTest, FixedBuffersOnlyInsideRegisteredRegions) {
  Memory inside(32 * kPage), outside(32 * kPage);
  auto io = Make(fd_.get(), {inside.region()});
  ASSERT_NE(io, nullptr);
  EXPECT_TRUE(io->stats().registered);
  EXPECT_TRUE(notes_.empty());
  ASSERT_OK(io->Write(inside.data(), 32 * kPage, 0));
  ASSERT_OK(io->Write(outside.data(), 32 * kPage, 32 * kPage));
  ASSERT_OK(io->Drain());
  EXPECT_EQ(io->stats().requests, 2u);
  EXPECT_EQ(io->stats().fixed_requests, 1u);

  auto plain = Make(fd_.get(), {});
  ASSERT_NE(plain, nullptr);
  EXPECT_FALSE(plain->stats().registered);
  ASSERT_OK(plain->Read(inside.data(), 32 * kPage, 0));
  ASSERT_OK(plain->Drain());
  EXPECT_EQ(plain->stats().fixed_requests, 0u);
}

TEST_F(UringTest, MergesStopAtRegionBoundaries) {
  Memory mem(64 * kPage);
  FillRandom(mem.data(), mem.size(), 8);
  // Two regions that touch: a merged request may not span both.
  iovec a{mem.data(), 24 * kPage}, b{mem.data() + 24 * kPage, 40 * kPage};
  auto io = Make(fd_.get(), {a, b});
  ASSERT_NE(io, nullptr);
  for (size_t p = 0; p < 64; ++p) ASSERT_OK(io->Write(mem.data() + p * kPage, kPage, p * kPage));
  ASSERT_OK(io->Drain());
  EXPECT_EQ(io->stats().requests, 2u);
  EXPECT_EQ(io->stats().fixed_requests, 2u);
  EXPECT_EQ(ReadWholeFile(path_), std::string(mem.data(), mem.size()));
}

TEST_F(UringTest, RegionsLargerThanOneGiBAreSplitForTheKernel) {
  constexpr size_t kLen = (size_t{1} << 30) + 8 * kMiB;
  Memory big(kLen);
  ASSERT_NE(big.data(), nullptr);
  auto io = Make(fd_.get(), {big.region()});
  ASSERT_NE(io, nullptr);
  EXPECT_TRUE(io->stats().registered) << (notes_.empty() ? "" : notes_[0]);
  char* tail = big.data() + kLen - 4 * kMiB;
  FillRandom(tail, 4 * kMiB, 12);
  // Pages on both sides of the 1 GiB split: still fixed, not merged across.
  char* edge = big.data() + (size_t{1} << 30) - 2 * kPage;
  FillRandom(edge, 4 * kPage, 13);
  ASSERT_OK(io->Write(tail, 4 * kMiB, 0));
  for (size_t p = 0; p < 4; ++p) ASSERT_OK(io->Write(edge + p * kPage, kPage, 4 * kMiB + p * kPage));
  ASSERT_OK(io->Drain());
  EXPECT_EQ(io->stats().fixed_requests, io->stats().requests);
  EXPECT_EQ(io->stats().requests, 1u + 2u);  // the 4 MiB write whole + 2 at the edge
  std::string want(tail, 4 * kMiB);
  want.append(edge, 4 * kPage);
  EXPECT_EQ(ReadWholeFile(path_), want);
}

TEST_F(UringTest, FailedRegistrationFallsBackWithOneNotice) {
  // Memory that cannot be pinned: registration fails, I/O still works.
  Memory unusable(16 * kPage, PROT_NONE);
  Memory mem(16 * kPage);
  FillRandom(mem.data(), mem.size(), 14);
  auto io = Make(fd_.get(), {unusable.region(), mem.region()});
  ASSERT_NE(io, nullptr);
  EXPECT_EQ(io->name(), "io_uring");
  EXPECT_FALSE(io->stats().registered);
  ASSERT_EQ(notes_.size(), 1u);
  EXPECT_TRUE(Contains(notes_[0], "fixed buffers")) << notes_[0];
  EXPECT_TRUE(Contains(notes_[0], "unregistered")) << notes_[0];
  ASSERT_OK(io->Write(mem.data(), mem.size(), 0));
  ASSERT_OK(io->Drain());
  EXPECT_EQ(io->stats().fixed_requests, 0u);
  EXPECT_EQ(ReadWholeFile(path_), std::string(mem.data(), mem.size()));
}

TEST(IoEngineOptionsTest, BadOptionsAreRejected) {
  IoEngineOptions o;
  auto e = MakeIoEngine(o);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), Code::kInvalidArgument);
  o.fd = 0;
  o.queue_depth = 0;
  e = MakeIoEngine(o);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), Code::kInvalidArgument);
  o.queue_depth = 8;
  o.max_request = 0;
  e = MakeIoEngine(o);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), Code::kInvalidArgument);
}

// ---------------------------------------------------------------------------
// Disk full, on a 4 MiB tmpfs of our own

class DiskFullMount : public testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs needs root";
    if (::mount("tmpfs", dir_.path().c_str(), "tmpfs", 0, "size=4M") != 0) {
      GTEST_SKIP() << "cannot mount a 4 MiB tmpfs on " << dir_.path() << ": " << std::strerror(errno);
    }
    mounted_ = true;
  }
  void TearDown() override {
    if (!mounted_) return;
    if (::umount(dir_.path().c_str()) != 0) {
      ADD_FAILURE() << "umount " << dir_.path() << ": " << std::strerror(errno) << "; detaching";
      ::umount2(dir_.path().c_str(), MNT_DETACH);
    }
  }

  ScratchDir dir_;
  bool mounted_ = false;
};

class DiskFullTest : public DiskFullMount, public testing::WithParamInterface<EngineCase> {};

TEST_P(DiskFullTest, EngineReportsDiskFull) {
  std::string path = dir_.File("full");
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd.valid());
  if (GetParam().direct) {
    auto probe = ProbeDirectIo(path);
    if (!probe.ok()) GTEST_SKIP() << "no O_DIRECT on this tmpfs: " << probe.status().message();
    auto d = OpenDirect(path, true);
    ASSERT_TRUE(d.ok()) << d.status().ToString();
    fd = std::move(d).value();
  }
  constexpr size_t kBytes = 8 * kMiB;
  Memory src(kBytes);
  FillRandom(src.data(), kBytes, 15);
  {
    IoEngineOptions o;
    o.fd = fd.get();
    o.allow_uring = GetParam().uring;
    o.regions = {src.region()};
    auto e = MakeIoEngine(o);
    ASSERT_TRUE(e.ok()) << e.status().ToString();
    IoEngine& io = **e;
    Status st;
    for (size_t off = 0; off < kBytes && st.ok(); off += kPage) st = io.Write(src.data() + off, kPage, off);
    Status drained = io.Drain();
    if (st.ok()) st = drained;
    ASSERT_FALSE(st.ok()) << "8 MiB fit into a 4 MiB tmpfs?";
    EXPECT_EQ(st.code(), Code::kIo) << st.ToString();
    EXPECT_EQ(st.sys_errno(), ENOSPC) << st.ToString();
    EXPECT_TRUE(Contains(st.message(), "disk full writing " + path + " at offset ")) << st.message();
    EXPECT_TRUE(Contains(st.message(), "No space left on device")) << st.message();
    EXPECT_EQ(drained.code(), Code::kIo) << "Drain keeps reporting the first error";
    // The offset named is where the file stops holding what was written:
    // every byte before it arrived, the page at it did not.
    const std::string msg = st.message();
    const size_t at = msg.find(" at offset ");
    ASSERT_NE(at, std::string::npos) << msg;
    const uint64_t failed = std::stoull(msg.substr(at + 11));
    ASSERT_LT(failed, kBytes) << msg;
    EXPECT_EQ(failed % kPage, 0u) << msg;
    UniqueFd check(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    ASSERT_TRUE(check.valid());
    std::vector<uint8_t> back(failed + kPage);
    const ssize_t got = ::pread(check.get(), back.data(), back.size(), 0);
    ASSERT_GE(got, static_cast<ssize_t>(failed)) << msg;
    EXPECT_EQ(std::memcmp(back.data(), src.data(), failed), 0) << "a page before " << failed << " is missing: " << msg;
    if (got == static_cast<ssize_t>(back.size())) {
      EXPECT_NE(std::memcmp(back.data() + failed, src.data() + failed, kPage), 0) << msg;
    }
  }
  fd.Reset();  // before the unmount
}

TEST_F(DiskFullMount, FileChannelReportsDiskFull) {
  std::string path = dir_.File("stream");
  constexpr size_t kBytes = 8 * kMiB;
  std::string data(kBytes, 'f');
  auto f = CreateFileForSave(path, 0);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  Status st = (*f)->WriteAll(data.data(), data.size());
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.sys_errno(), ENOSPC);
  EXPECT_TRUE(Contains(st.message(), "disk full writing " + path + " at offset ")) << st.message();
  uint64_t at = (*f)->position();
  EXPECT_GT(at, 0u);
  EXPECT_LT(at, kBytes);
  EXPECT_TRUE(Contains(st.message(), "at offset " + std::to_string(at) + ": No space left on device")) << st.message();

  std::vector<iovec> iov{{data.data(), data.size()}};
  st = (*f)->PwriteAll(iov, 0);
  EXPECT_EQ(st.sys_errno(), ENOSPC) << st.ToString();
  EXPECT_TRUE(Contains(st.message(), "disk full writing " + path)) << st.message();
}

INSTANTIATE_TEST_SUITE_P(Engines, DiskFullTest,
                         testing::Values(EngineCase{true, false}, EngineCase{true, true}, EngineCase{false, false},
                                         EngineCase{false, true}),
                         CaseName);

}  // namespace
}  // namespace ferry
