// TLS for migration channels (OpenSSL 3): x509 and PSK credentials in
// QEMU's directory layout, and a Channel that runs one TLS session over a
// connected socket Channel. The source is the TLS client, the destination
// the server, as in QEMU; the main stream and every multifd channel each run
// their own session, handshake first, migration bytes inside.
//
//   FERRY_ASSIGN_OR_RETURN(tls::TlsConfig cfg, tls::ParseTlsCreds("x509:/etc/pki/qemu"));
//   FERRY_ASSIGN_OR_RETURN(auto ctx, tls::TlsContext::Make(cfg, tls::Endpoint::kClient));
//   FERRY_ASSIGN_OR_RETURN(auto ch, Connect(uri, timeout));
//   FERRY_ASSIGN_OR_RETURN(ch, tls::WrapClient(std::move(ch), *ctx, uri.host));
//
// Every handshake failure is one line naming the peer and the reason. Keys
// and PSKs never appear in messages; the buffers they are read into are
// wiped (OPENSSL_cleanse).
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include "../core/channel.h"
#include "../core/status.h"

namespace ferry::tls {

enum class Endpoint { kClient, kServer };

// What --tls-creds, -p tls-hostname and -p tls-authz say.
struct TlsConfig {
  enum class Kind { kNone, kX509, kPsk };
  Kind kind = Kind::kNone;
  std::string dir;               // QEMU-layout credentials directory
  bool verify_peer = true;       // x509: server requires client certs / client checks the server's
  std::string username = "qemu"; // psk: the identity (QEMU's default)
  std::string hostname;          // tls-hostname: the name the server certificate must carry
  std::vector<std::string> authz;  // tls-authz: allowed client certificate DNs (RFC 2253); empty = any
  // How long a handshake may take before it is a failure.
  std::chrono::milliseconds handshake_timeout{10000};

  bool enabled() const { return kind != Kind::kNone; }
  // "x509:/dir (verify-peer=on)", "psk:/dir (username=qemu)": no secrets.
  std::string Describe() const;
};

// "x509:DIR[,verify-peer=on|off]" or "psk:DIR[,username=NAME]".
Result<TlsConfig> ParseTlsCreds(std::string_view spec);

// -p names routed to TLS: tls-hostname, tls-authz (tls-creds too, as a
// synonym of --tls-creds). Sets `name` in `cfg` and returns true, or returns
// false when `name` is not a TLS parameter.
Result<bool> SetTlsParameter(TlsConfig& cfg, std::string_view name, std::string_view value);

// Negotiated protocol of one session, for --json and the summary.
struct SessionInfo {
  std::string version;  // "TLSv1.3"
  std::string cipher;   // "TLS_AES_256_GCM_SHA384"
  std::string peer_dn;  // the peer's certificate subject (x509), "" otherwise
};

// Loaded credentials of one side (an SSL_CTX), shared by all its channels.
class TlsContext {
 public:
  // Reads the credentials from cfg.dir for `endpoint`. Fails with one line
  // naming the file and what is wrong with it.
  static Result<std::shared_ptr<TlsContext>> Make(const TlsConfig& cfg, Endpoint endpoint);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;

  const TlsConfig& config() const { return cfg_; }
  Endpoint endpoint() const { return endpoint_; }

  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  TlsContext(const TlsConfig& cfg, Endpoint endpoint);
  TlsConfig cfg_;
  Endpoint endpoint_;
  std::unique_ptr<Impl> impl_;
};

struct WrapOptions {
  // Client: the host the connection went to (the URI's host); the server's
  // certificate must match cfg.hostname if set, else this (IP addresses are
  // matched as IP SANs). Empty + no tls-hostname = no name check (unix:).
  std::string peer_host;
  // The peer is ferry (not QEMU). Then
  //  - a client with x509 credentials waits, in TLS 1.3, for the server's
  //    session ticket (a ferry server sends one once it accepted the client
  //    certificate), so a refused certificate is reported by the handshake
  //    and not as a broken pipe later; a server sends that ticket;
  //  - an end of stream without close_notify is an error ("truncated").
  // With QEMU (false): no ticket either way (QEMU never reads it: its close
  // would reset the connection), and a missing close_notify counts as an
  // end of stream (QEMU 7.2 closes its multifd channels without one; the
  // stream's own end markers and multifd's SYNCs still decide whether the
  // migration was complete).
  bool peer_is_ferry = false;
  // Ends the handshake early (kCancelled).
  std::stop_token stop;
};

// Runs the handshake over `inner` (a connected socket channel) and returns
// a Channel that carries plaintext inside the session. The handshake is
// bounded by the config's handshake_timeout and by `stop`; failures name
// inner->Describe() and the reason.
Result<std::unique_ptr<Channel>> WrapClient(std::unique_ptr<Channel> inner, const TlsContext& ctx,
                                            const WrapOptions& opts);
Result<std::unique_ptr<Channel>> WrapServer(std::unique_ptr<Channel> inner, const TlsContext& ctx,
                                            const WrapOptions& opts = {});

// The session of a channel WrapClient/WrapServer made (nullopt for any other
// channel).
std::optional<SessionInfo> SessionInfoOf(const Channel& ch);

// Whether the kernel offers kTLS ("tls" in /proc/sys/net/ipv4/tcp_available_ulp).
bool KernelTlsAvailable();

}  // namespace ferry::tls
