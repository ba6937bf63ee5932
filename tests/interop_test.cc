// ferry <-> QEMU interoperability: the real `ferry` binary against a real
// qemu-system-x86_64 (QEMU 7.2 in Debian 12), guest memory checked byte for
// byte.
//
// The guest is `-M none -m 256M` (one RAM block, named "ram") paused with -S.
// The source QEMU gets its memory from a pattern file through the generic
// loader device; a destination QEMU's memory is read back with pmemsave.
//
// Set FERRY_QEMU to use another QEMU binary, FERRY_KEEP_TMP=1 to keep the
// temp dirs (streams, dumps, logs) for a post-mortem.
#include <chrono>
#include <cstdio>
#include <regex>
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

constexpr uint64_t kGuestRam = 256ULL << 20;
constexpr auto kMigrationTimeout = seconds(180);
constexpr auto kExitTimeout = seconds(60);

class InteropTest : public QemuTest {
 protected:
  static void SetUpTestSuite() {
    SetUpQemuSuite({.name = "interop",
                    .guest = {.size = kGuestRam, .seed = 0x5eed0256},
                    .migration_timeout = kMigrationTimeout});
  }

  // ferry's --json object must say completed.
  void ExpectJsonCompleted(const Process& ferry) {
    Result<json> j = FerryJson(ferry);
    ASSERT_TRUE(j.ok()) << j.status().message();
    EXPECT_EQ(j->value("status", std::string()), "completed") << ferry.Report();
    if (auto total = JsonAt(*j, "/ram/total")) {
      EXPECT_EQ(*total, kGuestRam) << "ram.total\n" << ferry.Report();
    } else {
      ADD_FAILURE() << "ferry's JSON has no ram.total\n" << ferry.Report();
    }
  }

  // QEMU (source) -> `ferry recv LISTEN_URI`.
  void QemuToFerry(const std::string& listen_uri, const std::string& uri_prefix) {
    Qemu src;
    ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
    const std::string out = P("received.bin"), ready = P("ready");
    Result<Process> recv = StartFerry(*dir_, "recv",
                                      {"recv", listen_uri, "--qemu-compat", "none", "--memory-file",
                                       out, "--ready-file", ready, "--json"});
    ASSERT_TRUE(recv.ok()) << recv.status().ToString();
    Result<std::string> uri = WaitForFile(ready, kReadyTimeout, &*recv);
    ASSERT_TRUE(uri.ok()) << uri.status().message();
    ASSERT_TRUE(uri->starts_with(uri_prefix)) << "ready file holds '" << *uri << "'";

    ASSERT_TRUE(src.Migrate(*uri));
    EXPECT_TRUE(MigrationEnds(src, "completed", &*recv));
    ASSERT_TRUE(ExitsWithCode(*recv, 0, kExitTimeout)) << "QEMU side:\n" << src.proc.Report();
    ExpectJsonCompleted(*recv);
    EXPECT_TRUE(FilesEqual(out, pattern_)) << recv->Report();
  }

  // `ferry send SEND_URI` -> QEMU started with -incoming INCOMING_URI.
  void FerryToQemu(const std::string& incoming_uri, const std::string& send_uri) {
    Qemu dst;
    ASSERT_NO_FATAL_FAILURE(StartQemu("dst", {.incoming = incoming_uri}, &dst));
    const std::string copy = P("pattern-copy.bin");
    ASSERT_TRUE(CopyFile(pattern_, copy).ok());
    Result<Process> send = StartFerry(
        *dir_, "send", {"send", send_uri, "--qemu-compat", "none", "--memory-file", copy, "--json"});
    ASSERT_TRUE(send.ok()) << send.status().ToString();
    ASSERT_TRUE(ExitsWithCode(*send, 0, kMigrationTimeout)) << "QEMU side:\n" << dst.proc.Report();
    ExpectJsonCompleted(*send);

    ASSERT_TRUE(MigrationEnds(dst, "completed", &*send));
    ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dst-memory.bin"), &*send));
    EXPECT_TRUE(FilesEqual(copy, pattern_)) << "ferry send modified its --memory-file";
  }
};

// Harness check that needs no ferry: QEMU -> file -> QEMU, memory compared
// with the pattern on both sides. If this fails, the harness or QEMU is at
// fault, not ferry.
TEST_F(InteropTest, QemuToQemuFileSanity) {
  Qemu src;
  ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
  const std::string src_dump = P("src-memory.bin");
  ASSERT_TRUE(Pmemsave(src, src_dump));
  ASSERT_TRUE(FilesEqual(src_dump, pattern_)) << "the loader device did not load the pattern";

  const std::string stream = P("stream.bin");
  ASSERT_NO_FATAL_FAILURE(MigrateToFile(src, stream));

  Qemu dst;
  ASSERT_NO_FATAL_FAILURE(StartQemu("dst", {.incoming = "exec:cat " + stream}, &dst));
  ASSERT_TRUE(MigrationEnds(dst, "completed"));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dst-memory.bin")));
}

TEST_F(InteropTest, QemuToFerryTcp) { QemuToFerry("tcp:127.0.0.1:0", "tcp:127.0.0.1:"); }

TEST_F(InteropTest, QemuToFerryUnix) {
  const std::string path = P("migration.sock");
  QemuToFerry("unix:" + path, "unix:" + path);
}

TEST_F(InteropTest, FerryToQemuTcp) {
  Result<uint16_t> port = PickUnusedTcpPort();
  ASSERT_TRUE(port.ok()) << port.status().ToString();
  const std::string uri = "tcp:127.0.0.1:" + std::to_string(*port);
  FerryToQemu(uri, uri);
}

TEST_F(InteropTest, FerryToQemuUnix) {
  const std::string uri = "unix:" + P("migration.sock");
  FerryToQemu(uri, uri);
}

// QEMU writes its stream to a file; `ferry recv fd:0` reads it from stdin.
TEST_F(InteropTest, QemuToFerryThroughFile) {
  Qemu src;
  ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
  const std::string stream = P("qemu-stream.bin");
  ASSERT_NO_FATAL_FAILURE(MigrateToFile(src, stream));

  const std::string out = P("received.bin");
  Result<Process> recv =
      StartFerry(*dir_, "recv",
                 {"recv", "fd:0", "--qemu-compat", "none", "--memory-file", out, "--json"},
                 {.stdin_path = stream});
  ASSERT_TRUE(recv.ok()) << recv.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*recv, 0, kExitTimeout));
  ExpectJsonCompleted(*recv);
  EXPECT_TRUE(FilesEqual(out, pattern_)) << recv->Report();
}

// `ferry send fd:1` writes the stream to a file; QEMU loads it.
TEST_F(InteropTest, FerryToQemuThroughFile) {
  const std::string copy = P("pattern-copy.bin");
  ASSERT_TRUE(CopyFile(pattern_, copy).ok());
  const std::string stream = P("ferry-stream.bin");
  Result<Process> send =
      StartFerry(*dir_, "send", {"send", "fd:1", "--qemu-compat", "none", "--memory-file", copy},
                 {.stdout_path = stream});
  ASSERT_TRUE(send.ok()) << send.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*send, 0, kMigrationTimeout));

  Qemu dst;
  ASSERT_NO_FATAL_FAILURE(StartQemu("dst", {.incoming = "exec:cat " + stream}, &dst));
  ASSERT_TRUE(MigrationEnds(dst, "completed", &*send));
  ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dst-memory.bin"), &*send));
}

// True if `text` mentions `bytes` as a number of bytes, in hex, or as a size
// with a binary suffix ("256M", "256 MiB", "256.0 MiB").
bool MentionsSize(const std::string& text, uint64_t bytes) {
  if (text.find(std::to_string(bytes)) != std::string::npos) return true;
  char hex[32];
  std::snprintf(hex, sizeof(hex), "0x%llx", static_cast<unsigned long long>(bytes));
  if (text.find(hex) != std::string::npos) return true;
  const std::string mib = std::to_string(bytes >> 20);
  return std::regex_search(text, std::regex("(^|[^0-9.])" + mib + "(\\.0+)? ?(M|MiB|MB)\\b"));
}

// The guest has 256 MiB but ferry was told 128M: it must refuse, naming the
// block and both sizes, and QEMU's side must fail rather than complete.
TEST_F(InteropTest, RamSizeMismatchIsRejected) {
  Qemu src;
  ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
  const std::string ready = P("ready");
  Result<Process> recv =
      StartFerry(*dir_, "recv",
                 {"recv", "tcp:127.0.0.1:0", "--qemu-compat", "none", "--ram", "128M",
                  "--ready-file", ready, "--json"});
  ASSERT_TRUE(recv.ok()) << recv.status().ToString();
  Result<std::string> uri = WaitForFile(ready, kReadyTimeout, &*recv);
  ASSERT_TRUE(uri.ok()) << uri.status().message();
  ASSERT_TRUE(src.Migrate(*uri));

  ASSERT_TRUE(ExitsWithFailure(*recv, kExitTimeout)) << "QEMU side:\n" << src.proc.Report();
  const std::string err = recv->Stderr();
  EXPECT_NE(err.find("ram"), std::string::npos) << "stderr should name the block \"ram\"\n"
                                                << recv->Report();
  EXPECT_TRUE(MentionsSize(err, 256ULL << 20)) << "stderr should give QEMU's size (256 MiB)\n"
                                               << recv->Report();
  EXPECT_TRUE(MentionsSize(err, 128ULL << 20)) << "stderr should give the expected size (128 MiB)\n"
                                               << recv->Report();
  if (Result<json> j = FerryJson(*recv); j.ok()) {
    EXPECT_NE(j->value("status", std::string()), "completed") << recv->Report();
  }
  EXPECT_TRUE(MigrationEnds(src, "failed", &*recv));
}

}  // namespace
}  // namespace ferry::test
