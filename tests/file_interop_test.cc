// ferry save/load (send/recv file:PATH[,offset=N]) against QEMU with plain
// stream files, both directions, at the start of the file and at an odd
// offset behind other bytes. CMake runs every test against QEMU 7.2 and 10.0
// (tests/support/qemu.h).
//
// QEMU 10.0 migrates to and from "file:PATH[,offset=N]". QEMU 7.2 has no
// file: migration URI, so there the same file is made and read with exec:
// "exec:cat > F" (offset 0) or, behind N bytes already in F, "exec:cat >> F";
// and "exec:cat F" or "exec:tail -c +N+1 F" to load.
//
// Guest memory compared byte for byte with a pattern (QEMU -M none with
// 72 MiB + 8 KiB, loaded with the generic loader, read back with pmemsave).
#include <chrono>
#include <cstdlib>
#include <string>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"
#include "tests/support/qemu.h"

namespace ferry::test {
namespace {

using nlohmann::json;
using std::chrono::seconds;

constexpr uint64_t kRam = (72ULL << 20) + (8 << 10);
constexpr auto kTimeout = seconds(180);
// Where the stream starts in the offset tests: odd, not page-aligned.
constexpr uint64_t kOffset = 123457;

// kOffset bytes that are not a migration stream (any byte value).
std::string Prefix() {
  std::string p(kOffset, '\0');
  for (size_t i = 0; i < p.size(); ++i) p[i] = static_cast<char>((i * 131 + (i >> 9)) & 0xff);
  return p;
}

class FileInteropTest : public QemuTest {
 protected:
  static void SetUpTestSuite() {
    setenv("TMPDIR", "/var/tmp", 1);
    SetUpQemuSuite({.name = "file-interop", .guest = {.size = kRam, .seed = 0xf11e}, .migration_timeout = kTimeout});
  }

  // This suite's QEMU: only max-bandwidth raised.
  void StartQemu(const std::string& name, QemuOptions o, Qemu* q) {
    o.parameters = {{"max-bandwidth", kQemuMaxBandwidth}};
    QemuTest::StartQemu(name, o, q);
  }

  static std::string FileUri(const std::string& path, uint64_t offset) {
    return "file:" + path + (offset != 0 ? ",offset=" + std::to_string(offset) : std::string());
  }

  // `src` saves its stream into `file` at `offset` (the caller put the bytes
  // before it there) and completes; returns once the file is complete.
  void QemuSavesTo(Qemu& src, const std::string& file, uint64_t offset) {
    if (IsQemu72()) {
      if (offset == 0) {
        ASSERT_NO_FATAL_FAILURE(MigrateToFile(src, file));
        return;
      }
      ASSERT_TRUE(src.Migrate("exec:cat >> " + file));
    } else {
      ASSERT_TRUE(src.Migrate(FileUri(file, offset)));
    }
    ASSERT_TRUE(MigrationEnds(src, "completed"));
    WaitForNoChildren(src.proc.pid(), seconds(10));
  }

  // The -incoming URI that loads the stream at `offset` in `file`.
  static std::string QemuLoadUri(const std::string& file, uint64_t offset) {
    if (!IsQemu72()) return FileUri(file, offset);
    if (offset == 0) return "exec:cat " + file;
    return "exec:tail -c +" + std::to_string(offset + 1) + " " + file;
  }

  // ferry's JSON says completed, for the whole guest.
  void ExpectCompleted(const Process& ferry) {
    Result<json> j = FerryJson(ferry);
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    EXPECT_EQ((*j)["status"], "completed") << ferry.Report();
    EXPECT_EQ(JsonAt(*j, "/ram/total"), json(kRam)) << ferry.Report();
  }
};

TEST_F(FileInteropTest, QemuSavesFerryLoads) {
  Qemu src;
  ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
  const std::string stream = P("qemu.mig");
  ASSERT_NO_FATAL_FAILURE(QemuSavesTo(src, stream, 0));
  const std::string out = P("out.ram");
  Result<Process> load = StartFerry(
      *dir_, "load", {"load", stream, "--qemu-compat", FerryQemuCompat(), "--memory-file", out, "--json"});
  ASSERT_TRUE(load.ok()) << load.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*load, 0, kTimeout));
  ExpectCompleted(*load);
  EXPECT_TRUE(FilesEqual(out, pattern_)) << load->Report();
  // ferry inspect walks QEMU's file too (timer/globalstate sections, CONTINUE across sections).
  Result<Process> inspect = StartFerry(*dir_, "inspect", {"inspect", stream});
  ASSERT_TRUE(inspect.ok());
  EXPECT_TRUE(ExitsWithCode(*inspect, 0, seconds(60)));
  EXPECT_NE(inspect->Stdout().find("configuration: machine 'none'"), std::string::npos) << inspect->Report();
}

TEST_F(FileInteropTest, QemuSavesAtOffsetFerryLoads) {
  Qemu src;
  ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
  const std::string stream = P("qemu.mig");
  ASSERT_TRUE(WriteStringToFile(stream, Prefix()).ok());
  ASSERT_NO_FATAL_FAILURE(QemuSavesTo(src, stream, kOffset));
  const std::string out = P("out.ram");
  Result<Process> recv =
      StartFerry(*dir_, "recv",
                 {"recv", FileUri(stream, kOffset), "--qemu-compat", FerryQemuCompat(), "--memory-file", out, "--json"});
  ASSERT_TRUE(recv.ok()) << recv.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*recv, 0, kTimeout));
  ExpectCompleted(*recv);
  EXPECT_TRUE(FilesEqual(out, pattern_)) << recv->Report();
}

TEST_F(FileInteropTest, FerrySavesQemuLoads) {
  const std::string copy = P("pattern-copy.bin"), stream = P("ferry.mig");
  ASSERT_TRUE(CopyFile(pattern_, copy).ok());
  Result<Process> save = StartFerry(
      *dir_, "save", {"save", stream, "--qemu-compat", FerryQemuCompat(), "--memory-file", copy, "--json"});
  ASSERT_TRUE(save.ok()) << save.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*save, 0, kTimeout));
  ExpectCompleted(*save);
  // ferry's own walker agrees the file is complete.
  Result<Process> inspect = StartFerry(*dir_, "inspect", {"inspect", stream});
  ASSERT_TRUE(inspect.ok());
  EXPECT_TRUE(ExitsWithCode(*inspect, 0, seconds(60)));

  Qemu dst;
  ASSERT_NO_FATAL_FAILURE(StartQemu("dst", {.incoming = QemuLoadUri(stream, 0)}, &dst));
  ASSERT_TRUE(MigrationEnds(dst, "completed"));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dump.bin"), &*save));
  EXPECT_TRUE(FilesEqual(copy, pattern_)) << "ferry save modified its --memory-file";
}

TEST_F(FileInteropTest, FerrySavesAtOffsetQemuLoads) {
  const std::string copy = P("pattern-copy.bin"), stream = P("ferry.mig");
  ASSERT_TRUE(CopyFile(pattern_, copy).ok());
  const std::string prefix = Prefix();
  ASSERT_TRUE(WriteStringToFile(stream, prefix).ok());
  Result<Process> send =
      StartFerry(*dir_, "send",
                 {"send", FileUri(stream, kOffset), "--qemu-compat", FerryQemuCompat(), "--memory-file", copy, "--json"});
  ASSERT_TRUE(send.ok()) << send.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*send, 0, kTimeout));
  ExpectCompleted(*send);
  EXPECT_TRUE(FileEqualsBuffer(stream, 0, prefix.data(), prefix.size())) << "ferry changed the bytes before offset=";

  Qemu dst;
  ASSERT_NO_FATAL_FAILURE(StartQemu("dst", {.incoming = QemuLoadUri(stream, kOffset)}, &dst));
  ASSERT_TRUE(MigrationEnds(dst, "completed"));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dump.bin"), &*send));
}

}  // namespace
}  // namespace ferry::test
