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
#include <cstdlib>
#include <memory>
#include <string>
#include <tuple>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"
#include "tests/support/qmp.h"

namespace ferry::test {
namespace {

using nlohmann::json;
using std::chrono::seconds;

constexpr uint64_t kGuestRam = 128ULL << 20;
constexpr const char* kGuestRamArg = "128M";
constexpr auto kMigrationTimeout = seconds(60);
constexpr auto kExitTimeout = seconds(60);
// QEMU 7.2 defaults max-bandwidth to 32 MiB/s; lift it.
constexpr uint64_t kQemuMaxBandwidth = 10ULL << 30;

PatternSpec GuestPattern() {
  PatternSpec s;
  s.size = kGuestRam;
  s.seed = 0x3f1d0128;
  s.random_pct = 50;
  s.zero_pct = 25;
  s.text_pct = 25;
  return s;
}

struct Qemu {
  Process proc;
  std::unique_ptr<QmpClient> qmp;
};

using Param = std::tuple<int, std::string>;  // multifd-channels, multifd-compression

class MultifdInteropTest : public ::testing::TestWithParam<Param> {
 protected:
  static void SetUpTestSuite() {
    const char* env = std::getenv("FERRY_QEMU");
    qemu_bin_ = FindProgram(env != nullptr && *env != '\0' ? env : "qemu-system-x86_64");
    if (qemu_bin_.empty()) return;
    suite_dir_ = new TempDir("ferry-multifd-interop-suite");
    pattern_ = suite_dir_->Path("pattern.bin");
    pattern_status_ = WritePatternFile(pattern_, GuestPattern());
  }

  static void TearDownTestSuite() {
    delete suite_dir_;
    suite_dir_ = nullptr;
  }

  void SetUp() override {
    if (qemu_bin_.empty()) {
      GTEST_SKIP() << "qemu-system-x86_64 not found in PATH (install Debian's qemu-system-x86, or set "
                      "FERRY_QEMU); the multifd interop suite needs a real QEMU";
    }
    ASSERT_TRUE(pattern_status_.ok()) << "writing the pattern file: " << pattern_status_.ToString();
    dir_ = std::make_unique<TempDir>("ferry-multifd-interop");
  }

  std::string P(std::string_view name) const { return dir_->Path(name); }
  int channels() const { return std::get<0>(GetParam()); }
  const std::string& compression() const { return std::get<1>(GetParam()); }

  // ferry's multifd options matching QEMU 7.2's behaviour (see the top).
  std::vector<std::string> FerryMultifdArgs() const {
    return {"--qemu-compat", "none", "-c", "multifd=on", "-p", "multifd-channels=" + std::to_string(channels()),
            "-p", "multifd-compression=" + compression(), "-p", "multifd-flush-after-each-section=on", "-p",
            "zero-page-detection=legacy"};
  }

  // Starts QEMU with multifd on (capability and parameters set over QMP).
  void StartQemu(const std::string& name, bool load_pattern, bool incoming_defer, Qemu* q) {
    const std::string sock = P("qmp-" + name + ".sock");
    std::vector<std::string> argv = {qemu_bin_, "-M", "none", "-m", kGuestRamArg, "-accel", "tcg",
                                     "-nodefaults", "-display", "none", "-S"};
    if (load_pattern) argv.insert(argv.end(), {"-device", "loader,file=" + pattern_ + ",addr=0,force-raw=on"});
    argv.insert(argv.end(), {"-qmp", "unix:" + sock + ",server=on,wait=off"});
    if (incoming_defer) argv.insert(argv.end(), {"-incoming", "defer"});
    SpawnOptions so;
    so.stdout_path = P("qemu-" + name + ".out");
    so.stderr_path = P("qemu-" + name + ".err");
    Result<Process> p = Process::Spawn(std::move(argv), std::move(so));
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    q->proc = std::move(*p);
    Result<std::unique_ptr<QmpClient>> c = QmpClient::Connect(sock, seconds(30), &q->proc);
    ASSERT_TRUE(c.ok()) << "QEMU '" << name << "': " << c.status().ToString();
    q->qmp = std::move(*c);

    Result<json> r = q->qmp->Execute(
        "migrate-set-capabilities", {{"capabilities", json::array({{{"capability", "multifd"}, {"state", true}}})}});
    ASSERT_TRUE(r.ok()) << r.status().ToString() << "\n" << q->proc.Report();
    r = q->qmp->Execute("migrate-set-parameters", {{"multifd-channels", channels()},
                                                   {"multifd-compression", compression()},
                                                   {"max-bandwidth", kQemuMaxBandwidth},
                                                   {"downtime-limit", 2000}});
    ASSERT_TRUE(r.ok()) << r.status().ToString() << "\n" << q->proc.Report();
  }

  void ExpectMigrationStatus(Qemu& q, const std::string& want, const Process* peer) {
    Result<json> info = q.qmp->WaitForMigration(kMigrationTimeout);
    ASSERT_TRUE(info.ok()) << info.status().ToString() << "\n" << q.proc.Report() << peer->Report();
    EXPECT_EQ((*info)["status"], want) << "query-migrate: " << info->dump(2) << "\n"
                                       << q.proc.Report() << peer->Report();
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

  static std::string qemu_bin_;
  static TempDir* suite_dir_;
  static std::string pattern_;
  static Status pattern_status_;
  std::unique_ptr<TempDir> dir_;
};

std::string MultifdInteropTest::qemu_bin_;
TempDir* MultifdInteropTest::suite_dir_ = nullptr;
std::string MultifdInteropTest::pattern_;
Status MultifdInteropTest::pattern_status_;

// QEMU (multifd source) -> ferry recv.
TEST_P(MultifdInteropTest, QemuToFerry) {
  Qemu src;
  ASSERT_NO_FATAL_FAILURE(StartQemu("src", /*load_pattern=*/true, /*incoming_defer=*/false, &src));
  const std::string out = P("received.bin"), ready = P("ready");
  std::vector<std::string> args = {"recv", "tcp:127.0.0.1:0", "--memory-file", out, "--ready-file", ready,
                                   "--timeout", "60", "--json"};
  for (const std::string& a : FerryMultifdArgs()) args.push_back(a);
  Result<Process> recv = StartFerry(*dir_, "recv", args);
  ASSERT_TRUE(recv.ok()) << recv.status().ToString();
  Result<std::string> uri = WaitForFile(ready, kReadyTimeout, &*recv);
  ASSERT_TRUE(uri.ok()) << uri.status().message();

  Result<json> r = src.qmp->Execute("migrate", {{"uri", *uri}});
  ASSERT_TRUE(r.ok()) << r.status().ToString() << "\n" << src.proc.Report();
  ASSERT_NO_FATAL_FAILURE(ExpectMigrationStatus(src, "completed", &*recv));
  ASSERT_TRUE(ExitsWithCode(*recv, 0, kExitTimeout)) << "QEMU side:\n" << src.proc.Report();
  ExpectFerryJson(*recv);
  EXPECT_TRUE(FilesEqual(out, pattern_)) << recv->Report();
}

// ferry send -> QEMU (multifd destination, -incoming defer + migrate-incoming).
TEST_P(MultifdInteropTest, FerryToQemu) {
  Qemu dst;
  ASSERT_NO_FATAL_FAILURE(StartQemu("dst", /*load_pattern=*/false, /*incoming_defer=*/true, &dst));
  Result<uint16_t> port = PickUnusedTcpPort();
  ASSERT_TRUE(port.ok()) << port.status().ToString();
  const std::string uri = "tcp:127.0.0.1:" + std::to_string(*port);
  Result<json> r = dst.qmp->Execute("migrate-incoming", {{"uri", uri}});
  ASSERT_TRUE(r.ok()) << r.status().ToString() << "\n" << dst.proc.Report();

  const std::string copy = P("pattern-copy.bin");
  ASSERT_TRUE(CopyFile(pattern_, copy).ok());
  std::vector<std::string> args = {"send", uri, "--memory-file", copy, "--json"};
  for (const std::string& a : FerryMultifdArgs()) args.push_back(a);
  Result<Process> send = StartFerry(*dir_, "send", args);
  ASSERT_TRUE(send.ok()) << send.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*send, 0, kMigrationTimeout)) << "QEMU side:\n" << dst.proc.Report();
  ExpectFerryJson(*send);

  ASSERT_NO_FATAL_FAILURE(ExpectMigrationStatus(dst, "completed", &*send));
  const std::string dump = P("dst-memory.bin");
  r = dst.qmp->Execute("pmemsave", {{"val", 0}, {"size", kGuestRam}, {"filename", dump}}, seconds(120));
  ASSERT_TRUE(r.ok()) << r.status().ToString() << "\n" << dst.proc.Report();
  EXPECT_TRUE(FilesEqual(dump, pattern_)) << send->Report() << dst.proc.Report();
  EXPECT_TRUE(FilesEqual(copy, pattern_)) << "ferry send modified its --memory-file";
}

std::string ParamName(const ::testing::TestParamInfo<Param>& info) {
  return std::to_string(std::get<0>(info.param)) + "ch_" + std::get<1>(info.param);
}

INSTANTIATE_TEST_SUITE_P(Qemu72, MultifdInteropTest,
                         ::testing::Combine(::testing::Values(2, 4), ::testing::Values("none", "zstd")), ParamName);

}  // namespace
}  // namespace ferry::test
