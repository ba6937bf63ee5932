// Two real ferry processes: `ferry send` -> `ferry recv` over tcp and unix
// sockets, with a synthetic guest, a memory file, a dirtying guest, a bad
// peer, cancellation and a vanished receiver.
//
// FERRY_KEEP_TMP=1 keeps the temp dirs (outputs and logs) for a post-mortem.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/unique_fd.h"
#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"
#include "tests/support/text.h"

namespace ferry::test {
namespace {

using nlohmann::json;
using std::chrono::seconds;

constexpr uint64_t kGiB = 1ULL << 30;
constexpr auto kMigrationTimeout = seconds(300);
constexpr auto kExitTimeout = seconds(60);
// Slow enough that 1 GiB (half of it zero pages) takes ~10 s.
constexpr const char* kSlowBandwidth = "max-bandwidth=50000000";

PatternSpec SourceFilePattern() { return {.size = kGiB, .seed = 7, .random_pct = 50, .zero_pct = 50, .text_pct = 0}; }

// Fraction of all-zero 4 KiB pages in a file, or -1 if it cannot be read.
double ZeroPageFraction(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return -1;
  constexpr size_t kChunk = 4 << 20;
  std::unique_ptr<uint8_t[]> buf(new uint8_t[kChunk]);
  uint64_t pages = 0, zero = 0;
  for (;;) {
    ssize_t n = ::read(fd.get(), buf.get(), kChunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -1;
    if (n == 0) break;
    for (ssize_t off = 0; off < n; off += 4096) {
      const size_t len = std::min<size_t>(4096, static_cast<size_t>(n - off));
      const uint8_t* p = buf.get() + off;
      ++pages;
      if (p[0] == 0 && std::memcmp(p, p + 1, len - 1) == 0) ++zero;
    }
  }
  return pages == 0 ? -1 : static_cast<double>(zero) / static_cast<double>(pages);
}

class IntegrationTest : public ::testing::Test {
 protected:
  static void TearDownTestSuite() {
    delete suite_dir_;
    suite_dir_ = nullptr;
  }

  void SetUp() override { dir_ = std::make_unique<TempDir>("ferry-integration"); }

  std::string P(std::string_view name) const { return dir_->Path(name); }

  // A 1 GiB pattern file shared by the tests of this binary (made once).
  static const std::string& SourceFile() {
    if (suite_dir_ == nullptr) {
      suite_dir_ = new TempDir("ferry-integration-suite");
      source_file_ = suite_dir_->Path("source-1g.bin");
      source_status_ = WritePatternFile(source_file_, SourceFilePattern());
    }
    return source_file_;
  }

  // Starts `ferry recv LISTEN_URI --ready-file F EXTRA...`; returns the URI
  // it actually listens on.
  void StartRecv(const std::string& listen_uri, std::vector<std::string> extra, Process* recv,
                 std::string* uri) {
    std::vector<std::string> args = {"recv", listen_uri};
    args.insert(args.end(), extra.begin(), extra.end());
    StartReadyRecv(*dir_, std::move(args), recv, uri);
  }

  void StartSend(const std::string& uri, std::vector<std::string> extra, Process* send) {
    std::vector<std::string> args = {"send", uri};
    args.insert(args.end(), extra.begin(), extra.end());
    StartFerryOrFail(*dir_, "send", std::move(args), send);
  }

  // Starts a slow (bandwidth-limited) 1 GiB migration and returns once it is
  // under way: recv has created its --memory-file (it does that when the
  // stream's RAM sizes arrive) and another second has passed.
  void StartSlowMigration(Process* recv, Process* send) {
    const std::string out = P("received.bin");
    std::string uri;
    ASSERT_NO_FATAL_FAILURE(
        StartRecv("tcp:127.0.0.1:0", {"--json", "--memory-file", out}, recv, &uri));
    ASSERT_NO_FATAL_FAILURE(StartSend(uri, {"--ram", "1G", "-p", kSlowBandwidth, "--json"}, send));
    Status started = WaitForNonEmptyFile(out, kMigrationTimeout, recv);
    ASSERT_TRUE(started.ok()) << "waiting for the migration to start: " << started.message()
                              << "\nsender:\n" << send->Report();
    std::this_thread::sleep_for(seconds(1));
    ASSERT_TRUE(send->Running()) << "send ended before the migration could be disturbed\n"
                                 << send->Report() << recv->Report();
    ASSERT_TRUE(recv->Running()) << "recv ended before the migration could be disturbed\n"
                                 << send->Report() << recv->Report();
  }

  // Both ends of a successful migration: exit 0, "completed", recv verified.
  void ExpectSuccess(Process& send, Process& recv, json* send_json, json* recv_json,
                     uint64_t ram_total) {
    ASSERT_TRUE(ExitsWithCode(send, 0, kMigrationTimeout)) << "receiver:\n" << recv.Report();
    ASSERT_TRUE(ExitsWithCode(recv, 0, kExitTimeout)) << "sender:\n" << send.Report();
    ASSERT_NO_FATAL_FAILURE(GetJson(send, send_json));
    ASSERT_NO_FATAL_FAILURE(GetJson(recv, recv_json));
    EXPECT_EQ(send_json->value("status", std::string()), "completed") << send.Report();
    EXPECT_EQ(recv_json->value("status", std::string()), "completed") << recv.Report();
    EXPECT_EQ(recv_json->value("verified", false), true) << recv.Report();
    EXPECT_EQ(JsonAt(*recv_json, "/ram/total"), json(ram_total)) << recv.Report();
    EXPECT_EQ(JsonAt(*send_json, "/ram/total"), json(ram_total)) << send.Report();
  }

  void SyntheticGuest(const std::string& listen_uri) {
    const std::string out = P("received.bin");
    Process recv, send;
    std::string uri;
    ASSERT_NO_FATAL_FAILURE(StartRecv(listen_uri, {"--json", "--memory-file", out}, &recv, &uri));
    ASSERT_NO_FATAL_FAILURE(StartSend(
        uri, {"--ram", "1G", "--fill", "random=50,zero=50", "--seed", "7", "--json"}, &send));
    json sj, rj;
    ASSERT_NO_FATAL_FAILURE(ExpectSuccess(send, recv, &sj, &rj, kGiB));
    Result<uint64_t> size = FileSize(out);
    ASSERT_TRUE(size.ok()) << size.status().ToString();
    EXPECT_EQ(*size, kGiB);
    // The content itself is checked by ferry's verification ("verified");
    // here only its shape: about half of the pages are zero.
    const double zero = ZeroPageFraction(out);
    EXPECT_GT(zero, 0.40) << "fraction of zero pages in " << out;
    EXPECT_LT(zero, 0.60) << "fraction of zero pages in " << out;
  }

  void MemoryFile(const std::string& listen_uri) {
    const std::string& src = SourceFile();
    ASSERT_TRUE(source_status_.ok()) << "writing " << src << ": " << source_status_.ToString();
    const std::string out = P("received.bin");
    Process recv, send;
    std::string uri;
    ASSERT_NO_FATAL_FAILURE(StartRecv(listen_uri, {"--json", "--memory-file", out}, &recv, &uri));
    ASSERT_NO_FATAL_FAILURE(StartSend(uri, {"--memory-file", src, "--json"}, &send));
    json sj, rj;
    ASSERT_NO_FATAL_FAILURE(ExpectSuccess(send, recv, &sj, &rj, kGiB));
    EXPECT_TRUE(FileMatchesPattern(out, SourceFilePattern())) << recv.Report();
    EXPECT_TRUE(FileMatchesPattern(src, SourceFilePattern())) << "ferry send modified its --memory-file";
  }

  static TempDir* suite_dir_;
  static std::string source_file_;
  static Status source_status_;
  std::unique_ptr<TempDir> dir_;
};

TempDir* IntegrationTest::suite_dir_ = nullptr;
std::string IntegrationTest::source_file_;
Status IntegrationTest::source_status_;

TEST_F(IntegrationTest, SyntheticGuestOverTcp) { SyntheticGuest("tcp:127.0.0.1:0"); }

TEST_F(IntegrationTest, SyntheticGuestOverUnix) { SyntheticGuest("unix:" + P("migration.sock")); }

TEST_F(IntegrationTest, MemoryFileOverTcp) { MemoryFile("tcp:127.0.0.1:0"); }

TEST_F(IntegrationTest, MemoryFileOverUnix) { MemoryFile("unix:" + P("migration.sock")); }

// A guest that keeps dirtying its hot set while migrating: several dirty
// syncs, still converges, still verified.
TEST_F(IntegrationTest, LiveDirtyingGuestConverges) {
  Process recv, send;
  std::string uri;
  ASSERT_NO_FATAL_FAILURE(StartRecv("tcp:127.0.0.1:0", {"--json"}, &recv, &uri));
  ASSERT_NO_FATAL_FAILURE(StartSend(
      uri, {"--ram", "512M", "--dirty-rate", "200M", "--hot-set", "64M", "--json"}, &send));
  json sj, rj;
  ASSERT_NO_FATAL_FAILURE(ExpectSuccess(send, recv, &sj, &rj, 512ULL << 20));
  std::optional<json> syncs = JsonAt(sj, "/ram/dirty-sync-count");
  ASSERT_TRUE(syncs.has_value() && syncs->is_number()) << send.Report();
  EXPECT_GE(syncs->get<int64_t>(), 2) << send.Report();
}

// Garbage instead of a migration stream: recv fails fast, blaming the magic.
TEST_F(IntegrationTest, GarbagePeerIsRejected) {
  Process recv;
  std::string uri;
  ASSERT_NO_FATAL_FAILURE(StartRecv("tcp:127.0.0.1:0", {"--json"}, &recv, &uri));
  const size_t colon = uri.rfind(':');
  ASSERT_TRUE(uri.starts_with("tcp:127.0.0.1:") && colon != std::string::npos) << uri;
  const int port = std::stoi(uri.substr(colon + 1));

  UniqueFd sock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(sock.valid()) << std::strerror(errno);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ASSERT_EQ(::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
      << "connect to " << uri << ": " << std::strerror(errno) << "\n" << recv.Report();
  std::vector<uint8_t> garbage(64, 0xAB);
  ASSERT_EQ(::send(sock.get(), garbage.data(), garbage.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(garbage.size()));
  // Keep the connection open: recv must notice the bad magic, not an EOF.
  ASSERT_TRUE(ExitsWithCode(recv, 1, seconds(30)));
  EXPECT_NE(Lower(recv.Stderr()).find("magic"), std::string::npos)
      << "stderr should mention the bad magic\n" << recv.Report();
  ExpectRecvDidNotSucceed(recv);
}

// With verification off the destination still has the last word: a source
// whose destination failed never exits 0 (here: recv cannot create its memory
// file; then the two sides disagree on the RAM size), and it prints the
// destination's reason.
TEST_F(IntegrationTest, VerifyOffSourceSucceedsOnlyWhenTheDestinationConfirms) {
  struct Case {
    std::vector<std::string> recv, send;
    std::string reason;  // in send's stderr
  };
  const std::vector<Case> cases = {
      {{"--memory-file", "/nonexistent/dir/x.mem", "-c", "verify=off"}, {"--ram", "4M", "-c", "verify=off"},
       "/nonexistent/dir/x.mem"},
      {{"--ram", "8M", "-c", "verify=off"}, {"--ram", "4M", "-c", "verify=off"}, "ram"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("case " + std::to_string(i));
    Process recv, send;
    std::string uri;
    ASSERT_NO_FATAL_FAILURE(StartRecv("tcp:127.0.0.1:0", cases[i].recv, &recv, &uri));
    ASSERT_NO_FATAL_FAILURE(StartSend(uri, cases[i].send, &send));
    ASSERT_TRUE(ExitsWithCode(send, 1, kExitTimeout)) << "receiver:\n" << recv.Report();
    EXPECT_NE(send.Stderr().find("the destination reports"), std::string::npos) << send.Report();
    EXPECT_NE(send.Stderr().find(cases[i].reason), std::string::npos) << send.Report();
    ASSERT_TRUE(ExitsWithFailure(recv, kExitTimeout));
    std::error_code ec;
    std::filesystem::remove(P("ready"), ec);
  }
  // And when it did load, both say so: completed, not verified.
  Process recv, send;
  std::string uri;
  ASSERT_NO_FATAL_FAILURE(StartRecv("tcp:127.0.0.1:0", {"--json", "-c", "verify=off"}, &recv, &uri));
  ASSERT_NO_FATAL_FAILURE(StartSend(uri, {"--ram", "4M", "-c", "verify=off", "--json"}, &send));
  ASSERT_TRUE(ExitsWithCode(send, 0, kExitTimeout)) << recv.Report();
  ASSERT_TRUE(ExitsWithCode(recv, 0, kExitTimeout));
  json sj;
  ASSERT_NO_FATAL_FAILURE(GetJson(send, &sj));
  EXPECT_EQ(sj.value("status", std::string()), "completed");
  EXPECT_EQ(sj.value("verified", true), false);
}

// SIGINT to the sender mid-migration: send exits 3 ("cancelled"); the
// receiver fails and does not claim success.
TEST_F(IntegrationTest, SigintCancelsSend) {
  Process recv, send;
  ASSERT_NO_FATAL_FAILURE(StartSlowMigration(&recv, &send));
  ASSERT_TRUE(send.Signal(SIGINT).ok());

  ASSERT_TRUE(ExitsWithCode(send, 3, kExitTimeout)) << "receiver:\n" << recv.Report();
  ExpectJsonStatus(send, "cancelled");

  ASSERT_TRUE(ExitsWithFailure(recv, kExitTimeout)) << "sender:\n" << send.Report();
  ExpectRecvDidNotSucceed(recv);
}

// The receiver is SIGKILLed mid-migration: send notices and fails (exit 1).
TEST_F(IntegrationTest, SendFailsWhenReceiverIsKilled) {
  Process recv, send;
  ASSERT_NO_FATAL_FAILURE(StartSlowMigration(&recv, &send));
  KillReceiverExpectSendFails(recv, send, kExitTimeout);
}

}  // namespace
}  // namespace ferry::test
