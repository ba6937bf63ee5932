#include "file/stats.h"

#include <cstdio>

namespace ferry {

void FileThreadStats::Report(StatsReport& out) const {
  StatsValue list = StatsValue::Array();
  uint64_t bytes = 0, requests = 0;
  for (const FileThread& t : threads) {
    list.Push(StatsValue::Object({{"bytes", t.bytes}, {"pages", t.pages}, {"packets", t.requests}}));
    bytes += t.bytes;
    requests += t.requests;
  }
  out.json.Set("multifd", StatsValue::Object({{"channels", std::move(list)}, {"zero-pages", uint64_t{0}}}));
  out.ram.Set("multifd-bytes", uint64_t{0});
  if (threads.empty()) return;
  char buf[256];
  std::snprintf(buf, sizeof(buf), "  file threads: %zu, %s of pages in %llu requests\n", threads.size(),
                FormatBytes(static_cast<double>(bytes)).c_str(), (unsigned long long)requests);
  out.lines += buf;
}

void FileSyncStats::Report(StatsReport& out) const {
  if (sync_ms == 0) return;
  out.json.Set("sync-time", sync_ms);
  char buf[128];
  std::snprintf(buf, sizeof(buf), "  then %llu ms flushing the file to stable storage\n", (unsigned long long)sync_ms);
  out.after_state += buf;
}

}  // namespace ferry
