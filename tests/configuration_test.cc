// The configuration section's subsections (capabilities, uuid, target page
// bits) and QEMU's command sections, as ferry writes, reads and checks them.
// Streams are built by hand, byte by byte, in QEMU 10's layout.
#include <sys/mman.h>

#include <cstring>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/configuration.h"
#include "core/dirty_tracker.h"
#include "core/migration.h"
#include "core/wire.h"
#include "tests/memory_channel.h"
#include "tests/support/stream_bytes.h"

namespace ferry {
namespace {

using test::MemoryChannel;

constexpr uint64_t kRam = 16 * kPageSize;
const Uuid kUuidA = {0x5b, 0x6c, 0xa0, 0xf4, 0x6a, 0xd8, 0x4f, 0x5c, 0x9d, 0x6c, 0x05, 0xa3, 0xc4, 0xb2, 0xc6, 0xf1};
const Uuid kUuidB = {0x5b, 0x6c, 0xa0, 0xf4, 0x6a, 0xd8, 0x4f, 0x5c, 0x9d, 0x6c, 0x05, 0xa3, 0xc4, 0xb2, 0xc6, 0xf2};

struct Bytes : test::StreamBytesBase<Bytes> {
  Bytes& header(const std::string& machine = "none") { return StreamBytesBase::header(machine); }
  Bytes& caps(const std::vector<std::string>& list) {
    subsection("configuration/capabilities").be32(list.size());
    for (const std::string& c : list) name(c);
    return *this;
  }
  // A whole "ram" section (START with the block list, END with one page of
  // 0xab at page 1) and EOF.
  Bytes& ram_and_eof() {
    u8(wire::kSectionStart).be32(1).name("ram").be32(0).be32(4);
    be64(kRam | wire::kRamMemSize).name("ram").be64(kRam).be64(wire::kRamEos).u8(wire::kFooter).be32(1);
    u8(wire::kSectionEnd).be32(1);
    be64(kPageSize | wire::kRamPage).name("ram");
    std::vector<uint8_t> page(kPageSize, 0xab);
    raw(page.data(), page.size());
    be64(wire::kRamEos).u8(wire::kFooter).be32(1);
    return u8(wire::kSectionEof);
  }
};

struct Ram {
  Ram() { mem = static_cast<uint8_t*>(mmap(nullptr, kRam, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)); }
  ~Ram() { munmap(mem, kRam); }
  bool PageIs(uint64_t page, uint8_t v) const {
    for (uint64_t i = 0; i < kPageSize; ++i) {
      if (mem[page * kPageSize + i] != v) return false;
    }
    return true;
  }
  uint8_t* mem;
};

DestinationOptions QemuDest(MigrationParams::QemuVersion v = MigrationParams::QemuVersion::k10_0) {
  DestinationOptions o;
  o.machine = "none";
  o.expect_verify = false;
  o.send_verdict = false;
  o.qemu_devices = true;
  o.qemu_version = v;
  return o;
}

struct Loaded {
  Status status;
  std::vector<uint8_t> reply;  // what the destination wrote back (return path)
  std::vector<std::string> notes;
};

Loaded Load(const std::vector<uint8_t>& stream, Ram& ram, DestinationOptions opts) {
  Loaded out;
  opts.note = [&](std::string_view n) { out.notes.emplace_back(n); };
  RamBlockList blocks;
  EXPECT_TRUE(blocks.Add("ram", ram.mem, kRam).ok());
  MigrationDestination dst(opts, blocks, nullptr);
  MemoryChannel ch(stream);
  out.status = dst.Run(ch);
  out.reply = ch.out();
  return out;
}

::testing::AssertionResult FailsWith(const Loaded& l, const std::string& text) {
  if (l.status.ok()) return ::testing::AssertionFailure() << "loaded, expected an error containing '" << text << "'";
  if (l.status.message().find(text) == std::string::npos) {
    return ::testing::AssertionFailure() << "error '" << l.status.message() << "' lacks '" << text << "'";
  }
  return ::testing::AssertionSuccess();
}

// ---------------------------------------------------------------- the section itself

TEST(Configuration, WriteThenReadRoundTrips) {
  Configuration c;
  c.machine = "pc-q35-10.0";
  c.capabilities = {"mapped-ram"};
  c.uuid = kUuidA;
  MemoryChannel out;
  {
    StreamWriter w(&out);
    WriteConfiguration(w, c);
    ASSERT_TRUE(w.Flush().ok());
  }
  // QEMU's layout, byte for byte.
  Bytes want;
  want.u8(wire::kConfiguration).be32(11).raw("pc-q35-10.0", 11).caps({"mapped-ram"});
  want.subsection("configuration/uuid").raw(kUuidA.data(), 16);
  EXPECT_EQ(out.out(), want.b);

  MemoryChannel in(std::vector<uint8_t>(out.out().begin() + 1, out.out().end()));
  StreamReader r(&in);
  Result<Configuration> back = ReadConfiguration(r);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->machine, "pc-q35-10.0");
  EXPECT_EQ(back->capabilities, std::vector<std::string>{"mapped-ram"});
  ASSERT_TRUE(back->uuid.has_value());
  EXPECT_EQ(*back->uuid, kUuidA);
  EXPECT_FALSE(back->target_page_bits.has_value());
}

TEST(Configuration, ForParamsListsTheUuidWhenAsked) {
  MigrationParams p;
  p.machine = "none";
  EXPECT_TRUE(ConfigurationFor(p).capabilities.empty()) << "capabilities come from the sink";
  EXPECT_EQ(ConfigurationFor(p).machine, "none");
  p.uuid = kUuidA;
  EXPECT_FALSE(ConfigurationFor(p).uuid.has_value()) << "a uuid goes in the stream only with validate-uuid";
  p.validate_uuid = true;
  EXPECT_EQ(ConfigurationFor(p).uuid, kUuidA);
}

TEST(Configuration, CheckNamesEachMismatchedCapabilityAsQemuDoes) {
  Configuration here{.machine = "none", .capabilities = {"mapped-ram"}};
  Configuration there{.machine = "none"};
  Status s = CheckConfiguration(there, here);
  EXPECT_EQ(s.code(), Code::kMismatch);
  EXPECT_EQ(s.message(), "Capability mapped-ram is on, but received capability is off");
  s = CheckConfiguration(here, there);
  EXPECT_EQ(s.message(), "Capability mapped-ram is off, but received capability is on");
  there.capabilities = {"x-ignore-shared"};
  s = CheckConfiguration(there, Configuration{.machine = "none"});
  EXPECT_EQ(s.message(), "Capability x-ignore-shared is off, but received capability is on");
  EXPECT_TRUE(CheckConfiguration(here, here).ok());
}

TEST(Configuration, CheckUuid) {
  Configuration a{.machine = "none", .uuid = kUuidA};
  Configuration b{.machine = "none", .uuid = kUuidB};
  Status s = CheckConfiguration(a, b);
  EXPECT_EQ(s.message(),
            "UUID received is 5b6ca0f4-6ad8-4f5c-9d6c-05a3c4b2c6f1 and local is 5b6ca0f4-6ad8-4f5c-9d6c-05a3c4b2c6f2");
  EXPECT_TRUE(CheckConfiguration(a, a).ok());
  std::string noted;
  EXPECT_TRUE(CheckConfiguration(a, Configuration{.machine = "none"}, [&](std::string_view n) { noted = n; }).ok());
  EXPECT_NE(noted.find("5b6ca0f4-6ad8-4f5c-9d6c-05a3c4b2c6f1"), std::string::npos) << noted;
  // A source without validate-uuid sends none: nothing to check.
  EXPECT_TRUE(CheckConfiguration(Configuration{.machine = "none"}, b).ok());
}

// ---------------------------------------------------------------- a destination reading them

TEST(ConfigurationLoad, MappedRamMustMatchBeforeAnythingLoads) {
  Ram ram;
  Bytes s;
  s.header().caps({"mapped-ram"}).ram_and_eof();
  Loaded l = Load(s.b, ram, QemuDest());
  EXPECT_TRUE(FailsWith(l, "Capability mapped-ram is off, but received capability is on"));
  EXPECT_TRUE(ram.PageIs(1, 0)) << "memory was touched before the configuration was checked";

  Bytes plain;
  plain.header().ram_and_eof();
  DestinationOptions o = QemuDest();
  o.capabilities = {"mapped-ram"};
  EXPECT_TRUE(FailsWith(Load(plain.b, ram, o), "Capability mapped-ram is on, but received capability is off"));
}

TEST(ConfigurationLoad, BadSubsectionsAreRefused) {
  Ram ram;
  struct Case {
    Bytes bytes;
    std::string error;
  };
  std::vector<Case> cases;
  cases.push_back({Bytes().header().subsection("configuration/colour").be32(1).ram_and_eof(),
                   "subsection 'configuration/colour' in the configuration section is not supported"});
  cases.push_back({Bytes().header().caps({"mapped-ram", "postcopy-ram"}).ram_and_eof(),
                   "received unknown capability 'postcopy-ram'"});
  cases.push_back({Bytes().header().subsection("configuration/capabilities", 2).be32(0).ram_and_eof(), "version 2"});
  cases.push_back({Bytes().header().subsection("configuration/capabilities").be32(1000000).ram_and_eof(),
                   "1000000 capabilities"});
  cases.push_back({Bytes().header().caps({"mapped-ram"}).caps({"mapped-ram"}).ram_and_eof(), "appears twice"});
  cases.push_back({Bytes().header().subsection("configuration/target-page-bits").be32(16).ram_and_eof(),
                   "target page size is 2^16"});
  cases.push_back({Bytes().header().subsection("configuration/uuid").raw(kUuidA.data(), 7), "configuration"});
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_TRUE(FailsWith(Load(cases[i].bytes.b, ram, QemuDest()), cases[i].error)) << "case " << i;
    EXPECT_TRUE(ram.PageIs(1, 0)) << "case " << i;
  }
}

TEST(ConfigurationLoad, UuidIsCheckedAgainstThisDestinationsUuid) {
  Ram ram;
  Bytes s;
  s.header().subsection("configuration/uuid").raw(kUuidA.data(), 16).ram_and_eof();
  DestinationOptions o = QemuDest();
  o.uuid = kUuidB;
  EXPECT_TRUE(FailsWith(Load(s.b, ram, o), "UUID received is 5b6ca0f4-6ad8-4f5c-9d6c-05a3c4b2c6f1"));
  o.uuid = kUuidA;
  Loaded l = Load(s.b, ram, o);
  ASSERT_TRUE(l.status.ok()) << l.status.ToString();
  EXPECT_TRUE(ram.PageIs(1, 0xab));
  l = Load(s.b, ram, QemuDest());  // no local uuid: accepted with a note
  ASSERT_TRUE(l.status.ok()) << l.status.ToString();
  ASSERT_EQ(l.notes.size(), 1u);
  EXPECT_NE(l.notes[0].find("no --uuid"), std::string::npos) << l.notes[0];
}

TEST(ConfigurationLoad, SourceWithValidateUuidLoadsIntoDestinationWithTheSameUuid) {
  Ram src;
  std::memset(src.mem + 3 * kPageSize, 0x5a, kPageSize);
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", src.mem, kRam).ok());
  auto tracker = MakeDirtyTracker(DirtyTrackerKind::kAllOnce);
  ASSERT_TRUE(tracker.ok());
  MigrationParams p;
  ASSERT_TRUE(p.SetQemuCompat("none").ok());
  ASSERT_TRUE(p.SetCapability("validate-uuid", true).ok());
  EXPECT_FALSE(p.Validate().ok()) << "validate-uuid without a uuid";
  p.uuid = kUuidA;
  ASSERT_TRUE(p.Validate().ok());
  MigrationSource source(p, blocks, **tracker, nullptr);
  MemoryChannel ch;
  ASSERT_TRUE(source.Run(ch, false).ok());

  Ram dst;
  DestinationOptions o = QemuDest();
  o.uuid = kUuidB;
  EXPECT_TRUE(FailsWith(Load(ch.out(), dst, o), "UUID received"));
  o.uuid = kUuidA;
  Loaded l = Load(ch.out(), dst, o);
  ASSERT_TRUE(l.status.ok()) << l.status.ToString();
  EXPECT_EQ(std::memcmp(src.mem, dst.mem, kRam), 0);
}

// ---------------------------------------------------------------- commands

TEST(Commands, SwitchoverStartIsAcceptedWhereQemu10SendsIt) {
  Ram ram;
  Bytes s;
  s.header();
  // QEMU 10: START, then at switchover the command, then END.
  s.u8(wire::kSectionStart).be32(1).name("ram").be32(0).be32(4);
  s.be64(kRam | wire::kRamMemSize).name("ram").be64(kRam).be64(wire::kRamEos).u8(wire::kFooter).be32(1);
  s.command(11);
  s.u8(wire::kSectionEnd).be32(1).be64(wire::kRamEos).u8(wire::kFooter).be32(1).u8(wire::kSectionEof);
  Loaded l = Load(s.b, ram, QemuDest());
  EXPECT_TRUE(l.status.ok()) << l.status.ToString();
  EXPECT_TRUE(l.reply.empty()) << "nothing is sent back without a return path";
}

TEST(Commands, ReturnPathAnswersPingsAndSaysShutAtTheEnd) {
  Ram ram;
  Bytes s;
  s.header().command(1).command(2, {0, 0, 0, 7});
  s.ram_and_eof();
  Loaded l = Load(s.b, ram, QemuDest());
  ASSERT_TRUE(l.status.ok()) << l.status.ToString();
  EXPECT_TRUE(ram.PageIs(1, 0xab));
  // SWITCHOVER_ACK (7, len 0), PONG (2, len 4, 7), SHUT (1, len 4, 0).
  Bytes want;
  want.be16(7).be16(0).be16(2).be16(4).be32(7).be16(1).be16(4).be32(0);
  EXPECT_EQ(l.reply, want.b);
}

TEST(Commands, Qemu72ReturnPathGetsNoSwitchoverAck) {
  Ram ram;
  Bytes s;
  s.header().command(1).ram_and_eof();
  Loaded l = Load(s.b, ram, QemuDest(MigrationParams::QemuVersion::k7_2));
  ASSERT_TRUE(l.status.ok()) << l.status.ToString();
  Bytes want;
  want.be16(1).be16(4).be32(0);
  EXPECT_EQ(l.reply, want.b);
}

TEST(Commands, FailedLoadSaysShutWithAnError) {
  Ram ram;
  Bytes s;
  s.header().command(1);
  s.u8(wire::kSectionStart).be32(1).name("ram").be32(0).be32(4);
  s.be64(2 * kRam | wire::kRamMemSize).name("ram").be64(2 * kRam);  // wrong size
  Loaded l = Load(s.b, ram, QemuDest());
  ASSERT_FALSE(l.status.ok());
  ASSERT_GE(l.reply.size(), 8u);
  Bytes shut;
  shut.be16(1).be16(4).be32(1);
  EXPECT_TRUE(std::equal(shut.b.begin(), shut.b.end(), l.reply.end() - 8)) << "no SHUT(1) at the end";
}

TEST(Commands, RefusedOnesSayWhyBeforeMemoryIsTouched) {
  struct Case {
    uint16_t cmd;
    std::vector<uint8_t> payload;
    std::string error;
  };
  const std::vector<Case> cases = {
      {3, {0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0x10, 0}, "postcopy"},  // POSTCOPY_ADVISE
      {7, {0, 0, 0, 0}, "postcopy"},                                          // PACKAGED
      {8, {}, "COLO"},
      {0, {}, "unknown command 0"},
      {12, {}, "unknown command 12"},
      {999, {1, 2}, "unknown command 999 with 2 bytes"},
      {11, {0}, "command 11 (SWITCHOVER_START) has 1 bytes of payload, expected 0"},
      {2, {0, 0, 7}, "command 2 (PING) has 3 bytes of payload, expected 4"},
      {2, {0, 0, 0, 7}, "PING without opening the return path"},
  };
  for (const Case& c : cases) {
    Ram ram;
    Bytes s;
    s.header().command(c.cmd, c.payload).ram_and_eof();
    EXPECT_TRUE(FailsWith(Load(s.b, ram, QemuDest()), c.error)) << "command " << c.cmd;
    EXPECT_TRUE(ram.PageIs(1, 0)) << "command " << c.cmd;
  }
}

TEST(Commands, AFerryDestinationRefusesTheReturnPath) {
  Ram ram;
  Bytes s;
  s.header("ferry").command(1).ram_and_eof();
  DestinationOptions o;
  o.expect_verify = false;
  o.send_verdict = false;
  EXPECT_TRUE(FailsWith(Load(s.b, ram, o), "--qemu-compat"));
}

TEST(QemuCompat, SpecSetsMachineAndGeneration) {
  MigrationParams p;
  ASSERT_TRUE(p.SetQemuCompat("none").ok());
  EXPECT_EQ(p.machine, "none");
  EXPECT_EQ(p.qemu_version, MigrationParams::QemuVersion::k10_0);
  EXPECT_FALSE(p.verify);

  MigrationParams q;
  ASSERT_TRUE(q.SetQemuCompat("pc-i440fx-7.2,version=7.2").ok());
  EXPECT_EQ(q.machine, "pc-i440fx-7.2");
  EXPECT_EQ(q.qemu_version, MigrationParams::QemuVersion::k7_2);
  // 7.2's multifd defaults and its lack of mapped-ram belong to multifd/ and
  // file/: tests/setup_test.cc checks them through Plan.

  for (const char* bad : {"", ",version=10.0", "none,version=8.0", "none,versio=7.2", "none,"}) {
    MigrationParams r;
    EXPECT_EQ(r.SetQemuCompat(bad).code(), Code::kInvalidArgument) << bad;
  }
}

}  // namespace
}  // namespace ferry
