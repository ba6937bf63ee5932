// A fixture for the suites that run ferry against a real qemu-system-x86_64
// (QEMU 7.2 in Debian 12): it finds QEMU, writes the guest's memory as a
// pattern file once per suite, starts `-M none` guests paused with -S and
// driven over QMP, and checks migrations and guest memory.
//
//   class MyInteropTest : public QemuTest {
//    protected:
//     static void SetUpTestSuite() {
//       SetUpQemuSuite({.name = "my-interop", .guest = {.size = 256ULL << 20, .seed = 7}});
//     }
//   };
//   TEST_F(MyInteropTest, ThroughFile) {
//     Qemu src, dst;                                   // src's memory: the pattern
//     ASSERT_NO_FATAL_FAILURE(StartQemu("src", {.load_pattern = true}, &src));
//     ASSERT_NO_FATAL_FAILURE(MigrateToFile(src, P("stream.bin")));
//     ASSERT_NO_FATAL_FAILURE(StartQemu("dst", {.incoming = "exec:cat " + P("stream.bin")}, &dst));
//     ASSERT_TRUE(MigrationEnds(dst, "completed"));
//     ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dump.bin")));
//   }
//
// Tests skip themselves when QEMU is not installed. Set FERRY_QEMU to use
// another QEMU binary, FERRY_KEEP_TMP=1 to keep the temp dirs.
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
  // Call from the suite's SetUpTestSuite(): finds QEMU and writes the pattern file.
  static void SetUpQemuSuite(QemuSuite suite);
  static void TearDownTestSuite();
  // Skips the test when QEMU is not installed; makes the test's temp dir.
  void SetUp() override;

  // True when the QEMU under test is 7.2 (Debian 12's), by its --version.
  static bool QemuIs72() { return qemu_version_.rfind("7.2", 0) == 0; }

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

  static std::string qemu_bin_;
  static std::string qemu_version_;  // "7.2.x", "10.0.2", ... from --version
  static std::string pattern_;  // the guest's memory as the suite's pattern file
  std::unique_ptr<TempDir> dir_;

 private:
  static QemuSuite suite_;
  static TempDir* suite_dir_;
  static Status pattern_status_;
};

}  // namespace ferry::test
