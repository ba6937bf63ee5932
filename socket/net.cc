// socket/ helpers (internal.h): addresses and name resolution, socket
// tuning.
#include "socket/internal.h"

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



namespace ferry::socket_internal {
namespace {

// Socket buffer size we ask for on tcp sockets.
constexpr int kTcpBufferBytes = 4 << 20;

}  // namespace

// ---------------------------------------------------------------------------
// Addresses

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

}  // namespace ferry::socket_internal
