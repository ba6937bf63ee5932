// `ferry inspect` (InspectFile) walking device sections it has no built-in
// knowledge of, with the VM description (vmdesc) JSON after EOF.
//
// Built twice (tests/inspect.cmake):
//  - FERRY_INSPECT_UNIT: hand-built streams with an unknown device described
//    by a vmdesc (fields of several sizes, a compressed array, a struct with
//    its own subsection, a present and an absent subsection, two instances of
//    one device) are walked with exact section sizes; a missing vmdesc, a
//    device missing from it, malformed JSON, sizes past the end, undescribed
//    subsections, ... each stop the walk with a clear problem, never a crash.
//  - FERRY_INSPECT_INTEROP: QEMU 7.2 (-M pc and -M q35) migrates into a file
//    with "exec:cat > F"; `ferry inspect F --json` walks every section of it.
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
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

// The RAM part of a stream: START (block list), END (one page, one zero
// page), so that the stream is complete as far as RAM goes.
void AddRam(StreamBuilder& s, Layout& l) {
  l.section_offsets.push_back(s.size());
  s.SectionHeader(wire::kSectionStart, 0, "ram", 0, wire::kRamSectionVersion)
      .Be64(kBlockSize | wire::kRamMemSize)
      .Name("pc.ram")
      .Be64(kBlockSize)
      .Be64(wire::kRamEos)
      .Footer(0);
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

#endif  // FERRY_INSPECT_UNIT

#if defined(FERRY_INSPECT_INTEROP)

// ---------------------------------------------------------------------------
// QEMU 7.2 saves a pc / q35 machine into a file; ferry inspect walks it.

class InspectQemuTest : public ::testing::TestWithParam<std::string> {};

TEST_P(InspectQemuTest, WalksEveryDeviceSection) {
  const QemuInstall qemu = LocateQemu();
  if (!RequireQemu(qemu, "inspect-interop")) return;
  const std::string machine = GetParam();
  TempDir dir("ferry-inspect-qemu");
  const std::string sock = dir.Path("qmp.sock"), stream = dir.Path(machine + ".mig");
  SpawnOptions so{.stdout_path = dir.Path("qemu.out"), .stderr_path = dir.Path("qemu.err")};
  std::vector<std::string> argv = qemu.Command();
  argv.insert(argv.end(), {"-M", machine, "-nodefaults", "-display", "none", "-m", "64", "-S", "-accel", "tcg", "-qmp",
                           "unix:" + sock + ",server=on,wait=off"});
  Result<Process> q = Process::Spawn(argv, so);
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  Result<std::unique_ptr<QmpClient>> qmp = QmpClient::Connect(sock, std::chrono::seconds(30), &*q);
  ASSERT_TRUE(qmp.ok()) << qmp.status().ToString();
  // The file appears under its name only once cat has written all of it.
  Result<json> r = (*qmp)->Execute("migrate", {{"uri", "exec:cat > " + stream + ".part && mv " + stream + ".part " +
                                                           stream}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  Result<json> done = (*qmp)->WaitForMigration(std::chrono::seconds(120));
  ASSERT_TRUE(done.ok()) << done.status().ToString() << "\n" << q->Report();
  ASSERT_EQ((*done)["status"], "completed") << done->dump(2);
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
  EXPECT_NE((*j)["machine"].get<std::string>().find(machine == "pc" ? "i440fx" : "q35"), std::string::npos);

  const json& sections = (*j)["sections"];
  ASSERT_TRUE(sections.is_array());
  size_t devices = 0;
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
  }
  EXPECT_GT(devices, 5u) << "device sections walked with the VM description";
  ASSERT_FALSE(sections.empty());
  // The last section before EOF was reached and walked: it ends at the EOF
  // byte, which is right before the VM description.
  const json& last = sections.back();
  EXPECT_EQ(last["idstr"], "globalstate");
  EXPECT_EQ(last["offset"].get<uint64_t>() + last["size"].get<uint64_t>() + 1, (*j)["vmdesc-offset"].get<uint64_t>());
  Result<uint64_t> size = FileSize(stream);
  ASSERT_TRUE(size.ok());
  EXPECT_EQ((*j)["vmdesc-offset"].get<uint64_t>() + 5 + (*j)["vmdesc-bytes"].get<uint64_t>(), *size);

  // The human output has the same sizes.
  Result<Process> text = StartFerry(dir, "inspect-text", {"inspect", stream});
  ASSERT_TRUE(text.ok());
  EXPECT_TRUE(ExitsWithCode(*text, 0, std::chrono::seconds(60)));
  EXPECT_NE(text->Stdout().find("'globalstate' instance 0 version 1 at " + last["offset"].dump() + ", " +
                                last["size"].dump() + " bytes"),
            std::string::npos)
      << text->Stdout();
  EXPECT_NE(text->Stdout().find("(walked by the VM description"), std::string::npos) << text->Stdout();

  (void)(*qmp)->Execute("quit");
}

INSTANTIATE_TEST_SUITE_P(Machines, InspectQemuTest, ::testing::Values("pc", "q35"));

#endif  // FERRY_INSPECT_INTEROP

}  // namespace
}  // namespace ferry::test
