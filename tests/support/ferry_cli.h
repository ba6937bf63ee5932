// Helpers for tests that run the `ferry` binary (header-only: uses FERRY_BIN,
// which ferry_test() defines on each test target).
//
//   Result<Process> recv = StartFerry(dir, "recv", {"recv", "tcp:127.0.0.1:0",
//                                     "--ready-file", dir.Path("ready"), "--json"});
//   Result<std::string> uri = WaitForFile(dir.Path("ready"), kReadyTimeout, &*recv);
//   EXPECT_TRUE(ExitsWithCode(*recv, 0, std::chrono::seconds(120)));
//   Result<nlohmann::json> j = FerryJson(*recv);
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tests/support/process.h"

#ifndef FERRY_BIN
#error "FERRY_BIN must be defined (ferry_test() in tests/CMakeLists.txt does it)"
#endif

namespace ferry::test {

inline constexpr auto kReadyTimeout = std::chrono::seconds(30);

struct FerryIo {
  std::string stdin_path;   // default /dev/null
  std::string stdout_path;  // default DIR/NAME.out
};

// Starts `ferry ARGS...` with stdout in DIR/NAME.out and stderr in DIR/NAME.err.
inline Result<Process> StartFerry(const TempDir& dir, const std::string& name,
                                  std::vector<std::string> args, FerryIo io = {}) {
  std::vector<std::string> argv{FERRY_BIN};
  argv.insert(argv.end(), args.begin(), args.end());
  SpawnOptions o;
  o.stdin_path = io.stdin_path;
  o.stdout_path = io.stdout_path.empty() ? dir.Path(name + ".out") : io.stdout_path;
  o.stderr_path = dir.Path(name + ".err");
  return Process::Spawn(std::move(argv), std::move(o));
}

// StartFerry() for use in a test body: fails the test if it cannot start.
inline void StartFerryOrFail(const TempDir& dir, const std::string& name, std::vector<std::string> args,
                             Process* out) {
  Result<Process> p = StartFerry(dir, name, std::move(args));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  *out = std::move(*p);
}

// Starts `ferry ARGS... --ready-file DIR/ready` as "recv" (ARGS: "recv",
// a listening URI and options) and waits for the URI it listens on.
inline void StartReadyRecv(const TempDir& dir, std::vector<std::string> args, Process* recv, std::string* uri) {
  args.insert(args.end(), {"--ready-file", dir.Path("ready")});
  ASSERT_NO_FATAL_FAILURE(StartFerryOrFail(dir, "recv", std::move(args), recv));
  Result<std::string> u = WaitForFile(dir.Path("ready"), kReadyTimeout, recv);
  ASSERT_TRUE(u.ok()) << u.status().message();
  *uri = *u;
}

// The one JSON object ferry printed on stdout (--json).
inline Result<nlohmann::json> FerryJson(const Process& p) {
  const std::string out = p.Stdout();
  nlohmann::json j = nlohmann::json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::Protocol("ferry's stdout is not one JSON object:\n" + p.Report());
  }
  return j;
}

// FerryJson() for use in a test body: fails the test if there is none.
inline void GetJson(const Process& p, nlohmann::json* out) {
  Result<nlohmann::json> j = FerryJson(p);
  ASSERT_TRUE(j.ok()) << j.status().message();
  *out = std::move(*j);
}

// The process printed JSON (--json) whose "status" is `status`.
inline void ExpectJsonStatus(const Process& p, const std::string& status) {
  Result<nlohmann::json> j = FerryJson(p);
  ASSERT_TRUE(j.ok()) << j.status().message();
  EXPECT_EQ(j->value("status", std::string()), status) << p.Report();
}

// recv did not claim success in its JSON (when it printed any).
inline void ExpectRecvDidNotSucceed(const Process& recv) {
  Result<nlohmann::json> j = FerryJson(recv);
  if (!j.ok()) return;
  EXPECT_NE(j->value("status", std::string()), "completed") << recv.Report();
  EXPECT_NE(j->value("verified", false), true) << recv.Report();
}

// A member found by JSON pointer ("/ram/total"), if present.
inline std::optional<nlohmann::json> JsonAt(const nlohmann::json& j, const std::string& pointer) {
  const nlohmann::json::json_pointer ptr(pointer);
  if (!j.contains(ptr)) return std::nullopt;
  return j.at(ptr);
}

// Waits for the process and checks its exit code; on failure the message
// carries the full process report (command line, stderr, stdout).
inline ::testing::AssertionResult ExitsWithCode(Process& p, int code, Clock::duration timeout) {
  Result<ExitStatus> st = p.Wait(timeout);
  if (!st.ok()) {
    p.Kill();
    return ::testing::AssertionFailure() << st.status().message() << " (killed it)\n" << p.Report();
  }
  if (!st->exited || st->code != code) {
    return ::testing::AssertionFailure()
           << "expected exit code " << code << ", got " << st->ToString() << "\n" << p.Report();
  }
  return ::testing::AssertionSuccess();
}

// Waits for the process and checks that it ended with a non-zero exit code
// (not a crash by signal).
inline ::testing::AssertionResult ExitsWithFailure(Process& p, Clock::duration timeout) {
  Result<ExitStatus> st = p.Wait(timeout);
  if (!st.ok()) {
    p.Kill();
    return ::testing::AssertionFailure() << st.status().message() << " (killed it)\n" << p.Report();
  }
  if (!st->exited || st->code == 0) {
    return ::testing::AssertionFailure()
           << "expected a non-zero exit code, got " << st->ToString() << "\n" << p.Report();
  }
  return ::testing::AssertionSuccess();
}

// A migration's receiver is SIGKILLed: send must fail with exit 1 and
// "failed" in its --json, within `timeout`.
inline void KillReceiverExpectSendFails(Process& recv, Process& send, Clock::duration timeout) {
  recv.Kill();
  ASSERT_TRUE(ExitsWithCode(send, 1, timeout));
  ExpectJsonStatus(send, "failed");
}

// A migration's source is SIGKILLed: recv must fail (not crash) and not
// claim success, within `timeout`.
inline void KillSenderExpectRecvFails(Process& recv, Process& send, Clock::duration timeout) {
  send.Kill();
  ASSERT_TRUE(ExitsWithFailure(recv, timeout)) << "sender:\n" << send.Report();
  ExpectRecvDidNotSucceed(recv);
}

}  // namespace ferry::test
