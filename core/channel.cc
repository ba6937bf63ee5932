#include "core/channel.h"

#include <poll.h>

#include <string>

namespace ferry {

size_t AdvanceIovecs(std::span<iovec> iov, size_t first, size_t n) {
  while (first < iov.size() && n >= iov[first].iov_len) {
    n -= iov[first].iov_len;
    iov[first].iov_len = 0;
    ++first;
  }
  if (first < iov.size()) {
    iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + n;
    iov[first].iov_len -= n;
  }
  return first;
}

bool Channel::WaitReadable(int wait_ms) {
  const int fd = this->fd();
  pollfd p{fd, POLLIN, 0};
  return fd >= 0 && ::poll(&p, 1, wait_ms) > 0 && (p.revents & (POLLIN | POLLHUP | POLLERR));
}

Status Channel::ReadExact(void* buf, size_t len) {
  auto* p = static_cast<char*>(buf);
  size_t got = 0;
  while (got < len) {
    Result<size_t> n = ReadSome(p + got, len - got);
    if (!n.ok()) return n.status();
    if (*n == 0) {
      return Status::Protocol("stream from " + Describe() + " ended after " + std::to_string(got) +
                              " of " + std::to_string(len) + " bytes");
    }
    got += *n;
  }
  return Status::Ok();
}

Status Channel::WriteAll(const void* buf, size_t len) {
  iovec iov{const_cast<void*>(buf), len};
  return WriteAll(std::span<iovec>(&iov, 1));
}

}  // namespace ferry
