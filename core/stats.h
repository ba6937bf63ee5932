// Migration state and statistics, shaped like QMP's query-migrate.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ferry {

enum class MigrationState {
  kNone,
  kSetup,
  kActive,
  kDevice,  // guest paused, sending the rest
  kCompleted,
  kFailed,
  kCancelling,
  kCancelled,
};

// QEMU's spelling: "none", "setup", "active", "device", "completed", ...
std::string_view StateName(MigrationState s);
inline bool IsTerminal(MigrationState s) {
  return s == MigrationState::kCompleted || s == MigrationState::kFailed || s == MigrationState::kCancelled;
}

struct RamStats {
  uint64_t total = 0;             // bytes of guest RAM
  uint64_t transferred = 0;       // bytes put on (or taken off) the wire
  uint64_t remaining = 0;         // dirty bytes still to send
  uint64_t duplicate = 0;         // zero pages
  uint64_t normal = 0;            // full pages
  uint64_t normal_bytes = 0;
  uint64_t dirty_sync_count = 0;
  uint64_t dirty_pages_rate = 0;  // pages/s dirtied in the last round
  double mbps = 0;                // megabits/s over the migration so far
  uint64_t pages_per_second = 0;
};

struct ChannelStats {
  uint64_t bytes = 0;    // wire bytes on this multifd channel
  uint64_t pages = 0;    // normal pages carried
  uint64_t packets = 0;  // packets, SYNC packets included
};

// MSG_ZEROCOPY on the multifd channels (zero-copy-send), summed over them.
struct ZeroCopyStats {
  bool enabled = false;
  uint64_t sends = 0;      // sendmsg(MSG_ZEROCOPY) calls the kernel numbered
  uint64_t completed = 0;  // of those, completions reaped from the error queue
  uint64_t copied = 0;     // completions where the kernel copied after all (e.g. loopback)
  uint64_t fallbacks = 0;  // sends done with a plain copy after ENOBUFS
};

// TLS (tls/): the session of each connection.
struct TlsSessionStats {
  std::string channel;  // "main", "multifd 0", ...
  std::string version;  // "TLSv1.3"
  std::string cipher;   // "TLS_AES_128_GCM_SHA256"
  std::string peer;     // the peer certificate's subject (x509), "" otherwise
};

struct TlsStats {
  std::string creds;            // "x509" or "psk"; "" = no TLS
  bool ktls_available = false;  // the kernel offers kTLS (ferry does not use it yet)
  std::vector<TlsSessionStats> sessions;  // the main stream's first, then multifd's by id
};

struct MigrationStats {
  MigrationState state = MigrationState::kNone;
  uint64_t total_time_ms = 0;
  uint64_t setup_time_ms = 0;
  uint64_t downtime_ms = 0;
  uint64_t expected_downtime_ms = 0;
  uint64_t iteration = 0;  // dirty rounds so far
  // Source: passes in a row in which the remaining dirty memory did not
  // shrink (by a tenth), and whether that has gone on long enough to call
  // the migration "not converging" (see max-stalled-passes).
  uint64_t stalled_passes = 0;
  bool not_converging = false;
  RamStats ram;
  // multifd (empty without it)
  uint64_t multifd_bytes = 0;
  uint64_t multifd_zero_pages = 0;  // zero pages found by the sender threads
  std::vector<ChannelStats> multifd_channels;
  ZeroCopyStats zero_copy;
  // file/ (mapped-ram): per writer/reader thread (empty without multifd
  // file threads); and, for saves, milliseconds flushing the file to stable
  // storage after the migration completed (not part of total_time_ms).
  std::vector<ChannelStats> file_threads;
  uint64_t file_sync_ms = 0;
  TlsStats tls;  // empty without TLS (Connection::AddStats fills it)
  std::string error;     // set when failed/cancelled
  bool verified = false; // destination: digest matched; source: destination said so
};

}  // namespace ferry
