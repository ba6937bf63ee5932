#include "multifd/zero_copy.h"

#include <linux/errqueue.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>

#include "core/progress.h"

#ifndef SO_EE_ORIGIN_ZEROCOPY
#define SO_EE_ORIGIN_ZEROCOPY 5
#endif
#ifndef SO_EE_CODE_ZEROCOPY_COPIED
#define SO_EE_CODE_ZEROCOPY_COPIED 1
#endif
#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif

namespace ferry::multifd {
namespace {

#ifdef IOV_MAX
constexpr size_t kMaxIov = IOV_MAX;
#else
constexpr size_t kMaxIov = 1024;
#endif

}  // namespace

Status EnableZeroCopy(Channel& channel, unsigned id) {
  const int fd = channel.fd();
  if (fd < 0) {
    return Status::Unsupported("zero-copy-send: multifd channel " + std::to_string(id) + " (" +
                               channel.Describe() + ") is not a plain socket");
  }
  int one = 1;
  if (::setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) != 0) {
    const int err = errno;
    Status st = ErrnoStatus("zero-copy-send", err);
    return err == EOPNOTSUPP || err == ENOPROTOOPT ? Status::Unsupported(st.message()) : st;
  }
  return Status::Ok();
}

Status SendZeroCopy(Channel& channel, ZeroCopyLedger& zc, std::span<iovec> iov, const std::function<bool()>& stopping) {
  const int fd = channel.fd();
  // The descriptor is driven here, not through the channel: the same bound
  // (MSG_DONTWAIT and a bounded poll; Shutdown() wakes the poll).
  const ProgressBound bound = channel.progress_bound();
  auto since = ProgressBound::Clock::now();
  size_t i = 0;
  while (true) {
    while (i < iov.size() && iov[i].iov_len == 0) ++i;
    if (i == iov.size()) return Status::Ok();
    if (stopping()) return Status::Cancelled("multifd: sending stopped");
    msghdr msg{};
    msg.msg_iov = &iov[i];
    msg.msg_iovlen = std::min(iov.size() - i, kMaxIov);
    ssize_t n = ::sendmsg(fd, &msg, MSG_ZEROCOPY | MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      zc.NoteIssued();
      bound.Note();
      since = ProgressBound::Clock::now();
    } else if (n == 0) {
      return Status::Io("write to " + channel.Describe() + " made no progress", EIO);
    } else {
      const int err = errno;
      if (err == EINTR) continue;
      if (err == ENOBUFS) {
        // Too much pinned or too many notifications queued: wait for one
        // to come back, or copy this piece if nothing is outstanding.
        if (!zc.AllDone()) {
          FERRY_RETURN_IF_ERROR(WaitZeroCopyCompletions(channel, zc, zc.done_below() + 1, stopping));
          continue;
        }
        n = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
          if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
          return ErrnoStatus("write to " + channel.Describe());
        }
        zc.NoteFallback();
        bound.Note();
        since = ProgressBound::Clock::now();
      } else if (err == EAGAIN || err == EWOULDBLOCK) {
        Result<WaitResult> r = WaitForFd(fd, POLLOUT, -1, bound, since);
        if (!r.ok()) return r.status().WithContext("write to " + channel.Describe());
        if (*r == WaitResult::kExpired) return bound.Error("write to " + channel.Describe());
        continue;
      } else {
        if (stopping()) return Status::Cancelled("multifd: sending stopped");
        return ErrnoStatus("write to " + channel.Describe(), err);
      }
    }
    i = AdvanceIovecs(iov, i, static_cast<size_t>(n));
  }
}

Status ReapZeroCopyCompletions(Channel& channel, ZeroCopyLedger& zc, const std::function<bool()>& stopping) {
  const int fd = channel.fd();
  while (true) {
    alignas(cmsghdr) uint8_t control[128];
    msghdr msg{};
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    if (::recvmsg(fd, &msg, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) return Status::Ok();
      if (stopping()) return Status::Cancelled("multifd: sending stopped");
      return ErrnoStatus("zero-copy completions of " + channel.Describe(), err);
    }
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      const bool v4 = c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR;
      const bool v6 = c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_RECVERR;
      if (!v4 && !v6) continue;
      sock_extended_err ee;
      std::memcpy(&ee, CMSG_DATA(c), sizeof(ee));
      if (ee.ee_origin != SO_EE_ORIGIN_ZEROCOPY) continue;
      if (ee.ee_errno != 0) {
        return Status::Io("zero-copy send on " + channel.Describe() + " failed: " + std::strerror(ee.ee_errno),
                          static_cast<int>(ee.ee_errno));
      }
      zc.NoteCompleted(ee.ee_info, ee.ee_data, (ee.ee_code & SO_EE_CODE_ZEROCOPY_COPIED) != 0);
    }
  }
}

Status WaitZeroCopyCompletions(Channel& channel, ZeroCopyLedger& zc, uint64_t id_end,
                               const std::function<bool()>& stopping) {
  const int fd = channel.fd();
  // Completions come as the peer acknowledges data: they are progress, and
  // none for the bound's limit is a stall like a blocked write.
  const ProgressBound bound = channel.progress_bound();
  auto since = ProgressBound::Clock::now();
  uint64_t seen = zc.done_below();
  while (true) {
    FERRY_RETURN_IF_ERROR(ReapZeroCopyCompletions(channel, zc, stopping));
    if (zc.DoneBelow(id_end)) return Status::Ok();
    if (stopping()) return Status::Cancelled("multifd: sending stopped");
    if (zc.done_below() != seen) {
      seen = zc.done_below();
      bound.Note();
      since = ProgressBound::Clock::now();
    } else if (bound.Expired(since)) {
      return bound.Error("zero-copy completions of " + channel.Describe());
    }
    // The error queue raises POLLERR; a hung-up or failed socket wakes us
    // too, and then has to say why.
    pollfd pfd{fd, 0, 0};
    const int rc = ::poll(&pfd, 1, 100);
    if (rc < 0 && errno != EINTR) return ErrnoStatus("waiting for zero-copy completions on " + channel.Describe());
    if (rc > 0 && (pfd.revents & (POLLHUP | POLLNVAL))) {
      const uint64_t before = zc.done_below();
      FERRY_RETURN_IF_ERROR(ReapZeroCopyCompletions(channel, zc, stopping));
      if (zc.DoneBelow(id_end)) return Status::Ok();
      if (zc.done_below() == before) {
        int soerr = 0;
        socklen_t len = sizeof(soerr);
        if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 && soerr != 0) {
          return ErrnoStatus("write to " + channel.Describe(), soerr);
        }
        if (pfd.revents & POLLNVAL) return Status::Closed(channel.Describe() + ": socket closed");
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    }
  }
}

}  // namespace ferry::multifd
