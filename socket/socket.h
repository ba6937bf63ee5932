// Socket transports: tcp (IPv4 and IPv6), unix and already-open fds, as
// Channels; a Listener for the receiving side.
//
//   FERRY_ASSIGN_OR_RETURN(Uri uri, ParseUri("tcp:127.0.0.1:4444"));
//   FERRY_ASSIGN_OR_RETURN(auto listener, Listener::Listen(uri));
//   FERRY_ASSIGN_OR_RETURN(auto ch, listener->Accept(std::chrono::seconds(30), stop));
//
//   // elsewhere
//   FERRY_ASSIGN_OR_RETURN(auto ch, Connect(uri, std::chrono::seconds(10), stop));
//   FERRY_RETURN_IF_ERROR(ch->WriteAll(iov));
#pragma once

#include <chrono>
#include <memory>
#include <stop_token>
#include <string>

#include "../core/channel.h"
#include "../core/status.h"
#include "../core/unique_fd.h"
#include "../core/uri.h"

namespace ferry {

// Connects to a tcp: or unix: URI, retrying refused/absent endpoints every
// ~50 ms until `timeout` passes (kTimeout) or `stop` is requested
// (kCancelled). For fd: wraps the descriptor (it is not duplicated; the
// channel closes it). tcp channels get TCP_NODELAY, large socket buffers and
// TCP keepalive (tuned from the no-progress limit by SetProgressBound).
Result<std::unique_ptr<Channel>> Connect(const Uri& uri, std::chrono::milliseconds timeout,
                                         std::stop_token stop = {});

// Wraps an open descriptor (socket, pipe or regular file) as a Channel.
// Waits on sockets and pipes are bounded by SetProgressBound() and woken by
// Shutdown(); a pipe is put in O_NONBLOCK mode while the channel lives (its
// flags are restored on destruction).
std::unique_ptr<Channel> MakeFdChannel(UniqueFd fd, std::string description);

class Listener {
 public:
  virtual ~Listener() = default;
  // Binds and listens on a tcp: or unix: URI (an existing unix socket file
  // is replaced). For fd: the descriptor is taken as an already accepted
  // connection, returned by the first Accept.
  static Result<std::unique_ptr<Listener>> Listen(const Uri& uri);

  // Waits for one connection. kTimeout after `timeout`, kCancelled when
  // `stop` is requested or Shutdown() is called.
  virtual Result<std::unique_ptr<Channel>> Accept(std::chrono::milliseconds timeout,
                                                  std::stop_token stop = {}) = 0;
  // Wakes a blocked Accept. Any thread.
  virtual void Shutdown() = 0;
  // The bound address as a URI, with the real port when 0 was asked for.
  virtual std::string address() const = 0;
};

}  // namespace ferry
