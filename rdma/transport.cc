#include "rdma/transport.h"

#include <optional>
#include <string>
#include <stop_token>

#include "rdma/connection.h"
#include "rdma/destination.h"
#include "rdma/settings.h"
#include "rdma/source.h"

namespace ferry::rdma {
namespace {

constexpr std::string_view kSyntax = "rdma:HOST:PORT, rdma:[V6]:PORT";

class RdmaEndpoint final : public Endpoint {
 public:
  explicit RdmaEndpoint(Uri uri) : Endpoint(uri.text), uri_(std::move(uri)) {}
  const Uri& uri() const { return uri_; }
  // QEMU's RDMA return path is not supported: one direction, one connection.

 private:
  Uri uri_;
};

bool IsRdma(const Endpoint& ep) { return dynamic_cast<const RdmaEndpoint*>(&ep) != nullptr; }

class RdmaTransport final : public Transport {
 public:
  std::string_view name() const override { return "rdma"; }
  std::vector<std::string_view> schemes() const override { return {"rdma"}; }
  std::string_view uri_syntax() const override { return "rdma:HOST:PORT"; }
  Result<std::unique_ptr<Endpoint>> ParseEndpoint(std::string_view uri, Side side) override {
    (void)side;
    FERRY_ASSIGN_OR_RETURN(Uri u, ParseRdmaUri(uri));
    return std::unique_ptr<Endpoint>(std::make_unique<RdmaEndpoint>(std::move(u)));
  }

  std::vector<std::string_view> capabilities() const override { return Settings::CapabilityNames(); }
  Status SetCapability(std::string_view name, bool on) override {
    if (name != "rdma-pin-all") return Transport::SetCapability(name, on);
    settings_.pin_all = on;
    return Status::Ok();
  }
  std::optional<bool> capability(std::string_view name) const override {
    if (name == "rdma-pin-all") return settings_.pin_all;
    return std::nullopt;
  }

  // Runs before every transport's CheckEndpoint: this message wins over
  // multifd's "needs a tcp: or unix: URI".
  Status Validate(const PlanView& plan) const override {
    if (IsRdma(plan.endpoint()) && plan.capability("multifd")) {
      return Status::Unsupported("multifd over rdma: is not implemented yet");
    }
    // A channel layer (tls/) wraps socket connections; rdma's control
    // messages and WRITEs have none, so its settings would be ignored.
    if (IsRdma(plan.endpoint())) {
      const std::optional<std::string> creds = plan.parameter("tls-creds");
      if (creds && !creds->empty()) return Status::Unsupported("tls-creds over rdma: is not supported");
    }
    return Status::Ok();
  }
  Status CheckEndpoint(const PlanView& plan) const override {
    if (settings_.pin_all && !IsRdma(plan.endpoint())) {
      return Status::InvalidArgument("capability rdma-pin-all needs an rdma: URI");
    }
    return Status::Ok();
  }

  Status OpenEndpoint(OpenContext& ctx) override {
    const Uri& uri = static_cast<const RdmaEndpoint&>(ctx.plan.endpoint()).uri();
    Connection& conn = ctx.connection;
    conn.set_two_way(false);  // no return path over rdma
    std::shared_ptr<RdmaConnection> rc;
    if (ctx.plan.side() == Side::kSource) {
      FERRY_ASSIGN_OR_RETURN(auto c, RdmaConnection::Connect(uri, settings_.pin_all, ctx.timeout, ctx.stop));
      rc = std::move(c);
      conn.Keep(rc);  // outlives the channel and the sinks
      conn.set_sink_factory(std::make_unique<RdmaSinkFactory>(*rc));
      conn.set_channel(std::make_unique<RdmaStreamChannel>(*rc, RdmaStreamChannel::Side::kSource));
      return Status::Ok();
    }
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<RdmaListener> listener, RdmaListener::Listen(uri));
    ctx.note("listening on " + listener->address());
    FERRY_RETURN_IF_ERROR(ctx.on_listening(listener->address()));
    Result<std::unique_ptr<RdmaConnection>> accepted = [&] {
      std::stop_callback on_stop(ctx.stop, [&] { listener->Shutdown(); });
      return listener->Accept(ctx.remaining());
    }();
    if (!accepted.ok()) return accepted.status();
    rc = std::move(*accepted);
    conn.Keep(rc);
    ctx.note("rdma: connected to " + rc->peer() + (rc->pin_all() ? " (pin-all)" : " (dynamic registration)"));
    auto receiver = std::make_unique<RdmaPageReceiver>(*rc);
    receiver->set_note(ctx.note);
    conn.set_receiver(std::move(receiver));
    conn.set_channel(std::make_unique<RdmaStreamChannel>(*rc));
    return Status::Ok();
  }

 private:
  Settings settings_;
};

}  // namespace

Result<Uri> ParseRdmaUri(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument("bad URI '" + std::string(text) + "': " + std::string(why) + " (expected " +
                                   std::string(kSyntax) + ")");
  };
  if (!text.starts_with("rdma:")) return bad("not an rdma: URI");
  Result<Uri> t = ParseUri("tcp:" + std::string(text.substr(5)));
  if (!t.ok()) {
    // The tcp: parser's reason, without its tcp: wording around it.
    const std::string& m = t.status().message();
    const size_t from = m.find("': ");
    const size_t to = m.rfind(" (expected");
    if (from == std::string::npos || to == std::string::npos || to < from + 3) return bad("bad HOST:PORT");
    return bad(m.substr(from + 3, to - from - 3));
  }
  Uri u = std::move(t).value();
  u.text = std::string(text);
  return u;
}

std::unique_ptr<Transport> MakeTransport() { return std::make_unique<RdmaTransport>(); }

}  // namespace ferry::rdma
