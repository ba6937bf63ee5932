// `ferry save` / `ferry load` against QEMU 7.2 with plain stream files:
// QEMU migrates into "exec:cat > F" and ferry loads F; ferry saves F and QEMU
// starts with -incoming "exec:cat F". Guest memory compared byte for byte
// with a pattern (QEMU -M none -m 256M, loaded with the generic loader, read
// back with pmemsave).
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

constexpr uint64_t kRam = 256ULL << 20;
constexpr auto kTimeout = seconds(180);

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
};

TEST_F(FileInteropTest, QemuSavesFerryLoads) {
  Qemu src;
  ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
  const std::string stream = P("qemu.mig");
  ASSERT_NO_FATAL_FAILURE(MigrateToFile(src, stream));
  const std::string out = P("out.ram");
  Result<Process> load =
      StartFerry(*dir_, "load", {"load", stream, "--qemu-compat", "none", "--memory-file", out, "--json"});
  ASSERT_TRUE(load.ok()) << load.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*load, 0, kTimeout));
  Result<json> j = FerryJson(*load);
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_EQ((*j)["status"], "completed");
  EXPECT_TRUE(FilesEqual(out, pattern_)) << load->Report();
  // ferry inspect walks QEMU's file too (timer/globalstate sections, CONTINUE across sections).
  Result<Process> inspect = StartFerry(*dir_, "inspect", {"inspect", stream});
  ASSERT_TRUE(inspect.ok());
  EXPECT_TRUE(ExitsWithCode(*inspect, 0, seconds(60)));
  EXPECT_NE(inspect->Stdout().find("configuration: machine 'none'"), std::string::npos) << inspect->Report();
}

TEST_F(FileInteropTest, FerrySavesQemuLoads) {
  const std::string copy = P("pattern-copy.bin"), stream = P("ferry.mig");
  ASSERT_TRUE(CopyFile(pattern_, copy).ok());
  Result<Process> save =
      StartFerry(*dir_, "save", {"save", stream, "--qemu-compat", "none", "--memory-file", copy, "--json"});
  ASSERT_TRUE(save.ok()) << save.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*save, 0, kTimeout));
  // ferry's own walker agrees the file is complete.
  Result<Process> inspect = StartFerry(*dir_, "inspect", {"inspect", stream});
  ASSERT_TRUE(inspect.ok());
  EXPECT_TRUE(ExitsWithCode(*inspect, 0, seconds(60)));

  Qemu dst;
  ASSERT_NO_FATAL_FAILURE(StartQemu("dst", {.incoming = "exec:cat " + stream}, &dst));
  ASSERT_TRUE(MigrationEnds(dst, "completed"));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dump.bin"), &*save));
  EXPECT_TRUE(FilesEqual(copy, pattern_)) << "ferry save modified its --memory-file";
}

}  // namespace
}  // namespace ferry::test
