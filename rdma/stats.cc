#include "rdma/stats.h"

namespace ferry::rdma {

// The summary lines stay the notices each side prints at its end (Summary):
// only the --json object comes from here.
void RdmaSourceStats::Report(StatsReport& out) const {
  StatsValue r;
  r.Set("side", "source");
  r.Set("channels", uint64_t{channels});
  r.Set("pin-all", pin_all);
  r.Set("pages-written", bytes_written / 4096);
  r.Set("bytes-written", bytes_written);
  r.Set("writes", writes);
  r.Set("signalled-writes", signalled);
  r.Set("bounce-bytes", bytes_copied);
  r.Set("zero-pages", zero_bytes / 4096);
  r.Set("compress-messages", compress_messages);
  r.Set("register-requests", register_requests);
  r.Set("registrations", local_registrations);
  out.json.Set("rdma", std::move(r));
}

void RdmaDestinationStats::Report(StatsReport& out) const {
  StatsValue r;
  r.Set("side", "destination");
  r.Set("channels", uint64_t{channels});
  r.Set("pin-all", pin_all);
  r.Set("rounds", hooks);
  r.Set("pages-counted", pages_counted);
  if (pages_counted) r.Set("pages-written", written_pages);
  r.Set("zero-pages", compress_bytes / 4096);
  r.Set("compress-entries", compress_entries);
  r.Set("register-requests", register_requests);
  r.Set("registrations", registrations);
  r.Set("registered-bytes", registered_bytes);
  out.json.Set("rdma", std::move(r));
}

}  // namespace ferry::rdma
