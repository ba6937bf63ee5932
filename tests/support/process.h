// Test support: child processes, temp dirs, pattern files and file
// comparison for the suites that drive the real `ferry` binary and QEMU.
//
//   TempDir dir;                                   // removed at scope exit
//   SpawnOptions o{.stdout_path = dir.Path("recv.out"),
//                  .stderr_path = dir.Path("recv.err")};
//   auto recv = Process::Spawn({FERRY_BIN, "recv", "tcp:127.0.0.1:0", ...}, o);
//   ASSERT_TRUE(recv.ok()) << recv.status().ToString();
//   auto uri = WaitForFile(dir.Path("ready"), std::chrono::seconds(30), &*recv);
//   ...
//   auto st = recv->Wait(std::chrono::seconds(60));  // kTimeout if still running
//   EXPECT_TRUE(FilesEqual(out, pattern)) << recv->Report();
//
// Every Process is killed (SIGKILL to its process group) and reaped when it
// goes out of scope, so a failing ASSERT never leaves a child behind. Children
// also get PR_SET_PDEATHSIG=SIGKILL, so they die with the test binary (note:
// that fires when the *spawning thread* exits; spawn from the test's thread).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "core/status.h"

namespace ferry::test {

using Clock = std::chrono::steady_clock;

// How a child ended.
struct ExitStatus {
  bool exited = false;  // true: normal exit with `code`; false: killed by `signal`
  int code = -1;
  int signal = 0;

  bool success() const { return exited && code == 0; }
  // "exit code 1" or "killed by signal 9 (Killed)".
  std::string ToString() const;
};

struct SpawnOptions {
  // Redirections. Empty stdin_path means /dev/null; empty stdout/stderr
  // paths mean "inherit the test's". stdout/stderr files are truncated.
  std::string stdin_path;
  std::string stdout_path;
  std::string stderr_path;
  // Extra environment entries ("NAME=value"), added to the test's own.
  std::vector<std::string> extra_env;
};

class Process {
 public:
  Process() = default;
  ~Process();
  Process(Process&& o) noexcept;
  Process& operator=(Process&& o) noexcept;
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  // Starts argv[0] (searched in PATH when it has no '/') in a new process
  // group. Fails if the program cannot be executed at all.
  static Result<Process> Spawn(std::vector<std::string> argv, SpawnOptions options = {});

  pid_t pid() const { return pid_; }
  bool valid() const { return pid_ > 0; }

  // Non-blocking: reaps the child if it has ended. False once it has ended.
  bool Running();
  // The exit status once reaped (by Running, Wait or Kill).
  const std::optional<ExitStatus>& exit_status() const { return status_; }

  // Waits until the child ends or `timeout` passes (kTimeout; the child is
  // left running: call Kill() or let the destructor do it).
  Result<ExitStatus> Wait(Clock::duration timeout);

  // Sends `sig` to the child itself (not its group). No-op once reaped.
  Status Signal(int sig);

  // SIGKILL to the whole process group, then reap. Idempotent.
  void Kill();

  // The command line, for messages.
  std::string CommandLine() const;
  // Contents of the redirected stdout/stderr files ("" when not redirected).
  std::string Stdout() const;
  std::string Stderr() const;

  // A multi-line report for failure messages: command line, pid, state or
  // exit status, and the tail of stderr (and stdout when it is short text).
  std::string Report(size_t max_bytes = 6000) const;

 private:
  void Reap(int wstatus);

  pid_t pid_ = -1;
  std::optional<ExitStatus> status_;
  std::vector<std::string> argv_;
  SpawnOptions options_;
};

// Spawns, waits up to `timeout` (killing the child if it is still running),
// returns the exit status. kTimeout carries the process report.
Result<ExitStatus> RunToCompletion(std::vector<std::string> argv, SpawnOptions options,
                                   Clock::duration timeout);

// A fresh directory (mkdtemp) removed recursively on destruction, unless the
// environment has FERRY_KEEP_TMP=1 (then its path is printed). Placed under
// $TMPDIR when that is short enough for unix socket paths, else under /tmp.
// Throws std::runtime_error if it cannot be created.
class TempDir {
 public:
  explicit TempDir(std::string_view prefix = "ferry-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }
  // path()/name
  std::string Path(std::string_view name) const;

 private:
  std::string path_;
};

// Whole file as a string; "" if it cannot be read.
std::string ReadFileOrEmpty(const std::string& path);
Status WriteStringToFile(const std::string& path, std::string_view content);
// Size in bytes, or a Status if the file cannot be stat'ed.
Result<uint64_t> FileSize(const std::string& path);
// Copies a file (contents only).
Status CopyFile(const std::string& from, const std::string& to);

// Waits until `path` exists and is non-empty; returns its content with
// surrounding whitespace trimmed. Gives up early (with the process report)
// when `watch` is given and that process ends first.
Result<std::string> WaitForFile(const std::string& path, Clock::duration timeout,
                                Process* watch = nullptr);

// Like WaitForFile, but only waits for `path` to exist with a size > 0 (for
// big files: nothing is read).
Status WaitForNonEmptyFile(const std::string& path, Clock::duration timeout,
                           Process* watch = nullptr);

// Looks up a program in PATH; "" if not found.
std::string FindProgram(std::string_view name);

// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it,
// close). Racy by nature: prefer letting `ferry recv tcp:127.0.0.1:0
// --ready-file F` pick, and reading the URI back from F.
Result<uint16_t> PickUnusedTcpPort();

// ---- Pattern files --------------------------------------------------------
//
// Deterministic content, a pure function of (seed, offset), built from 4 KiB
// pages grouped into 64 KiB regions (and sometimes whole 2 MiB runs) of one
// kind: random, zero or text. Random regions also hold awkward pages: a zero
// page with a single non-zero byte, a half-zero page and a page of 0xFF; a
// quarter of the text pages are text then zeros or zeros then text (cut at
// any byte), so "is this page zero?" shortcuts are exercised.
struct PatternSpec {
  uint64_t size = 0;
  uint64_t seed = 1;
  unsigned random_pct = 50;  // the three must add up to 100
  unsigned zero_pct = 25;
  unsigned text_pct = 25;
};

// Fills `out` with bytes [offset, offset+len) of the pattern. Any offset/len.
void GeneratePattern(const PatternSpec& spec, uint64_t offset, uint8_t* out, size_t len);

// Writes a pattern file of spec.size bytes.
Status WritePatternFile(const std::string& path, const PatternSpec& spec);

// ---- Comparison ------------------------------------------------------------
//
// All report the first differing offset (decimal and hex, with its 4 KiB page
// number), 16 bytes of each side there, and how many pages differ in total
// (and how many of those are all-zero on the actual side).

// Same size and same bytes.
::testing::AssertionResult FilesEqual(const std::string& actual, const std::string& expected);

// actual[actual_offset, +len) == expected[expected_offset, +len).
::testing::AssertionResult FileRangeEquals(const std::string& actual, uint64_t actual_offset,
                                           const std::string& expected, uint64_t expected_offset,
                                           uint64_t len);

// actual[offset, +len) == data[0, len).
::testing::AssertionResult FileEqualsBuffer(const std::string& actual, uint64_t offset,
                                            const void* data, size_t len);

// The file is exactly the pattern described by spec (size spec.size). Needs
// no copy of the expected data on disk.
::testing::AssertionResult FileMatchesPattern(const std::string& actual, const PatternSpec& spec);

}  // namespace ferry::test
