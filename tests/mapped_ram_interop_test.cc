// mapped-ram files between ferry and QEMU (QEMU >= 9: 7.2 has no mapped-ram,
// so this suite is registered for QEMU 10 only): QEMU `migrate file:F` with
// capability mapped-ram (± multifd, ± direct-io, ± an offset) and `ferry load`,
// and `ferry save` loaded by QEMU with `migrate-incoming file:F`. Guest memory
// compared byte for byte with a mixed random/zero/text pattern; the guest's
// size (97 MiB) is no power of two, so the bitmap's last word is partial.
#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"
#include "tests/support/qemu.h"

namespace ferry::test {
namespace {

using nlohmann::json;
using std::chrono::seconds;

constexpr uint64_t kRam = 97ULL << 20;
constexpr auto kTimeout = seconds(180);

struct Shape {
  const char* name;
  int channels;  // 0: no multifd
  bool direct_io;
  uint64_t offset;  // file:PATH,offset=N
};

class MappedRamInteropTest : public QemuTest, public ::testing::WithParamInterface<Shape> {
 protected:
  static void SetUpTestSuite() {
    setenv("TMPDIR", "/var/tmp", 1);  // ext4: O_DIRECT works there
    SetUpQemuSuite({.name = "mapped-ram-interop",
                    .guest = {.size = kRam, .seed = 0x3a99ed, .random_pct = 45, .zero_pct = 35, .text_pct = 20},
                    .migration_timeout = kTimeout});
  }

  // QEMU with mapped-ram and the shape's multifd / direct-io.
  QemuOptions Options(QemuOptions o) const {
    const Shape& s = GetParam();
    o.capabilities = {"mapped-ram"};
    if (s.channels) {
      o.capabilities.push_back("multifd");
      o.parameters["multifd-channels"] = s.channels;
    }
    if (s.direct_io) o.parameters["direct-io"] = true;
    return o;
  }

  std::string FileUri(const std::string& path) const {
    const Shape& s = GetParam();
    return "file:" + path + (s.offset ? ",offset=" + std::to_string(s.offset) : "");
  }

  // ferry's matching options.
  std::vector<std::string> FerryArgs() const {
    const Shape& s = GetParam();
    std::vector<std::string> a = {"--qemu-compat", "none", "-c", "mapped-ram=on", "--json"};
    if (s.channels) a.insert(a.end(), {"-c", "multifd=on", "-p", "multifd-channels=" + std::to_string(s.channels)});
    if (s.direct_io) a.insert(a.end(), {"-p", "direct-io=on"});
    return a;
  }

  // With an offset: the file starts with a prefix that must survive.
  void WritePrefix(const std::string& mig) {
    if (!GetParam().offset) return;
    ASSERT_TRUE(WritePatternFile(P("prefix.bin"), {.size = GetParam().offset, .seed = 99}).ok());
    ASSERT_TRUE(CopyFile(P("prefix.bin"), mig).ok());
  }
  ::testing::AssertionResult PrefixIntact(const std::string& mig) {
    if (!GetParam().offset) return ::testing::AssertionSuccess();
    return FileRangeEquals(mig, 0, P("prefix.bin"), 0, GetParam().offset);
  }

  void ExpectCompleted(const Process& ferry) {
    Result<json> j = FerryJson(ferry);
    ASSERT_TRUE(j.ok()) << j.status().message() << ferry.Report();
    EXPECT_EQ(j->value("status", std::string()), "completed") << ferry.Report();
    EXPECT_EQ(JsonAt(*j, "/ram/total"), json(kRam)) << ferry.Report();
  }
};

TEST_P(MappedRamInteropTest, QemuSavesFerryLoads) {
  Qemu src;
  ASSERT_NO_FATAL_FAILURE(StartQemu("src", Options({.load_pattern = true}), &src));
  const std::string mig = P("qemu.mig");  // QEMU truncates the file: no prefix to keep
  ASSERT_TRUE(src.Migrate(FileUri(mig)));
  ASSERT_TRUE(MigrationEnds(src, "completed"));

  const std::string out = P("out.ram");
  std::vector<std::string> args = {"recv", FileUri(mig), "--memory-file", out};
  for (const std::string& a : FerryArgs()) args.push_back(a);
  Result<Process> load = StartFerry(*dir_, "load", args);
  ASSERT_TRUE(load.ok()) << load.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*load, 0, kTimeout));
  ExpectCompleted(*load);
  EXPECT_TRUE(FilesEqual(out, pattern_)) << load->Report();

  // ferry inspect agrees that QEMU's file is complete and mapped-ram.
  Result<Process> inspect = StartFerry(*dir_, "inspect", {"inspect", mig, "--json"});
  ASSERT_TRUE(inspect.ok());
  if (GetParam().offset == 0) {
    EXPECT_TRUE(ExitsWithCode(*inspect, 0, seconds(60)));
    Result<json> j = FerryJson(*inspect);
    ASSERT_TRUE(j.ok()) << j.status().message() << inspect->Report();
    EXPECT_EQ(j->value("complete", false), true) << inspect->Report();
    EXPECT_EQ(j->value("mapped-ram", false), true) << inspect->Report();
  }
}

TEST_P(MappedRamInteropTest, FerrySavesQemuLoads) {
  const std::string copy = P("pattern-copy.bin"), mig = P("ferry.mig");
  ASSERT_TRUE(CopyFile(pattern_, copy).ok());
  ASSERT_NO_FATAL_FAILURE(WritePrefix(mig));
  std::vector<std::string> args = {"send", FileUri(mig), "--memory-file", copy};
  for (const std::string& a : FerryArgs()) args.push_back(a);
  Result<Process> save = StartFerry(*dir_, "save", args);
  ASSERT_TRUE(save.ok()) << save.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*save, 0, kTimeout));
  ExpectCompleted(*save);
  EXPECT_TRUE(PrefixIntact(mig));

  Qemu dst;
  ASSERT_NO_FATAL_FAILURE(StartQemu("dst", Options({.incoming = "defer"}), &dst));
  ASSERT_TRUE(dst.Execute("migrate-incoming", {{"uri", FileUri(mig)}}));
  ASSERT_TRUE(MigrationEnds(dst, "completed", &*save));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dst-memory.bin"), &*save));
  EXPECT_TRUE(FilesEqual(copy, pattern_)) << "ferry save modified its --memory-file";
}

INSTANTIATE_TEST_SUITE_P(Shapes, MappedRamInteropTest,
                         ::testing::Values(Shape{"single", 0, false, 0}, Shape{"multifd3", 3, false, 0},
                                           Shape{"multifd2_directio", 2, true, 0},
                                           Shape{"single_directio", 0, true, 0},
                                           Shape{"multifd2_offset", 2, false, 1 << 20}),
                         [](const ::testing::TestParamInfo<Shape>& i) { return std::string(i.param.name); });

}  // namespace
}  // namespace ferry::test
