// TLS between two ferry processes (send = TLS client, recv = TLS server),
// named after QEMU's own migration tests (precopy/tcp/tls/..., multifd/tcp/
// tls/...), plus expired and not-yet-valid certificates, plaintext on one
// side only, and a source killed mid-stream.
//
// Every credential is made by the test (tests/support/tls_creds.h). The
// source migrates a pattern file (--memory-file); a completed migration is
// checked by ferry's digest (verified) and by comparing the destination's
// memory file with the pattern byte for byte. A refused handshake must fail
// both sides with a line naming the reason, leave no destination memory file
// behind, and a retry with the right credentials must then succeed.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"
#include "tests/support/tls_creds.h"

namespace ferry::test {
namespace {

using nlohmann::json;
using std::chrono::seconds;

constexpr uint64_t kGuestRam = 48ULL << 20;
constexpr auto kExit = seconds(60);

bool Exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

struct Side {
  std::vector<std::string> args;  // --tls-creds ..., -p ..., -c ...
};

class TlsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    suite_dir_ = new TempDir("ferry-tls-suite");
    ca_ = new TestCa("ferry test CA");
    other_ca_ = new TestCa("some other CA");
    auto D = [](const char* n) { return suite_dir_->Path(n); };
    auto must = [](const Status& s) {
      if (!s.ok()) setup_error_ = s.message();
    };
    must(WriteX509Dir(D("x509"), *ca_));
    X509DirOptions anon;
    anon.client_cert = false;
    must(WriteX509Dir(D("x509-anon"), *ca_, anon));
    X509DirOptions override_host;
    override_host.server_cn = "migration.example";
    override_host.server_dns = {"migration.example"};
    override_host.server_ips = {};
    must(WriteX509Dir(D("x509-override"), *ca_, override_host));
    X509DirOptions mismatch;
    mismatch.server_cn = "other.example";
    mismatch.server_dns = {"other.example"};
    mismatch.server_ips = {"192.0.2.1"};
    must(WriteX509Dir(D("x509-mismatch"), *ca_, mismatch));
    X509DirOptions hostile;
    hostile.client_cn = "hostile-client";
    must(WriteX509Dir(D("x509-hostile"), *ca_, hostile));
    X509DirOptions wrong_ca;
    wrong_ca.issuer = other_ca_;  // certificates by another CA; ca-cert.pem still ours
    must(WriteX509Dir(D("x509-wrong-ca"), *ca_, wrong_ca));
    X509DirOptions expired;
    expired.server_valid = {-10 * kDay, -kDay};
    must(WriteX509Dir(D("x509-expired"), *ca_, expired));
    X509DirOptions future;
    future.server_valid = {kDay, 10 * kDay};
    must(WriteX509Dir(D("x509-future"), *ca_, future));
    X509DirOptions client_expired;
    client_expired.client_valid = {-10 * kDay, -kDay};
    must(WriteX509Dir(D("x509-client-expired"), *ca_, client_expired));
    const std::string key = RandomHexKey();
    must(WritePskDir(D("psk"), "qemu", key));
    must(WritePskDir(D("psk-other"), "qemu", RandomHexKey()));
    must(WritePskDir(D("psk-user"), "alice", key));
    pattern_ = D("pattern.bin");
    must(WritePatternFile(pattern_, {.size = kGuestRam, .seed = 0x715, .random_pct = 50, .zero_pct = 30, .text_pct = 20}));
  }
  static void TearDownTestSuite() {
    delete ca_;
    delete other_ca_;
    delete suite_dir_;
  }
  void SetUp() override {
    ASSERT_TRUE(setup_error_.empty()) << setup_error_;
    dir_ = std::make_unique<TempDir>("ferry-tls");
  }

  static std::string Creds(const std::string& kind, const std::string& name, const std::string& opts = "") {
    return kind + ":" + suite_dir_->Path(name) + opts;
  }

  struct Run {
    Process recv, send;
    bool recv_ok = false, send_ok = false;
    std::string memory;  // the destination's --memory-file
  };

  // recv on `listen` (tcp:127.0.0.1:0 or a unix path) and send to it, with
  // the sides' extra arguments. Waits for both.
  void Migrate(const Side& dst, const Side& src, Run* r, const std::string& tag = "a",
               const std::string& listen = "tcp:127.0.0.1:0") {
    r->memory = dir_->Path(tag + "-received.bin");
    const std::string ready = dir_->Path(tag + "-ready");
    std::vector<std::string> ra = {"recv", listen, "--memory-file", r->memory, "--ready-file", ready,
                                   "--timeout", "30", "--json"};
    ra.insert(ra.end(), dst.args.begin(), dst.args.end());
    Result<Process> recv = StartFerry(*dir_, tag + "-recv", ra);
    ASSERT_TRUE(recv.ok()) << recv.status().ToString();
    r->recv = std::move(*recv);
    Result<std::string> uri = WaitForFile(ready, kReadyTimeout, &r->recv);
    ASSERT_TRUE(uri.ok()) << uri.status().message();
    const std::string copy = dir_->Path(tag + "-source.bin");
    ASSERT_TRUE(CopyFile(pattern_, copy).ok());
    std::vector<std::string> sa = {"send", *uri, "--memory-file", copy, "--json", "--connect-timeout", "10"};
    sa.insert(sa.end(), src.args.begin(), src.args.end());
    Result<Process> send = StartFerry(*dir_, tag + "-send", sa);
    ASSERT_TRUE(send.ok()) << send.status().ToString();
    r->send = std::move(*send);
    Result<ExitStatus> ss = r->send.Wait(kExit);
    Result<ExitStatus> rs = r->recv.Wait(kExit);
    ASSERT_TRUE(ss.ok()) << r->send.Report();
    ASSERT_TRUE(rs.ok()) << r->recv.Report();
    r->send_ok = ss->exited && ss->code == 0;
    r->recv_ok = rs->exited && rs->code == 0;
  }

  // Both completed, verified, memory byte for byte, and TLS on every channel.
  void ExpectSuccess(Run& r, size_t multifd_channels = 0, bool tls = true) {
    ASSERT_TRUE(r.send_ok) << r.send.Report() << "\n" << r.recv.Report();
    ASSERT_TRUE(r.recv_ok) << r.recv.Report() << "\n" << r.send.Report();
    for (Process* p : {&r.send, &r.recv}) {
      Result<json> j = FerryJson(*p);
      ASSERT_TRUE(j.ok()) << j.status().message();
      EXPECT_EQ(j->value("status", ""), "completed") << p->Report();
      EXPECT_EQ(JsonAt(*j, "/verified"), json(true)) << p->Report();
      if (!tls) {
        EXPECT_FALSE(j->contains("tls")) << p->Report();
        continue;
      }
      std::optional<json> version = JsonAt(*j, "/tls/main/version");
      ASSERT_TRUE(version.has_value()) << "no tls.main in the JSON\n" << p->Report();
      EXPECT_TRUE(*version == "TLSv1.3" || *version == "TLSv1.2") << *version;
      EXPECT_FALSE(JsonAt(*j, "/tls/main/cipher").value_or(json("")).get<std::string>().empty());
      std::optional<json> mf = JsonAt(*j, "/tls/multifd");
      ASSERT_TRUE(mf && mf->is_array()) << p->Report();
      EXPECT_EQ(mf->size(), multifd_channels) << p->Report();
    }
    EXPECT_TRUE(FilesEqual(r.memory, pattern_)) << r.recv.Report();
  }

  // Both failed; each side's error names `send_reason` / `recv_reason`; no
  // destination memory was written.
  void ExpectRefused(Run& r, const std::string& send_reason, const std::string& recv_reason) {
    EXPECT_FALSE(r.send_ok) << r.send.Report();
    EXPECT_FALSE(r.recv_ok) << r.recv.Report();
    EXPECT_NE(r.send.Stderr().find(send_reason), std::string::npos)
        << "source error lacks '" << send_reason << "'\n" << r.send.Report();
    EXPECT_NE(r.recv.Stderr().find(recv_reason), std::string::npos)
        << "destination error lacks '" << recv_reason << "'\n" << r.recv.Report();
    EXPECT_FALSE(Exists(r.memory)) << "the refused destination wrote its memory file\n" << r.recv.Report();
    EXPECT_EQ(r.recv.Stderr().find("ferry: error:"), r.recv.Stderr().rfind("ferry: error:")) << "not one line";
  }

  // Refused with `bad` on the source, then a retry with `good` succeeds.
  void RefusedThenRetry(const Side& dst, const Side& bad_src, const Side& good_src, const std::string& send_reason,
                        const std::string& recv_reason, size_t channels = 0, const Side* good_dst = nullptr,
                        bool retry_tls = true) {
    Run bad;
    ASSERT_NO_FATAL_FAILURE(Migrate(dst, bad_src, &bad, "refused"));
    ExpectRefused(bad, send_reason, recv_reason);
    Run good;
    ASSERT_NO_FATAL_FAILURE(Migrate(good_dst ? *good_dst : dst, good_src, &good, "retry"));
    ExpectSuccess(good, channels, retry_tls);
  }

  static Side Multifd(Side s, int n) {
    s.args.insert(s.args.end(), {"-c", "multifd=on", "-p", "multifd-channels=" + std::to_string(n)});
    return s;
  }

  static inline TempDir* suite_dir_ = nullptr;
  static inline TestCa* ca_ = nullptr;
  static inline TestCa* other_ca_ = nullptr;
  static inline std::string pattern_;
  static inline std::string setup_error_;
  std::unique_ptr<TempDir> dir_;
};

// ---- precopy/tcp/tls/psk ------------------------------------------------------

TEST_F(TlsTest, PrecopyTcpPskMatch) {
  Run r;
  ASSERT_NO_FATAL_FAILURE(Migrate({{"--tls-creds", Creds("psk", "psk")}}, {{"--tls-creds", Creds("psk", "psk")}}, &r));
  ExpectSuccess(r);
}

TEST_F(TlsTest, PrecopyTcpPskMismatch) {
  RefusedThenRetry({{"--tls-creds", Creds("psk", "psk")}}, {{"--tls-creds", Creds("psk", "psk-other")}},
                   {{"--tls-creds", Creds("psk", "psk")}}, "wrong PSK", "wrong PSK");
}

TEST_F(TlsTest, PrecopyTcpPskUnknownUsername) {
  RefusedThenRetry({{"--tls-creds", Creds("psk", "psk")}}, {{"--tls-creds", Creds("psk", "psk-user", ",username=alice")}},
                   {{"--tls-creds", Creds("psk", "psk")}}, "TLS handshake", "unknown PSK username 'alice'");
}

TEST_F(TlsTest, PrecopyUnixPsk) {
  Run r;
  ASSERT_NO_FATAL_FAILURE(Migrate({{"--tls-creds", Creds("psk", "psk")}}, {{"--tls-creds", Creds("psk", "psk")}}, &r,
                                  "a", "unix:" + dir_->Path("mig.sock")));
  ExpectSuccess(r);
}

// ---- precopy/tcp/tls/x509 -----------------------------------------------------

TEST_F(TlsTest, PrecopyTcpX509DefaultHost) {
  // The URI's host, 127.0.0.1, is an IP SAN of the server certificate.
  Run r;
  ASSERT_NO_FATAL_FAILURE(Migrate({{"--tls-creds", Creds("x509", "x509")}}, {{"--tls-creds", Creds("x509", "x509")}}, &r));
  ExpectSuccess(r);
  Result<json> j = FerryJson(r.send);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(JsonAt(*j, "/tls/main/peer"), json("CN=localhost,O=ferry")) << r.send.Report();
  EXPECT_NE(r.send.Stdout().find("\"tls\""), std::string::npos);
}

TEST_F(TlsTest, PrecopyTcpX509OverrideHost) {
  Run r;
  ASSERT_NO_FATAL_FAILURE(Migrate({{"--tls-creds", Creds("x509", "x509-override")}},
                                  {{"--tls-creds", Creds("x509", "x509-override"), "-p", "tls-hostname=migration.example"}},
                                  &r));
  ExpectSuccess(r);
}

TEST_F(TlsTest, PrecopyTcpX509MismatchHost) {
  RefusedThenRetry({{"--tls-creds", Creds("x509", "x509-mismatch")}}, {{"--tls-creds", Creds("x509", "x509-mismatch")}},
                   {{"--tls-creds", Creds("x509", "x509-mismatch"), "-p", "tls-hostname=other.example"}},
                   "wrong host name: the server's certificate is for other.example, 192.0.2.1, not '127.0.0.1'",
                   "the peer refused our certificate");
}

TEST_F(TlsTest, PrecopyTcpX509FriendlyClient) {
  Run r;
  ASSERT_NO_FATAL_FAILURE(Migrate({{"--tls-creds", Creds("x509", "x509"), "-p", "tls-authz=CN=nobody;CN=ferry-client,O=ferry"}},
                                  {{"--tls-creds", Creds("x509", "x509")}}, &r));
  ExpectSuccess(r);
  Result<json> j = FerryJson(r.recv);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(JsonAt(*j, "/tls/main/peer"), json("CN=ferry-client,O=ferry")) << r.recv.Report();
}

TEST_F(TlsTest, PrecopyTcpX509HostileClient) {
  // A certificate from the right CA whose subject is not in tls-authz.
  RefusedThenRetry({{"--tls-creds", Creds("x509", "x509-hostile"), "-p", "tls-authz=CN=ferry-client,O=ferry"}},
                   {{"--tls-creds", Creds("x509", "x509-hostile")}}, {{"--tls-creds", Creds("x509", "x509")}},
                   "TLS handshake", "client certificate CN=hostile-client,O=ferry is not in tls-authz");
}

TEST_F(TlsTest, PrecopyTcpX509UnknownCaClient) {
  // The client's certificate comes from a CA the server does not trust.
  RefusedThenRetry({{"--tls-creds", Creds("x509", "x509")}}, {{"--tls-creds", Creds("x509", "x509-wrong-ca")}},
                   {{"--tls-creds", Creds("x509", "x509")}}, "TLS handshake", "unknown CA: the client's certificate");
}

TEST_F(TlsTest, PrecopyTcpX509UnknownCaServer) {
  const Side good_dst{{"--tls-creds", Creds("x509", "x509")}};
  RefusedThenRetry({{"--tls-creds", Creds("x509", "x509-wrong-ca")}}, {{"--tls-creds", Creds("x509", "x509")}},
                   {{"--tls-creds", Creds("x509", "x509")}}, "unknown CA: the server's certificate", "TLS handshake",
                   0, &good_dst);
}

TEST_F(TlsTest, PrecopyTcpX509AllowAnonClient) {
  Run r;
  ASSERT_NO_FATAL_FAILURE(Migrate({{"--tls-creds", Creds("x509", "x509", ",verify-peer=off")}},
                                  {{"--tls-creds", Creds("x509", "x509-anon")}}, &r));
  ExpectSuccess(r);
}

TEST_F(TlsTest, PrecopyTcpX509RejectAnonClient) {
  RefusedThenRetry({{"--tls-creds", Creds("x509", "x509")}}, {{"--tls-creds", Creds("x509", "x509-anon")}},
                   {{"--tls-creds", Creds("x509", "x509")}}, "requires a client certificate",
                   "the client sent no certificate");
}

TEST_F(TlsTest, PrecopyTcpX509ExpiredServer) {
  const Side good_dst{{"--tls-creds", Creds("x509", "x509")}};
  RefusedThenRetry({{"--tls-creds", Creds("x509", "x509-expired")}}, {{"--tls-creds", Creds("x509", "x509")}},
                   {{"--tls-creds", Creds("x509", "x509")}}, "the server's certificate has expired", "TLS handshake", 0,
                   &good_dst);
}

TEST_F(TlsTest, PrecopyTcpX509NotYetValidServer) {
  const Side good_dst{{"--tls-creds", Creds("x509", "x509")}};
  RefusedThenRetry({{"--tls-creds", Creds("x509", "x509-future")}}, {{"--tls-creds", Creds("x509", "x509")}},
                   {{"--tls-creds", Creds("x509", "x509")}}, "the server's certificate is not yet valid",
                   "TLS handshake", 0, &good_dst);
}

TEST_F(TlsTest, PrecopyTcpX509ExpiredClient) {
  RefusedThenRetry({{"--tls-creds", Creds("x509", "x509")}}, {{"--tls-creds", Creds("x509", "x509-client-expired")}},
                   {{"--tls-creds", Creds("x509", "x509")}}, "TLS handshake", "the client's certificate has expired");
}

// ---- plaintext on one side ------------------------------------------------------

TEST_F(TlsTest, PlaintextClientOnTlsDestination) {
  RefusedThenRetry({{"--tls-creds", Creds("psk", "psk")}}, {}, {{"--tls-creds", Creds("psk", "psk")}},
                   "this destination uses TLS (--tls-creds) and the source does not",
                   "the peer sent a plaintext migration stream");
}

TEST_F(TlsTest, TlsClientOnPlaintextDestination) {
  const Side good_dst{};
  RefusedThenRetry({}, {{"--tls-creds", Creds("psk", "psk")}}, {}, "TLS handshake",
                   "starts a TLS handshake", 0, &good_dst, /*retry_tls=*/false);
}

TEST_F(TlsTest, SaveAndLoadRefuseTls) {
  for (const std::string cmd : {"save", "load"}) {
    Result<ExitStatus> st = RunToCompletion(
        {FERRY_BIN, cmd, dir_->Path("f.bin"), "--tls-creds", Creds("psk", "psk")},
        {.stdout_path = dir_->Path(cmd + ".out"), .stderr_path = dir_->Path(cmd + ".err")}, seconds(30));
    ASSERT_TRUE(st.ok());
    EXPECT_TRUE(st->exited && st->code != 0) << cmd;
    EXPECT_NE(ReadFileOrEmpty(dir_->Path(cmd + ".err")).find("save/load have no TLS"), std::string::npos)
        << ReadFileOrEmpty(dir_->Path(cmd + ".err"));
  }
}

// ---- a TLS peer killed mid-stream -------------------------------------------------

TEST_F(TlsTest, SourceKilledMidStream) {
  const std::string memory = dir_->Path("received.bin"), ready = dir_->Path("ready");
  Result<Process> recv = StartFerry(*dir_, "recv",
                                    {"recv", "tcp:127.0.0.1:0", "--memory-file", memory, "--ready-file", ready,
                                     "--timeout", "30", "--tls-creds", Creds("psk", "psk")});
  ASSERT_TRUE(recv.ok());
  Result<std::string> uri = WaitForFile(ready, kReadyTimeout, &*recv);
  ASSERT_TRUE(uri.ok()) << uri.status().message();
  // Slow enough to be killed in the middle: 48 MiB at 8 MiB/s.
  Result<Process> send = StartFerry(*dir_, "send",
                                    {"send", *uri, "--ram", "48M", "-p", "max-bandwidth=8388608", "--tls-creds",
                                     Creds("psk", "psk")});
  ASSERT_TRUE(send.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  ASSERT_TRUE(send->Running()) << send->Report();
  send->Kill();
  ASSERT_TRUE(ExitsWithFailure(*recv, kExit));
  EXPECT_NE(recv->Stderr().find("truncated"), std::string::npos) << recv->Report();
  EXPECT_FALSE(Exists(memory));
}

// A destination that stops reading (SIGSTOP) mid-stream: the source's TLS
// writes wait on the socket channel's bound and fail with "no progress".
// Then a signal to a source blocked that way cancels it (Shutdown wakes it).
TEST_F(TlsTest, SilentDestinationFailsAfterNoProgressTimeout) {
  for (const bool cancel : {false, true}) {
    const std::string tag = cancel ? "cancel" : "timeout";
    const std::string ready = dir_->Path(tag + "-ready");
    Result<Process> recv = StartFerry(*dir_, tag + "-recv",
                                      {"recv", "tcp:127.0.0.1:0", "--ready-file", ready, "--timeout", "30",
                                       "--tls-creds", Creds("psk", "psk"), "-c", "multifd=on", "-p",
                                       "no-progress-timeout=3"});
    ASSERT_TRUE(recv.ok());
    Result<std::string> uri = WaitForFile(ready, kReadyTimeout, &*recv);
    ASSERT_TRUE(uri.ok()) << uri.status().message();
    Result<Process> send = StartFerry(*dir_, tag + "-send",
                                      {"send", *uri, "--ram", "256M", "--fill", "random=100", "-p",
                                       "max-bandwidth=16777216", "-p", "no-progress-timeout=" +
                                       std::string(cancel ? "0" : "3"), "-c", "multifd=on", "--tls-creds",
                                       Creds("psk", "psk")});
    ASSERT_TRUE(send.ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    ASSERT_TRUE(send->Running()) << send->Report();
    ASSERT_TRUE(recv->Signal(SIGSTOP).ok());
    if (cancel) {
      // Unbounded source: let its writes block on full socket buffers, then stop it.
      std::this_thread::sleep_for(std::chrono::seconds(3));
      ASSERT_TRUE(send->Running()) << send->Report();
      ASSERT_TRUE(send->Signal(SIGTERM).ok());
      EXPECT_TRUE(ExitsWithCode(*send, 3, seconds(20)));
    } else {
      EXPECT_TRUE(ExitsWithFailure(*send, seconds(30)));
      EXPECT_NE(send->Stderr().find("no progress for 3 s"), std::string::npos) << send->Report();
    }
    (void)recv->Signal(SIGCONT);
    recv->Kill();
  }
}

// ---- multifd/tcp/tls ------------------------------------------------------------

TEST_F(TlsTest, MultifdTcpPskMatch) {
  Run r;
  ASSERT_NO_FATAL_FAILURE(Migrate(Multifd({{"--tls-creds", Creds("psk", "psk")}}, 4),
                                  Multifd({{"--tls-creds", Creds("psk", "psk")}}, 4), &r));
  ExpectSuccess(r, 4);
}

TEST_F(TlsTest, MultifdTcpPskMismatch) {
  RefusedThenRetry(Multifd({{"--tls-creds", Creds("psk", "psk")}}, 2),
                   Multifd({{"--tls-creds", Creds("psk", "psk-other")}}, 2),
                   Multifd({{"--tls-creds", Creds("psk", "psk")}}, 2), "wrong PSK", "wrong PSK", 2);
}

TEST_F(TlsTest, MultifdTcpX509DefaultHost) {
  Run r;
  ASSERT_NO_FATAL_FAILURE(Migrate(Multifd({{"--tls-creds", Creds("x509", "x509")}}, 4),
                                  Multifd({{"--tls-creds", Creds("x509", "x509")}}, 4), &r));
  ExpectSuccess(r, 4);
}

TEST_F(TlsTest, MultifdTcpX509OverrideHost) {
  Run r;
  ASSERT_NO_FATAL_FAILURE(
      Migrate(Multifd({{"--tls-creds", Creds("x509", "x509-override")}}, 2),
              Multifd({{"--tls-creds", Creds("x509", "x509-override"), "-p", "tls-hostname=migration.example"}}, 2), &r));
  ExpectSuccess(r, 2);
}

TEST_F(TlsTest, MultifdTcpX509MismatchHost) {
  RefusedThenRetry(Multifd({{"--tls-creds", Creds("x509", "x509-mismatch")}}, 2),
                   Multifd({{"--tls-creds", Creds("x509", "x509-mismatch")}}, 2),
                   Multifd({{"--tls-creds", Creds("x509", "x509-mismatch"), "-p", "tls-hostname=other.example"}}, 2),
                   "wrong host name", "the peer refused our certificate", 2);
}

TEST_F(TlsTest, MultifdTcpX509AllowAnonClient) {
  Run r;
  ASSERT_NO_FATAL_FAILURE(Migrate(Multifd({{"--tls-creds", Creds("x509", "x509", ",verify-peer=off")}}, 2),
                                  Multifd({{"--tls-creds", Creds("x509", "x509-anon")}}, 2), &r));
  ExpectSuccess(r, 2);
}

TEST_F(TlsTest, MultifdTcpX509RejectAnonClient) {
  RefusedThenRetry(Multifd({{"--tls-creds", Creds("x509", "x509")}}, 2),
                   Multifd({{"--tls-creds", Creds("x509", "x509-anon")}}, 2),
                   Multifd({{"--tls-creds", Creds("x509", "x509")}}, 2), "requires a client certificate",
                   "the client sent no certificate", 2);
}

}  // namespace
}  // namespace ferry::test
