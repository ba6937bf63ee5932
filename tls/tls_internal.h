// Shared between tls/context.cc and tls/tls_channel.cc; not installed.
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "tls/tls.h"

namespace ferry::tls {

// Key material, wiped on destruction.
struct SecretBytes {
  std::vector<uint8_t> bytes;
  SecretBytes() = default;
  SecretBytes(SecretBytes&&) = default;
  SecretBytes& operator=(SecretBytes&&) = default;
  ~SecretBytes();
};

struct PskEntry {
  std::string username;
  SecretBytes key;
};

struct TlsContext::Impl {
  SSL_CTX* ctx = nullptr;
  std::vector<PskEntry> psk;
  std::string username;
  std::vector<std::string> authz;
  bool has_certificate = false;
};

// Per-session facts the callbacks record for error messages
// (SSL_set_app_data).
struct SessionState {
  std::string authz_denied_dn;
  std::string unknown_psk_identity;
  bool ticket_seen = false;
  std::string peer_names;   // the peer certificate's SANs (or subject)
  std::string peer_issuer;
};

// The reasons on OpenSSL's error queue, "; "-joined; clears the queue.
std::string OpensslErrors();
// RFC 2253 text of a name ("CN=host,O=Org").
std::string NameText(X509_NAME* name);
// A certificate's DNS and IP subject alternative names (its subject when it
// has none), ", "-joined.
std::string CertNames(X509* cert);

}  // namespace ferry::tls
