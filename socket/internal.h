// Private to socket/ (not installed): what the fd channel, Connect() and the
// listeners share — addresses and name resolution, socket tuning (wake-ups:
// core/stop_fd.h).
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "core/channel.h"
#include "core/status.h"
#include "core/unique_fd.h"
#include "core/stop_fd.h"
#include "core/uri.h"

namespace ferry::socket_internal {

// Pause between connection attempts while the peer is not there yet.
inline constexpr std::chrono::milliseconds kRetryInterval(50);

struct SockAddr {
  sockaddr_storage storage{};
  socklen_t len = 0;
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&storage); }
  int family() const { return storage.ss_family; }
};

// "tcp:1.2.3.4:80", "tcp:[::1]:80", "unix:/path"; IPv4-mapped IPv6
// addresses are shown as plain IPv4.
std::string FormatSockAddr(const sockaddr_storage& ss, socklen_t len);

std::optional<std::string> PeerName(int fd);

std::optional<std::string> LocalName(int fd);

// The URI as the user wrote it, or rebuilt when the Uri was made by hand.
std::string UriName(const Uri& uri);

Status ValidateUri(const Uri& uri);

SockAddr UnixAddr(const std::string& path);

// Name resolution. A temporary failure (EAI_AGAIN) is reported separately so
// Connect can keep trying.
struct Resolved {
  std::vector<SockAddr> addrs;
  Status status;
  bool temporary = false;
};

Resolved Resolve(const Uri& uri, bool passive);

// TCP keepalive and TCP_USER_TIMEOUT, so that the kernel notices a peer
// that vanished (a pulled cable, a crashed host) too. With a no-progress
// limit T: keepalive probes after T/2 idle, every T/4, 4 of them, and
// unacknowledged data given up after 1.5 T — both later than ferry's own
// bound, whose message ("no progress for T") normally comes first. Without a
// limit: probes after 60 s idle, every 10 s, 6 of them, and the kernel's
// default for unacknowledged data. Best effort; only tcp sockets.
void SetKeepalive(int fd, std::chrono::milliseconds limit);

// Options for tcp sockets: before connect()/listen() so the buffer sizes
// take part in window-scale negotiation, and again on accepted sockets.
// Keepalive starts with the defaults of an unbounded channel; a channel's
// SetProgressBound() derives it from the bound.
void TuneTcp(int fd);

Status SetBlocking(int fd, const std::string& what);

// The Channel for a connected socket (FdChannel, fd_channel.cc).
std::unique_ptr<Channel> MakeSocketChannel(UniqueFd fd, std::string description);

}  // namespace ferry::socket_internal
