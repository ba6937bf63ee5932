// The key set of `--json` and the transports' summary lines, pinned for the
// representative runs (tcp, multifd with zstd, multifd with zero-copy-send,
// TLS with multifd, plain and mapped-ram saves and loads, a multifd source
// that cannot connect). core prints its members; multifd/, file/ and tls/
// print theirs (TransportStats::Report): this is what keeps the output the
// same for users whoever prints a member. Real processes over loopback TCP
// and files; the migrations must complete and verify.
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"
#include "tests/support/tls_creds.h"

namespace ferry::test {
namespace {

using nlohmann::json;
using Keys = std::set<std::string>;
constexpr auto kExit = std::chrono::seconds(120);

// Every member as a JSON pointer; array items as "*".
void Collect(const json& j, const std::string& at, Keys& out) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      out.insert(at + "/" + it.key());
      Collect(it.value(), at + "/" + it.key(), out);
    }
  } else if (j.is_array()) {
    for (const json& v : j) Collect(v, at + "/*", out);
  }
}

Keys KeysOf(const json& j) {
  Keys k;
  Collect(j, "", k);
  return k;
}

Keys operator+(Keys a, const Keys& b) {
  a.insert(b.begin(), b.end());
  return a;
}

const Keys kCore = {"/downtime", "/expected-downtime", "/setup-time", "/status", "/total-time", "/verified",
                    "/ram", "/ram/dirty-pages-rate", "/ram/dirty-sync-count", "/ram/duplicate", "/ram/mbps",
                    "/ram/multifd-bytes", "/ram/normal", "/ram/normal-bytes", "/ram/page-size",
                    "/ram/pages-per-second", "/ram/remaining", "/ram/total", "/ram/transferred"};
const Keys kResources = {"/resources", "/resources/cpu-seconds", "/resources/major-faults",
                         "/resources/minor-faults", "/resources/peak-rss", "/resources/rss-at-start"};
const Keys kSend = {"/dirty-tracker"};
const Keys kMultifdEmpty = {"/multifd", "/multifd/channels", "/multifd/zero-pages"};
const Keys kMultifd = kMultifdEmpty + Keys{"/multifd/channels/*/bytes", "/multifd/channels/*/packets",
                                           "/multifd/channels/*/pages"};
const Keys kZeroCopy = {"/zero-copy", "/zero-copy/completed", "/zero-copy/copied", "/zero-copy/fallbacks",
                        "/zero-copy/sends"};
const Keys kTls = {"/tls", "/tls/creds", "/tls/ktls", "/tls/main", "/tls/main/cipher", "/tls/main/version",
                   "/tls/multifd", "/tls/multifd/*/cipher", "/tls/multifd/*/version"};

// A save's "sync-time" is there when the flush took a millisecond or more.
void ExpectKeys(const json& j, Keys want, bool maybe_sync_time = false) {
  Keys got = KeysOf(j);
  if (maybe_sync_time) got.erase("/sync-time");
  EXPECT_EQ(got, want) << j.dump();
}

class ReportJsonTest : public ::testing::Test {
 protected:
  // recv then send over loopback tcp, both with --json (or not); both must
  // complete and verify.
  void Pair(const std::vector<std::string>& send_args, const std::vector<std::string>& recv_args, bool as_json,
            Process* send_out, Process* recv_out) {
    std::vector<std::string> r{"recv", "tcp:127.0.0.1:0"};
    r.insert(r.end(), recv_args.begin(), recv_args.end());
    if (as_json) r.push_back("--json");
    std::string uri;
    ASSERT_NO_FATAL_FAILURE(StartReadyRecv(dir_, r, recv_out, &uri));
    std::vector<std::string> s{"send", uri, "--ram", "16M", "--fill", "random=50,zero=50"};
    s.insert(s.end(), send_args.begin(), send_args.end());
    if (as_json) s.push_back("--json");
    ASSERT_NO_FATAL_FAILURE(StartFerryOrFail(dir_, "send", s, send_out));
    EXPECT_TRUE(ExitsWithCode(*send_out, 0, kExit));
    EXPECT_TRUE(ExitsWithCode(*recv_out, 0, kExit));
    std::remove(dir_.Path("ready").c_str());
  }

  void PairJson(const std::vector<std::string>& send_args, const std::vector<std::string>& recv_args, json* sj,
                json* rj) {
    Process send, recv;
    ASSERT_NO_FATAL_FAILURE(Pair(send_args, recv_args, true, &send, &recv));
    ASSERT_NO_FATAL_FAILURE(GetJson(send, sj));
    ASSERT_NO_FATAL_FAILURE(GetJson(recv, rj));
    EXPECT_EQ((*sj)["status"], "completed");
    EXPECT_EQ((*rj)["verified"], true);
  }

  void Run(const std::string& name, std::vector<std::string> args, Process* out) {
    ASSERT_NO_FATAL_FAILURE(StartFerryOrFail(dir_, name, std::move(args), out));
    EXPECT_TRUE(ExitsWithCode(*out, 0, kExit));
  }

  TempDir dir_{"ferry-report-json"};
};

const std::vector<std::string> kMultifd2 = {"-c", "multifd=on", "-p", "multifd-channels=2"};

std::vector<std::string> operator+(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST_F(ReportJsonTest, TcpSingleConnection) {
  json s, r;
  ASSERT_NO_FATAL_FAILURE(PairJson({}, {}, &s, &r));
  ExpectKeys(s, kCore + kResources + kSend);
  ExpectKeys(r, kCore + kResources);
  EXPECT_EQ(s["ram"]["multifd-bytes"], 0);
}

TEST_F(ReportJsonTest, MultifdZstd) {
  const auto args = kMultifd2 + std::vector<std::string>{"-p", "multifd-compression=zstd"};
  json s, r;
  ASSERT_NO_FATAL_FAILURE(PairJson(args, args, &s, &r));
  ExpectKeys(s, kCore + kResources + kSend + kMultifd);
  ExpectKeys(r, kCore + kResources + kMultifd);
  EXPECT_EQ(s["multifd"]["channels"].size(), 2u);
  EXPECT_GT(s["ram"]["multifd-bytes"].get<uint64_t>(), 0u);
  EXPECT_EQ(s["ram"]["multifd-bytes"], r["ram"]["multifd-bytes"]);
}

TEST_F(ReportJsonTest, MultifdZeroCopyJsonAndSummary) {
  const auto args = kMultifd2 + std::vector<std::string>{"-c", "zero-copy-send=on"};
  json s, r;
  ASSERT_NO_FATAL_FAILURE(PairJson(args, kMultifd2, &s, &r));
  ExpectKeys(s, kCore + kResources + kSend + kMultifd + kZeroCopy);
  ExpectKeys(r, kCore + kResources + kMultifd);

  Process send, recv;
  ASSERT_NO_FATAL_FAILURE(Pair(args, kMultifd2, false, &send, &recv));
  const std::string out = send.Stdout();
  EXPECT_NE(out.find("\n  multifd: 2 channels, "), std::string::npos) << out;
  EXPECT_NE(out.find(" zero pages listed in packets\n  zero-copy: "), std::string::npos) << out;
  EXPECT_NE(out.find(" fell back to a copy\n  verified: yes"), std::string::npos) << out;
  EXPECT_NE(recv.Stdout().find("\n  multifd: 2 channels, "), std::string::npos) << recv.Stdout();
}

TEST_F(ReportJsonTest, TlsWithMultifdJsonAndSummary) {
  ASSERT_TRUE(WritePskDir(dir_.Path("psk"), "qemu", RandomHexKey()).ok());
  const auto args = kMultifd2 + std::vector<std::string>{"--tls-creds", "psk:" + dir_.Path("psk")};
  json s, r;
  ASSERT_NO_FATAL_FAILURE(PairJson(args, args, &s, &r));
  ExpectKeys(s, kCore + kResources + kSend + kMultifd + kTls);
  ExpectKeys(r, kCore + kResources + kMultifd + kTls);
  EXPECT_EQ(s["tls"]["multifd"].size(), 2u);

  Process send, recv;
  ASSERT_NO_FATAL_FAILURE(Pair(args, args, false, &send, &recv));
  for (const Process* p : {&send, &recv}) {
    const std::string out = p->Stdout();
    EXPECT_NE(out.find(" zero pages listed in packets\n  tls: TLSv1.3 "), std::string::npos) << out;
    EXPECT_NE(out.find(" on the main stream and 2 multifd channels (psk; kTLS "), std::string::npos) << out;
  }
}

TEST_F(ReportJsonTest, SaveAndLoad) {
  const std::string plain = dir_.Path("plain.mig");
  const std::string mapped = dir_.Path("mapped.mig");
  const auto mr = kMultifd2 + std::vector<std::string>{"-c", "mapped-ram=on"};
  Process p;
  json j;
  ASSERT_NO_FATAL_FAILURE(Run("save-plain", {"save", plain, "--ram", "16M", "--json"}, &p));
  ASSERT_NO_FATAL_FAILURE(GetJson(p, &j));
  ExpectKeys(j, kCore + kResources + kSend, /*maybe_sync_time=*/true);
  ASSERT_NO_FATAL_FAILURE(Run("load-plain", {"load", plain, "--json"}, &p));
  ASSERT_NO_FATAL_FAILURE(GetJson(p, &j));
  ExpectKeys(j, kCore + kResources);

  // mapped-ram's file threads are shown where multifd's channels are.
  ASSERT_NO_FATAL_FAILURE(Run("save-mr", std::vector<std::string>{"save", mapped, "--ram", "16M", "--json"} + mr, &p));
  ASSERT_NO_FATAL_FAILURE(GetJson(p, &j));
  ExpectKeys(j, kCore + kResources + kSend + kMultifd, /*maybe_sync_time=*/true);
  EXPECT_EQ(j["multifd"]["channels"].size(), 2u);
  EXPECT_EQ(j["ram"]["multifd-bytes"], 0);
  ASSERT_NO_FATAL_FAILURE(Run("load-mr", std::vector<std::string>{"load", mapped, "--json"} + mr, &p));
  ASSERT_NO_FATAL_FAILURE(GetJson(p, &j));
  ExpectKeys(j, kCore + kResources + kMultifd);
  EXPECT_EQ(j["verified"], true);

  ASSERT_NO_FATAL_FAILURE(Run("save-mr-text", std::vector<std::string>{"save", mapped, "--ram", "16M"} + mr, &p));
  std::string out = p.Stdout();
  EXPECT_NE(out.find(" dirty tracking: "), std::string::npos) << out;
  EXPECT_NE(out.find("\n  file threads: 2, "), std::string::npos) << out;
  EXPECT_EQ(out.find("multifd:"), std::string::npos) << out;
  // The flush line, when there is one, comes right after the first line.
  const size_t flush = out.find("  then ");
  if (flush != std::string::npos) {
    EXPECT_EQ(out.find('\n') + 1, flush) << out;
    EXPECT_NE(out.find(" ms flushing the file to stable storage\n  RAM "), std::string::npos) << out;
  }
  ASSERT_NO_FATAL_FAILURE(Run("load-mr-text", std::vector<std::string>{"load", mapped} + mr, &p));
  out = p.Stdout();
  EXPECT_NE(out.find("\n  file threads: 2, "), std::string::npos) << out;
}

// multifd's object is there even when no channel counted anything.
TEST_F(ReportJsonTest, MultifdSourceThatCannotConnect) {
  Result<uint16_t> port = PickUnusedTcpPort();
  ASSERT_TRUE(port.ok());
  Result<Process> p = StartFerry(dir_, "send", std::vector<std::string>{"send", "tcp:127.0.0.1:" + std::to_string(*port),
                                                                        "--ram", "4M", "--connect-timeout", "1",
                                                                        "--json"} + kMultifd2);
  ASSERT_TRUE(p.ok());
  EXPECT_TRUE(ExitsWithCode(*p, 1, kExit));
  json j;
  ASSERT_NO_FATAL_FAILURE(GetJson(*p, &j));
  ExpectKeys(j, kCore + kSend + kMultifdEmpty + Keys{"/error"});
  EXPECT_EQ(j["multifd"]["channels"].size(), 0u);
}

}  // namespace
}  // namespace ferry::test
