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

class FileThreadStats final : public TransportStatsOf<FileThreadStats> {
 public:
  static constexpr std::string_view kName = "file-threads";
  // Shown where multifd's channels are (--json "multifd": {"channels":
  // [{"bytes", "pages", "packets" = requests}...], "zero-pages": 0}, and
  // "ram.multifd-bytes": 0), and as the summary line "file threads: N, X of
  // pages in R requests".
  void Report(StatsReport& out) const override;

  std::vector<FileThread> threads;
};

// A save's fdatasync after the migration completed (not part of its
// total time).
class FileSyncStats final : public TransportStatsOf<FileSyncStats> {
 public:
  static constexpr std::string_view kName = "file-sync";
  // --json "sync-time" (ms, when nonzero) and the summary line "then N ms
  // flushing the file to stable storage".
  void Report(StatsReport& out) const override;

  uint64_t sync_ms = 0;
};

}  // namespace ferry
