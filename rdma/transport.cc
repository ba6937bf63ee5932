#include "rdma/transport.h"

#include <optional>
#include <string>
#include <stop_token>

#include "rdma/connection.h"
#include "rdma/destination.h"
#include "rdma/multifd.h"
#include "rdma/settings.h"
#include "rdma/source.h"

namespace ferry::rdma {
namespace {

constexpr std::string_view kSyntax = "rdma:HOST:PORT, rdma:[V6]:PORT";

class RdmaEndpoint final : public Endpoint {
 public:
  explicit RdmaEndpoint(Uri uri) : Endpoint(uri.text), uri_(std::move(uri)) {}
  const Uri& uri() const { return uri_; }
  // QEMU's RDMA return path is not supported: one direction. multifd is
  // ferry's own: N more QPs (rdma/multifd.h).
  bool own_multifd_channels() const override { return true; }

 private:
  Uri uri_;
};

bool IsRdma(const Endpoint& ep) { return dynamic_cast<const RdmaEndpoint*>(&ep) != nullptr; }

// The main connection and the multifd channels (which share its PD): the
// channels go first.
struct Session {
  std::unique_ptr<RdmaConnection> main;
  std::vector<std::unique_ptr<RdmaConnection>> channels;
  ~Session() {
    channels.clear();
    main.reset();
  }
  std::vector<RdmaConnection*> channel_ptrs() const {
    std::vector<RdmaConnection*> v;
    for (const auto& c : channels) v.push_back(c.get());
    return v;
  }
};

uint32_t ChannelCount(const PlanView& plan) {
  if (!plan.capability("multifd")) return 0;
  const std::optional<std::string> n = plan.parameter("multifd-channels");
  return n ? static_cast<uint32_t>(std::stoul(*n)) : 2;
}

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
      // ferry <-> ferry: N QPs written by the channel threads, which find
      // zero pages themselves (docs/rdma-multifd.md).
      const std::optional<std::string> comp = plan.parameter("multifd-compression");
      if (comp && *comp != "none") {
        return Status::Unsupported("multifd-compression=" + *comp +
                                   " over rdma: is not supported (pages travel as RDMA WRITEs)");
      }
      if (plan.capability("zero-copy-send")) {
        return Status::Unsupported("zero-copy-send over rdma: is not supported (RDMA WRITEs are zero-copy already)");
      }
      const std::optional<std::string> zero = plan.parameter("zero-page-detection");
      if (zero && *zero == "legacy") {
        return Status::Unsupported(
            "zero-page-detection=legacy with multifd over rdma: is not supported (the channel threads find zero "
            "pages: use multifd or none)");
      }
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
    const uint32_t n = ChannelCount(ctx.plan);
    auto session = std::make_shared<Session>();
    conn.Keep(session);  // outlives the channel, the sinks and the receiver
    if (ctx.plan.side() == Side::kSource) {
      ConnectOptions main_opts;
      main_opts.extra_flags = kCapFerryCounts;  // QEMU drops it from its answer
      if (n > 0) {
        main_opts.extra_flags |= kCapFerryMultifd;
        main_opts.channels = n;
      }
      FERRY_ASSIGN_OR_RETURN(session->main,
                             RdmaConnection::Connect(uri, settings_.pin_all, ctx.timeout, ctx.stop, main_opts));
      RdmaConnection& main = *session->main;
      if (n > 0) {
        if (!(main.capabilities().flags & kCapFerryMultifd)) {
          return Status::Unsupported("rdma: the destination does not take multifd channels over rdma (a ferry "
                                     "destination needs -c multifd=on; QEMU does not do multifd over rdma)");
        }
        for (uint32_t id = 0; id < n; ++id) {
          ConnectOptions o{kCapFerryChannel | kCapFerryCounts, id, n, main.pd()};
          FERRY_ASSIGN_OR_RETURN(auto c, RdmaConnection::Connect(uri, main.pin_all(), ctx.remaining(), ctx.stop, o));
          session->channels.push_back(std::move(c));
        }
        const std::optional<std::string> zero = ctx.plan.parameter("zero-page-detection");
        conn.set_sink_factory(std::make_unique<RdmaMultifdSinkFactory>(
            main, session->channel_ptrs(), zero && *zero == "none" ? ZeroPolicy::kNone : ZeroPolicy::kPages,
            ctx.note));
        ctx.note("rdma: connected to " + main.peer() + " with " + std::to_string(n) + " multifd channels" +
                 (main.pin_all() ? " (pin-all)" : " (dynamic registration)"));
      } else {
        conn.set_sink_factory(std::make_unique<RdmaSinkFactory>(main, ctx.note));
      }
      conn.set_channel(std::make_unique<RdmaStreamChannel>(main, RdmaStreamChannel::Side::kSource));
      return Status::Ok();
    }
    FERRY_ASSIGN_OR_RETURN(std::unique_ptr<RdmaListener> listener, RdmaListener::Listen(uri));
    ctx.note("listening on " + listener->address());
    FERRY_RETURN_IF_ERROR(ctx.on_listening(listener->address()));
    std::stop_callback on_stop(ctx.stop, [&] { listener->Shutdown(); });
    ConnectOptions main_opts;
    main_opts.extra_flags = kCapFerryCounts | (n > 0 ? kCapFerryMultifd : 0);
    FERRY_ASSIGN_OR_RETURN(session->main, listener->Accept(ctx.remaining(), main_opts));
    RdmaConnection& main = *session->main;
    const Capabilities& asked = main.requested();
    if (n == 0 && (asked.flags & kCapFerryMultifd)) {
      return Status::Unsupported("rdma: the source asks for " + std::to_string(asked.channels) +
                                 " multifd channels; receive with -c multifd=on -p multifd-channels=" +
                                 std::to_string(asked.channels));
    }
    if (n > 0 && !(asked.flags & kCapFerryMultifd)) {
      return Status::Unsupported("rdma: the source did not ask for multifd channels (send with -c multifd=on; QEMU "
                                 "does not do multifd over rdma)");
    }
    if (n > 0 && !(asked.flags & kCapFerryCounts)) {
      return Status::Protocol("rdma: a multifd source without round counts (flag 0x40000)");
    }
    if (n > 0 && asked.channels != n) {
      return Status::Mismatch("rdma: the source has " + std::to_string(asked.channels) +
                              " multifd channels, this side expects " + std::to_string(n) +
                              " (-p multifd-channels)");
    }
    session->channels.resize(n);
    const ConnectOptions channel_opts{kCapFerryChannel | kCapFerryCounts, 0, 0, main.pd()};
    for (uint32_t k = 0; k < n; ++k) {
      FERRY_ASSIGN_OR_RETURN(auto c, listener->Accept(ctx.remaining(), channel_opts));
      const Capabilities& ch = c->requested();
      if (!(ch.flags & kCapFerryChannel) || ch.channel >= n || ch.channels != n || session->channels[ch.channel]) {
        return Status::Protocol("rdma: connection " + std::to_string(k + 1) +
                                " after the main one is not a multifd channel of this migration");
      }
      session->channels[ch.channel] = std::move(c);
    }
    ctx.note("rdma: connected to " + main.peer() + (main.pin_all() ? " (pin-all)" : " (dynamic registration)") +
             (n > 0 ? ", " + std::to_string(n) + " multifd channels" : std::string()));
    auto receiver = std::make_unique<RdmaPageReceiver>(main);
    receiver->set_note(ctx.note);
    receiver->AddChannels(session->channel_ptrs());
    conn.set_receiver(std::move(receiver));
    conn.set_channel(std::make_unique<RdmaStreamChannel>(main));
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
