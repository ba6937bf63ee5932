// Private to tests/support/: whole reads and writes on descriptors.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>

#include "core/status.h"

namespace ferry::test {

constexpr uint64_t kPage = 4096;

// Reads up to n bytes at off; returns the count (short only at end of file)
// or -1 with errno set.
inline ssize_t PreadFull(int fd, void* buf, size_t n, uint64_t off) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, static_cast<char*>(buf) + done, n - done,
                        static_cast<off_t>(off + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(done);
}

inline Status WriteFull(int fd, const void* buf, size_t n, const std::string& what) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::write(fd, static_cast<const char*>(buf) + done, n - done);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write " + what);
    }
    done += static_cast<size_t>(r);
  }
  return Status::Ok();
}

}  // namespace ferry::test
