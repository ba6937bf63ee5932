// Private to multifd/ and its tests: counters of the MultifdSink that the
// public MigrationStats has no field for yet.
#pragma once

#include <cstdint>
#include <optional>

#include "core/page_sink.h"

namespace ferry::multifd::internal {

// MSG_ZEROCOPY bookkeeping of one sink, summed over its channels.
struct ZeroCopyReport {
  bool enabled = false;
  uint64_t sends = 0;      // sendmsg(MSG_ZEROCOPY) calls the kernel numbered
  uint64_t completed = 0;  // of those, completions reaped from MSG_ERRQUEUE
  uint64_t copied = 0;     // completions flagged SO_EE_CODE_ZEROCOPY_COPIED
  uint64_t fallbacks = 0;  // sends done with a plain copy after ENOBUFS
};

// The counters of `sink` if MultifdSinkFactory made it; nullopt otherwise.
// Any thread.
std::optional<ZeroCopyReport> ZeroCopyCounters(const PageSink& sink);

}  // namespace ferry::multifd::internal
