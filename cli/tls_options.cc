#include "cli/tls_options.h"

namespace ferry::cli {

Result<std::unique_ptr<TlsSetup>> TlsSetup::FromOptions(const std::string& tls_creds, std::vector<std::string>& params,
                                                        const Uri& uri, tls::Endpoint endpoint, bool ferry_peer) {
  tls::TlsConfig cfg;
  std::vector<std::string> rest;
  std::vector<std::string> tls_params;
  for (const std::string& p : params) {
    const size_t eq = p.find('=');
    const std::string name = p.substr(0, eq);
    if (eq != std::string::npos && name.rfind("tls-", 0) == 0) {
      Result<bool> known = tls::SetTlsParameter(cfg, name, p.substr(eq + 1));
      if (!known.ok()) return known.status().WithContext("-p " + name);
      if (!*known) {
        return Status::InvalidArgument("-p " + name + ": unknown TLS parameter (tls-hostname, tls-authz, tls-creds)");
      }
      tls_params.push_back(name);
    } else {
      rest.push_back(p);
    }
  }
  if (!tls_creds.empty()) {
    Result<tls::TlsConfig> parsed = tls::ParseTlsCreds(tls_creds);
    if (!parsed.ok()) return parsed.status();
    parsed->hostname = cfg.hostname;
    parsed->authz = cfg.authz;
    cfg = std::move(*parsed);
  }
  params = std::move(rest);
  if (!cfg.enabled()) {
    if (!tls_params.empty()) {
      return Status::InvalidArgument("-p " + tls_params.front() + " needs --tls-creds x509:DIR or psk:DIR");
    }
    return std::unique_ptr<TlsSetup>();
  }
  if (uri.kind == Uri::Kind::kFile) {
    return Status::InvalidArgument("TLS is for network migrations: " + uri.ToString() +
                                   " is a file (save/load have no TLS, as in QEMU); drop --tls-creds");
  }
  if (endpoint == tls::Endpoint::kServer && !cfg.hostname.empty()) {
    return Status::InvalidArgument("-p tls-hostname is for the source (the TLS client) only");
  }
  if (endpoint == tls::Endpoint::kClient && !cfg.authz.empty()) {
    return Status::InvalidArgument("-p tls-authz is for the destination (the TLS server) only");
  }
  if (!cfg.authz.empty() && (cfg.kind != tls::TlsConfig::Kind::kX509 || !cfg.verify_peer)) {
    return Status::InvalidArgument("-p tls-authz needs x509 credentials with verify-peer=on");
  }
  Result<std::shared_ptr<tls::TlsContext>> ctx = tls::TlsContext::Make(cfg, endpoint);
  if (!ctx.ok()) return ctx.status();
  auto setup = std::make_unique<TlsSetup>();
  setup->cfg_ = cfg;
  setup->ctx_ = std::move(*ctx);
  setup->peer_host_ = uri.kind == Uri::Kind::kTcp ? uri.host : "";
  setup->ferry_peer_ = ferry_peer;
  return setup;
}

Result<std::unique_ptr<Channel>> TlsSetup::Wrap(std::unique_ptr<Channel> ch, std::stop_token stop) {
  tls::WrapOptions opts;
  opts.peer_host = peer_host_;
  opts.peer_is_ferry = ferry_peer_;
  opts.stop = std::move(stop);
  Result<std::unique_ptr<Channel>> out = ctx_->endpoint() == tls::Endpoint::kClient
                                             ? tls::WrapClient(std::move(ch), *ctx_, opts)
                                             : tls::WrapServer(std::move(ch), *ctx_, opts);
  if (!out.ok()) return out;
  if (std::optional<tls::SessionInfo> info = tls::SessionInfoOf(**out)) {
    std::lock_guard<std::mutex> lock(mu_);
    sessions_.emplace_back(out->get(), *info);
  }
  return out;
}

multifd::ChannelWrap TlsSetup::Hook(std::stop_token stop) {
  return [this, stop](std::unique_ptr<Channel> ch) { return Wrap(std::move(ch), stop); };
}

void TlsSetup::NoteIncoming(const Channel& main, const std::vector<std::unique_ptr<Channel>>& multifd) {
  (void)main;
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<const Channel*, tls::SessionInfo>> ordered;
  std::vector<bool> used(sessions_.size(), false);
  for (const auto& ch : multifd) {
    for (size_t i = 0; i < sessions_.size(); ++i) {
      if (!used[i] && sessions_[i].first == ch.get()) {
        used[i] = true;
        ordered.push_back(sessions_[i]);
      }
    }
  }
  // The main stream is the session no multifd channel has (it is wrapped in
  // a prefix channel, so its pointer is not the session's).
  for (size_t i = 0; i < sessions_.size(); ++i) {
    if (!used[i]) {
      ordered.insert(ordered.begin(), sessions_[i]);
      break;
    }
  }
  sessions_ = std::move(ordered);
  sorted_ = true;
}

nlohmann::json TlsSetup::Json() const {
  std::lock_guard<std::mutex> lock(mu_);
  nlohmann::json j;
  j["creds"] = cfg_.kind == tls::TlsConfig::Kind::kX509 ? "x509" : "psk";
  j["ktls"] = false;
  auto one = [](const tls::SessionInfo& s) {
    nlohmann::json o{{"version", s.version}, {"cipher", s.cipher}};
    if (!s.peer_dn.empty()) o["peer"] = s.peer_dn;
    return o;
  };
  if (!sessions_.empty()) j["main"] = one(sessions_[0].second);
  nlohmann::json mf = nlohmann::json::array();
  for (size_t i = 1; i < sessions_.size(); ++i) mf.push_back(one(sessions_[i].second));
  j["multifd"] = mf;
  return j;
}

std::string TlsSetup::SummaryLine() const {
  std::lock_guard<std::mutex> lock(mu_);
  const std::string creds = cfg_.kind == tls::TlsConfig::Kind::kX509 ? "x509" : "psk";
  if (sessions_.empty()) return "tls: " + creds + ", no session established\n";
  const tls::SessionInfo& m = sessions_[0].second;
  std::string line = "tls: " + m.version + " " + m.cipher + " on the main stream";
  if (sessions_.size() > 1) {
    bool same = true;
    for (size_t i = 1; i < sessions_.size(); ++i) {
      same = same && sessions_[i].second.version == m.version && sessions_[i].second.cipher == m.cipher;
    }
    line += " and " + std::to_string(sessions_.size() - 1) + " multifd channel" + (sessions_.size() > 2 ? "s" : "");
    if (!same) line += " (not all with the same protocol: see --json)";
  }
  line += " (" + creds + "; kTLS " + (tls::KernelTlsAvailable() ? "offered by the kernel but not used" : "not available in this kernel") + ")\n";
  return line;
}

}  // namespace ferry::cli
