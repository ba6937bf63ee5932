// Deadlines for waits that poll(): the one place that turns "time left" into
// poll()'s int milliseconds (socket/ connects and accepts, ProgressBound).
//
//   Deadline deadline(timeout);
//   while (!deadline.Expired()) ::poll(&p, 1, deadline.PollMs());
#pragma once

#include <algorithm>
#include <chrono>

namespace ferry {

// Milliseconds poll() may sleep with `left` to go: rounded up so a wait never
// spins on 0 ms polls just before its end, at most `cap` and never more than
// an hour (the int cannot overflow; callers loop and check again); 0 when
// nothing is left.
inline int PollMsFor(std::chrono::steady_clock::duration left, std::chrono::milliseconds cap) {
  constexpr std::chrono::milliseconds kMaxStep = std::chrono::hours(1);
  cap = std::min(cap, kMaxStep);
  if (left <= std::chrono::steady_clock::duration::zero()) return 0;
  return static_cast<int>(std::min(std::chrono::ceil<std::chrono::milliseconds>(left), cap).count());
}

// A point in time to give up at; very long timeouts (beyond ~100 years,
// milliseconds::max()) mean "never".
class Deadline {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Deadline(std::chrono::milliseconds timeout) {
    if (timeout.count() < 0) timeout = std::chrono::milliseconds(0);
    // Also keeps now() + timeout from overflowing.
    if (timeout > std::chrono::hours(24 * 365 * 100)) {
      infinite_ = true;
    } else {
      at_ = Clock::now() + timeout;
    }
  }
  bool Expired() const { return !infinite_ && Clock::now() >= at_; }
  // Milliseconds to pass to poll() (see PollMsFor), at most `cap`.
  int PollMs(std::chrono::milliseconds cap = std::chrono::milliseconds::max()) const {
    if (infinite_) return PollMsFor(Clock::duration::max(), cap);
    return PollMsFor(at_ - Clock::now(), cap);
  }

 private:
  bool infinite_ = false;
  Clock::time_point at_{};
};

}  // namespace ferry
