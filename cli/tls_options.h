// The CLI's TLS glue: --tls-creds and the tls-* parameters of send/recv,
// the wrap hooks for the main stream and the multifd channels, and what
// --json and the summary say about the sessions.
//
// Every channel the CLI opens goes through TlsSetup::Wrap (main stream) or
// TlsSetup::Hook (multifd channels); with the transport registry (issue 10)
// these become its channel-wrapping hook.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/channel.h"
#include "core/status.h"
#include "core/uri.h"
#include "multifd/multifd.h"
#include "tls/tls.h"

namespace ferry::cli {

class TlsSetup {
 public:
  // Takes --tls-creds and removes the -p tls-* entries from `params` (they
  // are TLS's, not MigrationParams'). Returns null when TLS is off; refuses
  // TLS on file: URIs (save/load) and tls-* parameters without --tls-creds.
  // `ferry_peer`: the other side is ferry (no --qemu-compat).
  static Result<std::unique_ptr<TlsSetup>> FromOptions(const std::string& tls_creds, std::vector<std::string>& params,
                                                       const Uri& uri, tls::Endpoint endpoint, bool ferry_peer);

  // Handshake on one connection (client or server, as the endpoint says).
  Result<std::unique_ptr<Channel>> Wrap(std::unique_ptr<Channel> ch, std::stop_token stop);
  // The same as a multifd hook.
  multifd::ChannelWrap Hook(std::stop_token stop);

  // After the destination sorted its connections: which session is which.
  void NoteIncoming(const Channel& main, const std::vector<std::unique_ptr<Channel>>& multifd);

  // "tls": {"creds": ..., "main": {"version", "cipher"}, "multifd": [...], "ktls": false}
  nlohmann::json Json() const;
  // "tls: TLSv1.3 TLS_AES_256_GCM_SHA384 on the main stream and 4 multifd channels (x509, kTLS not available)\n"
  std::string SummaryLine() const;

 private:
  tls::TlsConfig cfg_;
  std::shared_ptr<tls::TlsContext> ctx_;
  std::string peer_host_;
  bool ferry_peer_ = false;
  mutable std::mutex mu_;
  // In wrap order (source: main first, then multifd 0..n-1).
  std::vector<std::pair<const Channel*, tls::SessionInfo>> sessions_;
  bool sorted_ = false;  // destination: sessions_ reordered by NoteIncoming
  size_t main_index_ = 0;
};

}  // namespace ferry::cli
