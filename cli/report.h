// Human summaries, the TTY progress line, and the JSON object of `--json`.
#pragma once

#include <atomic>
#include <functional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/resources.h"
#include "core/stats.h"
#include "file/inspect.h"

namespace ferry::cli {

// Text that came from outside ferry (a name or message from a stream or a
// file, a peer's verdict), made safe for a terminal: valid UTF-8 stays as it
// is, except that control characters (C0, DEL, C1) and the bidirectional
// overrides (U+202A-U+202E, U+2066-U+2069) become visible escapes, \xNN
// per byte (\u202e for the overrides); every byte that is not part of valid
// UTF-8 becomes \xNN. Everything ferry prints for people goes through it.
std::string TerminalText(std::string_view s);
// `s` with every byte that is not part of valid UTF-8 replaced by the four
// characters \xNN; valid UTF-8 (control characters included, which JSON
// escapes itself) is unchanged.
std::string ValidUtf8(std::string_view s);
// Serializes a JSON value for output: every string in it (keys too) passes
// through ValidUtf8 first, so the dump never throws on bytes from a stream.
std::string DumpJson(const nlohmann::json& j);
// The progress display's percentage: pages copied over RAM size, never
// above 100, and for a live source never above the share of memory that is
// not dirty (re-sent pages do not count twice).
double ProgressPercent(const MigrationStats& s);

// The --json object: core's members, then each transport's
// (MigrationStats::transports, TransportStats::Report). ram.multifd-bytes
// is always there (0 without multifd). Call MigrationPlan::AddStats first so
// that transports reporting even without counters (multifd) are there.
nlohmann::json StatsJson(const MigrationStats& s);
using ferry::FormatBytes;  // core/stats.h
// Multi-line summary for people. `role` is "send" or "recv".
std::string Summary(const std::string& role, const MigrationStats& s, const std::string& tracker);
// The --json "resources" member: {"minor-faults", "major-faults", "peak-rss"
// (bytes), "rss-at-start" (bytes), "cpu-seconds"} of the migration phase.
nlohmann::json ResourcesJson(const ResourceUsage& u);
// One summary line: "  host: N minor faults (F/GiB of guest RAM), peak RSS X, C s CPU\n".
std::string ResourcesLine(const ResourceUsage& u, uint64_t guest_bytes);

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
