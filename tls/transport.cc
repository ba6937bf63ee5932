#include "tls/transport.h"

#include <string>
#include <utility>
#include <vector>

#include "core/uri.h"
#include "tls/stats.h"
#include "tls/tls.h"

namespace ferry::tls {
namespace {

constexpr std::string_view kCreds = "tls-creds";
constexpr std::string_view kHostname = "tls-hostname";
constexpr std::string_view kAuthz = "tls-authz";

bool SocketUri(std::string_view text) {
  for (std::string_view scheme : {"tcp:", "unix:", "fd:"}) {
    if (text.substr(0, scheme.size()) == scheme) return true;
  }
  return false;
}

class TlsTransport final : public Transport {
 public:
  std::string_view name() const override { return "tls"; }
  std::vector<std::string_view> parameters() const override { return {kCreds, kHostname, kAuthz}; }

  Status SetParameter(std::string_view name, std::string_view value) override {
    Result<bool> known = SetTlsParameter(cfg_, name, value);
    if (!known.ok()) return known.status().WithContext("-p " + std::string(name));
    if (!*known) return Status::Internal("tls has no parameter " + std::string(name));
    if (name == kCreds) creds_text_ = std::string(value);
    if (name != kCreds) set_.emplace_back(std::string(name));
    return Status::Ok();
  }

  std::optional<std::string> parameter(std::string_view name) const override {
    if (name == kCreds) return creds_text_;
    if (name == kHostname) return cfg_.hostname;
    if (name == kAuthz) {
      std::string out;
      for (const std::string& dn : cfg_.authz) out += (out.empty() ? "" : ";") + dn;
      return out;
    }
    return std::nullopt;
  }

  Status Validate(const PlanView& plan) const override {
    if (!cfg_.enabled()) {
      if (!set_.empty()) {
        return Status::InvalidArgument("-p " + set_.front() + " needs --tls-creds x509:DIR or psk:DIR");
      }
      return Status::Ok();
    }
    const bool source = plan.side() == Side::kSource;
    if (!source && !cfg_.hostname.empty()) {
      return Status::InvalidArgument("-p tls-hostname is for the source (the TLS client) only");
    }
    if (source && !cfg_.authz.empty()) {
      return Status::InvalidArgument("-p tls-authz is for the destination (the TLS server) only");
    }
    if (!cfg_.authz.empty() && (cfg_.kind != TlsConfig::Kind::kX509 || !cfg_.verify_peer)) {
      return Status::InvalidArgument("-p tls-authz needs x509 credentials with verify-peer=on");
    }
    return Status::Ok();
  }

  // The endpoint must be a socket; then the credentials are loaded (a
  // missing or bad file is a planning error, before anything connects).
  Status CheckEndpoint(const PlanView& plan) const override {
    if (!cfg_.enabled()) return Status::Ok();
    const ferry::Endpoint& ep = plan.endpoint();
    if (ep.local_file()) {
      return Status::InvalidArgument("TLS is for network migrations: " + ep.text() +
                                     " is a file (save/load have no TLS, as in QEMU); drop --tls-creds");
    }
    if (!SocketUri(ep.text())) {
      return Status::InvalidArgument("TLS runs over socket connections (tcp:, unix:, fd:), not over " + ep.text() +
                                     "; drop --tls-creds");
    }
    Result<Uri> uri = ParseUri(ep.text());
    peer_host_ = uri.ok() && uri->kind == Uri::Kind::kTcp ? uri->host : "";
    peer_is_ferry_ = !plan.params().qemu_compat;
    FERRY_ASSIGN_OR_RETURN(ctx_, TlsContext::Make(cfg_, plan.side() == Side::kSource ? Endpoint::kClient
                                                                                     : Endpoint::kServer));
    return Status::Ok();
  }

  bool handshakes(const PlanView& plan) const override {
    (void)plan;
    return cfg_.enabled();
  }

  Result<std::unique_ptr<Channel>> WrapChannel(std::unique_ptr<Channel> ch, Side side,
                                               std::stop_token stop) override {
    if (!ctx_) return ch;
    WrapOptions opts;
    opts.peer_host = peer_host_;
    opts.peer_is_ferry = peer_is_ferry_;
    opts.stop = std::move(stop);
    return side == Side::kSource ? WrapClient(std::move(ch), *ctx_, opts) : WrapServer(std::move(ch), *ctx_, opts);
  }

  // Every connection is open and wrapped by now (multifd attached before
  // this transport): which session is which channel goes into the stats.
  Status Attach(OpenContext& ctx) override {
    if (!ctx_) return Status::Ok();
    Connection& conn = ctx.connection;
    auto tls = std::make_shared<TlsStats>();
    TlsStats& t = *tls;
    t.creds = cfg_.kind == TlsConfig::Kind::kX509 ? "x509" : "psk";
    t.ktls_available = KernelTlsAvailable();
    auto add = [&t](const Channel* ch, const std::string& name) {
      std::optional<SessionInfo> info = ch ? SessionInfoOf(*ch) : std::nullopt;
      if (info) t.sessions.push_back({name, info->version, info->cipher, info->peer_dn});
    };
    const Channel* main = nullptr;
    for (const auto& [ch, name] : conn.named_channels()) {
      if (name == "main") main = ch;
    }
    add(main ? main : &conn.channel(), "main");
    for (const auto& [ch, name] : conn.named_channels()) {
      if (name != "main") add(ch, name);
    }
    conn.add_stats([tls = std::shared_ptr<const TlsStats>(std::move(tls))](MigrationStats& st) { st.Set(tls); });
    return Status::Ok();
  }

 private:
  TlsConfig cfg_;
  std::string creds_text_;
  std::vector<std::string> set_;  // tls-hostname / tls-authz given
  // Set by CheckEndpoint (the plan's last step).
  mutable std::shared_ptr<TlsContext> ctx_;
  mutable std::string peer_host_;
  mutable bool peer_is_ferry_ = false;
};

}  // namespace

std::unique_ptr<Transport> MakeTransport() { return std::make_unique<TlsTransport>(); }

}  // namespace ferry::tls
