// A fixture for the suites that run ferry against a real qemu-system-x86_64:
// it finds QEMU and asks its version once per suite, writes the guest's
// memory as a pattern file once per suite, starts `-M none` guests paused
// with -S and driven over QMP, and checks migrations and guest memory.
//
//   class MyInteropTest : public QemuTest {
//    protected:
//     static void SetUpTestSuite() {
//       SetUpQemuSuite({.name = "my-interop", .guest = {.size = 96ULL << 20, .seed = 7}});
//     }
//   };
//   TEST_F(MyInteropTest, ThroughFile) {
//     Qemu src, dst;                                   // src's memory: the pattern
//     ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
//     ASSERT_NO_FATAL_FAILURE(MigrateToFile(src, P("stream.bin")));
//     ASSERT_NO_FATAL_FAILURE(StartQemu("dst", {.incoming = "exec:cat " + P("stream.bin")}, &dst));
//     ASSERT_TRUE(MigrationEnds(dst, "completed"));
//     ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dump.bin")));
//     if (IsQemu72()) { ... }                          // QEMU generation specifics
//   }
//
// Which QEMU: $FERRY_QEMU (a path, or a name looked up in PATH; default
// qemu-system-x86_64, Debian 12's QEMU 7.2), started with -L
// $FERRY_QEMU_DATADIR when that is set (an unpacked QEMU's firmware and ROMs).
// CMake registers every interop suite twice (ferry_interop_test in
// tests/CMakeLists.txt): qemu7.2/... with Debian's QEMU, qemu10.0/... with the
// QEMU 10.0 that `bash .ci/deps` unpacks into /var/cache/ferry/qemu-10.0/root.
//
// A QEMU that cannot be found or run FAILS the tests (with what to do about
// it), unless FERRY_ALLOW_SKIP=1 is in the environment: then they skip. Set
// FERRY_KEEP_TMP=1 to keep the temp dirs.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/process.h"
#include "tests/support/qmp.h"

namespace ferry::test {

// QEMU 7.2 defaults max-bandwidth to 32 MiB/s; the suites lift it so the guest moves fast.
inline constexpr uint64_t kQemuMaxBandwidth = 10ULL << 30;

// The QEMU to run: $FERRY_QEMU when set, else qemu-system-x86_64, looked up
// in PATH; "" if not found.
std::string FindQemu();

// QEMU's version, from `qemu-system-x86_64 --version`.
struct QemuVersion {
  int major = 0;
  int minor = 0;
  int micro = 0;
  std::string line;  // "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2...)"

  bool AtLeast(int maj, int min) const { return major > maj || (major == maj && minor >= min); }
  bool Is(int maj, int min) const { return major == maj && minor == min; }
  std::string ToString() const;  // "10.0.2"
};

// The QEMU the interop tests use, found and asked for its version.
struct QemuInstall {
  std::string requested;  // $FERRY_QEMU, or "qemu-system-x86_64"
  std::string bin;        // the executable; "" if not found
  std::string datadir;    // $FERRY_QEMU_DATADIR (for -L), or ""
  QemuVersion version;
  Status status;  // not ok: not found, or `--version` failed or said no version

  bool ok() const { return status.ok(); }
  // {bin} or {bin, "-L", datadir}: the start of every QEMU command line.
  std::vector<std::string> Command() const;
};

// Looks up $FERRY_QEMU / $FERRY_QEMU_DATADIR and runs `QEMU [-L DIR] --version`.
QemuInstall LocateQemu();

// True if FERRY_ALLOW_SKIP=1 (or any value but "" and "0") is in the environment.
bool AllowSkip();

// For a test (or SetUp) that needs `qemu`: true if it is usable. Otherwise
// records a fatal failure saying which QEMU is missing and how to get it
// (`bash .ci/deps`), or, with FERRY_ALLOW_SKIP=1, skips the test; returns
// false and the caller returns.
//   const QemuInstall qemu = LocateQemu();
//   if (!RequireQemu(qemu, "my suite")) return;
bool RequireQemu(const QemuInstall& qemu, std::string_view who);

// Waits (up to `timeout`) until `pid` has no child processes, e.g. until
// QEMU's exec: helper is gone, so a stream it wrote through `exec:cat > F` is
// complete on disk.
void WaitForNoChildren(pid_t pid, Clock::duration timeout);

// A running QEMU and its QMP connection.
struct Qemu {
  Process proc;
  std::unique_ptr<QmpClient> qmp;

  // Runs a QMP command; a failure carries QEMU's error and its process report.
  ::testing::AssertionResult Execute(std::string_view command,
                                     nlohmann::json arguments = nlohmann::json::object(),
                                     Clock::duration timeout = std::chrono::seconds(60));
  ::testing::AssertionResult Migrate(const std::string& uri) {
    return Execute("migrate", {{"uri", uri}});
  }
};

struct QemuOptions {
  bool load_pattern = false;  // -device loader with the suite's pattern file
  std::string incoming;       // -incoming URI ("defer" too), if any
  std::vector<std::string> extra_args;  // more command-line arguments (e.g. -uuid U)
  // Capabilities turned on with migrate-set-capabilities (none: not sent).
  std::vector<std::string> capabilities;
  // Sent with migrate-set-parameters once QMP is up (after the capabilities).
  nlohmann::json parameters = {{"max-bandwidth", kQemuMaxBandwidth}, {"downtime-limit", 2000}};
};

struct QemuSuite {
  // Names the temp dirs (ferry-NAME-suite holds the pattern file, a test's own
  // is ferry-NAME) and the suite in the skip message.
  std::string name;
  // The guest's memory; guest.size is also its -m.
  PatternSpec guest;
  // How long MigrationEnds waits for QEMU's side to finish.
  Clock::duration migration_timeout = std::chrono::seconds(180);
};

class QemuTest : public ::testing::Test {
 protected:
  // Call from the suite's SetUpTestSuite(): finds QEMU, asks its version and
  // writes the pattern file. guest.size must be a multiple of 8 KiB (QEMU
  // rounds -m up to that).
  static void SetUpQemuSuite(QemuSuite suite);
  static void TearDownTestSuite();
  // Fails the test when QEMU cannot be run (skips it with FERRY_ALLOW_SKIP=1);
  // makes the test's temp dir.
  void SetUp() override;

  // The QEMU generation under test (valid once SetUp passed).
  static const QemuVersion& qemu_version() { return qemu_.version; }
  static bool IsQemu72() { return qemu_.version.Is(7, 2); }
  static bool IsQemu10() { return qemu_.version.major == 10; }

  // What ferry is told about its QEMU peer (--qemu-compat): machine "none",
  // and the generation when it is not the default (10.0).
  static std::string FerryQemuCompat() { return IsQemu72() ? "none,version=7.2" : "none"; }

  // The guest's RAM size in bytes (the suite's guest.size).
  static uint64_t guest_size() { return suite_.guest.size; }
  static const PatternSpec& guest() { return suite_.guest; }

  // A path in the test's temp dir.
  std::string P(std::string_view name) const { return dir_->Path(name); }

  // Starts QEMU NAME (QMP socket P("qmp-NAME.sock"), output in P("qemu-NAME.out"/".err")),
  // connects to its QMP and configures migration.
  void StartQemu(const std::string& name, const QemuOptions& o, Qemu* q);

  // QEMU's side of the migration ends, within the suite's migration_timeout,
  // with query-migrate status `want`. The failure message holds query-migrate
  // and the reports of QEMU and `peer`.
  ::testing::AssertionResult MigrationEnds(Qemu& q, const std::string& want,
                                           const Process* peer = nullptr);

  // `src` migrates into "exec:cat > STREAM" and completes; returns once the
  // stream is complete on disk.
  void MigrateToFile(Qemu& src, const std::string& stream);

  // Writes the whole guest memory of `q` into `file` (pmemsave).
  ::testing::AssertionResult Pmemsave(Qemu& q, const std::string& file);

  // Reads the whole guest memory of `q` back into `dump` (pmemsave; a fatal
  // failure if that fails) and expects it to be the pattern, byte for byte.
  void ExpectGuestMemoryIsPattern(Qemu& q, const std::string& dump, const Process* peer = nullptr);

  static QemuInstall qemu_;
  static std::string pattern_;  // the guest's memory as the suite's pattern file
  std::unique_ptr<TempDir> dir_;

 private:
  static QemuSuite suite_;
  static TempDir* suite_dir_;
  static Status pattern_status_;
};

}  // namespace ferry::test
