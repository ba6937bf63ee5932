#include "tests/support/tls_creds.h"

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <cstdio>

namespace ferry::test {

struct TestCa::Impl {
  EVP_PKEY* key = nullptr;
  X509* cert = nullptr;
  ~Impl() {
    X509_free(cert);
    EVP_PKEY_free(key);
  }
};

namespace {

// ECDSA P-256: generated in microseconds (RSA would dominate each test's time).
EVP_PKEY* NewKey() { return EVP_EC_gen("P-256"); }

bool AddExt(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value.c_str());
  if (!ext) return false;
  const bool ok = X509_add_ext(cert, ext, -1) == 1;
  X509_EXTENSION_free(ext);
  return ok;
}

// A certificate for `key` with subject fields (O, CN), issued by
// issuer_cert/issuer_key (self-signed when null).
X509* MakeCert(EVP_PKEY* key, const std::string& org, const std::string& cn, const Validity& v, X509* issuer_cert,
               EVP_PKEY* issuer_key, const std::vector<std::pair<int, std::string>>& exts) {
  X509* cert = X509_new();
  X509_set_version(cert, 2);
  BIGNUM* serial = BN_new();
  BN_rand(serial, 64, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY);
  BN_to_ASN1_INTEGER(serial, X509_get_serialNumber(cert));
  BN_free(serial);
  X509_gmtime_adj(X509_getm_notBefore(cert), v.not_before_s);
  X509_gmtime_adj(X509_getm_notAfter(cert), v.not_after_s);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  if (!org.empty()) {
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(org.c_str()), -1, -1, 0);
  }
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert, issuer_cert ? X509_get_subject_name(issuer_cert) : name);
  for (const auto& [nid, value] : exts) {
    if (!AddExt(cert, issuer_cert ? issuer_cert : cert, nid, value)) {
      X509_free(cert);
      return nullptr;
    }
  }
  if (X509_sign(cert, issuer_key ? issuer_key : key, EVP_sha256()) <= 0) {
    X509_free(cert);
    return nullptr;
  }
  return cert;
}

Status WritePem(const std::string& path, X509* cert, EVP_PKEY* key) {
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return ErrnoStatus("open " + path);
  bool ok = cert ? PEM_write_X509(f, cert) == 1 : PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
  if (std::fclose(f) != 0) ok = false;
  if (!ok) return Status::Io("cannot write " + path, 0);
  if (key) ::chmod(path.c_str(), 0600);
  return Status::Ok();
}

Status WriteLeaf(const std::string& dir, const std::string& prefix, const std::string& org, const std::string& cn,
                 const Validity& v, const TestCa& issuer, const std::vector<std::pair<int, std::string>>& exts) {
  EVP_PKEY* key = NewKey();
  if (!key) return Status::Internal("key generation failed");
  X509* cert = MakeCert(key, org, cn, v, issuer.impl().cert, issuer.impl().key, exts);
  if (!cert) {
    EVP_PKEY_free(key);
    return Status::Internal("cannot make the " + prefix + " certificate");
  }
  Status s = WritePem(dir + "/" + prefix + "-cert.pem", cert, nullptr);
  if (s.ok()) s = WritePem(dir + "/" + prefix + "-key.pem", nullptr, key);
  X509_free(cert);
  EVP_PKEY_free(key);
  return s;
}

}  // namespace

TestCa::TestCa(const std::string& common_name) : impl_(std::make_unique<Impl>()) {
  impl_->key = NewKey();
  if (!impl_->key) {
    status_ = Status::Internal("key generation failed");
    return;
  }
  impl_->cert = MakeCert(impl_->key, "ferry tests", common_name, {-kDay, 30 * kDay}, nullptr, nullptr,
                         {{NID_basic_constraints, "critical,CA:TRUE"},
                          {NID_key_usage, "critical,keyCertSign,cRLSign"},
                          {NID_subject_key_identifier, "hash"}});
  if (!impl_->cert) status_ = Status::Internal("cannot make the CA certificate");
}

TestCa::~TestCa() = default;

Status WriteX509Dir(const std::string& dir, const TestCa& ca, const X509DirOptions& o) {
  if (!ca.status().ok()) return ca.status();
  ::mkdir(dir.c_str(), 0700);
  const TestCa& issuer = o.issuer ? *o.issuer : ca;
  FERRY_RETURN_IF_ERROR(WritePem(dir + "/ca-cert.pem", ca.impl().cert, nullptr));
  std::string san;
  for (const std::string& d : o.server_dns) san += (san.empty() ? "" : ",") + std::string("DNS:") + d;
  for (const std::string& ip : o.server_ips) san += (san.empty() ? "" : ",") + std::string("IP:") + ip;
  std::vector<std::pair<int, std::string>> server_exts = {
      {NID_basic_constraints, "critical,CA:FALSE"},
      {NID_key_usage, "critical,digitalSignature,keyEncipherment"},
      {NID_ext_key_usage, "serverAuth"}};
  if (!san.empty()) server_exts.push_back({NID_subject_alt_name, san});
  FERRY_RETURN_IF_ERROR(WriteLeaf(dir, "server", "ferry", o.server_cn, o.server_valid, issuer, server_exts));
  if (o.client_cert) {
    FERRY_RETURN_IF_ERROR(WriteLeaf(dir, "client", "ferry", o.client_cn, o.client_valid, issuer,
                                    {{NID_basic_constraints, "critical,CA:FALSE"},
                                     {NID_key_usage, "critical,digitalSignature,keyEncipherment"},
                                     {NID_ext_key_usage, "clientAuth"}}));
  }
  return Status::Ok();
}

Status WritePskDir(const std::string& dir, const std::string& username, const std::string& hexkey) {
  ::mkdir(dir.c_str(), 0700);
  const std::string path = dir + "/keys.psk";
  FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return ErrnoStatus("open " + path);
  std::fprintf(f, "someone-else:%s\n%s:%s\n", RandomHexKey().c_str(), username.c_str(), hexkey.c_str());
  if (std::fclose(f) != 0) return ErrnoStatus("write " + path);
  ::chmod(path.c_str(), 0600);
  return Status::Ok();
}

std::string RandomHexKey() {
  unsigned char b[32];
  RAND_bytes(b, sizeof b);
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (unsigned char c : b) {
    s += kHex[c >> 4];
    s += kHex[c & 15];
  }
  return s;
}

}  // namespace ferry::test
