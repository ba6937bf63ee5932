// Listeners: SocketListener (tcp, unix) and FdListener (fd:), and
// Listener::Listen().
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

// ---------------------------------------------------------------------------
// Listeners

namespace {

using namespace socket_internal;

class SocketListener final : public Listener {
 public:
  SocketListener(UniqueFd fd, UniqueFd wake, bool tcp, std::string address)
      : fd_(std::move(fd)), wake_(std::move(wake)), tcp_(tcp), address_(std::move(address)) {}
  ~SocketListener() override { RemoveSocketFile(); }

  // For unix listeners: the file to remove on destruction, identified by
  // device and inode so we never remove a file someone else created there.
  void OwnSocketFile(std::string path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return;
    unix_path_ = std::move(path);
    dev_ = st.st_dev;
    ino_ = st.st_ino;
  }

  Result<std::unique_ptr<Channel>> Accept(std::chrono::milliseconds timeout,
                                          std::stop_token stop) override;
  void Shutdown() override {
    if (shut_.exchange(true, std::memory_order_acq_rel)) return;
    SignalEventFd(wake_.get());
  }
  std::string address() const override { return address_; }

 private:
  void RemoveSocketFile() {
    if (unix_path_.empty()) return;
    struct stat st {};
    if (::lstat(unix_path_.c_str(), &st) == 0 && st.st_dev == dev_ && st.st_ino == ino_) {
      ::unlink(unix_path_.c_str());
    }
  }

  UniqueFd fd_;
  UniqueFd wake_;  // signalled by Shutdown()
  const bool tcp_;
  const std::string address_;
  std::atomic<bool> shut_{false};
  std::string unix_path_;
  dev_t dev_ = 0;
  ino_t ino_ = 0;
};

Result<std::unique_ptr<Channel>> SocketListener::Accept(std::chrono::milliseconds timeout,
                                                        std::stop_token stop) {
  auto shut_down = [&] {
    return Status::Cancelled("accepting on " + address_ + " cancelled: listener shut down");
  };
  auto stopped = [&] {
    return Status::Cancelled("accepting on " + address_ + " cancelled: stop requested");
  };
  if (shut_.load(std::memory_order_acquire)) return shut_down();
  if (stop.stop_requested()) return stopped();
  StopWatch watch(stop);
  FERRY_RETURN_IF_ERROR(watch.status());
  Deadline deadline(timeout);

  for (;;) {
    pollfd p[3] = {{fd_.get(), POLLIN, 0}, {wake_.get(), POLLIN, 0}, {watch.fd(), POLLIN, 0}};
    int rc = ::poll(p, 3, deadline.PollMs());
    if (rc < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("waiting for a connection on " + address_);
    }
    if (p[1].revents != 0 || shut_.load(std::memory_order_acquire)) return shut_down();
    if (p[2].revents != 0 || stop.stop_requested()) return stopped();
    if (p[0].revents != 0) {
      sockaddr_storage peer{};
      socklen_t len = sizeof(peer);
      UniqueFd conn(::accept4(fd_.get(), reinterpret_cast<sockaddr*>(&peer), &len, SOCK_CLOEXEC));
      if (conn.valid()) {
        std::string description;
        if (tcp_) {
          TuneTcp(conn.get());
          description = FormatSockAddr(peer, len);
        } else {
          // unix peers are normally unnamed: name the endpoint and the process.
          description = address_;
          ucred cred{};
          socklen_t clen = sizeof(cred);
          if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0 && cred.pid > 0) {
            description += " (peer pid " + std::to_string(cred.pid) + ")";
          }
        }
        return MakeSocketChannel(std::move(conn), std::move(description));
      }
      int err = errno;
      // The connection went away between poll() and accept(), or a signal:
      // keep waiting.
      if (err != EAGAIN && err != EWOULDBLOCK && err != EINTR && err != ECONNABORTED && err != EPROTO) {
        return ErrnoStatus("accept on " + address_, err);
      }
    }
    if (deadline.Expired()) {
      return Status::Timeout("no connection on " + address_ + " within " + FormatDuration(timeout));
    }
  }
}

// fd: the descriptor is an already accepted connection, handed out once.
class FdListener final : public Listener {
 public:
  FdListener(UniqueFd fd, std::string address) : fd_(std::move(fd)), address_(std::move(address)) {}

  Result<std::unique_ptr<Channel>> Accept(std::chrono::milliseconds, std::stop_token stop) override {
    if (shut_.load(std::memory_order_acquire)) {
      return Status::Cancelled("accepting on " + address_ + " cancelled: listener shut down");
    }
    if (stop.stop_requested()) {
      return Status::Cancelled("accepting on " + address_ + " cancelled: stop requested");
    }
    if (!fd_.valid()) {
      return Status::InvalidArgument(address_ + " carries a single connection and it was already accepted");
    }
    return MakeFdChannel(std::move(fd_), address_);
  }
  void Shutdown() override { shut_.store(true, std::memory_order_release); }
  std::string address() const override { return address_; }

 private:
  UniqueFd fd_;
  const std::string address_;
  std::atomic<bool> shut_{false};
};

Result<std::unique_ptr<Listener>> ListenTcp(const Uri& uri) {
  const std::string name = UriName(uri);
  Resolved r = Resolve(uri, /*passive=*/true);
  if (!r.status.ok()) return r.status;
  Status last;
  for (const SockAddr& addr : r.addrs) {
    std::string where = name;
    if (r.addrs.size() > 1) where += " (" + FormatSockAddr(addr.storage, addr.len) + ")";
    UniqueFd s(::socket(addr.family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!s.valid()) {
      last = ErrnoStatus("socket for " + where);
      continue;
    }
    int one = 1;
    if (::setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
      last = ErrnoStatus("SO_REUSEADDR on " + where);
      continue;
    }
    TuneTcp(s.get());  // inherited by accepted sockets
    if (::bind(s.get(), addr.get(), addr.len) != 0) {
      last = ErrnoStatus("bind " + where);
      continue;
    }
    if (::listen(s.get(), SOMAXCONN) != 0) {
      last = ErrnoStatus("listen on " + where);
      continue;
    }
    std::optional<std::string> local = LocalName(s.get());
    if (!local) return ErrnoStatus("getsockname on " + where);
    FERRY_ASSIGN_OR_RETURN(UniqueFd wake, MakeEventFd(name));
    return std::unique_ptr<Listener>(
        std::make_unique<SocketListener>(std::move(s), std::move(wake), true, *local));
  }
  return last;
}

Result<std::unique_ptr<Listener>> ListenUnix(const Uri& uri) {
  const std::string name = UriName(uri);
  // Replace a leftover socket file from an earlier run, but never anything
  // that is not a socket.
  struct stat st {};
  if (::lstat(uri.path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Status::InvalidArgument("cannot listen on " + name + ": " + uri.path +
                                     " exists and is not a socket");
    }
    if (::unlink(uri.path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus("removing stale socket " + uri.path);
    }
  }
  FERRY_ASSIGN_OR_RETURN(UniqueFd wake, MakeEventFd(name));
  UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!s.valid()) return ErrnoStatus("socket for " + name);
  SockAddr addr = UnixAddr(uri.path);
  if (::bind(s.get(), addr.get(), addr.len) != 0) return ErrnoStatus("bind " + name);
  if (::listen(s.get(), SOMAXCONN) != 0) {
    Status st = ErrnoStatus("listen on " + name);
    ::unlink(uri.path.c_str());  // we just created it
    return st;
  }
  auto listener = std::make_unique<SocketListener>(std::move(s), std::move(wake), false, "unix:" + uri.path);
  listener->OwnSocketFile(uri.path);  // the destructor removes it
  return std::unique_ptr<Listener>(std::move(listener));
}

}  // namespace

Result<std::unique_ptr<Listener>> Listener::Listen(const Uri& uri) {
  FERRY_RETURN_IF_ERROR(ValidateUri(uri));
  switch (uri.kind) {
    case Uri::Kind::kTcp: return ListenTcp(uri);
    case Uri::Kind::kUnix: return ListenUnix(uri);
    case Uri::Kind::kFd:
      return std::unique_ptr<Listener>(std::make_unique<FdListener>(UniqueFd(uri.fd), UriName(uri)));
    case Uri::Kind::kFile:
      break;  // rejected by ValidateUri
  }
  return Status::InvalidArgument("bad URI kind");
}

}  // namespace ferry
