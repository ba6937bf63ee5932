// Wake-ups for poll() loops: an eventfd that Shutdown()/Cancel() signal, and
// StopWatch, which turns a std::stop_token into such a descriptor. Used by
// socket/ (connect, accept, pipes) and multifd/ (channel set-up).
//
//   StopWatch watch(stop);
//   FERRY_RETURN_IF_ERROR(watch.status());
//   pollfd p[2] = {{fd, POLLIN, 0}, {watch.fd(), POLLIN, 0}};   // p[1]: stop requested
#pragma once

#include <optional>
#include <stop_token>
#include <string_view>

#include "core/status.h"
#include "core/unique_fd.h"

namespace ferry {

// Wakes whoever polls the eventfd `fd` (any thread, async-signal-safe).
void SignalEventFd(int fd);

// A non-blocking eventfd; `what` names its use in the error.
Result<UniqueFd> MakeEventFd(std::string_view what);

struct EventFdSignaller {
  int fd;
  void operator()() const noexcept { SignalEventFd(fd); }
};

// Turns a stop_token into a readable descriptor for poll(). fd() is -1 when
// the token can never be stopped (poll ignores negative descriptors).
class StopWatch {
 public:
  explicit StopWatch(const std::stop_token& stop) {
    if (!stop.stop_possible()) return;
    Result<UniqueFd> fd = MakeEventFd("stop requests");
    if (!fd.ok()) {
      status_ = fd.status();
      return;
    }
    fd_ = std::move(fd).value();
    callback_.emplace(stop, EventFdSignaller{fd_.get()});
  }
  StopWatch(const StopWatch&) = delete;
  StopWatch& operator=(const StopWatch&) = delete;

  const Status& status() const { return status_; }
  int fd() const { return fd_.get(); }

 private:
  Status status_;
  UniqueFd fd_;  // declared before callback_: must outlive it
  std::optional<std::stop_callback<EventFdSignaller>> callback_;
};

}  // namespace ferry
