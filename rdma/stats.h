// rdma's own counters (issue 12), for a report: what each side did on its
// queue pairs. Each side prints them as one notice at the end (Summary) and
// puts them in its MigrationStats as the transport's counters ("rdma",
// MigrationStats::Get<RdmaSourceStats>() / Get<RdmaDestinationStats>()),
// reported as --json's "rdma" object (docs/cli-contract.md). The source's
// zero pages (COMPRESS) move from the RAM counts' "normal" to "duplicate";
// the destination also adds its page counts to MigrationStats (FillStats):
// zero pages from COMPRESS entries always, pages written by RDMA WRITE only
// when the source is ferry (kCapFerryCounts: it tells the count in every
// REGISTER FINISHED; QEMU does not, and those WRITEs are invisible here).
#pragma once

#include <cstdint>
#include <string>

#include "../core/stats.h"

namespace ferry::rdma {

struct RdmaSourceStats final : public TransportStats {
  static constexpr std::string_view kName = "rdma";
  std::string_view name() const override { return kName; }
  // --json "rdma": {"side": "source", "channels", "pin-all", "pages-written",
  // "bytes-written", "writes", "signalled-writes", "bounce-bytes",
  // "zero-pages", "compress-messages", "register-requests", "registrations"}.
  void Report(StatsReport& out) const override;

  uint32_t channels = 0;           // multifd QPs (0: the one connection)
  uint64_t bytes_written = 0;      // by RDMA WRITE
  uint64_t bytes_copied = 0;       // of those, through bounce buffers (memory that cannot be registered)
  uint64_t writes = 0;             // RDMA WRITEs
  uint64_t signalled = 0;          // of those, signalled (one per chain)
  uint64_t zero_bytes = 0;         // sent as COMPRESS entries
  uint64_t compress_messages = 0;
  uint64_t register_requests = 0;  // dynamic: destination chunks asked for
  uint64_t local_registrations = 0;  // source memory regions (chunks, or blocks with pin-all)
  bool pin_all = false;
  std::string Summary() const;
};

struct RdmaDestinationStats final : public TransportStats {
  static constexpr std::string_view kName = "rdma";
  std::string_view name() const override { return kName; }
  // --json "rdma": {"side": "destination", "channels", "pin-all", "rounds",
  // "pages-counted", "pages-written" (when counted), "zero-pages",
  // "compress-entries", "register-requests", "registrations", "registered-bytes"}.
  void Report(StatsReport& out) const override;

  uint32_t channels = 0;
  bool pin_all = false;
  bool pages_counted = false;      // the source reports its WRITEs (ferry)
  uint64_t written_pages = 0;      // pages the source wrote by RDMA WRITE (when counted)
  uint64_t compress_bytes = 0;     // bytes declared zero by COMPRESS entries
  uint64_t compress_entries = 0;
  uint64_t register_requests = 0;
  uint64_t registrations = 0;      // memory regions made (pin-all: one per block)
  uint64_t registered_bytes = 0;   // upper bound of what WRITEs could reach
  uint64_t hooks = 0;
};

}  // namespace ferry::rdma
