// TlsConfig parsing: --tls-creds and the tls-* parameters.
#include <fstream>
#include <string>

#include "tls/tls.h"

namespace ferry::tls {
namespace {

std::vector<std::string> Split(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t pos = s.find(sep, start);
    out.emplace_back(s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return out;
}

std::string Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return std::string(s);
}

}  // namespace

std::string TlsConfig::Describe() const {
  switch (kind) {
    case Kind::kNone: return "off";
    case Kind::kX509: return "x509:" + dir + " (verify-peer=" + (verify_peer ? "on" : "off") + ")";
    case Kind::kPsk: return "psk:" + dir + " (username=" + username + ")";
  }
  return "?";
}

Result<TlsConfig> ParseTlsCreds(std::string_view spec) {
  TlsConfig cfg;
  const std::string usage =
      "--tls-creds needs x509:DIR[,verify-peer=on|off] or psk:DIR[,username=NAME], got '" + std::string(spec) + "'";
  const size_t colon = spec.find(':');
  if (colon == std::string_view::npos) return Status::InvalidArgument(usage);
  const std::string_view kind = spec.substr(0, colon);
  if (kind == "x509") {
    cfg.kind = TlsConfig::Kind::kX509;
  } else if (kind == "psk") {
    cfg.kind = TlsConfig::Kind::kPsk;
  } else {
    return Status::InvalidArgument(usage);
  }
  std::vector<std::string> parts = Split(spec.substr(colon + 1), ',');
  cfg.dir = parts[0];
  if (cfg.dir.empty()) return Status::InvalidArgument(usage + ": the directory is missing");
  while (cfg.dir.size() > 1 && cfg.dir.back() == '/') cfg.dir.pop_back();
  for (size_t i = 1; i < parts.size(); ++i) {
    const std::string& opt = parts[i];
    const size_t eq = opt.find('=');
    const std::string name = opt.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : opt.substr(eq + 1);
    if (cfg.kind == TlsConfig::Kind::kX509 && name == "verify-peer") {
      if (value == "on" || value == "yes" || value == "true") {
        cfg.verify_peer = true;
      } else if (value == "off" || value == "no" || value == "false") {
        cfg.verify_peer = false;
      } else {
        return Status::InvalidArgument("--tls-creds: verify-peer must be on or off, got '" + value + "'");
      }
    } else if (cfg.kind == TlsConfig::Kind::kPsk && name == "username") {
      if (value.empty() || value.find(':') != std::string::npos) {
        return Status::InvalidArgument("--tls-creds: username must be non-empty and without ':'");
      }
      cfg.username = value;
    } else {
      return Status::InvalidArgument("--tls-creds " + std::string(kind) + ": unknown option '" + name +
                                     "' (x509 takes verify-peer=on|off, psk takes username=NAME)");
    }
  }
  return cfg;
}

Result<bool> SetTlsParameter(TlsConfig& cfg, std::string_view name, std::string_view value) {
  if (name == "tls-hostname") {
    cfg.hostname = std::string(value);
    return true;
  }
  if (name == "tls-authz") {
    cfg.authz.clear();
    for (const std::string& dn : Split(value, ';')) {
      std::string t = Trim(dn);
      if (!t.empty()) cfg.authz.push_back(std::move(t));
    }
    return true;
  }
  if (name == "tls-creds") {
    if (value.empty()) {
      const std::string host = cfg.hostname;
      const std::vector<std::string> authz = cfg.authz;
      cfg = TlsConfig{};
      cfg.hostname = host;
      cfg.authz = authz;
      return true;
    }
    Result<TlsConfig> parsed = ParseTlsCreds(value);
    if (!parsed.ok()) return parsed.status();
    parsed->hostname = cfg.hostname;
    parsed->authz = cfg.authz;
    cfg = std::move(*parsed);
    return true;
  }
  return false;
}

bool KernelTlsAvailable() {
  std::ifstream in("/proc/sys/net/ipv4/tcp_available_ulp");
  std::string word;
  while (in >> word) {
    if (word == "tls") return true;
  }
  return false;
}

}  // namespace ferry::tls
