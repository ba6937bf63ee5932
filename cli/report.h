// Human summaries, the TTY progress line, and the JSON object of `--json`.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/stats.h"
#include "file/inspect.h"

namespace ferry::cli {

// The --json object. `multifd`: the capability is on, so the "multifd"
// member is present even when the migration failed before any channel
// counted anything. ram.multifd-bytes is always there (0 without multifd).
nlohmann::json StatsJson(const MigrationStats& s, bool multifd = false);
std::string FormatBytes(double bytes);
// Multi-line summary for people. `role` is "send" or "recv".
std::string Summary(const std::string& role, const MigrationStats& s, const std::string& tracker);

// `ferry inspect`'s output: text for people (last line = the verdict) or
// one JSON object.
std::string InspectText(const InspectReport& r, bool json);

// Prints a one-line progress display to stderr a few times a second while
// alive, only when stderr is a terminal.
class Progress {
 public:
  Progress(std::function<MigrationStats()> poll, std::string role);
  ~Progress();
  void Stop();

 private:
  std::function<MigrationStats()> poll_;
  std::string role_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace ferry::cli
