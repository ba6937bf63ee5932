// A minimal QMP (QEMU Machine Protocol) client for tests: one unix socket,
// one command at a time, a deadline on every read.
//
//   auto qmp = QmpClient::Connect(dir.Path("qmp.sock"), std::chrono::seconds(30), &qemu);
//   ASSERT_TRUE(qmp.ok()) << qmp.status().ToString();
//   auto r = (*qmp)->Execute("migrate", {{"uri", "tcp:127.0.0.1:4444"}});
//   ASSERT_TRUE(r.ok()) << r.status().ToString();     // QEMU's "desc" on error
//   auto done = (*qmp)->WaitForMigration(std::chrono::seconds(120));
//   EXPECT_EQ((*done)["status"], "completed");
//
// Asynchronous {"event": ...} messages are kept (events()) and skipped.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/status.h"
#include "core/unique_fd.h"
#include "tests/support/process.h"

namespace ferry::test {

class QmpClient {
 public:
  // Connects to the QMP socket at `path`, retrying until it appears and
  // accepts (or `timeout` passes), reads the greeting and negotiates
  // capabilities. With `owner`, gives up as soon as that process ends and
  // puts its report in the error.
  static Result<std::unique_ptr<QmpClient>> Connect(const std::string& path,
                                                    Clock::duration timeout,
                                                    Process* owner = nullptr);

  // Runs one command and returns its "return" value. A QMP error becomes a
  // kInvalidArgument Status "COMMAND: CLASS: DESC"; a closed socket kClosed;
  // no answer in time kTimeout.
  Result<nlohmann::json> Execute(std::string_view command,
                                 nlohmann::json arguments = nlohmann::json::object(),
                                 Clock::duration timeout = std::chrono::seconds(60));

  // Polls query-migrate until "status" is completed, failed or cancelled and
  // returns that query-migrate object. kTimeout (naming the last status)
  // otherwise. On an incoming QEMU, "status" is absent until a connection
  // arrives; that counts as not finished.
  Result<nlohmann::json> WaitForMigration(Clock::duration timeout,
                                          Clock::duration poll = std::chrono::milliseconds(50));

  // The greeting's "QMP" object (version etc.).
  const nlohmann::json& greeting() const { return greeting_; }
  // Events seen so far, oldest first (at most the last 1000).
  const std::vector<nlohmann::json>& events() const { return events_; }

 private:
  QmpClient() = default;
  Status Send(const nlohmann::json& message);
  // Reads one JSON message (a line), waiting until `deadline`.
  Result<nlohmann::json> ReadMessage(Clock::time_point deadline);

  UniqueFd fd_;
  std::string path_;
  Process* owner_ = nullptr;
  std::string buffer_;
  nlohmann::json greeting_;
  std::vector<nlohmann::json> events_;
  uint64_t next_id_ = 1;
};

}  // namespace ferry::test
