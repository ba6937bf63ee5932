#include "multifd/stats.h"

#include <cstdio>

namespace ferry::multifd {

void MultifdStats::Report(StatsReport& out) const {
  StatsValue list = StatsValue::Array();
  uint64_t packets = 0;
  for (const ChannelStats& c : channels) {
    list.Push(StatsValue::Object({{"bytes", c.bytes}, {"pages", c.pages}, {"packets", c.packets}}));
    packets += c.packets;
  }
  out.json.Set("multifd", StatsValue::Object({{"channels", std::move(list)}, {"zero-pages", zero_pages}}));
  out.ram.Set("multifd-bytes", bytes);

  char buf[256];
  if (!channels.empty()) {
    std::snprintf(buf, sizeof(buf), "  multifd: %zu channels, %s in %llu packets, %llu zero pages listed in packets\n",
                  channels.size(), FormatBytes(static_cast<double>(bytes)).c_str(), (unsigned long long)packets,
                  (unsigned long long)zero_pages);
    out.lines += buf;
  }
  if (zero_copy.enabled) {
    out.json.Set("zero-copy", StatsValue::Object({{"sends", zero_copy.sends},
                                                   {"completed", zero_copy.completed},
                                                   {"copied", zero_copy.copied},
                                                   {"fallbacks", zero_copy.fallbacks}}));
    std::snprintf(buf, sizeof(buf),
                  "  zero-copy: %llu sends, %llu completed, %llu copied by the kernel anyway, %llu fell back to a copy\n",
                  (unsigned long long)zero_copy.sends, (unsigned long long)zero_copy.completed,
                  (unsigned long long)zero_copy.copied, (unsigned long long)zero_copy.fallbacks);
    out.lines += buf;
  }
}

}  // namespace ferry::multifd
