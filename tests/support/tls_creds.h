// Test credentials in QEMU's layout, made on the fly with OpenSSL's APIs
// (never committed): x509 directories (ca-cert.pem, server-cert.pem,
// server-key.pem, client-cert.pem, client-key.pem) with variants (wrong CA,
// wrong host, expired, not yet valid, no client certificate), and PSK
// directories (keys.psk with username:hexkey lines).
//
//   TestCa ca("ferry test CA"), other("someone else's CA");
//   ASSERT_TRUE(WriteX509Dir(dir.Path("good"), ca, {}).ok());
//   X509DirOptions expired;  expired.server_valid = {-10 * kDay, -kDay};
//   ASSERT_TRUE(WriteX509Dir(dir.Path("expired"), ca, expired).ok());
//   ASSERT_TRUE(WritePskDir(dir.Path("psk"), "qemu", RandomHexKey()).ok());
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"

namespace ferry::test {

inline constexpr long kDay = 86400;

// A certificate authority: a self-signed CA certificate and its key.
class TestCa {
 public:
  explicit TestCa(const std::string& common_name);
  ~TestCa();
  TestCa(const TestCa&) = delete;
  TestCa& operator=(const TestCa&) = delete;
  const Status& status() const { return status_; }
  struct Impl;
  Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
  Status status_;
};

struct Validity {
  long not_before_s = -3600;      // relative to now
  long not_after_s = 30 * kDay;
};

struct X509DirOptions {
  // The server certificate: subject CN and subject alternative names.
  std::string server_cn = "localhost";
  std::vector<std::string> server_dns = {"localhost"};
  std::vector<std::string> server_ips = {"127.0.0.1", "::1"};
  Validity server_valid;
  // The client certificate (none: an anonymous client directory).
  bool client_cert = true;
  std::string client_cn = "ferry-client";  // subject "CN=<client_cn>,O=ferry" (RFC 2253 order)
  Validity client_valid;
  // The certificates are issued by `issuer` (default: the CA written to
  // ca-cert.pem).
  const TestCa* issuer = nullptr;
};

// Writes DIR (created) with ca-cert.pem = `ca` and certificates issued by
// options.issuer or `ca`.
Status WriteX509Dir(const std::string& dir, const TestCa& ca, const X509DirOptions& options = {});

// Writes DIR/keys.psk with one "username:hexkey" line (and a decoy line for
// another user).
Status WritePskDir(const std::string& dir, const std::string& username, const std::string& hexkey);

// 32 random bytes as hex.
std::string RandomHexKey();

}  // namespace ferry::test
