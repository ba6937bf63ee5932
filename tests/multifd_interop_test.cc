// multifd between ferry and a real QEMU, both directions over tcp, guest
// memory compared byte for byte. Registered against QEMU 7.2 and 10.0 (see
// ferry_interop_test); sets both sides up the way that QEMU generation works
// (ferry: --qemu-compat none,version=7.2 implies the 7.2 column):
//
//                          QEMU 7.2                       QEMU >= 8 (10.0 tested)
//   barrier placement      SYNC packets at every RAM      SYNC packets + MULTIFD_FLUSH
//                          section end, no MULTIFD_FLUSH  once per round (setup, every
//                          -> ferry: -p multifd-flush-    pass over memory, completion)
//                          after-each-section=on          -> ferry's default (off)
//   zero pages             ZERO records in the main       zero-page-detection: multifd
//                          stream only -> ferry:          (default; listed in packets)
//                          -p zero-page-detection=legacy  or legacy (main stream), >= 9.0
//   SYNC packet            pages_alloc 128, may carry     pages_alloc 0, no pages; still
//                          pages                          128 offset slots on the wire
//
// The matrix: channels 1, 3, 8 x multifd-compression none/zstd x
// zero-page-detection multifd/legacy, both directions. QEMU < 9 has no
// zero-page-detection: its "multifd" cases skip.
//
// The guest is `-M none` with 97 MiB + 16 KiB (not a whole number of
// packets, nor of MiB) of mixed random, zero and text pages, paused with -S;
// the source QEMU's memory comes from the pattern file (-device loader), the
// destination's is read back with pmemsave. A missing QEMU fails the tests.
// FERRY_QEMU_DATADIR is QEMU's -L, FERRY_KEEP_TMP=1 keeps the temp dirs.
#include <chrono>
#include <cstdio>
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

constexpr uint64_t kGuestRam = (97ULL << 20) + (16ULL << 10);  // 24836 pages: 4 past a whole packet
constexpr auto kMigrationTimeout = seconds(60);
constexpr auto kExitTimeout = seconds(60);

// ---- QEMU generation -------------------------------------------------------

// What a QEMU generation does with multifd.
struct Generation {
  QemuVersion version;
  // Before 8.0 the barrier is at every RAM section end (no MULTIFD_FLUSH).
  bool per_section_barriers() const { return !version.AtLeast(8, 0); }
  // zero-page-detection (and zero pages in multifd packets) came with 9.0.
  bool has_zero_page_detection() const { return version.AtLeast(9, 0); }
};

// ---- the suite ---------------------------------------------------------------

// multifd-channels, multifd-compression, zero-page-detection
using Param = std::tuple<int, std::string, std::string>;

class MultifdInteropTest : public QemuTest, public ::testing::WithParamInterface<Param> {
 protected:
  static void SetUpTestSuite() {
    SetUpQemuSuite({.name = "multifd-interop",
                    .guest = {.size = kGuestRam, .seed = 0x3f1d0128, .random_pct = 45, .zero_pct = 35, .text_pct = 20},
                    .migration_timeout = kMigrationTimeout});
  }

  void SetUp() override {
    QemuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    if (zero_detection() == "multifd" && !gen().has_zero_page_detection()) {
      GTEST_SKIP() << "QEMU " << gen().version.ToString()
                   << " has no zero-page-detection: zero pages go in the main stream only (the legacy cases cover it)";
    }
  }

  int channels() const { return std::get<0>(GetParam()); }
  const std::string& compression() const { return std::get<1>(GetParam()); }
  const std::string& zero_detection() const { return std::get<2>(GetParam()); }
  static Generation gen() { return Generation{qemu_version()}; }

  // ferry's multifd options for this QEMU generation (see the top): with
  // version=7.2, --qemu-compat itself sets the per-section barrier and legacy
  // zero pages.
  std::vector<std::string> FerryMultifdArgs() const {
    std::vector<std::string> a = {"--qemu-compat", FerryQemuCompat(), "-c", "multifd=on",
                                  "-p", "multifd-channels=" + std::to_string(channels()),
                                  "-p", "multifd-compression=" + compression()};
    if (!gen().per_section_barriers()) a.insert(a.end(), {"-p", "zero-page-detection=" + zero_detection()});
    return a;
  }

  // QEMU with multifd on; only parameters this generation knows.
  QemuOptions Multifd(QemuOptions o) const {
    o.capabilities = {"multifd"};
    o.parameters["multifd-channels"] = channels();
    o.parameters["multifd-compression"] = compression();
    if (gen().has_zero_page_detection()) o.parameters["zero-page-detection"] = zero_detection();
    return o;
  }

  // Zero pages travelled the way the case asked: listed in multifd packets
  // with zero-page-detection=multifd, ZERO records in the main stream
  // otherwise (the guest has plenty of zero pages).
  void ExpectZeroPagePath(const json& j, const Process& ferry) const {
    const uint64_t in_packets = JsonAt(j, "/multifd/zero-pages").value_or(json(0)).get<uint64_t>();
    const uint64_t all = JsonAt(j, "/ram/duplicate").value_or(json(0)).get<uint64_t>();
    EXPECT_GT(all, 0u) << "no zero page counted\n" << ferry.Report();
    if (zero_detection() == "multifd" && gen().has_zero_page_detection()) {
      EXPECT_EQ(in_packets, all) << "zero pages outside multifd packets\n" << ferry.Report();
    } else {
      EXPECT_EQ(in_packets, 0u) << "zero pages in multifd packets with legacy detection\n" << ferry.Report();
    }
  }

  // ferry's JSON: completed, the whole guest, and the pages went over multifd
  // (per channel where the channel list is there: the source reports it only
  // while its channels exist, so after the end it may be empty there).
  void ExpectFerryJson(const Process& ferry) {
    Result<json> j = FerryJson(ferry);
    ASSERT_TRUE(j.ok()) << j.status().message();
    EXPECT_EQ(j->value("status", std::string()), "completed") << ferry.Report();
    EXPECT_EQ(JsonAt(*j, "/ram/total"), json(kGuestRam)) << ferry.Report();
    ExpectZeroPagePath(*j, ferry);
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
  return std::to_string(std::get<0>(info.param)) + "ch_" + std::get<1>(info.param) + "_" + std::get<2>(info.param);
}

// Each case takes well under a second with a paused -M none guest, so the
// whole matrix runs.
INSTANTIATE_TEST_SUITE_P(Matrix, MultifdInteropTest,
                         ::testing::Combine(::testing::Values(1, 3, 8), ::testing::Values("none", "zstd"),
                                            ::testing::Values("multifd", "legacy")),
                         ParamName);

}  // namespace
}  // namespace ferry::test
