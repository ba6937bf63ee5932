#include "core/stop_fd.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <string>

namespace ferry {

void SignalEventFd(int fd) {
  uint64_t one = 1;
  // The only possible failure is a full counter, which still wakes pollers.
  if (::write(fd, &one, sizeof(one)) < 0) {
  }
}

Result<UniqueFd> MakeEventFd(std::string_view what) {
  UniqueFd fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!fd.valid()) return ErrnoStatus("eventfd for " + std::string(what));
  return fd;
}

}  // namespace ferry
