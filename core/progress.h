// Bounded waits: how long a migration's channels may make no progress.
//
// Every blocking wait on a channel (sockets and pipes in socket/, multifd's
// own sendmsg loops, FIFOs) is bounded by a ProgressBound: the wait fails
// with kTimeout ("... no progress for N s") once neither it nor any channel
// sharing the bound's clock has moved a byte for `limit`. The channels of one
// side of a migration (the main stream and its multifd channels) share one
// clock, so a channel that is idle while its siblings carry the data — a
// multifd channel during a run of zero records in the main stream, the main
// stream while a slice of pages goes over multifd — is not a stall. When the
// whole migration stops moving, every waiter gives up `limit` after the last
// byte moved anywhere (or after its own wait began, whichever is later).
//
//   ProgressBound bound = ProgressBound::Make(std::chrono::seconds(30));
//   main->SetProgressBound(bound);
//   for (auto& ch : multifd) ch->SetProgressBound(bound);   // same clock
//
//   // code that drives a descriptor itself:
//   const auto since = ProgressBound::Clock::now();
//   FERRY_ASSIGN_OR_RETURN(WaitResult r, WaitForFd(fd, POLLOUT, -1, bound, since));
//   if (r == WaitResult::kExpired) return bound.Error("write to " + peer);
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "status.h"

namespace ferry {

// When any channel sharing this clock last moved a byte. Lock-free; any
// thread.
class ProgressClock {
 public:
  using Clock = std::chrono::steady_clock;
  ProgressClock() { Note(); }
  void Note() noexcept { last_.store(Clock::now().time_since_epoch().count(), std::memory_order_relaxed); }
  Clock::time_point last() const noexcept {
    return Clock::time_point(Clock::duration(last_.load(std::memory_order_relaxed)));
  }

 private:
  std::atomic<Clock::rep> last_{0};
};

struct ProgressBound {
  using Clock = std::chrono::steady_clock;

  // 0 = no bound: wait forever (cancellation still wakes every wait).
  std::chrono::milliseconds limit{0};
  // Shared by the channels of one migration side; null = only the wait
  // itself counts.
  std::shared_ptr<ProgressClock> clock;

  // A bound with a clock of its own (limit 0: unbounded, no clock).
  static ProgressBound Make(std::chrono::milliseconds limit);

  bool bounded() const { return limit.count() > 0; }
  // Bytes moved now (no-op without a clock).
  void Note() const {
    if (clock) clock->Note();
  }
  // The later of `since` (when the caller's wait began or its last progress)
  // and the clock's last progress.
  Clock::time_point LastProgress(Clock::time_point since) const;
  // No progress for `limit` since LastProgress(since). Never when unbounded.
  bool Expired(Clock::time_point since) const;
  // Milliseconds a poll() may sleep before Expired() must be asked again:
  // rounded up, at most `cap_ms` (-1 = no cap); -1 when unbounded and
  // uncapped.
  int PollMs(Clock::time_point since, int cap_ms = -1) const;
  // kTimeout: "<what>: no progress for N s".
  Status Error(std::string_view what) const;
};

// "2 s", "0.25 s": a duration for messages.
std::string FormatDuration(std::chrono::milliseconds d);

enum class WaitResult {
  kReady,    // `fd` is ready for `events`, or has an error or hang-up to report
  kWoken,    // `wake_fd` became readable (shutdown / cancel)
  kExpired,  // the bound expired
};

// poll()s `fd` for `events` until it is ready, `wake_fd` (an eventfd or any
// descriptor that becomes readable; -1 = none) is readable, or the bound
// expires. EINTR is retried; progress on the shared clock moves the
// deadline. Fails only if poll() itself fails.
Result<WaitResult> WaitForFd(int fd, short events, int wake_fd, const ProgressBound& bound,
                             ProgressBound::Clock::time_point since);

}  // namespace ferry
