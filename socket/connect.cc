// Connect(): tcp and unix connections, retried until a deadline.
#include "socket/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/deadline.h"
#include "core/progress.h"
#include "socket/internal.h"

namespace ferry {
namespace {

using namespace socket_internal;

// ---------------------------------------------------------------------------
// Connect

bool IsRetryableConnectError(int err) {
  switch (err) {
    case ECONNREFUSED:  // nobody listening (yet)
    case ENOENT:        // unix socket file not created yet
    case EAGAIN:        // unix listener's backlog full
    case ECONNRESET:
    case ETIMEDOUT:     // this attempt ran out of time
      return true;
    default:
      return false;
  }
}

struct Attempt {
  UniqueFd fd;       // valid on success
  int err = 0;       // errno of the failure
  bool cancelled = false;
};

// One non-blocking connect, waiting at most until the deadline.
Attempt TryConnect(const SockAddr& addr, bool tcp, const Deadline& deadline, int stop_fd) {
  Attempt a;
  UniqueFd s(::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s.valid()) {
    a.err = errno;
    return a;
  }
  if (tcp) TuneTcp(s.get());
  if (::connect(s.get(), addr.get(), addr.len) == 0) {
    a.fd = std::move(s);
    return a;
  }
  if (errno != EINPROGRESS && errno != EINTR) {
    a.err = errno;
    return a;
  }
  for (;;) {
    pollfd p[2] = {{s.get(), POLLOUT, 0}, {stop_fd, POLLIN, 0}};
    int rc = ::poll(p, 2, deadline.PollMs());
    if (rc < 0) {
      if (errno == EINTR) continue;
      a.err = errno;
      return a;
    }
    if (p[1].revents != 0) {
      a.cancelled = true;
      return a;
    }
    if (p[0].revents != 0) {
      int soerr = 0;
      socklen_t len = sizeof(soerr);
      if (::getsockopt(s.get(), SOL_SOCKET, SO_ERROR, &soerr, &len) != 0) soerr = errno;
      if (soerr == 0) {
        a.fd = std::move(s);
      } else {
        a.err = soerr;
      }
      return a;
    }
    if (deadline.Expired()) {
      a.err = ETIMEDOUT;
      return a;
    }
  }
}

std::string ErrnoText(int err) {
  char buf[128];
  return strerror_r(err, buf, sizeof(buf));
}

}  // namespace

Result<std::unique_ptr<Channel>> Connect(const Uri& uri, std::chrono::milliseconds timeout,
                                         std::stop_token stop) {
  FERRY_RETURN_IF_ERROR(ValidateUri(uri));
  const std::string name = UriName(uri);
  if (uri.kind == Uri::Kind::kFd) return MakeFdChannel(UniqueFd(uri.fd), name);

  const bool tcp = uri.kind == Uri::Kind::kTcp;
  if (tcp && uri.port == 0) {
    return Status::InvalidArgument("cannot connect to " + name + ": port 0 is only meaningful for listening");
  }
  auto cancelled = [&] { return Status::Cancelled("connecting to " + name + " cancelled"); };
  if (stop.stop_requested()) return cancelled();
  StopWatch watch(stop);
  FERRY_RETURN_IF_ERROR(watch.status());
  Deadline deadline(timeout);

  std::vector<SockAddr> addrs;
  if (!tcp) addrs.push_back(UnixAddr(uri.path));
  std::string last_error = "no connection attempt made";

  for (;;) {
    if (stop.stop_requested()) return cancelled();
    bool retry = false;
    Status hard_error;
    if (addrs.empty()) {
      Resolved r = Resolve(uri, /*passive=*/false);
      if (r.status.ok()) {
        addrs = std::move(r.addrs);
      } else if (r.temporary) {
        retry = true;
        last_error = r.status.message();
      } else {
        return r.status;
      }
    }
    for (const SockAddr& addr : addrs) {
      Attempt a = TryConnect(addr, tcp, deadline, watch.fd());
      if (a.cancelled) return cancelled();
      if (a.fd.valid()) {
        FERRY_RETURN_IF_ERROR(SetBlocking(a.fd.get(), name));
        std::string description = name;
        if (tcp) description = PeerName(a.fd.get()).value_or(name);
        return MakeSocketChannel(std::move(a.fd), std::move(description));
      }
      last_error = a.err == ETIMEDOUT ? "connection attempt timed out" : ErrnoText(a.err);
      if (IsRetryableConnectError(a.err)) {
        retry = true;
      } else {
        std::string where = "connect to " + name;
        if (tcp && addrs.size() > 1) where += " (" + FormatSockAddr(addr.storage, addr.len) + ")";
        hard_error = ErrnoStatus(where, a.err);
      }
    }
    if (!retry) return hard_error;
    if (deadline.Expired()) {
      return Status::Timeout("could not connect to " + name + ": " + last_error + " after " +
                             FormatDuration(timeout));
    }
    // Sleep until the next attempt, or until stopped.
    pollfd p{watch.fd(), POLLIN, 0};
    int rc = ::poll(&p, 1, deadline.PollMs(kRetryInterval));
    if (rc > 0) return cancelled();
  }
}

}  // namespace ferry
