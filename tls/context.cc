// TlsContext: QEMU-layout credentials loaded into an SSL_CTX.
//
//   x509 DIR: ca-cert.pem (always), server-cert.pem + server-key.pem (server),
//             client-cert.pem + client-key.pem (client, optional: without them
//             the client is anonymous, which a verify-peer=on server refuses)
//   psk DIR:  keys.psk, lines "username:hexkey"
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <arpa/inet.h>
#include <sys/stat.h>

#include <cctype>
#include <cstring>
#include <fstream>

#include "tls/tls_internal.h"

namespace ferry::tls {

SecretBytes::~SecretBytes() {
  if (!bytes.empty()) OPENSSL_cleanse(bytes.data(), bytes.size());
}

std::string OpensslErrors() {
  std::string out;
  unsigned long e;
  while ((e = ERR_get_error()) != 0) {
    const char* r = ERR_reason_error_string(e);
    std::string one = r ? r : ("error " + std::to_string(e));
    if (out.find(one) != std::string::npos) continue;
    out += (out.empty() ? "" : "; ") + one;
  }
  return out.empty() ? "unknown OpenSSL error" : out;
}

std::string NameText(X509_NAME* name) {
  if (!name) return "";
  BIO* b = BIO_new(BIO_s_mem());
  if (!b) return "";
  X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253);
  char* p = nullptr;
  const long n = BIO_get_mem_data(b, &p);
  std::string s(p ? p : "", n > 0 ? static_cast<size_t>(n) : 0);
  BIO_free(b);
  return s;
}

// The certificate's DNS and IP subject alternative names, for messages.
std::string CertNames(X509* cert) {
  if (!cert) return "";
  std::string out;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (names) {
    for (int i = 0; i < sk_GENERAL_NAME_num(names); ++i) {
      const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
      std::string one;
      if (g->type == GEN_DNS) {
        one = std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(g->d.dNSName)),
                          ASN1_STRING_length(g->d.dNSName));
      } else if (g->type == GEN_IPADD) {
        const int len = ASN1_STRING_length(g->d.iPAddress);
        char text[INET6_ADDRSTRLEN] = {};
        if (len == 4 || len == 16) {
          ::inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(g->d.iPAddress), text, sizeof text);
          one = text;
        }
      }
      if (!one.empty()) out += (out.empty() ? "" : ", ") + one;
    }
    GENERAL_NAMES_free(names);
  }
  if (out.empty()) out = NameText(X509_get_subject_name(cert));
  return out;
}

namespace {

bool FileExists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

Status NeedFile(const std::string& path, const std::string& what) {
  if (!FileExists(path)) return Status::InvalidArgument("TLS credentials: " + what + " " + path + " does not exist");
  return Status::Ok();
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Reads keys.psk; the file's bytes are wiped once parsed. Messages name
// line numbers and usernames, never keys.
Status LoadPskFile(const std::string& path, TlsContext::Impl& impl) {
  FERRY_RETURN_IF_ERROR(NeedFile(path, "PSK file"));
  SecretBytes raw;
  {
    // One allocation of the final size: no stale partial copies of the
    // file's contents left behind in freed memory.
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) return Status::InvalidArgument("TLS credentials: cannot read PSK file " + path);
    const std::streamoff size = in.tellg();
    if (size < 0 || size > (1 << 20)) {
      return Status::InvalidArgument("TLS credentials: PSK file " + path + " is not a small text file");
    }
    raw.bytes.resize(static_cast<size_t>(size));
    in.seekg(0);
    if (size > 0 && !in.read(reinterpret_cast<char*>(raw.bytes.data()), size)) {
      return Status::InvalidArgument("TLS credentials: cannot read PSK file " + path);
    }
  }
  size_t line_no = 0;
  size_t pos = 0;
  const auto& b = raw.bytes;
  while (pos < b.size()) {
    size_t end = pos;
    while (end < b.size() && b[end] != '\n') ++end;
    ++line_no;
    size_t lend = end;
    if (lend > pos && b[lend - 1] == '\r') --lend;
    if (lend > pos && b[pos] != '#') {
      size_t colon = pos;
      while (colon < lend && b[colon] != ':') ++colon;
      if (colon == lend) {
        return Status::InvalidArgument("TLS credentials: " + path + " line " + std::to_string(line_no) +
                                       ": expected username:hexkey");
      }
      std::string user(reinterpret_cast<const char*>(&b[pos]), colon - pos);
      const size_t hex_len = lend - colon - 1;
      if (hex_len == 0 || hex_len % 2 != 0) {
        return Status::InvalidArgument("TLS credentials: " + path + " line " + std::to_string(line_no) +
                                       " (user '" + user + "'): the key must be an even number of hex digits");
      }
      PskEntry entry;
      entry.username = user;
      entry.key.bytes.resize(hex_len / 2);
      for (size_t i = 0; i < hex_len / 2; ++i) {
        const int hi = HexValue(static_cast<char>(b[colon + 1 + 2 * i]));
        const int lo = HexValue(static_cast<char>(b[colon + 2 + 2 * i]));
        if (hi < 0 || lo < 0) {
          return Status::InvalidArgument("TLS credentials: " + path + " line " + std::to_string(line_no) +
                                         " (user '" + user + "'): the key is not hexadecimal");
        }
        entry.key.bytes[i] = static_cast<uint8_t>(hi * 16 + lo);
      }
      if (entry.key.bytes.size() > PSK_MAX_PSK_LEN) {
        return Status::InvalidArgument("TLS credentials: " + path + " line " + std::to_string(line_no) +
                                       ": key longer than " + std::to_string(PSK_MAX_PSK_LEN) + " bytes");
      }
      impl.psk.push_back(std::move(entry));
    }
    pos = end + 1;
  }
  if (impl.psk.empty()) return Status::InvalidArgument("TLS credentials: " + path + " holds no username:hexkey line");
  return Status::Ok();
}

// PSK callbacks (OpenSSL's classic interface: TLS 1.2 PSK suites and TLS
// 1.3 external PSKs with SHA-256, as GnuTLS offers them).
unsigned int PskClient(SSL* ssl, const char* /*hint*/, char* identity, unsigned int max_identity_len,
                       unsigned char* psk, unsigned int max_psk_len) {
  auto* impl = static_cast<TlsContext::Impl*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  if (!impl) return 0;
  for (const PskEntry& e : impl->psk) {
    if (e.username != impl->username) continue;
    if (e.username.size() + 1 > max_identity_len || e.key.bytes.size() > max_psk_len) return 0;
    std::memcpy(identity, e.username.c_str(), e.username.size() + 1);
    std::memcpy(psk, e.key.bytes.data(), e.key.bytes.size());
    return static_cast<unsigned int>(e.key.bytes.size());
  }
  return 0;
}

unsigned int PskServer(SSL* ssl, const char* identity, unsigned char* psk, unsigned int max_psk_len) {
  auto* impl = static_cast<TlsContext::Impl*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  if (!impl || !identity) return 0;
  for (const PskEntry& e : impl->psk) {
    if (e.username != identity) continue;
    if (e.key.bytes.size() > max_psk_len) return 0;
    std::memcpy(psk, e.key.bytes.data(), e.key.bytes.size());
    return static_cast<unsigned int>(e.key.bytes.size());
  }
  if (auto* st = static_cast<SessionState*>(SSL_get_app_data(ssl))) st->unknown_psk_identity = identity;
  return 0;
}

// The leaf certificate's names and issuer, for messages.
void NotePeer(X509_STORE_CTX* store, SessionState* st) {
  if (!st) return;
  X509* cert = X509_STORE_CTX_get_current_cert(store);
  if (!cert || X509_STORE_CTX_get_error_depth(store) != 0) return;
  st->peer_names = CertNames(cert);
  st->peer_issuer = NameText(X509_get_issuer_name(cert));
}

// Server, verify-peer=on: the chain is checked by OpenSSL; the leaf's
// subject is then matched against tls-authz.
int VerifyClient(int preverify_ok, X509_STORE_CTX* store) {
  SSL* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (!ssl) return preverify_ok;
  auto* impl = static_cast<TlsContext::Impl*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
  auto* st = static_cast<SessionState*>(SSL_get_app_data(ssl));
  NotePeer(store, st);
  if (!preverify_ok || X509_STORE_CTX_get_error_depth(store) != 0 || !impl || impl->authz.empty()) {
    return preverify_ok;
  }
  const std::string dn = NameText(X509_get_subject_name(X509_STORE_CTX_get_current_cert(store)));
  for (const std::string& allowed : impl->authz) {
    if (allowed == dn) return 1;
  }
  if (st) st->authz_denied_dn = dn.empty() ? "(empty)" : dn;
  X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
  return 0;
}

// Client: remembers the server certificate's names for messages.
int VerifyServer(int preverify_ok, X509_STORE_CTX* store) {
  SSL* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  if (ssl) NotePeer(store, static_cast<SessionState*>(SSL_get_app_data(ssl)));
  return preverify_ok;
}

int NewSessionSeen(SSL* ssl, SSL_SESSION* /*session*/) {
  if (auto* st = static_cast<SessionState*>(SSL_get_app_data(ssl))) st->ticket_seen = true;
  return 0;  // not kept
}

}  // namespace

TlsContext::TlsContext(const TlsConfig& cfg, Endpoint endpoint)
    : cfg_(cfg), endpoint_(endpoint), impl_(std::make_unique<Impl>()) {}

TlsContext::~TlsContext() {
  if (impl_ && impl_->ctx) SSL_CTX_free(impl_->ctx);
}

Result<std::shared_ptr<TlsContext>> TlsContext::Make(const TlsConfig& cfg, Endpoint endpoint) {
  if (!cfg.enabled()) return Status::InvalidArgument("TLS is off: no --tls-creds");
  std::shared_ptr<TlsContext> out(new TlsContext(cfg, endpoint));
  Impl& impl = *out->impl_;
  const bool server = endpoint == Endpoint::kServer;
  ERR_clear_error();
  impl.ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!impl.ctx) return Status::Internal("SSL_CTX_new: " + OpensslErrors());
  SSL_CTX* ctx = impl.ctx;
  SSL_CTX_set_app_data(ctx, &impl);
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE);
  // Writes of any size complete (our BIOs are memory, they never block).
  SSL_CTX_set_mode(ctx, SSL_MODE_AUTO_RETRY);
  // AES-128-GCM first: the fastest with AES-NI, and SHA-256 based as TLS 1.3
  // PSKs need.
  if (SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256") != 1) {
    return Status::Internal("TLS 1.3 cipher suites: " + OpensslErrors());
  }
  impl.username = cfg.username;
  impl.authz = cfg.authz;
  const std::string& dir = cfg.dir;

  if (cfg.kind == TlsConfig::Kind::kPsk) {
    FERRY_RETURN_IF_ERROR(LoadPskFile(dir + "/keys.psk", impl));
    if (!server) {
      bool found = false;
      for (const PskEntry& e : impl.psk) found = found || e.username == cfg.username;
      if (!found) {
        return Status::InvalidArgument("TLS credentials: " + dir + "/keys.psk has no key for username '" +
                                       cfg.username + "'");
      }
    }
    // TLS 1.2 needs PSK cipher suites named; TLS 1.3 uses the standard ones.
    if (SSL_CTX_set_cipher_list(ctx, "ECDHEPSK:DHEPSK:PSK:!NULL:!aNULL@SECLEVEL=0") != 1) {
      return Status::Internal("PSK cipher suites: " + OpensslErrors());
    }
    if (server) {
      SSL_CTX_set_psk_server_callback(ctx, PskServer);
      SSL_CTX_set_num_tickets(ctx, 0);
    } else {
      SSL_CTX_set_psk_client_callback(ctx, PskClient);
    }
    return out;
  }

  const std::string ca = dir + "/ca-cert.pem";
  FERRY_RETURN_IF_ERROR(NeedFile(ca, "CA certificate"));
  if (SSL_CTX_load_verify_locations(ctx, ca.c_str(), nullptr) != 1) {
    return Status::InvalidArgument("TLS credentials: cannot load CA certificate " + ca + ": " + OpensslErrors());
  }
  const std::string cert = dir + (server ? "/server-cert.pem" : "/client-cert.pem");
  const std::string key = dir + (server ? "/server-key.pem" : "/client-key.pem");
  const bool have_cert = FileExists(cert);
  if (server || have_cert) {
    FERRY_RETURN_IF_ERROR(NeedFile(cert, "certificate"));
    FERRY_RETURN_IF_ERROR(NeedFile(key, "private key"));
    if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1) {
      return Status::InvalidArgument("TLS credentials: cannot load certificate " + cert + ": " + OpensslErrors());
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1) {
      // The reason only (never the key's bytes).
      return Status::InvalidArgument("TLS credentials: cannot load private key " + key + ": " + OpensslErrors());
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
      ERR_clear_error();
      return Status::InvalidArgument("TLS credentials: private key " + key + " does not match certificate " + cert);
    }
    impl.has_certificate = true;
  }
  if (server) {
    if (cfg.verify_peer) {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, VerifyClient);
      // The CA names sent with the certificate request.
      if (STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(ca.c_str())) SSL_CTX_set_client_CA_list(ctx, names);
    } else {
      SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nullptr);
    }
    // Session tickets: one per session for ferry clients only (see
    // WrapOptions::peer_is_ferry), set per session.
    SSL_CTX_set_num_tickets(ctx, 0);
  } else {
    SSL_CTX_set_verify(ctx, cfg.verify_peer ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, VerifyServer);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, NewSessionSeen);
  }
  ERR_clear_error();
  return out;
}

}  // namespace ferry::tls
