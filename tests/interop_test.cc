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
#include <sys/stat.h>

#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <regex>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"
#include "tests/support/qmp.h"

namespace ferry::test {
namespace {

using nlohmann::json;
using std::chrono::seconds;

constexpr uint64_t kGuestRam = 256ULL << 20;
constexpr auto kMigrationTimeout = seconds(180);
constexpr auto kExitTimeout = seconds(60);
// QEMU 7.2 defaults max-bandwidth to 32 MiB/s; lift it so 256 MiB moves fast.
constexpr uint64_t kQemuMaxBandwidth = 10ULL << 30;

PatternSpec GuestPattern() {
  PatternSpec s;
  s.size = kGuestRam;
  s.seed = 0x5eed0256;
  s.random_pct = 50;
  s.zero_pct = 25;
  s.text_pct = 25;
  return s;
}

struct Qemu {
  Process proc;
  std::unique_ptr<QmpClient> qmp;
};

struct QemuOptions {
  bool load_pattern = false;  // -device loader with the pattern file
  std::string incoming;       // -incoming URI, if any
};

// True if some process has `pid` as its parent (scans /proc/*/stat).
bool HasChildren(pid_t pid) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
    const std::string stat = ReadFileOrEmpty(e.path().string() + "/stat");
    const size_t paren = stat.rfind(')');  // "pid (comm) state ppid ..."
    if (paren == std::string::npos) continue;
    char state = 0;
    long ppid = 0;
    if (std::sscanf(stat.c_str() + paren + 1, " %c %ld", &state, &ppid) == 2 && ppid == pid) {
      return true;
    }
  }
  return false;
}

// Waits until `pid` has no child processes (QEMU's exec: helper is gone), so
// a stream QEMU wrote through `exec:cat > F` is complete on disk.
void WaitForNoChildren(pid_t pid, Clock::duration timeout) {
  const auto deadline = Clock::now() + timeout;
  while (HasChildren(pid) && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

class InteropTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* env = std::getenv("FERRY_QEMU");
    qemu_bin_ = FindProgram(env != nullptr && *env != '\0' ? env : "qemu-system-x86_64");
    if (qemu_bin_.empty()) return;
    suite_dir_ = new TempDir("ferry-interop-suite");
    pattern_ = suite_dir_->Path("pattern.bin");
    pattern_status_ = WritePatternFile(pattern_, GuestPattern());
  }

  static void TearDownTestSuite() {
    delete suite_dir_;
    suite_dir_ = nullptr;
  }

  void SetUp() override {
    if (qemu_bin_.empty()) {
      GTEST_SKIP() << "qemu-system-x86_64 not found in PATH (install Debian's qemu-system-x86, "
                      "or set FERRY_QEMU); the interop suite needs a real QEMU";
    }
    ASSERT_TRUE(pattern_status_.ok()) << "writing the pattern file: " << pattern_status_.ToString();
    dir_ = std::make_unique<TempDir>("ferry-interop");
  }

  std::string P(std::string_view name) const { return dir_->Path(name); }

  void StartQemu(const std::string& name, const QemuOptions& o, Qemu* q) {
    const std::string sock = P("qmp-" + name + ".sock");
    std::vector<std::string> argv = {qemu_bin_, "-M", "none", "-m", "256M", "-accel", "tcg",
                                     "-nodefaults", "-display", "none", "-S"};
    if (o.load_pattern) {
      argv.insert(argv.end(), {"-device", "loader,file=" + pattern_ + ",addr=0,force-raw=on"});
    }
    argv.insert(argv.end(), {"-qmp", "unix:" + sock + ",server=on,wait=off"});
    if (!o.incoming.empty()) argv.insert(argv.end(), {"-incoming", o.incoming});
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
        "migrate-set-parameters", {{"max-bandwidth", kQemuMaxBandwidth}, {"downtime-limit", 2000}});
    ASSERT_TRUE(r.ok()) << r.status().ToString() << "\n" << q->proc.Report();
  }

  void Migrate(Qemu& q, const std::string& uri) {
    Result<json> r = q.qmp->Execute("migrate", {{"uri", uri}});
    ASSERT_TRUE(r.ok()) << r.status().ToString() << "\n" << q.proc.Report();
  }

  // Waits for QEMU's side of the migration to end, expecting `want`.
  void ExpectMigrationStatus(Qemu& q, const std::string& want, const Process* peer = nullptr) {
    Result<json> info = q.qmp->WaitForMigration(kMigrationTimeout);
    ASSERT_TRUE(info.ok()) << info.status().ToString() << "\n" << q.proc.Report()
                           << (peer ? peer->Report() : std::string());
    EXPECT_EQ((*info)["status"], want) << "query-migrate: " << info->dump(2) << "\n"
                                       << q.proc.Report() << (peer ? peer->Report() : std::string());
  }

  void Pmemsave(Qemu& q, const std::string& file) {
    Result<json> r = q.qmp->Execute(
        "pmemsave", {{"val", 0}, {"size", kGuestRam}, {"filename", file}}, seconds(120));
    ASSERT_TRUE(r.ok()) << r.status().ToString() << "\n" << q.proc.Report();
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

    ASSERT_NO_FATAL_FAILURE(Migrate(src, *uri));
    ExpectMigrationStatus(src, "completed", &*recv);
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

    ASSERT_NO_FATAL_FAILURE(ExpectMigrationStatus(dst, "completed", &*send));
    const std::string dump = P("dst-memory.bin");
    ASSERT_NO_FATAL_FAILURE(Pmemsave(dst, dump));
    EXPECT_TRUE(FilesEqual(dump, pattern_)) << send->Report() << dst.proc.Report();
    EXPECT_TRUE(FilesEqual(copy, pattern_)) << "ferry send modified its --memory-file";
  }

  static std::string qemu_bin_;
  static TempDir* suite_dir_;
  static std::string pattern_;
  static Status pattern_status_;
  std::unique_ptr<TempDir> dir_;
};

std::string InteropTest::qemu_bin_;
TempDir* InteropTest::suite_dir_ = nullptr;
std::string InteropTest::pattern_;
Status InteropTest::pattern_status_;

// Harness check that needs no ferry: QEMU -> file -> QEMU, memory compared
// with the pattern on both sides. If this fails, the harness or QEMU is at
// fault, not ferry.
TEST_F(InteropTest, QemuToQemuFileSanity) {
  Qemu src;
  ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
  const std::string src_dump = P("src-memory.bin");
  ASSERT_NO_FATAL_FAILURE(Pmemsave(src, src_dump));
  ASSERT_TRUE(FilesEqual(src_dump, pattern_)) << "the loader device did not load the pattern";

  const std::string stream = P("stream.bin");
  ASSERT_NO_FATAL_FAILURE(Migrate(src, "exec:cat > " + stream));
  ASSERT_NO_FATAL_FAILURE(ExpectMigrationStatus(src, "completed"));
  WaitForNoChildren(src.proc.pid(), seconds(10));

  Qemu dst;
  ASSERT_NO_FATAL_FAILURE(StartQemu("dst", {.incoming = "exec:cat " + stream}, &dst));
  ASSERT_NO_FATAL_FAILURE(ExpectMigrationStatus(dst, "completed"));
  const std::string dst_dump = P("dst-memory.bin");
  ASSERT_NO_FATAL_FAILURE(Pmemsave(dst, dst_dump));
  EXPECT_TRUE(FilesEqual(dst_dump, pattern_));
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
  ASSERT_NO_FATAL_FAILURE(Migrate(src, "exec:cat > " + stream));
  ASSERT_NO_FATAL_FAILURE(ExpectMigrationStatus(src, "completed"));
  WaitForNoChildren(src.proc.pid(), seconds(10));

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
  ASSERT_NO_FATAL_FAILURE(ExpectMigrationStatus(dst, "completed", &*send));
  const std::string dump = P("dst-memory.bin");
  ASSERT_NO_FATAL_FAILURE(Pmemsave(dst, dump));
  EXPECT_TRUE(FilesEqual(dump, pattern_)) << send->Report() << dst.proc.Report();
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
  ASSERT_NO_FATAL_FAILURE(Migrate(src, *uri));

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
  ExpectMigrationStatus(src, "failed", &*recv);
}

}  // namespace
}  // namespace ferry::test
