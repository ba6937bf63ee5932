// tls/'s counters in a migration's stats (MigrationStats::Get<tls::TlsStats>(),
// put in by Connection::AddStats): the credentials and the session of every
// connection.
#pragma once

#include <string>
#include <vector>

#include "../core/stats.h"

namespace ferry::tls {

struct TlsSessionStats {
  std::string channel;  // "main", "multifd 0", ...
  std::string version;  // "TLSv1.3"
  std::string cipher;   // "TLS_AES_128_GCM_SHA256"
  std::string peer;     // the peer certificate's subject (x509), "" otherwise
};

class TlsStats final : public TransportStatsOf<TlsStats> {
 public:
  static constexpr std::string_view kName = "tls";
  // --json "tls": {"creds", "ktls": false, "main": {"version", "cipher"[,
  // "peer"]}, "multifd": [...]}; summary: "tls: TLSv1.3 CIPHER on the main
  // stream and N multifd channels (CREDS; kTLS ...)".
  void Report(StatsReport& out) const override;

  std::string creds;            // "x509" or "psk"
  bool ktls_available = false;  // the kernel offers kTLS (ferry does not use it yet)
  std::vector<TlsSessionStats> sessions;  // the main stream's first, then multifd's by id
};

}  // namespace ferry::tls
