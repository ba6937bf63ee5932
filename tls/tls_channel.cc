// TlsChannel: one TLS session over a connected Channel, with memory BIOs.
//
// OpenSSL never touches the socket: ciphertext it produces is taken out of
// a memory BIO and written with the inner channel's WriteAll, ciphertext for
// it is read with the inner channel's ReadSome and put into the other memory
// BIO. So every wait is the inner channel's: bounded by its ProgressBound
// (no-progress-timeout), woken by Shutdown() from any thread.
//
// Threads: one reader and one writer at a time (the Channel contract). The
// SSL object is not thread-safe, so every SSL call holds ssl_mu_, which is
// never held across a wait; write_mu_ orders the writes to the inner channel
// (held across them). Ciphertext a read produces (a TLS 1.3 KeyUpdate answer)
// is written by whoever takes write_mu_ next, or by the reader itself when
// the writer is idle.
//
// End of stream: ReadSome returns 0 only after the peer's close_notify; a
// connection that ends without one is an error ("truncated"). The channel
// sends its own close_notify when it is destroyed after a session that had
// no error and was not shut down.
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>

#include "core/deadline.h"
#include "core/endian.h"
#include "core/progress.h"
#include "core/wire.h"
#include "tls/tls_internal.h"

namespace ferry::tls {
namespace {


// Plaintext gathered per SSL_write (several full 16 KiB records).
constexpr size_t kStageBytes = 256 * 1024;
// Ciphertext read from the inner channel per call.
constexpr size_t kReadBytes = 256 * 1024;
// How long the close_notify at destruction may take.
constexpr std::chrono::milliseconds kCloseBound(2000);

std::string HexBytes(const uint8_t* p, size_t n) {
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (i) s += ' ';
    s += kHex[p[i] >> 4];
    s += kHex[p[i] & 15];
  }
  return s;
}

bool IsIpAddress(const std::string& host) {
  in6_addr a6;
  in_addr a4;
  std::string h = host;
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  return ::inet_pton(AF_INET, h.c_str(), &a4) == 1 || ::inet_pton(AF_INET6, h.c_str(), &a6) == 1;
}

std::string StripBrackets(std::string h) {
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);
  return h;
}

class TlsChannel final : public Channel {
 public:
  TlsChannel(std::unique_ptr<Channel> inner, const TlsContext& ctx, bool client)
      : inner_(std::move(inner)), client_(client), cfg_(ctx.config()) {
    ssl_ = SSL_new(ctx.impl().ctx);
    if (ssl_) {
      rbio_ = BIO_new(BIO_s_mem());
      wbio_ = BIO_new(BIO_s_mem());
      if (rbio_ && wbio_) {
        SSL_set_bio(ssl_, rbio_, wbio_);
      } else {
        if (rbio_) BIO_free(rbio_);
        if (wbio_) BIO_free(wbio_);
        rbio_ = wbio_ = nullptr;
      }
      SSL_set_app_data(ssl_, &state_);
    }
    has_certificate_ = ctx.impl().has_certificate;
  }

  ~TlsChannel() override {
    if (ssl_) {
      if (established_ && !failed_ && !shut_.load() && !close_sent_) {
        inner_->SetProgressBound(ProgressBound::Make(kCloseBound));
        SendCloseNotify();
      }
      SSL_free(ssl_);  // frees the BIOs
    }
  }

  bool valid() const { return ssl_ && rbio_ && wbio_; }

  Status Handshake(const WrapOptions& opts);

  Status WriteAll(std::span<iovec> iov) override;
  Result<size_t> ReadSome(void* buf, size_t len) override;
  // A Shutdown while no write is in progress is how the end of a channel is
  // signalled (multifd closes its channels this way after the last SYNC):
  // the close_notify goes out first, if the socket takes it without waiting.
  // A Shutdown that interrupts a write is an abort: no close_notify, the
  // peer sees a truncated session.
  void Shutdown() override {
    if (shut_.exchange(true)) return;
    if (established_ && !failed_.load()) {
      std::unique_lock<std::mutex> w(write_mu_, std::try_to_lock);
      if (w.owns_lock() && !close_sent_) {
        // The socket may still be full of records the peer reads now: wait
        // (briefly) until the close_notify fits, so the write cannot block.
        const int fd = inner_->fd();
        const Deadline until(kCloseBound);
        for (;;) {
          pollfd p{fd, POLLOUT, 0};
          const int rc = fd >= 0 ? ::poll(&p, 1, until.PollMs()) : 0;
          if (rc < 0 && errno == EINTR) continue;
          if (rc == 1 && (p.revents & POLLOUT) && !(p.revents & (POLLERR | POLLHUP))) SendCloseNotify();
          break;
        }
      }
    }
    inner_->Shutdown();
  }
  std::string Describe() const override { return inner_->Describe(); }
  int fd() const override { return -1; }  // never drive the socket past the session
  void SetProgressBound(const ProgressBound& bound) override { inner_->SetProgressBound(bound); }
  ProgressBound progress_bound() const override { return inner_->progress_bound(); }
  bool WaitReadable(int wait_ms) override;

  SessionInfo info() const { return info_; }

 private:
  // Everything OpenSSL wants sent, taken out under ssl_mu_.
  std::vector<uint8_t> TakeOutputLocked() {
    std::vector<uint8_t> out;
    const size_t n = BIO_ctrl_pending(wbio_);
    if (n == 0) return out;
    out.resize(n);
    const int got = BIO_read(wbio_, out.data(), static_cast<int>(n));
    out.resize(got > 0 ? static_cast<size_t>(got) : 0);
    return out;
  }
  Status SendRaw(const std::vector<uint8_t>& out) {
    if (out.empty()) return Status::Ok();
    return inner_->WriteAll(out.data(), out.size());
  }
  // The reader's output (rare) when no writer is busy.
  void FlushFromReader() {
    std::unique_lock<std::mutex> w(write_mu_, std::try_to_lock);
    if (!w.owns_lock()) return;
    std::vector<uint8_t> out;
    {
      std::lock_guard<std::mutex> l(ssl_mu_);
      out = TakeOutputLocked();
    }
    (void)SendRaw(out);
  }
  void SendCloseNotify();
  void TellPlaintextSource();
  Status FeedCiphertext(const uint8_t* p, size_t n) {
    if (!first_bytes_len_) {
      first_bytes_len_ = std::min<size_t>(n, sizeof first_bytes_);
      std::memcpy(first_bytes_, p, first_bytes_len_);
    }
    if (BIO_write(rbio_, p, static_cast<int>(n)) != static_cast<int>(n)) {
      return Status::Internal("TLS: cannot buffer " + std::to_string(n) + " bytes from " + Describe());
    }
    return Status::Ok();
  }
  // One line: why the handshake failed.
  std::string HandshakeReason(int ssl_error);
  Status Truncated() const {
    return Status::Protocol("TLS stream from " + Describe() +
                            " ended without a close_notify: truncated (the peer went away mid-session)");
  }
  Status SessionError(const std::string& what) {
    failed_ = true;
    return Status::Protocol("TLS " + what + " " + Describe() + " failed: " + OpensslErrors());
  }

  std::unique_ptr<Channel> inner_;
  const bool client_;
  const TlsConfig cfg_;
  bool has_certificate_ = false;
  SSL* ssl_ = nullptr;
  BIO* rbio_ = nullptr;  // network -> SSL (owned by ssl_)
  BIO* wbio_ = nullptr;  // SSL -> network (owned by ssl_)
  SessionState state_;
  std::string expected_host_;  // client: the name the server certificate must carry
  SessionInfo info_;
  std::mutex ssl_mu_;
  std::mutex write_mu_;
  std::atomic<bool> shut_{false};
  bool established_ = false;
  bool strict_end_ = true;  // an end without close_notify is an error
  bool close_sent_ = false;  // under write_mu_ (or in the destructor)
  std::atomic<bool> failed_{false};
  bool got_close_notify_ = false;  // reader only
  std::optional<Status> inner_end_;  // reader: inner EOF (Ok) or error seen by WaitReadable
  uint8_t first_bytes_[8] = {};
  size_t first_bytes_len_ = 0;
  std::vector<uint8_t> stage_;
};

std::string TlsChannel::HandshakeReason(int ssl_error) {
  const long verify = SSL_get_verify_result(ssl_);
  unsigned long e = ERR_peek_error();
  const int reason = ERR_GET_REASON(e);
  const std::string errors = OpensslErrors();  // clears the queue
  if (!state_.authz_denied_dn.empty()) {
    return "client certificate " + state_.authz_denied_dn + " is not in tls-authz";
  }
  if (!state_.unknown_psk_identity.empty()) {
    return "unknown PSK username '" + state_.unknown_psk_identity + "' (not in " + cfg_.dir + "/keys.psk)";
  }
  if (verify != X509_V_OK && cfg_.kind == TlsConfig::Kind::kX509) {
    const std::string whose = client_ ? "the server's certificate" : "the client's certificate";
    switch (verify) {
      case X509_V_ERR_HOSTNAME_MISMATCH:
      case X509_V_ERR_IP_ADDRESS_MISMATCH:
        return "wrong host name: " + whose + " is for " + state_.peer_names + ", not '" +
               StripBrackets(cfg_.hostname.empty() ? expected_host_ : cfg_.hostname) + "' (set -p tls-hostname=NAME)";
      case X509_V_ERR_CERT_HAS_EXPIRED:
        return whose + " has expired";
      case X509_V_ERR_CERT_NOT_YET_VALID:
        return whose + " is not yet valid";
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
      case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
      case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
      case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
      case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
      case X509_V_ERR_CERT_SIGNATURE_FAILURE:
        return "unknown CA: " + whose + " (issued by " + state_.peer_issuer + ") is not signed by " + cfg_.dir +
               "/ca-cert.pem";
      default:
        return whose + " was refused: " + X509_verify_cert_error_string(verify);
    }
  }
  switch (reason) {
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
      return "the peer refused our certificate: unknown CA (it does not trust " + cfg_.dir + "/ca-cert.pem's issuer)";
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
      return "the peer refused our certificate: expired or not yet valid";
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
    case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
      return "the peer refused our certificate (bad certificate: wrong CA, wrong host name, or not in its tls-authz)";
    case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
      return "the peer refused our certificate: access denied (tls-authz)";
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
      return client_ ? "the server requires a client certificate (verify-peer=on) and we have none (" + cfg_.dir +
                           "/client-cert.pem)"
                     : "the client sent no certificate, and verify-peer=on requires one";
    case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
    case SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC:
    case SSL_R_DIGEST_CHECK_FAILED:
    case SSL_R_BAD_PSK:
    case SSL_R_BINDER_DOES_NOT_VERIFY:
    case SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER:
      if (cfg_.kind == TlsConfig::Kind::kPsk) return "wrong PSK: the two sides' keys for '" + cfg_.username + "' differ";
      break;
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_RECORD_LENGTH_MISMATCH:
    case SSL_R_UNKNOWN_PROTOCOL:
    case SSL_R_HTTP_REQUEST:
      if (first_bytes_len_ >= 4 && std::memcmp(first_bytes_, "QEVM", 4) == 0) {
        return "the peer sent a plaintext migration stream (\"QEVM\"): it does not use TLS";
      }
      if (first_bytes_len_ >= 4 && first_bytes_[0] == 0x11 && first_bytes_[1] == 0x22 && first_bytes_[2] == 0x33 &&
          first_bytes_[3] == 0x44) {
        return "the peer sent a plaintext multifd channel: it does not use TLS";
      }
      return "the peer does not speak TLS (first bytes " + HexBytes(first_bytes_, first_bytes_len_) + ")";
    case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
    case SSL_R_NO_SHARED_CIPHER:
    case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
      if (cfg_.kind == TlsConfig::Kind::kPsk) {
        return "no common ground with the peer (handshake failure): does it use PSK with username '" + cfg_.username +
               "' too? (" + errors + ")";
      }
      return "no common ground with the peer (handshake failure): does it use x509 credentials too? (" + errors + ")";
    default:
      break;
  }
  if (ssl_error == SSL_ERROR_SYSCALL && errors == "unknown OpenSSL error") return "connection error";
  return errors;
}

Status TlsChannel::Handshake(const WrapOptions& opts) {
  const std::string side = client_ ? "client" : "server";
  auto fail = [&](const std::string& reason) {
    failed_ = true;
    return Status::Protocol("TLS handshake with " + Describe() + " (we are the " + side + ") failed: " + reason);
  };
  if (!valid()) return fail("cannot create the session: " + OpensslErrors());
  if (client_) {
    SSL_set_connect_state(ssl_);
    expected_host_ = StripBrackets(cfg_.hostname.empty() ? opts.peer_host : cfg_.hostname);
    if (cfg_.kind == TlsConfig::Kind::kX509 && cfg_.verify_peer && !expected_host_.empty()) {
      X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
      if (IsIpAddress(expected_host_)) {
        if (X509_VERIFY_PARAM_set1_ip_asc(param, expected_host_.c_str()) != 1) return fail("bad IP address " + expected_host_);
      } else {
        if (SSL_set1_host(ssl_, expected_host_.c_str()) != 1) return fail("bad host name " + expected_host_);
        SSL_set_tlsext_host_name(ssl_, expected_host_.c_str());
      }
    }
  } else {
    SSL_set_accept_state(ssl_);
    SSL_set_num_tickets(ssl_, opts.peer_is_ferry && cfg_.kind == TlsConfig::Kind::kX509 ? 1 : 0);
  }
  strict_end_ = opts.peer_is_ferry;

  // The handshake has its own, short bound; the migration's comes later
  // (SetProgressBound). `stop` ends it at once.
  const ProgressBound saved = inner_->progress_bound();
  inner_->SetProgressBound(ProgressBound::Make(cfg_.handshake_timeout));
  std::optional<std::stop_callback<std::function<void()>>> on_stop;
  if (opts.stop.stop_possible()) on_stop.emplace(opts.stop, std::function<void()>([this] { inner_->Shutdown(); }));
  std::vector<uint8_t> buf(16 * 1024);

  // Reads more ciphertext; a failure becomes the handshake's reason.
  auto pull = [&](const char* during) -> Status {
    Result<size_t> n = inner_->ReadSome(buf.data(), buf.size());
    if (!n.ok()) {
      if (opts.stop.stop_requested()) return Status::Cancelled("TLS handshake with " + Describe() + " cancelled");
      if (n.status().code() == Code::kTimeout) {
        return fail(std::string("no answer ") + during + " within " + FormatDuration(cfg_.handshake_timeout) +
                    " (is the peer using TLS?)");
      }
      return fail(n.status().message() +
                  (client_ ? " (a destination without TLS, or one that refused our credentials?)"
                           : " (a source without TLS, or one that refused our credentials?)"));
    }
    if (*n == 0) {
      return fail(std::string("the peer closed the connection ") + during +
                  (client_ ? " (a destination without TLS, or one that refused our credentials)"
                           : " (a source without TLS, or one that refused our credentials)"));
    }
    std::lock_guard<std::mutex> l(ssl_mu_);
    return FeedCiphertext(buf.data(), *n);
  };

  for (;;) {
    int rc, err;
    std::vector<uint8_t> out;
    {
      std::lock_guard<std::mutex> l(ssl_mu_);
      ERR_clear_error();
      rc = SSL_do_handshake(ssl_);
      err = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_, rc);
      out = TakeOutputLocked();  // alerts too: the peer should learn why
    }
    Status sent = SendRaw(out);
    if (rc == 1) {
      if (!sent.ok()) return fail(sent.message());
      break;
    }
    if (err == SSL_ERROR_WANT_READ) {
      if (!sent.ok()) return fail(sent.message());
      FERRY_RETURN_IF_ERROR(pull("during the handshake"));
      continue;
    }
    std::string reason;
    {
      std::lock_guard<std::mutex> l(ssl_mu_);
      reason = HandshakeReason(err);
    }
    if (!client_ && first_bytes_len_ >= 4 && std::memcmp(first_bytes_, "QEVM", 4) == 0) TellPlaintextSource();
    return fail(reason);
  }

  // TLS 1.3: the server checks our certificate after we finished. A ferry
  // server answers with a session ticket once it accepted us, or an alert.
  if (client_ && opts.peer_is_ferry && cfg_.kind == TlsConfig::Kind::kX509 &&
      SSL_version(ssl_) >= TLS1_3_VERSION) {
    for (;;) {
      int rc, err;
      uint8_t b;
      size_t n = 0;
      {
        std::lock_guard<std::mutex> l(ssl_mu_);
        if (state_.ticket_seen || SSL_pending(ssl_) > 0) break;
        ERR_clear_error();
        rc = SSL_peek_ex(ssl_, &b, 1, &n);
        err = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_, rc);
        if (rc == 1 || state_.ticket_seen) break;
      }
      if (err == SSL_ERROR_WANT_READ) {
        FERRY_RETURN_IF_ERROR(pull("waiting for the server to accept our certificate"));
        continue;
      }
      std::string reason;
      {
        std::lock_guard<std::mutex> l(ssl_mu_);
        reason = err == SSL_ERROR_ZERO_RETURN ? "the server closed the session" : HandshakeReason(err);
      }
      return fail(reason);
    }
  }

  established_ = true;
  info_.version = SSL_get_version(ssl_);
  const SSL_CIPHER* cipher = SSL_get_current_cipher(ssl_);
  info_.cipher = cipher ? SSL_CIPHER_get_name(cipher) : "";
  if (X509* peer = SSL_get0_peer_certificate(ssl_)) info_.peer_dn = NameText(X509_get_subject_name(peer));
  on_stop.reset();
  inner_->SetProgressBound(saved);
  if (opts.stop.stop_requested()) return Status::Cancelled("TLS handshake with " + Describe() + " cancelled");
  return Status::Ok();
}

Status TlsChannel::WriteAll(std::span<iovec> iov) {
  std::lock_guard<std::mutex> w(write_mu_);
  if (failed_) return Status::Protocol("TLS session with " + Describe() + " failed earlier");
  size_t i = 0;
  for (;;) {
    // Gather up to kStageBytes of plaintext; big buffers go in place.
    stage_.clear();
    const uint8_t* direct = nullptr;
    size_t direct_len = 0;
    while (i < iov.size()) {
      if (iov[i].iov_len == 0) {
        ++i;
        continue;
      }
      if (stage_.empty() && iov[i].iov_len >= kStageBytes / 2) {
        direct_len = std::min(iov[i].iov_len, kStageBytes);
        direct = static_cast<const uint8_t*>(iov[i].iov_base);
        i = AdvanceIovecs(iov, i, direct_len);
        break;
      }
      const size_t room = kStageBytes - stage_.size();
      if (room == 0) break;
      const size_t take = std::min(room, iov[i].iov_len);
      const auto* p = static_cast<const uint8_t*>(iov[i].iov_base);
      stage_.insert(stage_.end(), p, p + take);
      i = AdvanceIovecs(iov, i, take);
    }
    const uint8_t* data = direct ? direct : stage_.data();
    const size_t len = direct ? direct_len : stage_.size();
    if (len == 0) return Status::Ok();
    std::vector<uint8_t> out;
    {
      std::lock_guard<std::mutex> l(ssl_mu_);
      ERR_clear_error();
      size_t written = 0;
      if (SSL_write_ex(ssl_, data, len, &written) != 1 || written != len) return SessionError("write to");
      out = TakeOutputLocked();
    }
    Status s = SendRaw(out);
    if (!s.ok()) {
      if (!shut_.load()) failed_ = true;
      return s;
    }
  }
}

Result<size_t> TlsChannel::ReadSome(void* buf, size_t len) {
  if (len == 0) return size_t{0};
  if (got_close_notify_) return size_t{0};
  std::vector<uint8_t> cbuf;
  for (;;) {
    int rc, err;
    size_t n = 0;
    bool pending_out;
    {
      std::lock_guard<std::mutex> l(ssl_mu_);
      if (failed_) return Status::Protocol("TLS session with " + Describe() + " failed earlier");
      ERR_clear_error();
      rc = SSL_read_ex(ssl_, buf, len, &n);
      err = rc == 1 ? SSL_ERROR_NONE : SSL_get_error(ssl_, rc);
      pending_out = BIO_ctrl_pending(wbio_) > 0;
    }
    if (pending_out) FlushFromReader();
    if (rc == 1) return n;
    if (err == SSL_ERROR_ZERO_RETURN) {
      got_close_notify_ = true;
      return size_t{0};
    }
    if (err != SSL_ERROR_WANT_READ) {
      std::lock_guard<std::mutex> l(ssl_mu_);
      return SessionError("read from");
    }
    if (inner_end_) {
      if (!inner_end_->ok()) return *inner_end_;
      if (!strict_end_) return size_t{0};
      return Truncated();
    }
    if (cbuf.empty()) cbuf.resize(kReadBytes);
    Result<size_t> got = inner_->ReadSome(cbuf.data(), cbuf.size());
    if (!got.ok()) return got.status();
    if (*got == 0) {
      inner_end_ = Status::Ok();
      if (!strict_end_) return size_t{0};
      return Truncated();
    }
    std::lock_guard<std::mutex> l(ssl_mu_);
    FERRY_RETURN_IF_ERROR(FeedCiphertext(cbuf.data(), *got));
  }
}

bool TlsChannel::WaitReadable(int wait_ms) {
  const Deadline deadline{std::chrono::milliseconds(wait_ms)};
  std::vector<uint8_t> cbuf;
  for (;;) {
    {
      std::lock_guard<std::mutex> l(ssl_mu_);
      if (failed_ || got_close_notify_ || inner_end_ || SSL_pending(ssl_) > 0) return true;
      if (BIO_ctrl_pending(rbio_) > 0) {
        // Records are buffered: application data, or only a ticket?
        uint8_t b;
        size_t n = 0;
        ERR_clear_error();
        const int rc = SSL_peek_ex(ssl_, &b, 1, &n);
        if (rc == 1 || SSL_get_error(ssl_, rc) != SSL_ERROR_WANT_READ) return true;
        ERR_clear_error();
      }
    }
    if (!inner_->WaitReadable(deadline.PollMs())) return false;
    if (cbuf.empty()) cbuf.resize(kReadBytes);
    Result<size_t> got = inner_->ReadSome(cbuf.data(), cbuf.size());
    if (!got.ok()) {
      inner_end_ = got.status();
      return true;
    }
    if (*got == 0) {
      inner_end_ = Status::Ok();
      return true;
    }
    std::lock_guard<std::mutex> l(ssl_mu_);
    if (!FeedCiphertext(cbuf.data(), *got).ok()) return true;
  }
}

// A ferry source without TLS reads a verdict when its stream fails: tell it
// why, in the clear (nothing secret), then let it read that before we close
// (closing with its stream unread would reset the connection).
void TlsChannel::TellPlaintextSource() {
  const int fd = inner_->fd();
  if (fd < 0) return;
  const std::string msg = "this destination uses TLS (--tls-creds) and the source does not";
  std::vector<uint8_t> out(12);
  StoreBe32(out.data(), wire::kVerdictMagic);
  StoreBe32(out.data() + 4, 1);
  StoreBe32(out.data() + 8, static_cast<uint32_t>(msg.size()));
  out.insert(out.end(), msg.begin(), msg.end());
  if (!inner_->WriteAll(out.data(), out.size()).ok() || ::shutdown(fd, SHUT_WR) != 0) return;
  const Deadline until(std::chrono::seconds(2));
  std::vector<uint8_t> sink(64 * 1024);
  while (!until.Expired()) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, std::max(until.PollMs(), 1)) <= 0) return;
    Result<size_t> n = inner_->ReadSome(sink.data(), sink.size());
    if (!n.ok() || *n == 0) return;
  }
}

void TlsChannel::SendCloseNotify() {
  close_sent_ = true;
  std::vector<uint8_t> out;
  {
    std::lock_guard<std::mutex> l(ssl_mu_);
    ERR_clear_error();
    SSL_shutdown(ssl_);  // queues close_notify; we do not wait for the peer's
    out = TakeOutputLocked();
    ERR_clear_error();
  }
  (void)SendRaw(out);  // best effort: the peer may be gone already
}

Result<std::unique_ptr<Channel>> Wrap(std::unique_ptr<Channel> inner, const TlsContext& ctx, const WrapOptions& opts,
                                      bool client) {
  if (!inner) return Status::InvalidArgument("TLS: no channel to wrap");
  if ((ctx.endpoint() == Endpoint::kClient) != client) {
    return Status::Internal("TLS: a " + std::string(client ? "server" : "client") + " context used for a " +
                            (client ? "client" : "server") + " session");
  }
  auto ch = std::make_unique<TlsChannel>(std::move(inner), ctx, client);
  FERRY_RETURN_IF_ERROR(ch->Handshake(opts));
  return std::unique_ptr<Channel>(std::move(ch));
}

}  // namespace

Result<std::unique_ptr<Channel>> WrapClient(std::unique_ptr<Channel> inner, const TlsContext& ctx,
                                            const WrapOptions& opts) {
  return Wrap(std::move(inner), ctx, opts, true);
}

Result<std::unique_ptr<Channel>> WrapServer(std::unique_ptr<Channel> inner, const TlsContext& ctx,
                                            const WrapOptions& opts) {
  return Wrap(std::move(inner), ctx, opts, false);
}

std::optional<SessionInfo> SessionInfoOf(const Channel& ch) {
  if (const auto* t = dynamic_cast<const TlsChannel*>(&ch)) return t->info();
  return std::nullopt;
}

}  // namespace ferry::tls
