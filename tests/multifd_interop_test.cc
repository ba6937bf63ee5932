// multifd between ferry and a real QEMU 7.2 (Debian's qemu-system-x86_64),
// both directions over tcp, guest memory compared byte for byte.
//
// QEMU 7.2 multifd, as seen on the wire (and why ferry is run the way it is
// below):
//   - a SYNC packet on every channel at the end of every RAM section, with no
//     MULTIFD_FLUSH record in the main stream: ferry's
//     -p multifd-flush-after-each-section=on, on both sides;
//   - zero pages as ZERO records in the main stream (its packets have no
//     zero_pages field): -p zero-page-detection=legacy;
//   - as a destination it takes the first connection it accepts as the main
//     stream, so ferry send connects that one before the channels.
//
// The guest is `-M none -m 128M` paused with -S; the source QEMU's memory
// comes from a pattern file (-device loader), the destination's is read back
// with pmemsave. Skips itself when qemu-system-x86_64 is not installed.
// FERRY_QEMU picks another QEMU binary, FERRY_KEEP_TMP=1 keeps the temp dirs.
#include <chrono>
#include <optional>
#include <string>
#include <tuple>
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

constexpr uint64_t kGuestRam = 128ULL << 20;
constexpr auto kMigrationTimeout = seconds(60);
constexpr auto kExitTimeout = seconds(60);

using Param = std::tuple<int, std::string>;  // multifd-channels, multifd-compression

class MultifdInteropTest : public QemuTest, public ::testing::WithParamInterface<Param> {
 protected:
  static void SetUpTestSuite() {
    SetUpQemuSuite({.name = "multifd-interop",
                    .guest = {.size = kGuestRam, .seed = 0x3f1d0128},
                    .migration_timeout = kMigrationTimeout});
  }

  int channels() const { return std::get<0>(GetParam()); }
  const std::string& compression() const { return std::get<1>(GetParam()); }

  // ferry's multifd options matching QEMU 7.2's behaviour (see the top).
  std::vector<std::string> FerryMultifdArgs() const {
    return {"--qemu-compat", "none", "-c", "multifd=on", "-p", "multifd-channels=" + std::to_string(channels()),
            "-p", "multifd-compression=" + compression(), "-p", "multifd-flush-after-each-section=on", "-p",
            "zero-page-detection=legacy"};
  }

  // QEMU with multifd on (capability and parameters set over QMP).
  QemuOptions Multifd(QemuOptions o) const {
    o.capabilities = {"multifd"};
    o.parameters["multifd-channels"] = channels();
    o.parameters["multifd-compression"] = compression();
    return o;
  }

  // ferry's JSON: completed, the whole guest, and the pages went over multifd
  // (per channel where the channel list is there: the source reports it only
  // while its channels exist, so after the end it may be empty there).
  void ExpectFerryJson(const Process& ferry) {
    Result<json> j = FerryJson(ferry);
    ASSERT_TRUE(j.ok()) << j.status().message();
    EXPECT_EQ(j->value("status", std::string()), "completed") << ferry.Report();
    EXPECT_EQ(JsonAt(*j, "/ram/total"), json(kGuestRam)) << ferry.Report();
    std::optional<json> chans = JsonAt(*j, "/multifd/channels");
    ASSERT_TRUE(chans && chans->is_array()) << "no multifd.channels in ferry's JSON\n" << ferry.Report();
    std::optional<json> bytes = JsonAt(*j, "/ram/multifd-bytes");
    ASSERT_TRUE(bytes && bytes->is_number()) << ferry.Report();
    if (chans->empty()) return;
    EXPECT_GT(bytes->get<uint64_t>(), kGuestRam / 4) << "too little went over multifd\n" << ferry.Report();
    ASSERT_EQ(chans->size(), static_cast<size_t>(channels())) << ferry.Report();
    uint64_t pages = 0;
    for (const json& c : *chans) pages += c.value("pages", uint64_t{0});
    EXPECT_GT(pages, 0u) << "no page went over multifd: " << chans->dump() << "\n" << ferry.Report();
  }
};

// QEMU (multifd source) -> ferry recv.
TEST_P(MultifdInteropTest, QemuToFerry) {
  Qemu src;
  ASSERT_NO_FATAL_FAILURE(StartQemu("src", Multifd({.load_pattern = true}), &src));
  const std::string out = P("received.bin"), ready = P("ready");
  std::vector<std::string> args = {"recv", "tcp:127.0.0.1:0", "--memory-file", out, "--ready-file", ready,
                                   "--timeout", "60", "--json"};
  for (const std::string& a : FerryMultifdArgs()) args.push_back(a);
  Result<Process> recv = StartFerry(*dir_, "recv", args);
  ASSERT_TRUE(recv.ok()) << recv.status().ToString();
  Result<std::string> uri = WaitForFile(ready, kReadyTimeout, &*recv);
  ASSERT_TRUE(uri.ok()) << uri.status().message();

  ASSERT_TRUE(src.Migrate(*uri));
  ASSERT_TRUE(MigrationEnds(src, "completed", &*recv));
  ASSERT_TRUE(ExitsWithCode(*recv, 0, kExitTimeout)) << "QEMU side:\n" << src.proc.Report();
  ExpectFerryJson(*recv);
  EXPECT_TRUE(FilesEqual(out, pattern_)) << recv->Report();
}

// ferry send -> QEMU (multifd destination, -incoming defer + migrate-incoming).
TEST_P(MultifdInteropTest, FerryToQemu) {
  Qemu dst;
  ASSERT_NO_FATAL_FAILURE(StartQemu("dst", Multifd({.incoming = "defer"}), &dst));
  Result<uint16_t> port = PickUnusedTcpPort();
  ASSERT_TRUE(port.ok()) << port.status().ToString();
  const std::string uri = "tcp:127.0.0.1:" + std::to_string(*port);
  ASSERT_TRUE(dst.Execute("migrate-incoming", {{"uri", uri}}));

  const std::string copy = P("pattern-copy.bin");
  ASSERT_TRUE(CopyFile(pattern_, copy).ok());
  std::vector<std::string> args = {"send", uri, "--memory-file", copy, "--json"};
  for (const std::string& a : FerryMultifdArgs()) args.push_back(a);
  Result<Process> send = StartFerry(*dir_, "send", args);
  ASSERT_TRUE(send.ok()) << send.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*send, 0, kMigrationTimeout)) << "QEMU side:\n" << dst.proc.Report();
  ExpectFerryJson(*send);

  ASSERT_TRUE(MigrationEnds(dst, "completed", &*send));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dst-memory.bin"), &*send));
  EXPECT_TRUE(FilesEqual(copy, pattern_)) << "ferry send modified its --memory-file";
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  return std::to_string(std::get<0>(info.param)) + "ch_" + std::get<1>(info.param);
}

INSTANTIATE_TEST_SUITE_P(Qemu72, MultifdInteropTest,
                         ::testing::Combine(::testing::Values(2, 4), ::testing::Values("none", "zstd")), ParamName);

}  // namespace
}  // namespace ferry::test
