// Socket transports. See socket.h for the interface.
//
// Layout of this file:
//   - small helpers: deadlines, eventfd wake-ups, address formatting,
//     socket tuning, name resolution
//   - FdChannel: the one Channel implementation for every descriptor kind
//   - Connect()
//   - SocketListener (tcp, unix) and FdListener (fd:)
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

namespace ferry {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

#ifdef IOV_MAX
constexpr size_t kIovBatch = IOV_MAX;
#else
constexpr size_t kIovBatch = 1024;
#endif

// Socket buffer size we ask for on tcp sockets.
constexpr int kTcpBufferBytes = 4 << 20;
// Pause between connection attempts while the peer is not there yet.
constexpr milliseconds kRetryInterval(50);

// ---------------------------------------------------------------------------
// Time

// "2 s", "0.3 s", "1.25 s": for messages.
std::string FormatSeconds(milliseconds d) {
  if (d.count() % 1000 == 0) return std::to_string(d.count() / 1000) + " s";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3g s", static_cast<double>(d.count()) / 1000.0);
  return buf;
}

// A point in time to give up at; very long timeouts mean "never".
class Deadline {
 public:
  explicit Deadline(milliseconds timeout) {
    if (timeout.count() < 0) timeout = milliseconds(0);
    // Anything beyond ~100 years is treated as infinite, which also keeps
    // now() + timeout from overflowing for milliseconds::max().
    if (timeout > std::chrono::hours(24 * 365 * 100)) {
      infinite_ = true;
    } else {
      at_ = Clock::now() + timeout;
    }
  }
  bool Expired() const { return !infinite_ && Clock::now() >= at_; }
  // Milliseconds to pass to poll(): rounded up so we never spin on a 0 ms
  // poll just before the deadline, capped so the int cannot overflow (the
  // callers loop and re-check).
  int PollMs() const { return PollMs(milliseconds::max()); }
  int PollMs(milliseconds cap) const {
    constexpr milliseconds kMaxChunk(std::chrono::hours(1));
    cap = std::min(cap, kMaxChunk);
    if (infinite_) return static_cast<int>(cap.count());
    auto left = at_ - Clock::now();
    if (left <= Clock::duration::zero()) return 0;
    auto ms = std::chrono::ceil<milliseconds>(left);
    return static_cast<int>(std::min(ms, cap).count());
  }

 private:
  bool infinite_ = false;
  Clock::time_point at_{};
};

// ---------------------------------------------------------------------------
// Wake-ups through an eventfd

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

// ---------------------------------------------------------------------------
// Addresses

struct SockAddr {
  sockaddr_storage storage{};
  socklen_t len = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  int family() const { return storage.ss_family; }
};

std::string BracketIfV6(const std::string& host) {
  if (host.find(':') != std::string::npos) return "[" + host + "]";
  return host;
}

// "tcp:1.2.3.4:80", "tcp:[::1]:80", "unix:/path"; IPv4-mapped IPv6
// addresses are shown as plain IPv4.
std::string FormatSockAddr(const sockaddr_storage& ss, socklen_t len) {
  char text[INET6_ADDRSTRLEN] = {};
  switch (ss.ss_family) {
    case AF_INET: {
      const auto& in = reinterpret_cast<const sockaddr_in&>(ss);
      ::inet_ntop(AF_INET, &in.sin_addr, text, sizeof(text));
      return "tcp:" + std::string(text) + ":" + std::to_string(ntohs(in.sin_port));
    }
    case AF_INET6: {
      const auto& in6 = reinterpret_cast<const sockaddr_in6&>(ss);
      std::string host;
      if (IN6_IS_ADDR_V4MAPPED(&in6.sin6_addr)) {
        ::inet_ntop(AF_INET, &in6.sin6_addr.s6_addr[12], text, sizeof(text));
        host = text;
      } else {
        ::inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof(text));
        host = "[" + std::string(text) + "]";
      }
      return "tcp:" + host + ":" + std::to_string(ntohs(in6.sin6_port));
    }
    case AF_UNIX: {
      const auto& un = reinterpret_cast<const sockaddr_un&>(ss);
      size_t max = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
      max = std::min(max, sizeof(un.sun_path));
      size_t n = strnlen(un.sun_path, max);
      if (n == 0) return "unix:(unnamed)";
      return "unix:" + std::string(un.sun_path, n);
    }
    default:
      return "socket family " + std::to_string(ss.ss_family);
  }
}

std::optional<std::string> PeerName(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return std::nullopt;
  return FormatSockAddr(ss, len);
}

std::optional<std::string> LocalName(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return std::nullopt;
  return FormatSockAddr(ss, len);
}

// The URI as the user wrote it, or rebuilt when the Uri was made by hand.
std::string UriName(const Uri& uri) {
  if (!uri.text.empty()) return uri.text;
  switch (uri.kind) {
    case Uri::Kind::kTcp: return "tcp:" + BracketIfV6(uri.host) + ":" + std::to_string(uri.port);
    case Uri::Kind::kUnix: return "unix:" + uri.path;
    case Uri::Kind::kFd: return "fd:" + std::to_string(uri.fd);
    case Uri::Kind::kFile: return "file:" + uri.path;
    case Uri::Kind::kRdma: return "rdma:" + BracketIfV6(uri.host) + ":" + std::to_string(uri.port);
  }
  return "?";
}

Status ValidateUri(const Uri& uri) {
  switch (uri.kind) {
    case Uri::Kind::kTcp:
      if (uri.host.empty()) return Status::InvalidArgument("bad URI '" + UriName(uri) + "': empty host");
      return Status::Ok();
    case Uri::Kind::kUnix:
      if (uri.path.empty()) return Status::InvalidArgument("bad URI '" + UriName(uri) + "': empty path");
      if (uri.path.size() >= sizeof(sockaddr_un{}.sun_path)) {
        return Status::InvalidArgument("bad URI '" + UriName(uri) + "': unix socket path longer than " +
                                       std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes");
      }
      return Status::Ok();
    case Uri::Kind::kFd:
      if (uri.fd < 0) return Status::InvalidArgument("bad URI '" + UriName(uri) + "': negative fd");
      if (::fcntl(uri.fd, F_GETFD) < 0) return ErrnoStatus(UriName(uri));
      return Status::Ok();
    case Uri::Kind::kFile:
      return Status::InvalidArgument("'" + UriName(uri) + "' is a file, not a socket: use ferry save/load");
    case Uri::Kind::kRdma:
      return Status::InvalidArgument("'" + UriName(uri) + "' is an RDMA address, not a socket (rdma/)");
  }
  return Status::InvalidArgument("bad URI kind");
}

SockAddr UnixAddr(const std::string& path) {
  SockAddr a;
  auto& un = reinterpret_cast<sockaddr_un&>(a.storage);
  un.sun_family = AF_UNIX;
  std::memcpy(un.sun_path, path.data(), path.size());  // length checked by ValidateUri
  a.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + 1);
  return a;
}

// Name resolution. A temporary failure (EAI_AGAIN) is reported separately so
// Connect can keep trying.
struct Resolved {
  std::vector<SockAddr> addrs;
  Status status;
  bool temporary = false;
};

Resolved Resolve(const Uri& uri, bool passive) {
  Resolved out;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_protocol = IPPROTO_TCP;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* list = nullptr;
  std::string port = std::to_string(uri.port);
  int rc = ::getaddrinfo(uri.host.c_str(), port.c_str(), &hints, &list);
  if (rc != 0) {
    std::string msg = "cannot resolve '" + uri.host + "' in " + UriName(uri);
    switch (rc) {
      case EAI_SYSTEM:
        out.status = ErrnoStatus(msg);
        break;
      case EAI_AGAIN:
        out.temporary = true;
        out.status = Status::Io(msg + ": " + ::gai_strerror(rc), EAGAIN);
        break;
      case EAI_NONAME:
      case EAI_SERVICE:
      case EAI_FAMILY:
#ifdef EAI_ADDRFAMILY
      case EAI_ADDRFAMILY:
#endif
#ifdef EAI_NODATA
      case EAI_NODATA:
#endif
        out.status = Status::InvalidArgument(msg + ": " + ::gai_strerror(rc));
        break;
      default:
        out.status = Status::Io(msg + ": " + ::gai_strerror(rc), 0);
        break;
    }
    return out;
  }
  for (addrinfo* ai = list; ai != nullptr; ai = ai->ai_next) {
    if (ai->ai_addrlen > sizeof(sockaddr_storage)) continue;
    SockAddr a;
    std::memcpy(&a.storage, ai->ai_addr, ai->ai_addrlen);
    a.len = ai->ai_addrlen;
    out.addrs.push_back(a);
  }
  ::freeaddrinfo(list);
  if (out.addrs.empty()) {
    out.status = Status::InvalidArgument("'" + uri.host + "' in " + UriName(uri) + " has no usable address");
  }
  return out;
}

// ---------------------------------------------------------------------------
// Socket options

// Reads a /proc/sys value; -1 when unavailable.
long ReadSysctl(const char* path) {
  std::ifstream in(path);
  long v = -1;
  if (!(in >> v)) return -1;
  return v;
}

// Setting SO_SNDBUF/SO_RCVBUF switches off the kernel's buffer autotuning,
// and the kernel silently caps the request at net.core.{w,r}mem_max. Asking
// for more than the cap would therefore *shrink* the buffer compared to
// autotuning, so we only ask when the cap lets us have what we want.
bool CanRaiseBuffer(const char* sysctl) {
  long max = ReadSysctl(sysctl);
  return max < 0 || max >= kTcpBufferBytes;
}

void RaiseBuffer(int fd, int opt) {
  static const bool can_snd = CanRaiseBuffer("/proc/sys/net/core/wmem_max");
  static const bool can_rcv = CanRaiseBuffer("/proc/sys/net/core/rmem_max");
  if (!(opt == SO_SNDBUF ? can_snd : can_rcv)) return;
  int cur = 0;
  socklen_t len = sizeof(cur);
  // The kernel reports double the requested value (bookkeeping overhead).
  if (::getsockopt(fd, SOL_SOCKET, opt, &cur, &len) == 0 && cur >= 2 * kTcpBufferBytes) return;
  int want = kTcpBufferBytes;
  ::setsockopt(fd, SOL_SOCKET, opt, &want, sizeof(want));  // best effort
}

// TCP keepalive and TCP_USER_TIMEOUT, so that the kernel notices a peer
// that vanished (a pulled cable, a crashed host) too. With a no-progress
// limit T: keepalive probes after T/2 idle, every T/4, 4 of them, and
// unacknowledged data given up after 1.5 T — both later than ferry's own
// bound, whose message ("no progress for T") normally comes first. Without a
// limit: probes after 60 s idle, every 10 s, 6 of them, and the kernel's
// default for unacknowledged data. Best effort; only tcp sockets.
void SetKeepalive(int fd, std::chrono::milliseconds limit) {
  int protocol = 0;
  socklen_t len = sizeof(protocol);
  if (::getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &protocol, &len) != 0 || protocol != IPPROTO_TCP) return;
  const int64_t t = limit.count() > 0 ? std::max<int64_t>(1, (limit.count() + 999) / 1000) : 0;
  const int one = 1;
  const int idle = t ? static_cast<int>(std::clamp<int64_t>(t / 2, 1, 32767)) : 60;
  const int interval = t ? static_cast<int>(std::clamp<int64_t>(t / 4, 1, 32767)) : 10;
  const int count = t ? 4 : 6;
  const unsigned user_timeout = t ? static_cast<unsigned>(std::min<int64_t>(t * 1500, INT_MAX)) : 0;
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
  ::setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout));
}

// Options for tcp sockets: before connect()/listen() so the buffer sizes
// take part in window-scale negotiation, and again on accepted sockets.
// Keepalive starts with the defaults of an unbounded channel; a channel's
// SetProgressBound() derives it from the bound.
void TuneTcp(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // best effort
  SetKeepalive(fd, std::chrono::milliseconds(0));
  RaiseBuffer(fd, SO_SNDBUF);
  RaiseBuffer(fd, SO_RCVBUF);
}

Status SetBlocking(int fd, const std::string& what) {
  int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) return ErrnoStatus("fcntl on " + what);
  if ((flags & O_NONBLOCK) && ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
    return ErrnoStatus("fcntl on " + what);
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// SIGPIPE for pipes
//
// MSG_NOSIGNAL only exists for sockets. A write to a pipe whose reader went
// away raises SIGPIPE, which by default kills the process. While writing to
// a pipe we block SIGPIPE in this thread and swallow one that our own write
// raised, so the caller just sees EPIPE.
class ScopedSigpipeBlock {
 public:
  explicit ScopedSigpipeBlock(bool active) : active_(active) {
    if (!active_) return;
    sigemptyset(&pipe_set_);
    sigaddset(&pipe_set_, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    ::sigpending(&pending);
    already_pending_ = sigismember(&pending, SIGPIPE) == 1;
    ::pthread_sigmask(SIG_BLOCK, &pipe_set_, &old_mask_);
  }
  ~ScopedSigpipeBlock() {
    if (!active_) return;
    if (saw_epipe_ && !already_pending_) {
      timespec zero{};
      while (::sigtimedwait(&pipe_set_, nullptr, &zero) < 0 && errno == EINTR) {
      }
    }
    ::pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
  }
  ScopedSigpipeBlock(const ScopedSigpipeBlock&) = delete;
  ScopedSigpipeBlock& operator=(const ScopedSigpipeBlock&) = delete;
  void NoteEpipe() { saw_epipe_ = true; }

 private:
  bool active_;
  bool already_pending_ = false;
  bool saw_epipe_ = false;
  sigset_t pipe_set_{};
  sigset_t old_mask_{};
};

// ---------------------------------------------------------------------------
// FdChannel
//
// Every blocking wait is a poll() bounded by the channel's ProgressBound and
// woken by Shutdown(): sockets are driven with MSG_DONTWAIT (their descriptor
// flags are left alone, the descriptor may be shared), pipes are switched to
// O_NONBLOCK for the channel's lifetime (pipes have no per-call flag) and an
// eventfd wakes their waits, since shutdown() does not work on them. Other
// descriptors (regular files, devices) are used as they come.

class FdChannel final : public Channel {
 public:
  enum class Kind { kSocket, kPipe, kOther };

  FdChannel(UniqueFd fd, std::string description)
      : fd_(std::move(fd)), description_(std::move(description)) {
    struct stat st {};
    if (::fstat(fd_.get(), &st) == 0) {
      if (S_ISSOCK(st.st_mode)) {
        kind_ = Kind::kSocket;
      } else if (S_ISFIFO(st.st_mode)) {
        kind_ = Kind::kPipe;
      }
    }
    if (kind_ == Kind::kPipe) {
      const int flags = ::fcntl(fd_.get(), F_GETFL);
      if (flags >= 0 && !(flags & O_NONBLOCK) && ::fcntl(fd_.get(), F_SETFL, flags | O_NONBLOCK) == 0) {
        restore_flags_ = flags;
      }
      // Without an eventfd (out of descriptors) a Shutdown() is still seen
      // within kPipeWakeStep.
      Result<UniqueFd> wake = MakeEventFd(description_);
      if (wake.ok()) wake_ = std::move(wake).value();
    }
  }
  ~FdChannel() override {
    // The description may be shared with other processes (fd:0, fd:1).
    if (restore_flags_ >= 0) ::fcntl(fd_.get(), F_SETFL, restore_flags_);
  }

  Status WriteAll(std::span<iovec> iov) override;
  Result<size_t> ReadSome(void* buf, size_t len) override;
  void Shutdown() override;
  std::string Describe() const override { return description_; }
  int fd() const override { return fd_.get(); }
  void SetProgressBound(const ProgressBound& bound) override;
  ProgressBound progress_bound() const override { return bound_; }

 private:
  // Poll steps for pipes that have no eventfd to wake them.
  static constexpr int kPipeWakeStep = 100;

  Status ShutDownStatus() const { return Status::Cancelled(description_ + ": channel shut down"); }
  bool IsShut() const { return shut_.load(std::memory_order_acquire); }
  // Waits until the descriptor is ready for `events`, the channel is shut
  // down, or no byte moved for the bound's limit since `since`.
  Status WaitReady(short events, const char* what, ProgressBound::Clock::time_point since);

  UniqueFd fd_;
  const std::string description_;
  Kind kind_ = Kind::kOther;
  int restore_flags_ = -1;  // file status flags to put back (we set O_NONBLOCK)
  UniqueFd wake_;           // pipes: signalled by Shutdown()
  ProgressBound bound_;     // set before I/O starts
  std::atomic<bool> shut_{false};
};

void FdChannel::SetProgressBound(const ProgressBound& bound) {
  bound_ = bound;
  if (kind_ == Kind::kSocket) SetKeepalive(fd_.get(), bound.limit);
}

Status FdChannel::WaitReady(short events, const char* what, ProgressBound::Clock::time_point since) {
  const std::string where = std::string(what) + " " + description_;
  for (;;) {
    if (IsShut()) return ShutDownStatus();
    if (kind_ != Kind::kSocket && !wake_.valid()) {
      // Nothing can wake this poll: look at shut_ now and then.
      pollfd p{fd_.get(), events, 0};
      const int rc = ::poll(&p, 1, bound_.PollMs(since, kPipeWakeStep));
      if (rc < 0 && errno != EINTR) return ErrnoStatus(where);
      if (rc > 0) return Status::Ok();
      if (bound_.Expired(since)) return bound_.Error(where);
      continue;
    }
    Result<WaitResult> r = WaitForFd(fd_.get(), events, wake_.get(), bound_, since);
    if (!r.ok()) return r.status().WithContext(where);
    switch (*r) {
      case WaitResult::kReady: return Status::Ok();
      case WaitResult::kWoken: return ShutDownStatus();
      case WaitResult::kExpired: return bound_.Error(where);
    }
  }
}

Status FdChannel::WriteAll(std::span<iovec> iov) {
  ScopedSigpipeBlock sigpipe(kind_ == Kind::kPipe);
  size_t i = 0;
  ProgressBound::Clock::time_point since{};  // set when a wait begins
  bool waited = false;
  for (;;) {
    while (i < iov.size() && iov[i].iov_len == 0) ++i;
    if (i == iov.size()) return Status::Ok();
    if (IsShut()) return ShutDownStatus();

    size_t count = std::min(iov.size() - i, kIovBatch);
    ssize_t n;
    if (kind_ == Kind::kSocket) {
      msghdr msg{};
      msg.msg_iov = &iov[i];
      msg.msg_iovlen = count;
      n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    } else {
      n = ::writev(fd_.get(), &iov[i], static_cast<int>(count));
    }
    if (n < 0) {
      int err = errno;
      if (err == EINTR) continue;
      if (err == EAGAIN || err == EWOULDBLOCK) {
        if (!waited) {
          since = ProgressBound::Clock::now();
          waited = true;
        }
        FERRY_RETURN_IF_ERROR(WaitReady(POLLOUT, "write to", since));
        continue;
      }
      if (err == EPIPE) sigpipe.NoteEpipe();
      if (IsShut()) return ShutDownStatus();
      if (err == ETIMEDOUT && bound_.bounded()) {
        // TCP_USER_TIMEOUT or keepalive: the kernel gave up on the peer.
        return ErrnoStatus("write to " + description_ + ": no progress for " + FormatDuration(bound_.limit) +
                               " or more, the kernel gave up on the connection",
                           err);
      }
      return ErrnoStatus("write to " + description_, err);
    }
    if (n == 0) {
      // Only possible for odd descriptors (a full device); never loop on it.
      return Status::Io("write to " + description_ + " made no progress", EIO);
    }
    bound_.Note();
    waited = false;  // progress: a later wait starts afresh
    i = AdvanceIovecs(iov, i, static_cast<size_t>(n));
  }
}

Result<size_t> FdChannel::ReadSome(void* buf, size_t len) {
  if (len == 0) return size_t{0};
  ProgressBound::Clock::time_point since{};
  bool waited = false;
  for (;;) {
    if (IsShut()) return ShutDownStatus();
    ssize_t n;
    if (kind_ == Kind::kSocket) {
      n = ::recv(fd_.get(), buf, len, MSG_DONTWAIT);
    } else {
      n = ::read(fd_.get(), buf, len);
    }
    if (n > 0) {
      bound_.Note();
      return static_cast<size_t>(n);
    }
    if (n == 0) {
      // A socket that was shut down under us reads as end of stream.
      if (IsShut()) return ShutDownStatus();
      return size_t{0};
    }
    int err = errno;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK) {
      if (!waited) {
        since = ProgressBound::Clock::now();
        waited = true;
      }
      FERRY_RETURN_IF_ERROR(WaitReady(POLLIN, "read from", since));
      continue;
    }
    if (IsShut()) return ShutDownStatus();
    if (err == ETIMEDOUT && bound_.bounded()) {
      return ErrnoStatus("read from " + description_ + ": no progress for " + FormatDuration(bound_.limit) +
                             " or more, the kernel gave up on the connection",
                         err);
    }
    return ErrnoStatus("read from " + description_, err);
  }
}

void FdChannel::Shutdown() {
  if (shut_.exchange(true, std::memory_order_acq_rel)) return;
  // The descriptor stays open until destruction, so this cannot race with a
  // reuse of the number. Blocked recv() returns 0, blocked send() EPIPE, and
  // poll() wakes. Pipes are woken through their eventfd.
  if (kind_ == Kind::kSocket) ::shutdown(fd_.get(), SHUT_RDWR);
  if (wake_.valid()) SignalEventFd(wake_.get());
}

std::unique_ptr<Channel> MakeSocketChannel(UniqueFd fd, std::string description) {
  return std::make_unique<FdChannel>(std::move(fd), std::move(description));
}

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
                             FormatSeconds(timeout));
    }
    // Sleep until the next attempt, or until stopped.
    pollfd p{watch.fd(), POLLIN, 0};
    int rc = ::poll(&p, 1, deadline.PollMs(kRetryInterval));
    if (rc > 0) return cancelled();
  }
}

std::unique_ptr<Channel> MakeFdChannel(UniqueFd fd, std::string description) {
  return MakeSocketChannel(std::move(fd), std::move(description));
}

// ---------------------------------------------------------------------------
// Listeners

namespace {

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
      return Status::Timeout("no connection on " + address_ + " within " + FormatSeconds(timeout));
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
    case Uri::Kind::kRdma:
      break;  // rejected by ValidateUri
  }
  return Status::InvalidArgument("bad URI kind");
}

}  // namespace ferry
