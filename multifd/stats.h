// multifd's counters in a migration's stats (MigrationStats::Get<MultifdStats>()):
// per channel, in total, zero pages the channel threads found, and
// MSG_ZEROCOPY's bookkeeping. Reported as --json's "multifd" object,
// "ram.multifd-bytes" and "zero-copy", and one or two summary lines.
#pragma once

#include <cstdint>
#include <vector>

#include "../core/stats.h"

namespace ferry::multifd {

struct ChannelStats {
  uint64_t bytes = 0;    // wire bytes on this channel
  uint64_t pages = 0;    // normal pages carried
  uint64_t packets = 0;  // packets, SYNC packets included
};

// MSG_ZEROCOPY on the channels (zero-copy-send), summed over them.
struct ZeroCopyStats {
  bool enabled = false;
  uint64_t sends = 0;      // sendmsg(MSG_ZEROCOPY) calls the kernel numbered
  uint64_t completed = 0;  // of those, completions reaped from the error queue
  uint64_t copied = 0;     // completions where the kernel copied after all (e.g. loopback)
  uint64_t fallbacks = 0;  // sends done with a plain copy after ENOBUFS
};

class MultifdStats final : public TransportStatsOf<MultifdStats> {
 public:
  static constexpr std::string_view kName = "multifd";
  // --json: "multifd": {"channels": [{"bytes", "pages", "packets"}...],
  // "zero-pages"}, "ram": {"multifd-bytes"}, and "zero-copy": {"sends",
  // "completed", "copied", "fallbacks"} when enabled. Summary: a line for
  // the channels (when there are any) and one for zero-copy.
  void Report(StatsReport& out) const override;

  uint64_t bytes = 0;       // over all channels
  uint64_t zero_pages = 0;  // zero pages found by the channel threads
  std::vector<ChannelStats> channels;
  ZeroCopyStats zero_copy;
};

}  // namespace ferry::multifd
