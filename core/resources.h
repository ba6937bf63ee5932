// What a phase of this process cost the host: minor page faults, CPU time
// (getrusage deltas) and the process's peak resident set (VmHWM).
//
//   ResourceMeter m;                 // starts measuring
//   ... migration ...
//   ResourceUsage u = m.Read();      // deltas since the start, peak RSS now
#pragma once

#include <cstdint>

namespace ferry {

struct ResourceUsage {
  uint64_t minor_faults = 0;  // during the phase
  uint64_t major_faults = 0;  // during the phase
  uint64_t peak_rss = 0;      // bytes: the process's high-water mark so far
  uint64_t rss_at_start = 0;  // bytes: resident when the phase began
  double cpu_seconds = 0;     // user + system, all threads, during the phase
};

class ResourceMeter {
 public:
  ResourceMeter() { Restart(); }
  void Restart();
  ResourceUsage Read() const;

 private:
  uint64_t minflt_ = 0;
  uint64_t majflt_ = 0;
  double cpu_ = 0;
  uint64_t rss_ = 0;
};

// The process's current and peak resident set in bytes, from
// /proc/self/status (VmRSS, VmHWM); peak falls back to ru_maxrss.
uint64_t CurrentRss();
uint64_t PeakRss();

}  // namespace ferry
