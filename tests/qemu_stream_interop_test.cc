// What a QEMU source or destination adds to a plain migration, against ferry:
// the return path (return-path and switchover-ack capabilities), validate-uuid
// in both directions, and postcopy, which ferry refuses with its reason while
// QEMU's guest keeps running. Runs against every QEMU generation the suite is
// registered for; ferry is told which one with --qemu-compat none,version=V.
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

constexpr uint64_t kRam = 64ULL << 20;
constexpr auto kTimeout = seconds(120);
const std::string kUuidA = "5b6ca0f4-6ad8-4f5c-9d6c-05a3c4b2c6f1";
const std::string kUuidB = "0e3f6a52-1d2c-4b8e-8f00-9a1b2c3d4e5f";

class QemuStreamInteropTest : public QemuTest {
 protected:
  static void SetUpTestSuite() {
    SetUpQemuSuite({.name = "qemu-stream-interop",
                    .guest = {.size = kRam, .seed = 0x57ea, .random_pct = 40, .zero_pct = 40, .text_pct = 20},
                    .migration_timeout = kTimeout});
  }

  // QEMU (source, pattern loaded, `caps` on) -> `ferry recv` with `extra`.
  // Returns ferry's process once QEMU's migration has ended in `qemu_status`.
  void QemuToFerry(QemuOptions o, const std::vector<std::string>& extra, const std::string& qemu_status,
                   Qemu* src, Process* recv) {
    o.load_pattern = true;
    ASSERT_NO_FATAL_FAILURE(StartQemu("src", o, src));
    const std::string ready = P("ready");
    std::vector<std::string> args = {"recv", "tcp:127.0.0.1:0", "--qemu-compat", FerryQemuCompat(), "--memory-file",
                                     P("received.bin"), "--ready-file", ready, "--json", "--timeout", "60"};
    args.insert(args.end(), extra.begin(), extra.end());
    Result<Process> r = StartFerry(*dir_, "recv", args);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    *recv = std::move(*r);
    Result<std::string> uri = WaitForFile(ready, kReadyTimeout, recv);
    ASSERT_TRUE(uri.ok()) << uri.status().message();
    ASSERT_TRUE(src->Migrate(*uri));
    ASSERT_TRUE(MigrationEnds(*src, qemu_status, recv));
  }
};

// With a return path QEMU waits for the destination's SHUT (and, with
// switchover-ack, for its approval) before it calls the migration done.
TEST_F(QemuStreamInteropTest, QemuToFerryWithReturnPath) {
  Qemu src;
  Process recv;
  QemuOptions o;
  o.capabilities = {"return-path"};
  if (!IsQemu72()) o.capabilities.push_back("switchover-ack");
  ASSERT_NO_FATAL_FAILURE(QemuToFerry(o, {}, "completed", &src, &recv));
  ASSERT_TRUE(ExitsWithCode(recv, 0, kTimeout)) << src.proc.Report();
  EXPECT_TRUE(FilesEqual(P("received.bin"), pattern_)) << recv.Report();
}

// Postcopy is refused at its first command, before any RAM: ferry says why,
// QEMU's migration fails and its guest is still there to resume.
TEST_F(QemuStreamInteropTest, PostcopyIsRefusedWithItsReason) {
  Qemu src;
  Process recv;
  QemuOptions o;
  o.capabilities = {"postcopy-ram"};
  ASSERT_NO_FATAL_FAILURE(QemuToFerry(o, {}, "failed", &src, &recv));
  ASSERT_TRUE(ExitsWithFailure(recv, kTimeout));
  EXPECT_NE(recv.Stderr().find("postcopy"), std::string::npos) << recv.Report();
  Result<json> j = FerryJson(recv);
  ASSERT_TRUE(j.ok()) << j.status().message();
  EXPECT_EQ(j->value("status", std::string()), "failed");
  ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(src, P("src-after.bin"), &recv));
}

TEST_F(QemuStreamInteropTest, QemuToFerryValidateUuid) {
  {
    Qemu src;
    Process recv;
    QemuOptions o{.extra_args = {"-uuid", kUuidA}, .capabilities = {"validate-uuid"}};
    ASSERT_NO_FATAL_FAILURE(QemuToFerry(o, {"--uuid", kUuidA}, "completed", &src, &recv));
    ASSERT_TRUE(ExitsWithCode(recv, 0, kTimeout));
    EXPECT_TRUE(FilesEqual(P("received.bin"), pattern_)) << recv.Report();
  }
  Qemu src;
  Process recv;
  QemuOptions o{.extra_args = {"-uuid", kUuidA}, .capabilities = {"validate-uuid"}};
  // QEMU's side may finish sending before ferry refuses: wait for ferry.
  o.load_pattern = true;
  ASSERT_NO_FATAL_FAILURE(StartQemu("src2", o, &src));
  const std::string ready = P("ready2");
  Result<Process> r = StartFerry(*dir_, "recv2",
                                 {"recv", "tcp:127.0.0.1:0", "--qemu-compat", FerryQemuCompat(), "--uuid", kUuidB,
                                  "--ready-file", ready, "--json", "--timeout", "60"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  Result<std::string> uri = WaitForFile(ready, kReadyTimeout, &*r);
  ASSERT_TRUE(uri.ok()) << uri.status().message();
  ASSERT_TRUE(src.Migrate(*uri));
  ASSERT_TRUE(ExitsWithFailure(*r, kTimeout));
  EXPECT_NE(r->Stderr().find("UUID received is " + kUuidA + " and local is " + kUuidB), std::string::npos)
      << r->Report();
}

TEST_F(QemuStreamInteropTest, FerryToQemuValidateUuid) {
  for (const std::string& dst_uuid : {kUuidA, kUuidB}) {
    SCOPED_TRACE("QEMU -uuid " + dst_uuid);
    Qemu dst;
    ASSERT_NO_FATAL_FAILURE(
        StartQemu("dst-" + dst_uuid.substr(0, 4), {.incoming = "defer", .extra_args = {"-uuid", dst_uuid}}, &dst));
    Result<uint16_t> port = PickUnusedTcpPort();
    ASSERT_TRUE(port.ok()) << port.status().ToString();
    const std::string uri = "tcp:127.0.0.1:" + std::to_string(*port);
    ASSERT_TRUE(dst.Execute("migrate-incoming", {{"uri", uri}}));
    const std::string copy = P("pattern-copy.bin");
    ASSERT_TRUE(CopyFile(pattern_, copy).ok());
    Result<Process> send = StartFerry(*dir_, "send-" + dst_uuid.substr(0, 4),
                                      {"send", uri, "--qemu-compat", FerryQemuCompat(), "--memory-file", copy, "--uuid",
                                       kUuidA, "-c", "validate-uuid=on", "--json"});
    ASSERT_TRUE(send.ok()) << send.status().ToString();
    if (dst_uuid == kUuidA) {
      ASSERT_TRUE(ExitsWithCode(*send, 0, kTimeout)) << dst.proc.Report();
      ASSERT_TRUE(MigrationEnds(dst, "completed", &*send));
      ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dst-memory.bin"), &*send));
    } else {
      // QEMU refuses the stream and exits; ferry, which waits for QEMU's
      // confirmation on the return path, must not report success.
      ASSERT_TRUE(ExitsWithFailure(*send, kTimeout)) << dst.proc.Report();
      ASSERT_TRUE(ExitsWithFailure(dst.proc, kTimeout)) << send->Report();
      EXPECT_NE(dst.proc.Stderr().find("UUID received is " + kUuidA + " and local is " + kUuidB), std::string::npos)
          << dst.proc.Report();
    }
  }
}

}  // namespace
}  // namespace ferry::test
