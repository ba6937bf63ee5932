// TLS between ferry and a real QEMU (GnuTLS on its side), both directions,
// precopy and multifd (2 and 4 channels), x509 and PSK, guest memory
// compared byte for byte. Registered against QEMU 7.2 and 10.0
// (ferry_interop_test). QEMU gets the same QEMU-layout directories ferry
// uses, made by the suite (tests/support/tls_creds.h):
//
//   -object tls-creds-x509,id=tls0,dir=D,endpoint=server|client[,verify-peer=on]
//   -object tls-creds-psk,id=tls0,dir=D,endpoint=server|client,username=qemu
//   migrate-set-parameters {"tls-creds": "tls0", "tls-hostname": ...}
//
// The guest is `-M none` with 33 MiB of mixed pages, paused with -S. A
// missing QEMU fails the tests (FERRY_ALLOW_SKIP=1 skips them).
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"
#include "tests/support/qemu.h"
#include "tests/support/tls_creds.h"

namespace ferry::test {
namespace {

using nlohmann::json;
using std::chrono::seconds;

constexpr uint64_t kGuestRam = 33ULL << 20;
constexpr auto kExitTimeout = seconds(60);

enum class Creds { kX509, kPsk };

class TlsInteropTest : public QemuTest {
 protected:
  static void SetUpTestSuite() {
    SetUpQemuSuite({.name = "tls-interop",
                    .guest = {.size = kGuestRam, .seed = 0x7151, .random_pct = 45, .zero_pct = 35, .text_pct = 20},
                    .migration_timeout = seconds(60)});
    creds_dir_ = new TempDir("ferry-tls-interop-creds");
    ca_ = new TestCa("ferry interop CA");
    Status s = WriteX509Dir(creds_dir_->Path("x509"), *ca_);
    if (s.ok()) s = WritePskDir(creds_dir_->Path("psk"), "qemu", RandomHexKey());
    if (!s.ok()) creds_error_ = s.message();
  }
  static void TearDownTestSuite() {
    delete ca_;
    delete creds_dir_;
    QemuTest::TearDownTestSuite();
  }
  void SetUp() override {
    QemuTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    ASSERT_TRUE(creds_error_.empty()) << creds_error_;
  }

  static std::string Dir(Creds c) { return creds_dir_->Path(c == Creds::kX509 ? "x509" : "psk"); }

  // QEMU's -object and migration parameters for `endpoint`.
  static QemuOptions WithTls(QemuOptions o, Creds c, const std::string& endpoint, int channels,
                             const std::string& hostname = "") {
    const std::string obj = c == Creds::kX509
                                ? "tls-creds-x509,id=tls0,dir=" + Dir(c) + ",endpoint=" + endpoint +
                                      (endpoint == "server" ? ",verify-peer=on" : "")
                                : "tls-creds-psk,id=tls0,dir=" + Dir(c) + ",endpoint=" + endpoint +
                                      (endpoint == "client" ? ",username=qemu" : "");
    o.extra_args.insert(o.extra_args.end(), {"-object", obj});
    o.parameters["tls-creds"] = "tls0";
    if (!hostname.empty()) o.parameters["tls-hostname"] = hostname;
    if (channels > 0) {
      o.capabilities = {"multifd"};
      o.parameters["multifd-channels"] = channels;
    }
    return o;
  }

  static std::vector<std::string> FerryArgs(Creds c, int channels) {
    std::vector<std::string> a = {"--qemu-compat", FerryQemuCompat(), "--tls-creds",
                                  (c == Creds::kX509 ? "x509:" : "psk:") + Dir(c), "--json"};
    if (channels > 0) a.insert(a.end(), {"-c", "multifd=on", "-p", "multifd-channels=" + std::to_string(channels)});
    return a;
  }

  // ferry's JSON names a TLS session on the main stream and every channel.
  static void ExpectTlsJson(const Process& ferry, int channels) {
    Result<json> j = FerryJson(ferry);
    ASSERT_TRUE(j.ok()) << j.status().message();
    EXPECT_EQ(j->value("status", ""), "completed") << ferry.Report();
    std::optional<json> v = JsonAt(*j, "/tls/main/version");
    ASSERT_TRUE(v.has_value()) << ferry.Report();
    EXPECT_TRUE(*v == "TLSv1.3" || *v == "TLSv1.2") << *v;
    std::optional<json> mf = JsonAt(*j, "/tls/multifd");
    ASSERT_TRUE(mf && mf->is_array()) << ferry.Report();
    EXPECT_EQ(mf->size(), static_cast<size_t>(channels)) << ferry.Report();
  }

  // QEMU (TLS client) -> ferry recv (TLS server).
  void QemuToFerry(Creds c, int channels, const std::string& hostname = "") {
    Qemu src;
    ASSERT_NO_FATAL_FAILURE(StartQemu("src", WithTls({.load_pattern = true}, c, "client", channels, hostname), &src));
    const std::string out = P("received.bin"), ready = P("ready");
    std::vector<std::string> args = {"recv", "tcp:127.0.0.1:0", "--memory-file", out, "--ready-file", ready,
                                     "--timeout", "60"};
    for (const std::string& a : FerryArgs(c, channels)) args.push_back(a);
    Result<Process> recv = StartFerry(*dir_, "recv", args);
    ASSERT_TRUE(recv.ok()) << recv.status().ToString();
    Result<std::string> uri = WaitForFile(ready, kReadyTimeout, &*recv);
    ASSERT_TRUE(uri.ok()) << uri.status().message();
    ASSERT_TRUE(src.Migrate(*uri));
    ASSERT_TRUE(MigrationEnds(src, "completed", &*recv));
    ASSERT_TRUE(ExitsWithCode(*recv, 0, kExitTimeout)) << "QEMU side:\n" << src.proc.Report();
    ExpectTlsJson(*recv, channels);
    EXPECT_TRUE(FilesEqual(out, pattern_)) << recv->Report();
  }

  // ferry send (TLS client) -> QEMU (TLS server, -incoming defer).
  void FerryToQemu(Creds c, int channels, const std::vector<std::string>& extra = {}) {
    Qemu dst;
    ASSERT_NO_FATAL_FAILURE(StartQemu("dst", WithTls({.incoming = "defer"}, c, "server", channels), &dst));
    Result<uint16_t> port = PickUnusedTcpPort();
    ASSERT_TRUE(port.ok()) << port.status().ToString();
    const std::string uri = "tcp:127.0.0.1:" + std::to_string(*port);
    ASSERT_TRUE(dst.Execute("migrate-incoming", {{"uri", uri}}));
    const std::string copy = P("pattern-copy.bin");
    ASSERT_TRUE(CopyFile(pattern_, copy).ok());
    std::vector<std::string> args = {"send", uri, "--memory-file", copy};
    for (const std::string& a : FerryArgs(c, channels)) args.push_back(a);
    args.insert(args.end(), extra.begin(), extra.end());
    Result<Process> send = StartFerry(*dir_, "send", args);
    ASSERT_TRUE(send.ok()) << send.status().ToString();
    ASSERT_TRUE(ExitsWithCode(*send, 0, kExitTimeout)) << "QEMU side:\n" << dst.proc.Report();
    ExpectTlsJson(*send, channels);
    ASSERT_TRUE(MigrationEnds(dst, "completed", &*send));
    ASSERT_NO_FATAL_FAILURE(ExpectGuestMemoryIsPattern(dst, P("dst-memory.bin"), &*send));
  }

  static inline TempDir* creds_dir_ = nullptr;
  static inline TestCa* ca_ = nullptr;
  static inline std::string creds_error_;
};

// precopy: QEMU checks ferry's certificate against the URI's host
// (127.0.0.1, an IP SAN) and ferry asks for QEMU's client certificate.
TEST_F(TlsInteropTest, PrecopyX509QemuToFerry) { QemuToFerry(Creds::kX509, 0); }
TEST_F(TlsInteropTest, PrecopyX509FerryToQemu) { FerryToQemu(Creds::kX509, 0); }
TEST_F(TlsInteropTest, PrecopyPskQemuToFerry) { QemuToFerry(Creds::kPsk, 0); }
TEST_F(TlsInteropTest, PrecopyPskFerryToQemu) { FerryToQemu(Creds::kPsk, 0); }

// multifd: every channel its own session; tls-hostname names the DNS SAN.
TEST_F(TlsInteropTest, Multifd2X509QemuToFerry) { QemuToFerry(Creds::kX509, 2, "localhost"); }
TEST_F(TlsInteropTest, Multifd2X509FerryToQemu) { FerryToQemu(Creds::kX509, 2, {"-p", "tls-hostname=localhost"}); }
TEST_F(TlsInteropTest, Multifd4PskQemuToFerry) { QemuToFerry(Creds::kPsk, 4); }
TEST_F(TlsInteropTest, Multifd4PskFerryToQemu) { FerryToQemu(Creds::kPsk, 4); }
TEST_F(TlsInteropTest, Multifd4X509QemuToFerry) { QemuToFerry(Creds::kX509, 4); }
TEST_F(TlsInteropTest, Multifd2PskFerryToQemu) { FerryToQemu(Creds::kPsk, 2); }

}  // namespace
}  // namespace ferry::test
