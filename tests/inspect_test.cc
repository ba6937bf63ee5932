// `ferry inspect` (InspectFile) walking device sections it has no built-in
// knowledge of, with the VM description (vmdesc) JSON after EOF, and what
// QEMU 10 adds to a stream: command sections and configuration subsections.
//
// Built twice (tests/inspect.cmake):
//  - FERRY_INSPECT_UNIT: hand-built streams with an unknown device described
//    by a vmdesc (fields of several sizes, a compressed array, a struct with
//    its own subsection, a present and an absent subsection, two instances of
//    one device) are walked with exact section sizes; a missing vmdesc, a
//    device missing from it, malformed JSON, sizes past the end, undescribed
//    subsections, ... each stop the walk with a clear problem, never a crash.
//    Command sections (known, unknown, wrong length, cut) and configuration
//    subsections (capabilities, uuid, target-page-bits; cut, unknown, bad).
//  - FERRY_INSPECT_INTEROP: QEMU ($FERRY_QEMU: 7.2 or 10.0) migrates a pc, a
//    q35 and a -M none machine into a file with "exec:cat > F" (plain,
//    validate-uuid, x-ignore-shared) or "file:F" with mapped-ram (QEMU >= 9
//    only); `ferry inspect F --json` walks every section of it.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/wire.h"
#include "file/inspect.h"
#include "tests/support/process.h"

#if defined(FERRY_INSPECT_INTEROP)
#include "tests/support/ferry_cli.h"
#include "tests/support/qemu.h"
#include "tests/support/qmp.h"
#endif

namespace ferry::test {
namespace {

using nlohmann::json;

#if defined(FERRY_INSPECT_UNIT)

// ---------------------------------------------------------------------------
// A migration stream built byte by byte.

class StreamBuilder {
 public:
  uint64_t size() const { return b_.size(); }
  const std::string& bytes() const { return b_; }

  StreamBuilder& U8(uint8_t v) {
    b_.push_back(static_cast<char>(v));
    return *this;
  }
  StreamBuilder& Be16(uint16_t v) { return U8(v >> 8).U8(v & 0xff); }
  StreamBuilder& Be32(uint32_t v) { return Be16(v >> 16).Be16(v & 0xffff); }
  StreamBuilder& Be64(uint64_t v) { return Be32(v >> 32).Be32(v & 0xffffffff); }
  StreamBuilder& Bytes(const std::string& s) {
    b_ += s;
    return *this;
  }
  StreamBuilder& Fill(size_t n, uint8_t v) {
    b_.append(n, static_cast<char>(v));
    return *this;
  }
  StreamBuilder& Name(const std::string& s) { return U8(static_cast<uint8_t>(s.size())).Bytes(s); }

  StreamBuilder& Header() { return Be32(wire::kMagic).Be32(wire::kVersion); }
  StreamBuilder& Configuration(const std::string& machine) {
    return U8(wire::kConfiguration).Be32(static_cast<uint32_t>(machine.size())).Bytes(machine);
  }
  StreamBuilder& SectionHeader(uint8_t type, uint32_t id, const std::string& idstr, uint32_t instance,
                               uint32_t version) {
    return U8(type).Be32(id).Name(idstr).Be32(instance).Be32(version);
  }
  StreamBuilder& Footer(uint32_t id) { return U8(wire::kFooter).Be32(id); }
  StreamBuilder& Subsection(const std::string& name, uint32_t version) {
    return U8(wire::kSubsection).Name(name).Be32(version);
  }
  StreamBuilder& Eof() { return U8(wire::kSectionEof); }
  StreamBuilder& Vmdesc(const std::string& text) {
    return U8(wire::kVmDescription).Be32(static_cast<uint32_t>(text.size())).Bytes(text);
  }
  // 0x08, be16 command, be16 payload length, payload.
  StreamBuilder& Command(uint16_t cmd, const std::string& payload) {
    return U8(wire::kCommand).Be16(cmd).Be16(static_cast<uint16_t>(payload.size())).Bytes(payload);
  }
  // Configuration subsections, right after the machine name.
  StreamBuilder& Capabilities(const std::vector<std::string>& caps) {
    Subsection("configuration/capabilities", 1).Be32(static_cast<uint32_t>(caps.size()));
    for (const std::string& c : caps) Name(c);
    return *this;
  }
  StreamBuilder& Uuid(const std::string& bytes16) { return Subsection("configuration/uuid", 1).Bytes(bytes16); }

 private:
  std::string b_;
};

constexpr uint64_t kBlockSize = 4 * 4096;

// Offsets of what the builder put where, to compare with the report.
struct Layout {
  std::vector<uint64_t> section_offsets;  // every section, in order
  uint64_t eof = 0;
  uint64_t vmdesc = 0;
};

struct RamOptions {
  // x-ignore-shared: the block entry carries the block's guest address.
  std::optional<uint64_t> block_addr;
  // Called between the START and the END section (QEMU 10 puts its
  // SWITCHOVER_START command there); it notes what it adds in the layout.
  std::function<void(StreamBuilder&, Layout&)> before_end;
};

// The RAM part of a stream: START (block list), END (one page, one zero
// page), so that the stream is complete as far as RAM goes.
void AddRam(StreamBuilder& s, Layout& l, const RamOptions& o = {}) {
  l.section_offsets.push_back(s.size());
  s.SectionHeader(wire::kSectionStart, 0, "ram", 0, wire::kRamSectionVersion)
      .Be64(kBlockSize | wire::kRamMemSize)
      .Name("pc.ram")
      .Be64(kBlockSize);
  if (o.block_addr) s.Be64(*o.block_addr);
  s.Be64(wire::kRamEos).Footer(0);
  if (o.before_end) o.before_end(s, l);
  l.section_offsets.push_back(s.size());
  s.U8(wire::kSectionEnd)
      .Be32(0)
      .Be64(0 | wire::kRamPage)
      .Name("pc.ram")
      .Fill(4096, 0xab)
      .Be64(0x1000 | wire::kRamZero | wire::kRamContinue)
      .U8(0)
      .Be64(wire::kRamEos)
      .Footer(0);
}

// The state of device "testdev" version 3, as the description of
// TestdevDescription() says (present_sub: whether "testdev/present" is sent).
void AddTestdevState(StreamBuilder& s, bool present_sub = true) {
  s.U8(0x11)                           // a: uint8
      .Be16(0x2222)                    // b: uint16
      .Be32(0x33333333)                // c: uint32
      .Be64(0x4444444444444444)        // d: uint64
      .Fill(13, 0x05)                  // buf: 13 bytes that look like subsection markers
      .Fill(5 * 4, 0x66);              // arr: 5 x uint32 (compressed array)
  // st: struct { x: uint32, y: uint8 } + its subsection "testdev/st/extra" { z: uint16 }
  s.Be32(7).U8(8).Subsection("testdev/st/extra", 1).Be16(9);
  // Subsections: "testdev/absent" is described but not sent; "testdev/present" is.
  if (present_sub) s.Subsection("testdev/present", 2).Be64(10).Fill(3, 0x7e);
}

json Field(const std::string& name, const std::string& type, uint64_t size) {
  return {{"name", name}, {"type", type}, {"size", size}};
}

json TestdevDescription() {
  json st_fields = json::array({Field("x", "uint32", 4), Field("y", "uint8", 1)});
  json st = {{"vmsd_name", "testdev/st"},
             {"version", 1},
             {"fields", st_fields},
             {"subsections",
              json::array({{{"vmsd_name", "testdev/st/extra"},
                            {"version", 1},
                            {"fields", json::array({Field("z", "uint16", 2)})}}})}};
  json arr = Field("arr", "uint32", 4);
  arr["array_len"] = 5;
  json stf = {{"name", "st"}, {"type", "struct"}, {"struct", st}, {"size", 4 + 1 + (1 + 1 + 16 + 4) + 2}};
  return {{"name", "testdev"},
          {"instance_id", 0},
          {"vmsd_name", "testdev"},
          {"version", 3},
          {"fields", json::array({Field("a", "uint8", 1), Field("b", "uint16", 2), Field("c", "uint32", 4),
                                  Field("d", "uint64", 8), Field("buf", "buffer", 13), arr, stf})},
          {"subsections", json::array({{{"vmsd_name", "testdev/absent"},
                                        {"version", 1},
                                        {"fields", json::array({Field("w", "uint32", 4)})}},
                                       {{"vmsd_name", "testdev/present"},
                                        {"version", 2},
                                        {"fields", json::array({Field("p", "uint64", 8), Field("q", "buffer", 3)})}}})}};
}

// Two instances of a device "twin" whose state sizes differ by instance.
json TwinDescription(uint32_t instance, uint64_t size) {
  return {{"name", "twin"}, {"instance_id", instance}, {"vmsd_name", "twin"}, {"version", 1},
          {"fields", json::array({Field("data", "buffer", size)})}};
}

json Vmdesc(json devices) { return {{"page_size", 4096}, {"devices", std::move(devices)}}; }

json GoodDevices() { return json::array({TestdevDescription(), TwinDescription(0, 2), TwinDescription(1, 6)}); }

// header, configuration, ram START/END, "testdev", "twin" 0 and 1, "timer",
// EOF, then `vmdesc` (none if empty).
StreamBuilder GoodStream(Layout& l, const std::string& vmdesc, const std::string& prefix = "") {
  StreamBuilder s;
  s.Bytes(prefix);
  s.Header().Configuration("pc-i440fx-7.2");
  AddRam(s, l);
  l.section_offsets.push_back(s.size());
  s.SectionHeader(wire::kSectionFull, 1, "testdev", 0, 3);
  AddTestdevState(s);
  s.Footer(1);
  l.section_offsets.push_back(s.size());
  s.SectionHeader(wire::kSectionFull, 2, "twin", 0, 1).Fill(2, 0xaa).Footer(2);
  l.section_offsets.push_back(s.size());
  s.SectionHeader(wire::kSectionFull, 3, "twin", 1, 1).Fill(6, 0xbb).Footer(3);
  l.section_offsets.push_back(s.size());
  s.SectionHeader(wire::kSectionFull, 4, "timer", 0, 2).Fill(24, 0).Footer(4);
  l.eof = s.size();
  s.Eof();
  l.vmdesc = s.size();
  if (!vmdesc.empty()) s.Vmdesc(vmdesc);
  return s;
}

class InspectVmdescTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = std::make_unique<TempDir>("ferry-inspect"); }

  InspectReport Inspect(const std::string& bytes, uint64_t offset = 0) {
    // A fresh file each time (ext4 flushes a file truncated and rewritten).
    const std::string path = dir_->Path("s.mig");
    unlink(path.c_str());
    EXPECT_TRUE(WriteStringToFile(path, bytes).ok());
    Result<InspectReport> r = InspectFile(path, offset);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : InspectReport{};
  }
  // The walk stopped with a problem that says it cannot walk past section
  // `idstr` and contains `reason`.
  static void ExpectStopsAt(const InspectReport& r, const std::string& idstr, const std::string& reason) {
    EXPECT_FALSE(r.complete());
    EXPECT_NE(r.problem.find("section '" + idstr + "'"), std::string::npos) << r.problem;
    EXPECT_NE(r.problem.find("cannot walk past it"), std::string::npos) << r.problem;
    EXPECT_NE(r.problem.find(reason), std::string::npos) << r.problem;
    EXPECT_NE(r.Verdict().find("INCOMPLETE"), std::string::npos) << r.Verdict();
    ASSERT_FALSE(r.sections.empty());
    EXPECT_EQ(r.sections.back().idstr, idstr);
    EXPECT_EQ(r.sections.back().size, 0u) << "a section the walk stopped in has no size";
    EXPECT_FALSE(r.eof_present);
  }

  std::unique_ptr<TempDir> dir_;
};

TEST_F(InspectVmdescTest, WalksUnknownDevicesWithTheVmdesc) {
  Layout l;
  const std::string desc = Vmdesc(GoodDevices()).dump();
  StreamBuilder s = GoodStream(l, desc);
  InspectReport r = Inspect(s.bytes());
  EXPECT_TRUE(r.complete()) << r.Verdict();
  EXPECT_EQ(r.problem, "");
  EXPECT_EQ(r.machine, "pc-i440fx-7.2");
  ASSERT_EQ(r.sections.size(), l.section_offsets.size());
  for (size_t i = 0; i < r.sections.size(); ++i) {
    SCOPED_TRACE("section " + std::to_string(i) + " '" + r.sections[i].idstr + "'");
    EXPECT_EQ(r.sections[i].offset, l.section_offsets[i]);
    const uint64_t next = i + 1 < r.sections.size() ? l.section_offsets[i + 1] : l.eof;
    EXPECT_EQ(r.sections[i].size, next - l.section_offsets[i]);
  }
  // Sizes by hand: type 1, id 4, name 1+len, instance 4, version 4, footer 5.
  const InspectSection& dev = r.sections[2];
  EXPECT_EQ(dev.idstr, "testdev");
  const uint64_t state = 1 + 2 + 4 + 8 + 13 + 20 + (4 + 1 + (1 + 1 + 16 + 4) + 2) + (1 + 1 + 15 + 4) + 8 + 3;
  EXPECT_EQ(dev.size, 1 + 4 + 1 + 7 + 4 + 4 + state + 5);
  EXPECT_TRUE(dev.from_vmdesc);
  EXPECT_EQ(dev.subsections, 2u) << "testdev/st/extra and testdev/present";
  EXPECT_EQ(r.sections[3].idstr, "twin");
  EXPECT_EQ(r.sections[3].instance, 0u);
  EXPECT_EQ(r.sections[3].size, 1 + 4 + 1 + 4 + 4 + 4 + 2 + 5u);
  EXPECT_EQ(r.sections[4].instance, 1u);
  EXPECT_EQ(r.sections[4].size, 1 + 4 + 1 + 4 + 4 + 4 + 6 + 5u);
  EXPECT_TRUE(r.sections[4].from_vmdesc);
  EXPECT_EQ(r.sections[5].idstr, "timer");
  EXPECT_FALSE(r.sections[5].from_vmdesc) << "timer is known to inspect";
  EXPECT_TRUE(r.eof_present);
  EXPECT_TRUE(r.vmdesc_present);
  EXPECT_EQ(r.vmdesc_offset, l.vmdesc);
  EXPECT_EQ(r.vmdesc_bytes, desc.size());
  EXPECT_EQ(r.stream_end, s.size());
}

TEST_F(InspectVmdescTest, StreamAtAnOffsetInTheFile) {
  Layout l;
  const std::string prefix(4096, '\x06');  // bytes before the stream that look like vmdesc markers
  StreamBuilder s = GoodStream(l, Vmdesc(GoodDevices()).dump(), prefix);
  InspectReport r = Inspect(s.bytes(), prefix.size());
  EXPECT_TRUE(r.complete()) << r.Verdict();
  ASSERT_EQ(r.sections.size(), 6u);
  EXPECT_EQ(r.sections[2].offset, l.section_offsets[2]);
  EXPECT_EQ(r.sections[2].size, l.section_offsets[3] - l.section_offsets[2]);
}

TEST_F(InspectVmdescTest, DescribedSubsectionsAllAbsent) {
  // "testdev/present" not sent either: both described subsections absent.
  StreamBuilder s;
  Layout l;
  s.Header().Configuration("pc");
  AddRam(s, l);
  const uint64_t at = s.size();
  s.SectionHeader(wire::kSectionFull, 1, "testdev", 0, 3);
  AddTestdevState(s, /*present_sub=*/false);
  s.Footer(1);
  const uint64_t end = s.size();
  s.Eof().Vmdesc(Vmdesc(json::array({TestdevDescription()})).dump());
  InspectReport r = Inspect(s.bytes());
  EXPECT_TRUE(r.complete()) << r.Verdict();
  ASSERT_EQ(r.sections.size(), 3u);
  EXPECT_EQ(r.sections[2].size, end - at);
  EXPECT_EQ(r.sections[2].subsections, 1u) << "only the struct's subsection";
}

TEST_F(InspectVmdescTest, OldStyleDeviceIsOneBuffer) {
  // QEMU describes devices without a VMState description as one "data" buffer.
  StreamBuilder s;
  Layout l;
  s.Header().Configuration("pc");
  AddRam(s, l);
  s.SectionHeader(wire::kSectionFull, 1, "oldstyle", 0, 0).Fill(4096 + 3, 0x7e).Footer(1);
  s.Eof().Vmdesc(
      R"({"page_size": 4096, "devices": [{"name": "oldstyle", "instance_id": 0, "size": 4099, "fields": [{"name": "data", "size": 4099, "type": "buffer"}]}]})");
  InspectReport r = Inspect(s.bytes());
  EXPECT_TRUE(r.complete()) << r.Verdict();
  ASSERT_EQ(r.sections.size(), 3u);
  EXPECT_EQ(r.sections[2].size, (1 + 4 + 1 + 8 + 4 + 4) + 4099 + 5u);
}

TEST_F(InspectVmdescTest, NoVmdesc) {
  Layout l;
  InspectReport r = Inspect(GoodStream(l, "").bytes());
  ExpectStopsAt(r, "testdev", "no VM description");
  EXPECT_NE(r.problem.find("offset " + std::to_string(l.section_offsets[2])), std::string::npos) << r.problem;
  // The sections before it were walked and have their sizes.
  ASSERT_EQ(r.sections.size(), 3u);
  EXPECT_EQ(r.sections[1].size, l.section_offsets[2] - l.section_offsets[1]);
}

TEST_F(InspectVmdescTest, VmdescLengthNotReachingTheEndOfTheFile) {
  Layout l;
  StreamBuilder s = GoodStream(l, Vmdesc(GoodDevices()).dump());
  s.Bytes("trailing");
  ExpectStopsAt(Inspect(s.bytes()), "testdev", "no VM description");
}

TEST_F(InspectVmdescTest, DeviceMissingFromVmdesc) {
  Layout l;
  InspectReport r = Inspect(GoodStream(l, Vmdesc(json::array({TwinDescription(0, 2)})).dump()).bytes());
  ExpectStopsAt(r, "testdev", "does not list it");
}

TEST_F(InspectVmdescTest, InstanceMissingFromVmdesc) {
  Layout l;
  InspectReport r =
      Inspect(GoodStream(l, Vmdesc(json::array({TestdevDescription(), TwinDescription(0, 2)})).dump()).bytes());
  ExpectStopsAt(r, "twin", "does not list it with instance id 1");
  EXPECT_TRUE(r.sections[3].from_vmdesc) << "instance 0 was walked";
}

TEST_F(InspectVmdescTest, MalformedJson) {
  for (const std::string& bad : {std::string("{\"page_size\": 4096, \"devices\": [{\"name\": \"testdev\""),
                                std::string("{}}"), std::string("{\"devices\": [1,]}"),
                                std::string("{\"a\": \"\xff\xfe\"}")}) {
    SCOPED_TRACE(bad);
    Layout l;
    InspectReport r = Inspect(GoodStream(l, bad).bytes());
    ExpectStopsAt(r, "testdev", "is not valid JSON");
    // The parser's message quotes what it read; the problem stays printable
    // (it goes into `ferry inspect --json`).
    for (char c : r.problem) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << r.problem;
  }
}

TEST_F(InspectVmdescTest, JsonOfTheWrongShape) {
  struct Case {
    std::string vmdesc;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {R"({"devices": 5})", "has no \"devices\" list"},
      {R"({"device": []})", "has no \"devices\" list"},
      {R"({"devices": [{"name": "testdev", "instance_id": 0}]})", "without its fields"},
      {R"({"devices": [{"name": "testdev", "instance_id": -1, "fields": []}]})", "does not list it"},
      {R"({"devices": [{"name": "testdev", "instance_id": 0, "fields": "abc"}]})", "without its fields"},
      {R"({"devices": [{"name": "testdev", "instance_id": 0, "fields": [7]}]})", "no size for field 'testdev.?'"},
      {R"({"devices": [{"name": "testdev", "instance_id": 0, "fields": [{"name": "a", "size": -1}]}]})",
       "no size for field 'testdev.a'"},
      {R"({"devices": [{"name": "testdev", "instance_id": 0, "fields": [{"name": "a", "size": 1.5}]}]})",
       "no size for field 'testdev.a'"},
      {R"({"devices": [{"name": "testdev", "instance_id": 0, "fields": [{"name": "a", "size": 1, "array_len": "x"}]}]})",
       "array_len that is not a count"},
      {R"({"devices": [{"name": "testdev", "instance_id": 0, "fields": [], "subsections": {}}]})", "is not a list"},
      {R"({"devices": [{"name": "testdev", "instance_id": 0, "fields": [], "subsections": [{"version": 1}]}]})",
       "without a vmsd_name"},
      {R"({"devices": [{"name": "testdev", "instance_id": 0, "version": 4, "fields": []}]})",
       "describes version 4"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.vmdesc);
    Layout l;
    ExpectStopsAt(Inspect(GoodStream(l, c.vmdesc).bytes()), "testdev", c.reason);
  }
}

TEST_F(InspectVmdescTest, SizeMissing) {
  json devs = GoodDevices();
  devs[0]["fields"][2].erase("size");
  Layout l;
  ExpectStopsAt(Inspect(GoodStream(l, Vmdesc(devs).dump()).bytes()), "testdev", "no size for field 'testdev.c'");
}

TEST_F(InspectVmdescTest, SizeLiesPastTheEnd) {
  for (uint64_t size : {uint64_t{1} << 40, uint64_t{UINT64_MAX}, uint64_t{1000}}) {
    SCOPED_TRACE(size);
    json devs = GoodDevices();
    devs[0]["fields"][4]["size"] = size;
    Layout l;
    InspectReport r = Inspect(GoodStream(l, Vmdesc(devs).dump()).bytes());
    ExpectStopsAt(r, "testdev", "field 'testdev.buf' (" + std::to_string(size) + " bytes at offset");
    EXPECT_NE(r.problem.find("runs past the end of the device state"), std::string::npos) << r.problem;
  }
  // A compressed array whose element count overflows.
  json devs = GoodDevices();
  devs[0]["fields"][5]["array_len"] = uint64_t{1} << 62;
  Layout l;
  ExpectStopsAt(Inspect(GoodStream(l, Vmdesc(devs).dump()).bytes()), "testdev", "runs past the end");
}

TEST_F(InspectVmdescTest, SizesThatDisagreeWithTheStream) {
  // One byte too few for "buf": the walk lands one byte early, on the wrong
  // footer byte.
  json devs = GoodDevices();
  devs[0]["fields"][4]["size"] = 12;
  Layout l;
  InspectReport r = Inspect(GoodStream(l, Vmdesc(devs).dump()).bytes());
  EXPECT_FALSE(r.complete());
  EXPECT_NE(r.problem.find("testdev"), std::string::npos) << r.problem;
  EXPECT_EQ(r.sections.back().idstr, "testdev");
  EXPECT_EQ(r.sections.back().size, 0u);
}

TEST_F(InspectVmdescTest, StructSizeDisagreesWithItsDescription) {
  json devs = GoodDevices();
  devs[0]["fields"][6]["size"] = 5;  // without its subsection
  Layout l;
  ExpectStopsAt(Inspect(GoodStream(l, Vmdesc(devs).dump()).bytes()), "testdev",
                "struct field 'testdev.st' at offset");
}

TEST_F(InspectVmdescTest, UndescribedSubsectionIsNamed) {
  json devs = GoodDevices();
  devs[0]["subsections"].erase(1);  // "testdev/present" no longer described
  Layout l;
  ExpectStopsAt(Inspect(GoodStream(l, Vmdesc(devs).dump()).bytes()), "testdev",
                "subsection 'testdev/present' at offset");
}

TEST_F(InspectVmdescTest, SubsectionVersionDisagrees) {
  json devs = GoodDevices();
  devs[0]["subsections"][1]["version"] = 7;
  Layout l;
  ExpectStopsAt(Inspect(GoodStream(l, Vmdesc(devs).dump()).bytes()), "testdev",
                "subsection 'testdev/present' at offset");
}

TEST_F(InspectVmdescTest, DeeplyNestedDescription) {
  // 200 structs deep: the walk refuses, without exhausting the stack.
  json inner = {{"vmsd_name", "leaf"}, {"fields", json::array({Field("x", "uint8", 1)})}};
  for (int i = 0; i < 200; ++i) {
    inner = {{"vmsd_name", "s" + std::to_string(i)},
             {"fields", json::array({{{"name", "f"}, {"type", "struct"}, {"struct", inner}}})}};
  }
  json dev = {{"name", "testdev"}, {"instance_id", 0}, {"fields", inner["fields"]}};
  Layout l;
  ExpectStopsAt(Inspect(GoodStream(l, Vmdesc(json::array({dev})).dump()).bytes()), "testdev", "deeper than 64");
}

TEST_F(InspectVmdescTest, PartOfAnUnknownIterativeSection) {
  StreamBuilder s;
  Layout l;
  s.Header().Configuration("pc");
  AddRam(s, l);
  s.SectionHeader(wire::kSectionStart, 9, "block", 0, 1).Fill(8, 0).Footer(9);
  s.Eof().Vmdesc(Vmdesc(GoodDevices()).dump());
  ExpectStopsAt(Inspect(s.bytes()), "block", "only describes full (0x04) device sections");
}

TEST_F(InspectVmdescTest, VmdescBeforeTheDeviceStateIsNotUsedPastIt) {
  // A section whose description would reach into the VM description.
  StreamBuilder s;
  Layout l;
  s.Header().Configuration("pc");
  AddRam(s, l);
  s.SectionHeader(wire::kSectionFull, 1, "big", 0, 1).Fill(10, 0).Footer(1);
  s.Eof().Vmdesc(R"({"devices": [{"name": "big", "instance_id": 0, "fields": [{"name": "d", "size": 40}]}]})");
  ExpectStopsAt(Inspect(s.bytes()), "big", "where the VM description begins");
}

// Truncated anywhere, and any single byte of the device state or the JSON
// changed: InspectFile returns a report (never crashes, never throws), and a
// truncated file is never complete.
TEST_F(InspectVmdescTest, DamagedFilesNeverCrash) {
  Layout l;
  const std::string good = GoodStream(l, Vmdesc(GoodDevices()).dump()).bytes();
  for (size_t cut = l.section_offsets[2]; cut < good.size(); cut += 3) {
    InspectReport r = Inspect(good.substr(0, cut));
    EXPECT_FALSE(r.complete()) << "cut at " << cut;
  }
  for (size_t pos = l.section_offsets[2]; pos < good.size(); ++pos) {
    for (uint8_t x : {uint8_t{0x01}, uint8_t{0x80}, uint8_t{0xff}}) {
      std::string bad = good;
      bad[pos] = static_cast<char>(bad[pos] ^ x);
      InspectReport r = Inspect(bad);
      if (r.complete()) {
        EXPECT_EQ(r.sections.size(), 6u) << "byte " << pos;
      }
    }
  }
}

// ---------------------------------------------------------------------------
// QEMU 10 shapes: command sections (0x08) and configuration subsections.

using InspectQemu10ShapesTest = InspectVmdescTest;

std::string Be16Bytes(uint16_t v) { return StreamBuilder().Be16(v).bytes(); }
std::string Be32Bytes(uint32_t v) { return StreamBuilder().Be32(v).bytes(); }
std::string Be64Bytes(uint64_t v) { return StreamBuilder().Be64(v).bytes(); }

const std::string kUuidBytes("\x12\x34\x56\x78\x9a\xbc\xde\xf0\x12\x34\x56\x78\x9a\xbc\xde\xf0", 16);
constexpr const char* kUuidText = "12345678-9abc-def0-1234-56789abcdef0";

struct Qemu10Stream {
  // Configuration subsections, after the machine name.
  std::function<void(StreamBuilder&)> configuration;
  RamOptions ram;
  std::string vmdesc = Vmdesc(json::array()).dump();
};

// header, configuration, ram START, [before_end], ram END, "timer", EOF,
// VM description. Layout: every section and command in order.
StreamBuilder BuildQemu10(const Qemu10Stream& o, Layout& l) {
  StreamBuilder s;
  s.Header().Configuration("pc-i440fx-10.0");
  if (o.configuration) o.configuration(s);
  AddRam(s, l, o.ram);
  l.section_offsets.push_back(s.size());
  s.SectionHeader(wire::kSectionFull, 1, "timer", 0, 2).Fill(24, 0).Footer(1);
  l.eof = s.size();
  s.Eof();
  l.vmdesc = s.size();
  s.Vmdesc(o.vmdesc);
  return s;
}

// RamOptions that put `commands` (number, payload) before the ram END.
RamOptions CommandsBeforeEnd(std::vector<std::pair<uint16_t, std::string>> commands) {
  RamOptions o;
  o.before_end = [commands](StreamBuilder& s, Layout& l) {
    for (const auto& [cmd, payload] : commands) {
      l.section_offsets.push_back(s.size());
      s.Command(cmd, payload);
    }
  };
  return o;
}

void ExpectSectionsTile(const InspectReport& r, const Layout& l) {
  ASSERT_EQ(r.sections.size(), l.section_offsets.size());
  for (size_t i = 0; i < r.sections.size(); ++i) {
    SCOPED_TRACE("section " + std::to_string(i) + " '" + r.sections[i].idstr + "'");
    EXPECT_EQ(r.sections[i].offset, l.section_offsets[i]);
    const uint64_t next = i + 1 < r.sections.size() ? l.section_offsets[i + 1] : l.eof;
    EXPECT_EQ(r.sections[i].size, next - l.section_offsets[i]);
  }
}

TEST_F(InspectQemu10ShapesTest, SwitchoverStartBeforeTheRamEnd) {
  // What QEMU 10 sends in every precopy stream.
  Layout l;
  StreamBuilder s = BuildQemu10({.ram = CommandsBeforeEnd({{11, ""}})}, l);
  InspectReport r = Inspect(s.bytes());
  EXPECT_TRUE(r.complete()) << r.Verdict();
  ExpectSectionsTile(r, l);
  ASSERT_EQ(r.sections.size(), 4u);
  const InspectSection& c = r.sections[1];
  EXPECT_EQ(c.type, wire::kCommand);
  EXPECT_EQ(c.id, 11u);
  EXPECT_EQ(c.idstr, "SWITCHOVER_START");
  EXPECT_EQ(c.command_len, 0u);
  EXPECT_EQ(c.size, 5u);
  EXPECT_EQ(r.sections[2].idstr, "ram");
  EXPECT_EQ(r.sections[2].type, wire::kSectionEnd);
  EXPECT_TRUE(r.ram_end);
  EXPECT_TRUE(r.configuration_subsections.empty());
  EXPECT_FALSE(r.has_capabilities);
  EXPECT_EQ(r.uuid, "");
}

TEST_F(InspectQemu10ShapesTest, EveryKnownCommandIsListedByName) {
  const std::string package = "package bytes, not walked";
  const std::string discard = std::string("\x00\x06pc.ram", 8) + Be64Bytes(0) + Be64Bytes(4096);
  const std::vector<std::pair<uint16_t, std::string>> commands = {
      {1, ""},
      {2, Be32Bytes(7)},
      {3, ""},
      {3, Be64Bytes(4096) + Be64Bytes(4096)},
      {4, ""},
      {5, ""},
      {6, discard},
      {6, std::string("\x00\x06pc.ram", 8)},
      {7, Be32Bytes(static_cast<uint32_t>(package.size())) },
      {8, ""},
      {9, ""},
      {10, "\x06pc.ram"},
      {11, ""},
  };
  Layout l;
  RamOptions ram;
  ram.before_end = [&](StreamBuilder& s, Layout& lay) {
    for (const auto& [cmd, payload] : commands) {
      lay.section_offsets.push_back(s.size());
      s.Command(cmd, payload);
      if (cmd == 7) s.Bytes(package);  // PACKAGED: the package follows the command
    }
  };
  StreamBuilder s = BuildQemu10({.ram = ram}, l);
  InspectReport r = Inspect(s.bytes());
  EXPECT_TRUE(r.complete()) << r.Verdict();
  ExpectSectionsTile(r, l);
  const std::vector<std::string> names = {"OPEN_RETURN_PATH", "PING", "POSTCOPY_ADVISE", "POSTCOPY_ADVISE",
                                          "POSTCOPY_LISTEN", "POSTCOPY_RUN", "POSTCOPY_RAM_DISCARD",
                                          "POSTCOPY_RAM_DISCARD", "PACKAGED", "ENABLE_COLO", "POSTCOPY_RESUME",
                                          "RECV_BITMAP", "SWITCHOVER_START"};
  ASSERT_EQ(r.sections.size(), 1 + commands.size() + 2);
  for (size_t i = 0; i < commands.size(); ++i) {
    const InspectSection& c = r.sections[1 + i];
    SCOPED_TRACE(names[i]);
    EXPECT_EQ(c.type, wire::kCommand);
    EXPECT_EQ(c.id, commands[i].first);
    EXPECT_EQ(c.idstr, names[i]);
    EXPECT_EQ(c.command_len, commands[i].second.size());
    EXPECT_EQ(c.size, 5 + commands[i].second.size() + (commands[i].first == 7 ? package.size() : 0));
  }
}

TEST_F(InspectQemu10ShapesTest, UnknownCommandNumber) {
  for (uint16_t cmd : {uint16_t{0}, uint16_t{12}, uint16_t{0x7e}, uint16_t{0xffff}}) {
    SCOPED_TRACE(cmd);
    Layout l;
    StreamBuilder s = BuildQemu10({.ram = CommandsBeforeEnd({{11, ""}, {cmd, ""}})}, l);
    InspectReport r = Inspect(s.bytes());
    EXPECT_FALSE(r.complete());
    const std::string at = "at offset " + std::to_string(l.section_offsets[2]);
    EXPECT_NE(r.problem.find("unknown command " + std::to_string(cmd) + " "), std::string::npos) << r.problem;
    EXPECT_NE(r.problem.find(at), std::string::npos) << r.problem;
    EXPECT_NE(r.Verdict().find("INCOMPLETE"), std::string::npos);
    ASSERT_EQ(r.sections.size(), 2u) << "the ram START and the SWITCHOVER_START before it";
    EXPECT_EQ(r.sections[1].idstr, "SWITCHOVER_START");
    EXPECT_FALSE(r.ram_end);
    EXPECT_FALSE(r.eof_present);
  }
}

TEST_F(InspectQemu10ShapesTest, CommandWithAPayloadOfTheWrongLength) {
  struct Case {
    uint16_t cmd;
    std::string payload;
    std::string name;
  };
  const std::vector<Case> cases = {
      {11, Be32Bytes(0), "SWITCHOVER_START"},
      {1, "x", "OPEN_RETURN_PATH"},
      {2, "", "PING"},
      {2, Be64Bytes(1), "PING"},
      {7, Be16Bytes(1), "PACKAGED"},
      {4, "xy", "POSTCOPY_LISTEN"},
      {3, Be64Bytes(4096), "POSTCOPY_ADVISE"},
      {10, "\x05pc.ram", "RECV_BITMAP"},
      {10, "", "RECV_BITMAP"},
      {6, "", "POSTCOPY_RAM_DISCARD"},
      {6, std::string("\x01\x06pc.ram", 8), "POSTCOPY_RAM_DISCARD"},          // version 1
      {6, std::string("\x00\x06pc.ram", 8) + Be64Bytes(0), "POSTCOPY_RAM_DISCARD"},  // half a range
      {6, std::string("\x00\x09pc.ram", 8), "POSTCOPY_RAM_DISCARD"},          // name longer than the payload
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name + " with " + std::to_string(c.payload.size()) + " bytes");
    Layout l;
    StreamBuilder s = BuildQemu10({.ram = CommandsBeforeEnd({{c.cmd, c.payload}})}, l);
    InspectReport r = Inspect(s.bytes());
    EXPECT_FALSE(r.complete());
    EXPECT_NE(r.problem.find("command " + c.name + " at offset " + std::to_string(l.section_offsets[1]) +
                             " is corrupt"),
              std::string::npos)
        << r.problem;
    EXPECT_EQ(r.sections.size(), 1u);
    EXPECT_FALSE(r.ram_end);
  }
}

TEST_F(InspectQemu10ShapesTest, TruncatedCommand) {
  Layout l;
  const std::string good = BuildQemu10({.ram = CommandsBeforeEnd({{2, Be32Bytes(9)}, {11, ""}})}, l).bytes();
  ASSERT_TRUE(Inspect(good).complete());
  // Cut anywhere from inside PING (9 bytes) to inside SWITCHOVER_START (5 bytes).
  for (uint64_t cut = l.section_offsets[1] + 1; cut < l.section_offsets[3]; ++cut) {
    SCOPED_TRACE(cut);
    InspectReport r = Inspect(good.substr(0, cut));
    EXPECT_FALSE(r.complete());
    EXPECT_NE(r.problem.find("file ends at " + std::to_string(cut)), std::string::npos) << r.problem;
  }
  // A package that runs past the end of the file.
  Layout l2;
  StreamBuilder s = BuildQemu10({.ram = CommandsBeforeEnd({{7, Be32Bytes(1 << 20)}})}, l2);
  InspectReport r = Inspect(s.bytes());
  EXPECT_FALSE(r.complete());
  EXPECT_NE(r.problem.find("the package of command PACKAGED at offset " + std::to_string(l2.section_offsets[1])),
            std::string::npos)
      << r.problem;
}

TEST_F(InspectQemu10ShapesTest, ConfigurationSubsections) {
  // x-ignore-shared in the capabilities: each block entry carries an address.
  Layout l;
  Qemu10Stream o;
  o.configuration = [](StreamBuilder& s) {
    s.Subsection("configuration/target-page-bits", 1).Be32(12);
    s.Capabilities({"x-ignore-shared", "some-other"}).Uuid(kUuidBytes);
  };
  o.ram = CommandsBeforeEnd({{11, ""}});
  o.ram.block_addr = 0x100000000;
  StreamBuilder s = BuildQemu10(o, l);
  InspectReport r = Inspect(s.bytes());
  EXPECT_TRUE(r.complete()) << r.Verdict();
  ExpectSectionsTile(r, l);
  EXPECT_EQ(r.machine, "pc-i440fx-10.0");
  EXPECT_EQ(r.configuration_subsections,
            (std::vector<std::string>{"configuration/target-page-bits", "configuration/capabilities",
                                      "configuration/uuid"}));
  EXPECT_TRUE(r.has_capabilities);
  EXPECT_EQ(r.capabilities, (std::vector<std::string>{"x-ignore-shared", "some-other"}));
  EXPECT_EQ(r.uuid, kUuidText);
  EXPECT_EQ(r.target_page_bits, 12u);
  ASSERT_EQ(r.blocks.size(), 1u);
  EXPECT_TRUE(r.blocks[0].has_addr);
  EXPECT_EQ(r.blocks[0].addr, 0x100000000u);
  EXPECT_EQ(r.blocks[0].size, kBlockSize);

  // uuid alone (validate-uuid without mapped-ram or x-ignore-shared): no address.
  Layout l2;
  o.configuration = [](StreamBuilder& s) { s.Uuid(kUuidBytes); };
  o.ram.block_addr.reset();
  r = Inspect(BuildQemu10(o, l2).bytes());
  EXPECT_TRUE(r.complete()) << r.Verdict();
  EXPECT_FALSE(r.has_capabilities);
  EXPECT_EQ(r.uuid, kUuidText);
  EXPECT_FALSE(r.blocks.at(0).has_addr);

  // An empty capability list is a list too.
  Layout l3;
  o.configuration = [](StreamBuilder& s) { s.Capabilities({}); };
  r = Inspect(BuildQemu10(o, l3).bytes());
  EXPECT_TRUE(r.complete()) << r.Verdict();
  EXPECT_TRUE(r.has_capabilities);
  EXPECT_TRUE(r.capabilities.empty());
}

// A mapped-ram stream with one block: entry, 28-byte header, bitmap (one
// word), page region, then the rest of the START section.
StreamBuilder MappedRamStream(const std::vector<std::string>& caps, Layout& l) {
  StreamBuilder s;
  s.Header().Configuration("pc-q35-10.0").Capabilities(caps);
  l.section_offsets.push_back(s.size());
  s.SectionHeader(wire::kSectionStart, 0, "ram", 0, wire::kRamSectionVersion)
      .Be64(kBlockSize | wire::kRamMemSize)
      .Name("pc.ram")
      .Be64(kBlockSize);
  const uint64_t header = s.size();
  const uint64_t bitmap = header + 28, pages = bitmap + 8;
  s.Be32(1).Be64(4096).Be64(bitmap).Be64(pages);
  s.U8(0x05).Fill(7, 0);               // pages 0 and 2 present
  s.Fill(kBlockSize, 0xcd);
  s.Be64(wire::kRamEos).Footer(0);
  l.section_offsets.push_back(s.size());
  s.Command(11, "");
  l.section_offsets.push_back(s.size());
  s.U8(wire::kSectionEnd).Be32(0).Be64(wire::kRamEos).Footer(0);
  l.eof = s.size();
  s.Eof();
  l.vmdesc = s.size();
  s.Vmdesc(Vmdesc(json::array()).dump());
  return s;
}

TEST_F(InspectQemu10ShapesTest, CapabilitiesSayWhetherTheFileIsMappedRam) {
  Layout l;
  InspectReport r = Inspect(MappedRamStream({"mapped-ram"}, l).bytes());
  EXPECT_TRUE(r.complete()) << r.Verdict();
  ExpectSectionsTile(r, l);
  EXPECT_TRUE(r.mapped_ram);
  ASSERT_EQ(r.blocks.size(), 1u);
  EXPECT_EQ(r.blocks[0].pages_present, 2u);

  // A mapped-ram header the capabilities do not announce.
  Layout l2;
  r = Inspect(MappedRamStream({"x-ignore-shared-but-not-here"}, l2).bytes());
  EXPECT_FALSE(r.complete());
  EXPECT_NE(r.problem.find("has a mapped-ram header but the configuration's capabilities do not list mapped-ram"),
            std::string::npos)
      << r.problem;

  // mapped-ram announced, a plain block list.
  Layout l3;
  Qemu10Stream o;
  o.configuration = [](StreamBuilder& s) { s.Capabilities({"mapped-ram"}); };
  r = Inspect(BuildQemu10(o, l3).bytes());
  EXPECT_FALSE(r.complete());
  EXPECT_NE(r.problem.find("has no mapped-ram header (or one pointing outside the file) though the configuration's "
                           "capabilities list mapped-ram"),
            std::string::npos)
      << r.problem;
}

TEST_F(InspectQemu10ShapesTest, TruncatedConfigurationSubsection) {
  Layout l;
  Qemu10Stream o;
  o.configuration = [](StreamBuilder& s) { s.Capabilities({"x-ignore-shared"}).Uuid(kUuidBytes); };
  o.ram.block_addr = 0;
  const std::string good = BuildQemu10(o, l).bytes();
  ASSERT_TRUE(Inspect(good).complete());
  const uint64_t config_end = l.section_offsets[0];
  const uint64_t machine_end = 8 + 1 + 4 + std::string("pc-i440fx-10.0").size();
  const uint64_t caps_end = machine_end + 1 + 1 + 26 + 4 + 4 + 1 + 15;
  for (uint64_t cut = machine_end + 1; cut < config_end; ++cut) {
    SCOPED_TRACE(cut);
    InspectReport r = Inspect(good.substr(0, cut));
    EXPECT_FALSE(r.complete());
    EXPECT_NE(r.problem.find("file ends at " + std::to_string(cut) + " in the middle of"), std::string::npos)
        << r.problem;
    // Between two whole subsections the next byte could be a section's.
    EXPECT_NE(r.problem.find(cut == caps_end ? "a section type" : "configuration subsection"), std::string::npos)
        << r.problem;
    EXPECT_TRUE(r.sections.empty());
  }
}

TEST_F(InspectQemu10ShapesTest, UnknownConfigurationSubsection) {
  const std::string name = "configuration/new-thing";
  Layout l;
  Qemu10Stream o;
  o.configuration = [&](StreamBuilder& s) { s.Uuid(kUuidBytes).Subsection(name, 1).Be32(0xdeadbeef); };
  const uint64_t at = 8 + 1 + 4 + 14 + (1 + 1 + 18 + 4 + 16);
  InspectReport r = Inspect(BuildQemu10(o, l).bytes());
  EXPECT_FALSE(r.complete());
  EXPECT_NE(r.problem.find("section 'configuration' at offset 8: subsection '" + name +
                           "' at offset " + std::to_string(at) + " is unknown to inspect"),
            std::string::npos)
      << r.problem;
  EXPECT_NE(r.problem.find("does not describe it, cannot walk past it"), std::string::npos) << r.problem;
  EXPECT_EQ(r.uuid, kUuidText) << "the subsection before it was read";
  EXPECT_TRUE(r.sections.empty());

  // QEMU >= 10 describes its configuration in the VM description: a
  // subsection described there is walked by its field sizes.
  json conf = {{"vmsd_name", "configuration"},
               {"version", 1},
               {"fields", json::array({Field("len", "uint32", 4), Field("name", "buffer", 14)})},
               {"subsections", json::array({{{"vmsd_name", name},
                                             {"version", 1},
                                             {"fields", json::array({Field("x", "uint32", 4)})}}})}};
  json desc = Vmdesc(json::array());
  desc["configuration"] = conf;
  o.vmdesc = desc.dump();
  Layout l2;
  r = Inspect(BuildQemu10(o, l2).bytes());
  EXPECT_TRUE(r.complete()) << r.Verdict();
  ExpectSectionsTile(r, l2);
  EXPECT_EQ(r.configuration_subsections, (std::vector<std::string>{"configuration/uuid", name}));

  // ... unless the description says its size differently.
  desc["configuration"]["subsections"][0]["fields"][0]["size"] = 2;
  o.vmdesc = desc.dump();
  Layout l3;
  r = Inspect(BuildQemu10(o, l3).bytes());
  EXPECT_FALSE(r.complete());
  // ... or describes another version.
  desc["configuration"]["subsections"][0]["fields"][0]["size"] = 4;
  desc["configuration"]["subsections"][0]["version"] = 2;
  o.vmdesc = desc.dump();
  Layout l4;
  r = Inspect(BuildQemu10(o, l4).bytes());
  EXPECT_FALSE(r.complete());
  EXPECT_NE(r.problem.find("has version 1 but the VM description describes version 2"), std::string::npos)
      << r.problem;
}

TEST_F(InspectQemu10ShapesTest, BadConfigurationSubsections) {
  struct Case {
    std::function<void(StreamBuilder&)> config;
    std::string reason;
  };
  const std::vector<Case> cases = {
      {[](StreamBuilder& s) { s.Subsection("configuration/uuid", 2).Bytes(kUuidBytes); }, "has version 2"},
      {[](StreamBuilder& s) { s.Uuid(kUuidBytes).Uuid(kUuidBytes); }, "is the second one of that name"},
      {[](StreamBuilder& s) { s.Subsection("configuration/capabilities", 1).Be32(100000); },
       "lists 100000 capabilities"},
      {[](StreamBuilder& s) { s.Capabilities({"mapped-ram", ""}); }, "capability 1 has an empty name"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.reason);
    Layout l;
    Qemu10Stream o;
    o.configuration = c.config;
    InspectReport r = Inspect(BuildQemu10(o, l).bytes());
    EXPECT_FALSE(r.complete());
    EXPECT_NE(r.problem.find("configuration subsection '"), std::string::npos) << r.problem;
    EXPECT_NE(r.problem.find(c.reason), std::string::npos) << r.problem;
    EXPECT_TRUE(r.sections.empty());
  }
}

// Any byte of the configuration subsections or the commands changed, or the
// stream cut there: a report, never a crash; a cut stream is never complete.
TEST_F(InspectQemu10ShapesTest, DamagedFilesNeverCrash) {
  Layout l;
  Qemu10Stream o;
  o.configuration = [](StreamBuilder& s) { s.Capabilities({"x-ignore-shared"}).Uuid(kUuidBytes); };
  o.ram = CommandsBeforeEnd({{2, Be32Bytes(1)}, {7, Be32Bytes(0)}, {10, "\x01x"}, {11, ""}});
  o.ram.block_addr = 0;
  const std::string good = BuildQemu10(o, l).bytes();
  ASSERT_TRUE(Inspect(good).complete());
  for (size_t cut = 8; cut < l.eof; ++cut) {
    EXPECT_FALSE(Inspect(good.substr(0, cut)).complete()) << "cut at " << cut;
  }
  for (size_t pos = 8; pos < l.eof; ++pos) {
    for (uint8_t x : {uint8_t{0x01}, uint8_t{0x80}, uint8_t{0xff}}) {
      std::string bad = good;
      bad[pos] = static_cast<char>(bad[pos] ^ x);
      (void)Inspect(bad);
    }
  }
}

#endif  // FERRY_INSPECT_UNIT

#if defined(FERRY_INSPECT_INTEROP)

// ---------------------------------------------------------------------------
// QEMU saves a pc / q35 / none machine into a file; ferry inspect walks it. Runs
// against the QEMU named by $FERRY_QEMU (default qemu-system-x86_64 in PATH,
// Debian's 7.2), started with -L $FERRY_QEMU_DATADIR when that is set (QEMU
// 10.0 unpacked outside /usr).

// How QEMU writes the file.
enum class Save {
  kPlain,         // exec:cat > F
  kUuid,          // exec:cat, -uuid and validate-uuid: the configuration/uuid subsection
  kIgnoreShared,  // exec:cat, x-ignore-shared: configuration/capabilities, block addresses
  kMappedRam,     // file:F with mapped-ram (QEMU >= 9.0)
};

struct SaveCase {
  std::string machine;
  Save save;
};

std::string SaveName(Save s) {
  switch (s) {
    case Save::kPlain: return "exec_cat";
    case Save::kUuid: return "validate_uuid";
    case Save::kIgnoreShared: return "x_ignore_shared";
    case Save::kMappedRam: return "mapped_ram_file";
  }
  return "?";
}

constexpr const char* kGuestUuid = "5c0ffee0-1234-4abc-8def-0123456789ab";

class InspectQemuTest : public ::testing::TestWithParam<SaveCase> {};

TEST_P(InspectQemuTest, WalksEveryDeviceSection) {
  const QemuInstall qemu = LocateQemu();
  if (!RequireQemu(qemu, "inspect-interop")) return;
  const std::string machine = GetParam().machine;
  const Save save = GetParam().save;
  TempDir dir("ferry-inspect-qemu");
  const std::string sock = dir.Path("qmp.sock"), stream = dir.Path(machine + ".mig");
  SpawnOptions so{.stdout_path = dir.Path("qemu.out"), .stderr_path = dir.Path("qemu.err")};
  std::vector<std::string> argv = qemu.Command();  // with -L $FERRY_QEMU_DATADIR when set
  argv.insert(argv.end(), {"-M", machine, "-nodefaults", "-display", "none", "-m", "64", "-S", "-accel", "tcg",
                           "-qmp", "unix:" + sock + ",server=on,wait=off"});
  if (save == Save::kUuid) argv.insert(argv.end(), {"-uuid", kGuestUuid});
  Result<Process> q = Process::Spawn(argv, so);
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  Result<std::unique_ptr<QmpClient>> qmp = QmpClient::Connect(sock, std::chrono::seconds(30), &*q);
  ASSERT_TRUE(qmp.ok()) << qmp.status().ToString();
  Result<json> version = (*qmp)->Execute("query-version");
  ASSERT_TRUE(version.ok()) << version.status().ToString();
  const int major = (*version)["qemu"]["major"].get<int>();
  const std::string qemu_version =
      std::to_string(major) + "." + std::to_string((*version)["qemu"]["minor"].get<int>());
  SCOPED_TRACE("QEMU " + qemu_version + " " + argv[0]);

  std::vector<std::string> caps;
  if (save == Save::kUuid) caps = {"validate-uuid"};
  if (save == Save::kIgnoreShared) caps = {"x-ignore-shared"};
  if (save == Save::kMappedRam) caps = {"mapped-ram"};
  if (save == Save::kMappedRam) {
    Result<json> known = (*qmp)->Execute("query-migrate-capabilities");
    ASSERT_TRUE(known.ok()) << known.status().ToString();
    bool has = false;
    for (const json& c : *known) has = has || c.value("capability", "") == "mapped-ram";
    if (!has) {
      (void)(*qmp)->Execute("quit");
      GTEST_SKIP() << "QEMU " << qemu_version << " has no mapped-ram capability (it came in QEMU 9.0), "
                   << "so it cannot save a mapped-ram file";
    }
  }
  if (!caps.empty()) {
    json list = json::array();
    for (const std::string& c : caps) list.push_back({{"capability", c}, {"state", true}});
    Result<json> set = (*qmp)->Execute("migrate-set-capabilities", {{"capabilities", list}});
    ASSERT_TRUE(set.ok()) << set.status().ToString();
  }
  // exec:cat: the file appears under its name only once cat has written all
  // of it. file: QEMU writes it itself; it is whole once QEMU has exited.
  const std::string uri = save == Save::kMappedRam
                              ? "file:" + stream
                              : "exec:cat > " + stream + ".part && mv " + stream + ".part " + stream;
  Result<json> r = (*qmp)->Execute("migrate", {{"uri", uri}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  Result<json> done = (*qmp)->WaitForMigration(std::chrono::seconds(120));
  ASSERT_TRUE(done.ok()) << done.status().ToString() << "\n" << q->Report();
  ASSERT_EQ((*done)["status"], "completed") << done->dump(2);
  (void)(*qmp)->Execute("quit");
  Result<ExitStatus> exited = q->Wait(std::chrono::seconds(60));
  ASSERT_TRUE(exited.ok()) << exited.status().ToString() << "\n" << q->Report();
  ASSERT_TRUE(WaitForNonEmptyFile(stream, std::chrono::seconds(60), nullptr).ok()) << q->Report();

  Result<Process> inspect = StartFerry(dir, "inspect", {"inspect", stream, "--json"});
  ASSERT_TRUE(inspect.ok()) << inspect.status().ToString();
  EXPECT_TRUE(ExitsWithCode(*inspect, 0, std::chrono::seconds(60)));
  Result<json> j = FerryJson(*inspect);
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_EQ((*j)["verdict"], "complete") << j->dump(1);
  EXPECT_EQ((*j)["complete"], true);
  EXPECT_FALSE(j->contains("problem")) << (*j)["problem"];
  EXPECT_EQ((*j)["eof"], true);
  EXPECT_EQ((*j)["vmdesc"], true);
  EXPECT_EQ((*j)["mapped-ram"], save == Save::kMappedRam);
  // -M none has no devices but timer and globalstate, which inspect knows.
  const bool none = machine == "none";
  EXPECT_NE((*j)["machine"].get<std::string>().find(none ? "none" : machine == "pc" ? "i440fx" : "q35"),
            std::string::npos);

  const json& sections = (*j)["sections"];
  ASSERT_TRUE(sections.is_array());
  size_t devices = 0, switchovers = 0;
  for (size_t i = 0; i < sections.size(); ++i) {
    const json& s = sections[i];
    SCOPED_TRACE(s.dump());
    ASSERT_TRUE(s.contains("size"));
    EXPECT_GT(s["size"].get<uint64_t>(), 0u);
    if (s.value("walked-by-vmdesc", false)) ++devices;
    // Sizes tile the stream: each section ends where the next begins.
    if (i + 1 < sections.size()) {
      EXPECT_EQ(s["offset"].get<uint64_t>() + s["size"].get<uint64_t>(), sections[i + 1]["offset"].get<uint64_t>());
    }
    // QEMU >= 10 announces the switch-over with a command (5 bytes) right
    // before the last RAM section.
    if (s["idstr"] == "SWITCHOVER_START") {
      ++switchovers;
      EXPECT_EQ(s["size"], 5);
      ASSERT_LT(i + 1, sections.size());
      EXPECT_EQ(sections[i + 1]["idstr"], "ram");
      EXPECT_EQ(sections[i + 1]["type"], "end");
    }
  }
  EXPECT_EQ(switchovers, major >= 10 ? 1u : 0u);
  if (none) {
    EXPECT_EQ(devices, 0u);
  } else {
    EXPECT_GT(devices, 5u) << "device sections walked with the VM description";
  }
  ASSERT_FALSE(sections.empty());
  // The last section before EOF was reached and walked: it ends at the EOF
  // byte, which is right before the VM description.
  const json& last = sections.back();
  EXPECT_EQ(last["idstr"], "globalstate");
  EXPECT_EQ(last["offset"].get<uint64_t>() + last["size"].get<uint64_t>() + 1, (*j)["vmdesc-offset"].get<uint64_t>());
  Result<uint64_t> size = FileSize(stream);
  ASSERT_TRUE(size.ok());
  EXPECT_EQ((*j)["vmdesc-offset"].get<uint64_t>() + 5 + (*j)["vmdesc-bytes"].get<uint64_t>(), *size);

  // The human output has the same sizes and the layout.
  Result<Process> text = StartFerry(dir, "inspect-text", {"inspect", stream});
  ASSERT_TRUE(text.ok());
  EXPECT_TRUE(ExitsWithCode(*text, 0, std::chrono::seconds(60)));
  EXPECT_NE(text->Stdout().find("'globalstate' instance 0 version 1 at " + last["offset"].dump() + ", " +
                                last["size"].dump() + " bytes"),
            std::string::npos)
      << text->Stdout();
  EXPECT_EQ(text->Stdout().find("(walked by the VM description") != std::string::npos, !none) << text->Stdout();
  EXPECT_NE(text->Stdout().find(save == Save::kMappedRam ? "\nlayout: mapped-ram\n" : "\nlayout: plain stream\n"),
            std::string::npos)
      << text->Stdout();

  // What the configuration carried (the report itself: the CLI does not
  // print the configuration's subsections).
  Result<InspectReport> rep = InspectFile(stream, 0);
  ASSERT_TRUE(rep.ok()) << rep.status().ToString();
  EXPECT_TRUE(rep->complete()) << rep->Verdict();
  EXPECT_EQ(rep->sections.size(), sections.size());
  using Names = std::vector<std::string>;
  switch (save) {
    case Save::kPlain:
      EXPECT_EQ(rep->configuration_subsections, Names{});
      EXPECT_FALSE(rep->has_capabilities);
      EXPECT_EQ(rep->uuid, "");
      break;
    case Save::kUuid:
      EXPECT_EQ(rep->configuration_subsections, Names{"configuration/uuid"});
      EXPECT_FALSE(rep->has_capabilities);
      EXPECT_EQ(rep->uuid, kGuestUuid);
      break;
    case Save::kIgnoreShared:
      EXPECT_EQ(rep->configuration_subsections, Names{"configuration/capabilities"});
      EXPECT_EQ(rep->capabilities, Names{"x-ignore-shared"});
      EXPECT_EQ(rep->uuid, "");
      break;
    case Save::kMappedRam:
      EXPECT_EQ(rep->configuration_subsections, Names{"configuration/capabilities"});
      EXPECT_EQ(rep->capabilities, Names{"mapped-ram"});
      EXPECT_TRUE(rep->mapped_ram);
      break;
  }
  ASSERT_FALSE(rep->blocks.empty());
  EXPECT_EQ(rep->blocks[0].name, none ? "ram" : "pc.ram");
  EXPECT_EQ(rep->blocks[0].size, 64u << 20);
  for (const InspectBlock& b : rep->blocks) {
    SCOPED_TRACE(b.name);
    EXPECT_EQ(b.has_addr, save == Save::kIgnoreShared);
    EXPECT_EQ(b.mapped_ram, save == Save::kMappedRam);
    if (b.mapped_ram) {
      EXPECT_EQ(b.page_size, 4096u);
      EXPECT_LE(b.pages_present, b.size / 4096);
    }
  }
  if (save == Save::kIgnoreShared) {
    EXPECT_EQ(rep->blocks[0].addr, 0u) << "the guest's RAM is mapped at guest address 0";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Machines, InspectQemuTest,
    ::testing::Values(SaveCase{"pc", Save::kPlain}, SaveCase{"q35", Save::kPlain}, SaveCase{"pc", Save::kUuid},
                      SaveCase{"q35", Save::kIgnoreShared}, SaveCase{"pc", Save::kMappedRam},
                      SaveCase{"q35", Save::kMappedRam}, SaveCase{"none", Save::kPlain},
                      SaveCase{"none", Save::kMappedRam}),
    [](const ::testing::TestParamInfo<SaveCase>& info) { return info.param.machine + "_" + SaveName(info.param.save); });

#endif  // FERRY_INSPECT_INTEROP

}  // namespace
}  // namespace ferry::test
