// file/'s counters in a migration's stats: mapped-ram's writer/reader threads
// (MigrationStats::Get<FileThreadStats>(), with multifd's file threads) and
// a save's flush to stable storage (Get<FileSyncStats>()).
#pragma once

#include <cstdint>
#include <vector>

#include "../core/stats.h"

namespace ferry {

// Per mapped-ram thread: page data at fixed file offsets.
struct FileThread {
  uint64_t bytes = 0;     // page bytes written or read
  uint64_t pages = 0;
  uint64_t requests = 0;  // pwritev/preadv (or io_uring) requests
};

class FileThreadStats final : public TransportStats {
 public:
  // The counters in `stats`, or empty ones when there are none.
  static const FileThreadStats& Of(const MigrationStats& stats) {
    static const FileThreadStats none;
    const FileThreadStats* t = stats.Get<FileThreadStats>();
    return t ? *t : none;
  }
  static constexpr std::string_view kName = "file-threads";
  std::string_view name() const override { return kName; }
  // Shown where multifd's channels are (--json "multifd": {"channels":
  // [{"bytes", "pages", "packets" = requests}...], "zero-pages": 0}, and
  // "ram.multifd-bytes": 0), and as the summary line "file threads: N, X of
  // pages in R requests".
  void Report(StatsReport& out) const override;

  std::vector<FileThread> threads;
};

// A save's fdatasync after the migration completed (not part of its
// total time).
class FileSyncStats final : public TransportStats {
 public:
  // The counters in `stats`, or empty ones when there are none.
  static const FileSyncStats& Of(const MigrationStats& stats) {
    static const FileSyncStats none;
    const FileSyncStats* t = stats.Get<FileSyncStats>();
    return t ? *t : none;
  }
  static constexpr std::string_view kName = "file-sync";
  std::string_view name() const override { return kName; }
  // --json "sync-time" (ms, when nonzero) and the summary line "then N ms
  // flushing the file to stable storage".
  void Report(StatsReport& out) const override;

  uint64_t sync_ms = 0;
};

}  // namespace ferry
