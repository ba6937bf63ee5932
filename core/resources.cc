#include "core/resources.h"

#include <sys/resource.h>

#include <cstdio>
#include <cstring>

namespace ferry {
namespace {

struct Sample {
  uint64_t minflt, majflt;
  double cpu;
};

Sample Now() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return Sample{static_cast<uint64_t>(r.ru_minflt), static_cast<uint64_t>(r.ru_majflt),
                sec(r.ru_utime) + sec(r.ru_stime)};
}

// "VmHWM:    123456 kB" -> bytes; 0 if absent.
uint64_t StatusKb(const char* key) {
  FILE* f = std::fopen("/proc/self/status", "re");
  if (!f) return 0;
  char line[256];
  uint64_t v = 0;
  const size_t klen = std::strlen(key);
  while (std::fgets(line, sizeof(line), f)) {
    if (std::strncmp(line, key, klen) == 0 && line[klen] == ':') {
      unsigned long long kb = 0;
      if (std::sscanf(line + klen + 1, "%llu", &kb) == 1) v = kb * 1024;
      break;
    }
  }
  std::fclose(f);
  return v;
}

}  // namespace

uint64_t CurrentRss() { return StatusKb("VmRSS"); }

uint64_t PeakRss() {
  if (uint64_t v = StatusKb("VmHWM")) return v;
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return static_cast<uint64_t>(r.ru_maxrss) * 1024;
}

void ResourceMeter::Restart() {
  const Sample s = Now();
  minflt_ = s.minflt;
  majflt_ = s.majflt;
  cpu_ = s.cpu;
  rss_ = CurrentRss();
}

ResourceUsage ResourceMeter::Read() const {
  const Sample s = Now();
  ResourceUsage u;
  u.minor_faults = s.minflt - minflt_;
  u.major_faults = s.majflt - majflt_;
  u.cpu_seconds = s.cpu - cpu_;
  u.peak_rss = PeakRss();
  u.rss_at_start = rss_;
  return u;
}

}  // namespace ferry
