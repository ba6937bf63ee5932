// Unit tests for hostile or careless input: escaping of names and messages
// for the terminal and for JSON, the progress percentage, --fill parsing,
// memory limits, the SIGBUS guard for file-backed guest memory, the RAM cap
// and trailing bytes on the destination, the destination's memory-file
// clean-up, and what `ferry inspect` flags.
#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli/guest.h"
#include "cli/limits.h"
#include "cli/report.h"
#include "core/dirty_tracker.h"
#include "core/migration.h"
#include "core/sigbus.h"
#include "core/unique_fd.h"
#include "core/wire.h"
#include "file/inspect.h"
#include "tests/memory_channel.h"
#include "tests/support/process.h"

namespace ferry {
namespace {

using cli::DumpJson;
using cli::ParseFill;
using cli::ProgressPercent;
using cli::TerminalText;
using cli::ValidUtf8;

// No byte below 0x20, no DEL, no C1 control in UTF-8 (0xc2 0x80..0x9f).
bool HasNoControl(const std::string& s) {
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<uint8_t>(s[i]);
    if (c < 0x20 || c == 0x7f) return false;
    if (c == 0xc2 && i + 1 < s.size() && static_cast<uint8_t>(s[i + 1]) >= 0x80 &&
        static_cast<uint8_t>(s[i + 1]) <= 0x9f) {
      return false;
    }
  }
  return true;
}

// ---------------------------------------------------------------- escaping

TEST(TerminalText, KeepsTextAndEscapesEverythingElse) {
  EXPECT_EQ(TerminalText("pc-i440fx-7.2 /rom@etc/acpi"), "pc-i440fx-7.2 /rom@etc/acpi");
  EXPECT_EQ(TerminalText("grüße, 名前"), "grüße, 名前");  // valid UTF-8 stays
  EXPECT_EQ(TerminalText("a\x1b[31mred"), "a\\x1b[31mred");
  EXPECT_EQ(TerminalText(std::string("nul\0x", 5)), "nul\\x00x");
  EXPECT_EQ(TerminalText("tab\tnl\ncr\r"), "tab\\x09nl\\x0acr\\x0d");
  EXPECT_EQ(TerminalText("del\x7f"), "del\\x7f");
  EXPECT_EQ(TerminalText("fer\xff"), "fer\\xff");
  EXPECT_EQ(TerminalText("\xc2\x9b" "2J"), "\\xc2\\x9b2J");           // C1 CSI
  EXPECT_EQ(TerminalText("\xe2\x80\xae" "txt"), "\\u202etxt");       // right-to-left override
  EXPECT_EQ(TerminalText("\xc0\xaf"), "\\xc0\\xaf");                 // overlong '/'
  EXPECT_EQ(TerminalText("\xed\xa0\x80"), "\\xed\\xa0\\x80");         // a surrogate
  EXPECT_EQ(TerminalText("\xf4\x90\x80\x80"), "\\xf4\\x90\\x80\\x80");  // above U+10FFFF
  EXPECT_EQ(TerminalText("cut \xe2\x82"), "cut \\xe2\\x82");          // truncated sequence
  // Every byte value alone: the result is printable.
  for (int c = 0; c < 256; ++c) {
    const std::string out = TerminalText(std::string(1, static_cast<char>(c)));
    EXPECT_TRUE(HasNoControl(out)) << c;
  }
}

TEST(ValidUtf8, OnlyInvalidBytesChange) {
  EXPECT_EQ(ValidUtf8("ok\x1b\n"), "ok\x1b\n");  // JSON escapes these itself
  EXPECT_EQ(ValidUtf8("grüße"), "grüße");
  EXPECT_EQ(ValidUtf8("fer\xff\xfe"), "fer\\xff\\xfe");
  EXPECT_EQ(ValidUtf8("\x80x"), "\\x80x");
}

TEST(DumpJson, NeverThrowsAndKeepsTheBytesVisible) {
  nlohmann::json j = {{"error", "machine 'fer\xff'"},
                      {"list", {"a\xc3", "b"}},
                      {"nested", {{"k\xfe", "v\x1b"}}}};
  std::string out;
  ASSERT_NO_THROW(out = DumpJson(j));
  nlohmann::json back = nlohmann::json::parse(out);  // valid JSON, valid UTF-8
  EXPECT_EQ(back["error"], "machine 'fer\\xff'");
  EXPECT_EQ(back["list"][0], "a\\xc3");
  EXPECT_EQ(back["nested"]["k\\xfe"], "v\x1b");
  EXPECT_TRUE(HasNoControl(out)) << out;

  // The --json object of a failed migration whose error quotes the stream.
  MigrationStats st;
  st.state = MigrationState::kFailed;
  st.error = "the destination reports: bad \xff\xfe name";
  ASSERT_NO_THROW(out = DumpJson(cli::StatsJson(st)));
  EXPECT_EQ(nlohmann::json::parse(out)["error"], "the destination reports: bad \\xff\\xfe name");
}

TEST(InspectText, EscapesNamesFromTheFile) {
  InspectReport r;
  r.path = "f.mig";
  r.header_ok = true;
  r.magic = wire::kMagic;
  r.version = 3;
  r.has_configuration = true;
  r.machine = "\x1b]0;pwned\x07";
  InspectSection s;
  s.type = wire::kSectionFull;
  s.idstr = "dev\x1b[2J\xff";
  r.sections.push_back(s);
  InspectBlock b;
  b.name = "blk\r";
  r.blocks.push_back(b);
  r.problem = "section 'dev\x1b[2J' is odd";
  const std::string raw = cli::InspectText(r, false);
  for (char c : raw) {
    if (c != '\n') {
      EXPECT_FALSE(static_cast<uint8_t>(c) < 0x20) << "raw control byte in:\n" << raw;
    }
  }
  EXPECT_NE(raw.find("machine '\\x1b]0;pwned\\x07'"), std::string::npos) << raw;
  EXPECT_NE(raw.find("dev\\x1b[2J\\xff"), std::string::npos) << raw;
  std::string json;
  ASSERT_NO_THROW(json = cli::InspectText(r, true));
  nlohmann::json parsed;
  EXPECT_NO_THROW(parsed = nlohmann::json::parse(json));
  EXPECT_EQ(parsed["machine"], "\x1b]0;pwned\x07");
}

// ---------------------------------------------------------------- progress

TEST(ProgressPercent, NeverAbove100) {
  MigrationStats s;
  EXPECT_EQ(ProgressPercent(s), 0);  // nothing known yet
  s.ram.total = 100 * 4096;
  s.ram.normal = 30;
  s.ram.duplicate = 20;
  s.ram.remaining = 50 * 4096;
  EXPECT_DOUBLE_EQ(ProgressPercent(s), 50);
  // A live source re-sends dirty pages: copied pages exceed the RAM size.
  s.ram.normal = 120;
  s.ram.duplicate = 15;
  s.ram.remaining = 10 * 4096;
  EXPECT_DOUBLE_EQ(ProgressPercent(s), 90);
  s.ram.remaining = 0;
  EXPECT_DOUBLE_EQ(ProgressPercent(s), 100);
  s.ram.normal = 10000;  // 999.9 % before
  EXPECT_DOUBLE_EQ(ProgressPercent(s), 100);
  s.ram.remaining = 500 * 4096;  // more dirty than total: not negative
  EXPECT_DOUBLE_EQ(ProgressPercent(s), 0);
}

// ---------------------------------------------------------------- --fill

TEST(ParseFill, RefusesWhatIsNotAPercentage) {
  EXPECT_TRUE(ParseFill("random=50,zero=50").ok());
  EXPECT_TRUE(ParseFill("random=100").ok());
  EXPECT_TRUE(ParseFill("text=0,zero=100").ok());
  for (const char* bad : {"random=-10,zero=110", "random=+50,zero=50", "random= 50,zero=50", "random=5e1,zero=50",
                          "random=abc,zero=100", "random=,zero=100", "random=101", "random=4294967346,zero=50",
                          "random=50,zero=49", "random=50;zero=50", "bogus=100", "random=0x32,zero=50"}) {
    Result<cli::FillSpec> f = ParseFill(bad);
    EXPECT_FALSE(f.ok()) << bad;
    if (!f.ok()) {
      EXPECT_EQ(f.status().code(), Code::kInvalidArgument) << bad;
    }
  }
}

// ---------------------------------------------------------------- limits

TEST(Limits, MemAvailableFromMeminfo) {
  EXPECT_EQ(cli::ParseMemAvailable("MemTotal:       24684000 kB\nMemFree:         2000 kB\n"
                                   "MemAvailable:   23062688 kB\nBuffers: 1 kB\n"),
            23062688ull * 1024);
  EXPECT_FALSE(cli::ParseMemAvailable("MemTotal: 1 kB\nMemFree: 1 kB\n").has_value());
  EXPECT_FALSE(cli::ParseMemAvailable("").has_value());
  Result<cli::Limit> l = cli::AvailableMemory();
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  EXPECT_GT(l->bytes, 0u);
  EXPECT_FALSE(l->source.empty());
}

TEST(Limits, DestinationCap) {
  Result<cli::Limit> explicit_cap = cli::DestinationRamLimit("3G", "");
  ASSERT_TRUE(explicit_cap.ok());
  EXPECT_EQ(explicit_cap->bytes, 3ull << 30);
  EXPECT_NE(explicit_cap->source.find("--max-ram"), std::string::npos);
  EXPECT_FALSE(cli::DestinationRamLimit("lots", "").ok());
  EXPECT_FALSE(cli::DestinationRamLimit("0", "").ok());
  // With a memory file: the free space where it goes (here /tmp or $TMPDIR).
  test::TempDir dir("ferry-input");
  Result<cli::Limit> file_cap = cli::DestinationRamLimit("", dir.Path("x.ram"));
  ASSERT_TRUE(file_cap.ok()) << file_cap.status().ToString();
  EXPECT_GT(file_cap->bytes, 0u);
  EXPECT_NE(file_cap->source.find("--max-ram's default"), std::string::npos) << file_cap->source;
  // A directory that does not exist: the memory bound (creating fails later).
  EXPECT_TRUE(cli::DestinationRamLimit("", "/nonexistent/dir/x.ram").ok());
}

// ---------------------------------------------------------------- SIGBUS

// A file of `pages` pages, mapped MAP_SHARED read-write.
struct MappedFile {
  explicit MappedFile(const std::string& p, uint64_t pages) : path(p), size(pages * kPageSize) {
    fd.Reset(open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    EXPECT_TRUE(fd.valid());
    EXPECT_EQ(ftruncate(fd.get(), static_cast<off_t>(size)), 0);
    void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    EXPECT_NE(m, MAP_FAILED);
    mem = static_cast<uint8_t*>(m);
    std::memset(mem, 0x5a, size);
  }
  ~MappedFile() { munmap(mem, size); }
  std::string path;
  uint64_t size;
  UniqueFd fd;
  uint8_t* mem = nullptr;
};

TEST(Sigbus, TruncatedFileReadsZerosAndIsReported) {
  test::TempDir dir("ferry-input");
  MappedFile f(dir.Path("guest.mem"), 8);
  Result<std::unique_ptr<MappedFileGuard>> guard = MappedFileGuard::Register(f.mem, f.size, f.fd.get(), f.path);
  ASSERT_TRUE(guard.ok()) << guard.status().ToString();
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", f.mem, f.size).ok());
  EXPECT_TRUE(CheckMappedFiles(blocks).ok());

  // Someone else truncates the file to 2 pages.
  ASSERT_EQ(truncate(f.path.c_str(), 2 * kPageSize), 0);
  volatile uint8_t* p = f.mem;
  EXPECT_EQ(p[0], 0x5a);                  // still backed
  EXPECT_EQ(p[5 * kPageSize + 17], 0);    // past the end: SIGBUS absorbed, zeros
  p[6 * kPageSize] = 1;                   // a write there lands in a private page
  EXPECT_EQ(p[6 * kPageSize], 1);
  EXPECT_EQ((*guard)->faults(), 2u);

  Status s = CheckMappedFiles(blocks);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("the memory file " + f.path + " shrank during the migration"), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("2 pages past its end read as zeros"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("first at offset " + std::to_string(5 * kPageSize)), std::string::npos) << s.message();

  // Blocks elsewhere are not concerned.
  std::vector<uint8_t> other_mem(2 * kPageSize + kPageSize);
  RamBlockList other;
  auto* aligned = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(other_mem.data()) + kPageSize - 1) &
                                             ~(kPageSize - 1));
  ASSERT_TRUE(other.Add("other", aligned, kPageSize).ok());
  EXPECT_TRUE(CheckMappedFiles(other).ok());
}

TEST(Sigbus, ShrinkWithoutAFaultIsStillReported) {
  test::TempDir dir("ferry-input");
  MappedFile f(dir.Path("guest.mem"), 4);
  auto guard = MappedFileGuard::Register(f.mem, f.size, f.fd.get(), f.path);
  ASSERT_TRUE(guard.ok());
  ASSERT_EQ(truncate(f.path.c_str(), kPageSize), 0);
  Status s = (*guard)->Check();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("it is now 4096 bytes"), std::string::npos) << s.message();
}

TEST(SigbusDeathTest, UnregisteredMappingsStillDieOfSigbus) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  test::TempDir dir("ferry-input");
  MappedFile f(dir.Path("guest.mem"), 4);
  {
    // The handler is installed, then the guard goes away.
    auto guard = MappedFileGuard::Register(f.mem, f.size, f.fd.get(), f.path);
    ASSERT_TRUE(guard.ok());
  }
  ASSERT_EQ(truncate(f.path.c_str(), kPageSize), 0);
  // Killed by SIGBUS as without ferry; under ASan its handler, installed
  // before ferry's and chained to, reports the fault and aborts instead.
  EXPECT_DEATH(
      {
        volatile uint8_t* p = f.mem;
        (void)p[3 * kPageSize];
        _exit(0);
      },
      "");
}

// ---------------------------------------------------------------- destination

// A complete ferry stream of `size` bytes of RAM (pattern: page i holds i).
std::vector<uint8_t> SaveStream(uint64_t size) {
  void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  auto* mem = static_cast<uint8_t*>(m);
  for (uint64_t i = 0; i < size / kPageSize; i += 2) std::memcpy(mem + i * kPageSize, &i, sizeof(i));
  RamBlockList blocks;
  EXPECT_TRUE(blocks.Add("ram", mem, size).ok());
  auto tracker = MakeDirtyTracker(DirtyTrackerKind::kAllOnce);
  EXPECT_TRUE(tracker.ok());
  MigrationParams p;
  MigrationSource src(p, blocks, **tracker, nullptr);
  test::MemoryChannel ch;
  Status s = src.Run(ch, /*await_confirmation=*/false);
  EXPECT_TRUE(s.ok()) << s.ToString();
  munmap(m, size);
  return ch.out();
}

class CountingAllocator final : public RamBlockAllocator {
 public:
  Result<uint8_t*> Allocate(const std::string&, uint64_t length) override {
    ++calls;
    void* m = mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return ErrnoStatus("mmap");
    maps.emplace_back(m, length);
    return static_cast<uint8_t*>(m);
  }
  ~CountingAllocator() override {
    for (auto& [p, n] : maps) munmap(p, n);
  }
  int calls = 0;
  std::vector<std::pair<void*, uint64_t>> maps;
};

Status Load(std::vector<uint8_t> bytes, DestinationOptions opts, CountingAllocator& alloc) {
  RamBlockList blocks;
  opts.send_verdict = false;
  MigrationDestination dst(opts, blocks, &alloc);
  test::MemoryChannel ch(std::move(bytes));
  return dst.Run(ch);
}

TEST(Destination, RefusesMoreRamThanTheCapBeforeAllocating) {
  // A 1 TiB announcement (the block list alone, as a hostile stream has it).
  std::vector<uint8_t> b;
  auto be32 = [&](uint32_t v) { for (int i = 3; i >= 0; --i) b.push_back(v >> (8 * i)); };
  auto be64 = [&](uint64_t v) { for (int i = 7; i >= 0; --i) b.push_back(v >> (8 * i)); };
  auto name = [&](const std::string& s) { b.push_back(s.size()); b.insert(b.end(), s.begin(), s.end()); };
  be32(wire::kMagic);
  be32(wire::kVersion);
  b.push_back(wire::kConfiguration);
  be32(5);
  b.insert(b.end(), {'f', 'e', 'r', 'r', 'y'});
  b.push_back(wire::kSectionStart);
  be32(1);
  name("ram");
  be32(0);
  be32(4);
  be64((1ull << 40) | wire::kRamMemSize);
  name("ram");
  be64(1ull << 40);
  DestinationOptions opts;
  opts.max_ram = 64ull << 20;
  opts.max_ram_source = "as set by --max-ram";
  CountingAllocator alloc;
  Status s = Load(b, opts, alloc);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(alloc.calls, 0);
  EXPECT_NE(s.message().find("1099511627776 bytes (1.00 TiB)"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("67108864 bytes (64.00 MiB)"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("as set by --max-ram"), std::string::npos) << s.message();

  // Within the cap the same kind of stream loads.
  CountingAllocator ok_alloc;
  opts.max_ram = 1ull << 20;
  EXPECT_TRUE(Load(SaveStream(1 << 20), opts, ok_alloc).ok());
  EXPECT_EQ(ok_alloc.calls, 1);
}

TEST(Destination, TrailingBytesAreRefusedOnOneWayInput) {
  std::vector<uint8_t> stream = SaveStream(1 << 20);
  {
    CountingAllocator alloc;
    DestinationOptions opts;
    opts.reject_trailing_bytes = true;
    EXPECT_TRUE(Load(stream, opts, alloc).ok());  // nothing after it
  }
  std::vector<uint8_t> longer = stream;
  const std::string summary = "ferry send: completed in 0.01 s\n";
  longer.insert(longer.end(), summary.begin(), summary.end());
  {
    CountingAllocator alloc;
    DestinationOptions opts;
    opts.reject_trailing_bytes = true;
    Status s = Load(longer, opts, alloc);
    ASSERT_FALSE(s.ok());
    EXPECT_EQ(s.code(), Code::kProtocol);
    EXPECT_NE(s.message().find("goes on after the end of the stream"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find("stream offset " + std::to_string(stream.size())), std::string::npos) << s.message();
  }
  {
    // A two-way channel never waits for more: the option is off there.
    CountingAllocator alloc;
    EXPECT_TRUE(Load(longer, DestinationOptions{}, alloc).ok());
  }
}

// ---------------------------------------------------------------- memory files

TEST(DestinationMemory, CreatedFileIsRemovedUnlessKept) {
  test::TempDir dir("ferry-input");
  const std::string path = dir.Path("out.ram");
  {
    cli::DestinationMemory m(path, false);
    ASSERT_TRUE(m.Allocate("ram", 1 << 20).ok());
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_size, 1 << 20);
    EXPECT_GE(static_cast<uint64_t>(st.st_blocks) * 512, 1u << 20) << "not reserved with fallocate";
  }
  EXPECT_FALSE(std::filesystem::exists(path));
  {
    cli::DestinationMemory m(path, false);
    Result<uint8_t*> p = m.Allocate("ram", 1 << 20);
    ASSERT_TRUE(p.ok());
    (*p)[0] = 7;
    m.Keep();
  }
  EXPECT_EQ(std::filesystem::file_size(path), 1u << 20);
}

TEST(DestinationMemory, ExistingFileIsKeptWithItsSize) {
  test::TempDir dir("ferry-input");
  const std::string path = dir.Path("vm.mem");
  ASSERT_TRUE(test::WriteStringToFile(path, std::string(12288, 'x')).ok());
  {
    cli::DestinationMemory m(path, false);
    ASSERT_TRUE(m.Allocate("ram", 1 << 20).ok());
    EXPECT_EQ(std::filesystem::file_size(path), 1u << 20);
  }
  ASSERT_TRUE(std::filesystem::exists(path));
  EXPECT_EQ(std::filesystem::file_size(path), 12288u);
}

TEST(DestinationMemory, CapCoversEveryBlock) {
  cli::DestinationMemory m("", false, 3 << 20, "as set by --max-ram");
  ASSERT_TRUE(m.Allocate("a", 2 << 20).ok());
  Result<uint8_t*> b = m.Allocate("b", 2 << 20);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("3145728 bytes"), std::string::npos) << b.status().message();
  EXPECT_TRUE(m.Allocate("c", 1 << 20).ok());
}

// ---------------------------------------------------------------- inspect

class InspectInput : public ::testing::Test {
 protected:
  std::string Write(const std::string& name, const std::vector<uint8_t>& bytes) {
    const std::string path = dir_.Path(name);
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    return path;
  }
  InspectReport Inspect(const std::vector<uint8_t>& bytes) {
    Result<InspectReport> r = InspectFile(Write("f.mig", bytes), 0);
    EXPECT_TRUE(r.ok());
    return r.ok() ? *r : InspectReport{};
  }
  // Replaces the first occurrence of `from` (same length as `to`).
  static std::vector<uint8_t> Patch(std::vector<uint8_t> b, const std::string& from, const std::string& to) {
    auto it = std::search(b.begin(), b.end(), from.begin(), from.end());
    EXPECT_NE(it, b.end()) << from;
    if (it != b.end()) std::copy(to.begin(), to.end(), it);
    return b;
  }
  test::TempDir dir_{"ferry-input"};
};

TEST_F(InspectInput, CompleteStreamStaysComplete) {
  InspectReport r = Inspect(SaveStream(1 << 20));
  EXPECT_TRUE(r.complete()) << r.Verdict();
  EXPECT_EQ(r.trailing_bytes, 0u);
}

TEST_F(InspectInput, TrailingBytesAreFlagged) {
  std::vector<uint8_t> b = SaveStream(1 << 20);
  const size_t end = b.size();
  const std::string tail = "ferry send: completed\n";
  b.insert(b.end(), tail.begin(), tail.end());
  InspectReport r = Inspect(b);
  EXPECT_FALSE(r.complete());
  EXPECT_EQ(r.trailing_bytes, tail.size());
  EXPECT_NE(r.Verdict().find(std::to_string(tail.size()) + " trailing bytes after the VM description"),
            std::string::npos)
      << r.Verdict();
  EXPECT_NE(r.Verdict().find("from offset " + std::to_string(end)), std::string::npos) << r.Verdict();
}

TEST_F(InspectInput, CorruptedNamesAreFlagged) {
  const std::vector<uint8_t> good = SaveStream(1 << 20);
  struct Case {
    std::string from, to, expect;
  } cases[] = {
      {"ferry", std::string("fer\xffy", 5), "machine name 'fer\\xffy'"},
      {"ferry", std::string("f\x1b[2J", 5), "machine name 'f\\x1b[2J'"},
      {std::string("\x01\x00\x00\x00\x01\x03ram", 9), std::string("\x01\x00\x00\x00\x01\x03r\x07m", 9),
       "name of section id 1 'r\\x07m'"},
  };
  for (const Case& c : cases) {
    InspectReport r = Inspect(Patch(good, c.from, c.to));
    EXPECT_FALSE(r.complete()) << c.expect;
    EXPECT_NE(r.Verdict().find(c.expect), std::string::npos) << r.Verdict();
    EXPECT_NE(r.Verdict().find("not printable"), std::string::npos) << r.Verdict();
  }
}

}  // namespace
}  // namespace ferry
