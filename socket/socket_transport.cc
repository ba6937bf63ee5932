#include "socket/socket_transport.h"

#include <sys/stat.h>

#include "core/uri.h"
#include "socket/socket.h"

namespace ferry {
namespace {

bool IsSocketFd(int fd) {
  struct stat st;
  return fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

class SocketEndpoint final : public Endpoint {
 public:
  explicit SocketEndpoint(Uri uri) : Endpoint(uri.text), uri_(std::move(uri)) {}
  const Uri& uri() const { return uri_; }
  bool can_connect_more() const override { return uri_.kind != Uri::Kind::kFd; }
  bool two_way() const override { return uri_.kind != Uri::Kind::kFd || IsSocketFd(uri_.fd); }

 private:
  Uri uri_;
};

// A listener whose connections go through the plan's channel layers.
class WrappingAcceptor final : public Acceptor {
 public:
  WrappingAcceptor(std::unique_ptr<Listener> listener,
                   std::function<Result<std::unique_ptr<Channel>>(std::unique_ptr<Channel>)> wrap)
      : listener_(std::move(listener)), wrap_(std::move(wrap)) {}
  Result<std::unique_ptr<Channel>> Accept(std::chrono::milliseconds timeout, std::stop_token stop) override {
    FERRY_ASSIGN_OR_RETURN(auto ch, listener_->Accept(timeout, stop));
    return wrap_(std::move(ch));
  }
  void Shutdown() override { listener_->Shutdown(); }
  std::string address() const override { return listener_->address(); }

 private:
  std::unique_ptr<Listener> listener_;
  std::function<Result<std::unique_ptr<Channel>>(std::unique_ptr<Channel>)> wrap_;
};

class SocketTransport final : public Transport {
 public:
  std::string_view name() const override { return "socket"; }
  std::vector<std::string_view> schemes() const override { return {"tcp", "unix", "fd"}; }
  std::string_view uri_syntax() const override { return "tcp:HOST:PORT, tcp:[V6]:PORT, unix:PATH, fd:N"; }

  Result<std::unique_ptr<Endpoint>> ParseEndpoint(std::string_view text, Side side) override {
    (void)side;
    FERRY_ASSIGN_OR_RETURN(Uri uri, ParseUri(text));
    return std::unique_ptr<Endpoint>(std::make_unique<SocketEndpoint>(std::move(uri)));
  }

  Status OpenEndpoint(OpenContext& ctx) override {
    const auto& ep = static_cast<const SocketEndpoint&>(ctx.plan.endpoint());
    const Uri uri = ep.uri();
    Connection& conn = ctx.connection;
    conn.set_two_way(ep.two_way());
    if (ctx.plan.side() == Side::kSource) {
      FERRY_ASSIGN_OR_RETURN(auto ch, Connect(uri, ctx.timeout, ctx.stop));
      FERRY_ASSIGN_OR_RETURN(ch, ctx.wrap(std::move(ch)));
      conn.set_channel(std::move(ch));
      if (ep.can_connect_more()) {
        auto wrap = ctx.wrap;
        ctx.connect_more = [uri, wrap](std::chrono::milliseconds timeout,
                                       std::stop_token stop) -> Result<std::unique_ptr<Channel>> {
          FERRY_ASSIGN_OR_RETURN(auto ch, Connect(uri, timeout, stop));
          return wrap(std::move(ch));
        };
      }
      return Status::Ok();
    }
    // A pipe (fd: on anything but a socket) ends with the stream.
    conn.set_reject_trailing_bytes(!ep.two_way());
    FERRY_ASSIGN_OR_RETURN(auto listener, Listener::Listen(uri));
    const std::string where = listener->address();
    ctx.note("listening on " + where);
    auto acceptor = std::make_shared<WrappingAcceptor>(std::move(listener), ctx.wrap);
    conn.Keep(acceptor);
    ctx.acceptor = acceptor.get();
    return ctx.on_listening(where);
  }
};

}  // namespace

std::unique_ptr<Transport> MakeSocketTransport() { return std::make_unique<SocketTransport>(); }

}  // namespace ferry
