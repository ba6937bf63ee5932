#include "core/progress.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>

#include "core/deadline.h"

namespace ferry {

ProgressBound ProgressBound::Make(std::chrono::milliseconds limit) {
  ProgressBound b;
  if (limit.count() <= 0) return b;
  b.limit = limit;
  b.clock = std::make_shared<ProgressClock>();
  return b;
}

ProgressBound::Clock::time_point ProgressBound::LastProgress(Clock::time_point since) const {
  if (!clock) return since;
  return std::max(since, clock->last());
}

bool ProgressBound::Expired(Clock::time_point since) const {
  if (!bounded()) return false;
  return Clock::now() - LastProgress(since) >= limit;
}

int ProgressBound::PollMs(Clock::time_point since, int cap_ms) const {
  const std::chrono::milliseconds cap = cap_ms < 0 ? std::chrono::milliseconds::max() : std::chrono::milliseconds(cap_ms);
  if (!bounded()) return cap_ms < 0 ? -1 : PollMsFor(Clock::duration::max(), cap);
  return PollMsFor(LastProgress(since) + limit - Clock::now(), cap);
}

std::string FormatDuration(std::chrono::milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3g s", static_cast<double>(d.count()) / 1000.0);
  return buf;
}

Status ProgressBound::Error(std::string_view what) const {
  return Status::Timeout(std::string(what) + ": no progress for " + FormatDuration(limit));
}

Result<WaitResult> WaitForFd(int fd, short events, int wake_fd, const ProgressBound& bound,
                             ProgressBound::Clock::time_point since) {
  for (;;) {
    if (bound.Expired(since)) return WaitResult::kExpired;
    pollfd p[2] = {{fd, events, 0}, {wake_fd, POLLIN, 0}};
    const int rc = ::poll(p, wake_fd >= 0 ? 2 : 1, bound.PollMs(since));
    if (rc < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("poll");
    }
    if (rc == 0) continue;  // the bound is asked again at the top
    if (wake_fd >= 0 && p[1].revents != 0) return WaitResult::kWoken;
    if (p[0].revents != 0) return WaitResult::kReady;
  }
}

}  // namespace ferry
