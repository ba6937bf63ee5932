// ferry <-> QEMU interoperability: the real `ferry` binary against a real
// qemu-system-x86_64, guest memory checked byte for byte. CMake runs every
// test against QEMU 7.2 (qemu7.2/...) and QEMU 10.0 (qemu10.0/...); see
// tests/support/qemu.h.
//
// Both directions over every plain-stream transport QEMU has: tcp, unix,
// exec: (ferry itself at the other end of QEMU's pipe, on fd 3) and a stream
// file (QEMU's exec:cat, ferry's fd:0 / fd:1). Two guests, `-M none` (one
// RAM block, named "ram") paused with -S: 97 MiB, and 75 MiB + 40 KiB (a size
// that is not a whole number of MiB, nor of 64 pages: the RAM block's last
// dirty-bitmap word is partial). The source QEMU gets its memory from a
// pattern file (random, zero and text pages, and pages that mix them) through
// the generic loader device; a destination QEMU's memory is read back with
// pmemsave. ferry writes what it receives into --memory-file.
//
// Set FERRY_KEEP_TMP=1 to keep the temp dirs (streams, dumps, logs) for a
// post-mortem.
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

constexpr auto kMigrationTimeout = seconds(180);
constexpr auto kExitTimeout = seconds(60);

// 'text' for /bin/sh.
std::string ShellQuote(const std::string& text) {
  std::string out = "'";
  for (char c : text) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// The tests, shared by the two guests' suites.
class InteropTestBase : public QemuTest {
 protected:
  // ferry's --json object must say completed, for the whole guest.
  void ExpectJsonCompleted(const json& j, const std::string& report) {
    EXPECT_EQ(j.value("status", std::string()), "completed") << report;
    if (auto total = JsonAt(j, "/ram/total")) {
      EXPECT_EQ(*total, guest_size()) << "ram.total\n" << report;
    } else {
      ADD_FAILURE() << "ferry's JSON has no ram.total\n" << report;
    }
  }
  void ExpectJsonCompleted(const Process& ferry) {
    Result<json> j = FerryJson(ferry);
    ASSERT_TRUE(j.ok()) << j.status().message();
    ExpectJsonCompleted(*j, ferry.Report());
  }

  // QEMU (source) -> `ferry recv LISTEN_URI`.
  void QemuToFerry(const std::string& listen_uri, const std::string& uri_prefix) {
    Qemu src;
    ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
    const std::string out = P("received.bin"), ready = P("ready");
    Result<Process> recv = StartFerry(*dir_, "recv",
                                      {"recv", listen_uri, "--qemu-compat", FerryQemuCompat(), "--memory-file",
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
        *dir_, "send",
        {"send", send_uri, "--qemu-compat", FerryQemuCompat(), "--memory-file", copy, "--json"});
    ASSERT_TRUE(send.ok()) << send.status().ToString();
    ASSERT_TRUE(ExitsWithCode(*send, 0, kMigrationTimeout)) << "QEMU side:\n" << dst.proc.Report();
    ExpectJsonCompleted(*send);

    ASSERT_TRUE(MigrationEnds(dst, "completed", &*send));
    ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dst-memory.bin"), &*send));
    EXPECT_TRUE(FilesEqual(copy, pattern_)) << "ferry send modified its --memory-file";
  }

  // A ferry command line for QEMU's exec: URI: ferry ARGS with its stream on
  // fd 3 (`redirect` puts QEMU's pipe there), --json into P(NAME.json),
  // stderr into P(NAME.err), and its exit code into P(NAME.rc) once it ends.
  std::string ExecFerry(const std::string& name, const std::vector<std::string>& args,
                        const std::string& redirect) {
    std::string cmd = ShellQuote(FERRY_BIN);
    for (const std::string& a : args) cmd += " " + ShellQuote(a);
    const std::string rc = P(name + ".rc");
    return cmd + " --json " + redirect + " >" + ShellQuote(P(name + ".json")) + " 2>" +
           ShellQuote(P(name + ".err")) + "; echo $? >" + ShellQuote(rc + ".part") + " && mv " +
           ShellQuote(rc + ".part") + " " + ShellQuote(rc);
  }

  // What ExecFerry's ferry said, for failure messages.
  std::string ExecFerryReport(const std::string& name) {
    return "ferry (run by QEMU's exec:) stderr:\n" + ReadFileOrEmpty(P(name + ".err")) + "\nstdout:\n" +
           ReadFileOrEmpty(P(name + ".json"));
  }

  // ExecFerry's ferry exited 0 (waiting while `qemu` runs) and its JSON says completed.
  void ExpectExecFerrySucceeded(const std::string& name, Qemu& qemu) {
    Result<std::string> rc = WaitForFile(P(name + ".rc"), kExitTimeout, &qemu.proc);
    ASSERT_TRUE(rc.ok()) << rc.status().message() << "\n" << ExecFerryReport(name);
    ASSERT_EQ(*rc, "0") << "ferry's exit code\n" << ExecFerryReport(name) << "\n" << qemu.proc.Report();
    json j = json::parse(ReadFileOrEmpty(P(name + ".json")), nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(j.is_object()) << ExecFerryReport(name);
    ExpectJsonCompleted(j, ExecFerryReport(name));
  }

  // QEMU migrates into "exec:ferry recv fd:3": ferry reads QEMU's pipe.
  void QemuToFerryExec() {
    Qemu src;
    ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
    const std::string out = P("received.bin");
    const std::string cmd = ExecFerry(
        "recv", {"recv", "fd:3", "--qemu-compat", FerryQemuCompat(), "--memory-file", out}, "3<&0 </dev/null");
    ASSERT_TRUE(src.Migrate("exec:" + cmd));
    EXPECT_TRUE(MigrationEnds(src, "completed")) << ExecFerryReport("recv");
    ASSERT_NO_FATAL_FAILURE(ExpectExecFerrySucceeded("recv", src));
    EXPECT_TRUE(FilesEqual(out, pattern_)) << ExecFerryReport("recv");
  }

  // QEMU starts with -incoming "exec:ferry send fd:3": ferry writes into QEMU's pipe.
  void FerryToQemuExec() {
    const std::string copy = P("pattern-copy.bin");
    ASSERT_TRUE(CopyFile(pattern_, copy).ok());
    const std::string cmd = ExecFerry(
        "send", {"send", "fd:3", "--qemu-compat", FerryQemuCompat(), "--memory-file", copy}, "3>&1");
    Qemu dst;
    ASSERT_NO_FATAL_FAILURE(StartQemu("dst", {.incoming = "exec:" + cmd}, &dst));
    ASSERT_TRUE(MigrationEnds(dst, "completed")) << ExecFerryReport("send");
    ASSERT_NO_FATAL_FAILURE(ExpectExecFerrySucceeded("send", dst));
    ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dst-memory.bin")));
    EXPECT_TRUE(FilesEqual(copy, pattern_)) << "ferry send modified its --memory-file";
  }

  // QEMU writes its stream to a file (exec:cat > F); `ferry recv fd:0` reads it from stdin.
  void QemuToFerryThroughFile() {
    Qemu src;
    ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
    const std::string stream = P("qemu-stream.bin");
    ASSERT_NO_FATAL_FAILURE(MigrateToFile(src, stream));

    const std::string out = P("received.bin");
    Result<Process> recv = StartFerry(
        *dir_, "recv", {"recv", "fd:0", "--qemu-compat", FerryQemuCompat(), "--memory-file", out, "--json"},
        {.stdin_path = stream});
    ASSERT_TRUE(recv.ok()) << recv.status().ToString();
    ASSERT_TRUE(ExitsWithCode(*recv, 0, kExitTimeout));
    ExpectJsonCompleted(*recv);
    EXPECT_TRUE(FilesEqual(out, pattern_)) << recv->Report();
  }

  // `ferry send fd:1` writes the stream to a file; QEMU loads it (exec:cat F).
  void FerryToQemuThroughFile() {
    const std::string copy = P("pattern-copy.bin");
    ASSERT_TRUE(CopyFile(pattern_, copy).ok());
    const std::string stream = P("ferry-stream.bin");
    Result<Process> send = StartFerry(
        *dir_, "send", {"send", "fd:1", "--qemu-compat", FerryQemuCompat(), "--memory-file", copy},
        {.stdout_path = stream});
    ASSERT_TRUE(send.ok()) << send.status().ToString();
    ASSERT_TRUE(ExitsWithCode(*send, 0, kMigrationTimeout));

    Qemu dst;
    ASSERT_NO_FATAL_FAILURE(StartQemu("dst", {.incoming = "exec:cat " + stream}, &dst));
    ASSERT_TRUE(MigrationEnds(dst, "completed", &*send));
    ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dst-memory.bin"), &*send));
  }
};

// ---- 97 MiB -----------------------------------------------------------------------

constexpr uint64_t kGuestRam = 97ULL << 20;

class InteropTest : public InteropTestBase {
 protected:
  static void SetUpTestSuite() {
    SetUpQemuSuite({.name = "interop",
                    .guest = {.size = kGuestRam, .seed = 0x5eed0097},
                    .migration_timeout = kMigrationTimeout});
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

TEST_F(InteropTest, QemuToFerryExec) { QemuToFerryExec(); }

TEST_F(InteropTest, QemuToFerryThroughFile) { QemuToFerryThroughFile(); }

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

TEST_F(InteropTest, FerryToQemuExec) { FerryToQemuExec(); }

TEST_F(InteropTest, FerryToQemuThroughFile) { FerryToQemuThroughFile(); }

// True if `text` mentions `bytes` as a number of bytes, in hex, or as a size
// with a binary suffix ("97M", "97 MiB", "97.0 MiB").
bool MentionsSize(const std::string& text, uint64_t bytes) {
  if (text.find(std::to_string(bytes)) != std::string::npos) return true;
  char hex[32];
  std::snprintf(hex, sizeof(hex), "0x%llx", static_cast<unsigned long long>(bytes));
  if (text.find(hex) != std::string::npos) return true;
  const std::string mib = std::to_string(bytes >> 20);
  return std::regex_search(text, std::regex("(^|[^0-9.])" + mib + "(\\.0+)? ?(M|MiB|MB)\\b"));
}

// The guest has 97 MiB but ferry was told 64M: it must refuse, naming the
// block and both sizes, and QEMU's side must fail rather than complete.
TEST_F(InteropTest, RamSizeMismatchIsRejected) {
  Qemu src;
  ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
  const std::string ready = P("ready");
  Result<Process> recv =
      StartFerry(*dir_, "recv",
                 {"recv", "tcp:127.0.0.1:0", "--qemu-compat", FerryQemuCompat(), "--ram", "64M",
                  "--ready-file", ready, "--json"});
  ASSERT_TRUE(recv.ok()) << recv.status().ToString();
  Result<std::string> uri = WaitForFile(ready, kReadyTimeout, &*recv);
  ASSERT_TRUE(uri.ok()) << uri.status().message();
  ASSERT_TRUE(src.Migrate(*uri));

  ASSERT_TRUE(ExitsWithFailure(*recv, kExitTimeout)) << "QEMU side:\n" << src.proc.Report();
  const std::string err = recv->Stderr();
  EXPECT_NE(err.find("ram"), std::string::npos) << "stderr should name the block \"ram\"\n"
                                                << recv->Report();
  EXPECT_TRUE(MentionsSize(err, kGuestRam)) << "stderr should give QEMU's size (97 MiB)\n" << recv->Report();
  EXPECT_TRUE(MentionsSize(err, 64ULL << 20)) << "stderr should give the expected size (64 MiB)\n"
                                              << recv->Report();
  if (Result<json> j = FerryJson(*recv); j.ok()) {
    EXPECT_NE(j->value("status", std::string()), "completed") << recv->Report();
  }
  EXPECT_TRUE(MigrationEnds(src, "failed", &*recv));
}

// ---- 75 MiB + 40 KiB, mostly zero -------------------------------------------------

class InteropOddRamTest : public InteropTestBase {
 protected:
  static void SetUpTestSuite() {
    SetUpQemuSuite({.name = "interop-odd",
                    .guest = {.size = (75ULL << 20) + (40 << 10),
                              .seed = 0x0dd40,
                              .random_pct = 25,
                              .zero_pct = 50,
                              .text_pct = 25},
                    .migration_timeout = kMigrationTimeout});
  }
};

TEST_F(InteropOddRamTest, QemuToFerryTcp) { QemuToFerry("tcp:127.0.0.1:0", "tcp:127.0.0.1:"); }

TEST_F(InteropOddRamTest, QemuToFerryExec) { QemuToFerryExec(); }

TEST_F(InteropOddRamTest, FerryToQemuUnix) {
  const std::string uri = "unix:" + P("migration.sock");
  FerryToQemu(uri, uri);
}

TEST_F(InteropOddRamTest, FerryToQemuExec) { FerryToQemuExec(); }

}  // namespace
}  // namespace ferry::test
