// multifd through the `ferry` command line: two real processes over tcp.
//
//   - every combination of zero-page-detection x multifd-compression x
//     multifd-channels, with a guest that keeps writing while it migrates,
//     verified by ferry's page digests (recv exits 0 only when verified);
//   - malformed multifd connections from a raw socket (bad magic, version,
//     uuid, id out of range, duplicate id): recv refuses each with a message
//     naming the problem and exits non-zero instead of waiting;
//   - a multifd source against a destination without multifd, and with fewer
//     channels: both ends fail, neither hangs;
//   - channel loss: SIGKILL to either end mid-migration, the other fails.
//
// FERRY_KEEP_TMP=1 keeps the temp dirs (outputs and logs) for a post-mortem.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/endian.h"
#include "core/unique_fd.h"
#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"
#include "tests/support/text.h"

namespace ferry::test {
namespace {

using nlohmann::json;
using std::chrono::seconds;

constexpr auto kMigrationTimeout = seconds(120);
constexpr auto kExitTimeout = seconds(60);
// How long recv may take to refuse a bad connection. Its own --timeout is
// longer, so passing means it noticed the problem rather than timing out.
constexpr auto kRefuseTimeout = seconds(20);
constexpr const char* kRecvTimeout = "45";

// The 64-byte multifd init packet, built by hand (independent of ferry's
// codec): be32 magic, be32 version, uuid[16], u8 id, zero padding.
struct InitSpec {
  uint32_t magic = 0x11223344;
  uint32_t version = 1;
  std::array<uint8_t, 16> uuid{};
  uint8_t id = 0;
};

std::vector<uint8_t> InitPacket(const InitSpec& s) {
  std::vector<uint8_t> p(64, 0);
  StoreBe32(&p[0], s.magic);
  StoreBe32(&p[4], s.version);
  std::copy(s.uuid.begin(), s.uuid.end(), p.begin() + 8);
  p[24] = s.id;
  return p;
}

// A raw tcp connection to 127.0.0.1:port that sends `bytes` and stays open.
void RawConnect(int port, const std::vector<uint8_t>& bytes, UniqueFd* out) {
  UniqueFd sock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(sock.valid()) << std::strerror(errno);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ASSERT_EQ(::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
      << "connect to port " << port << ": " << std::strerror(errno);
  ASSERT_EQ(::send(sock.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
  *out = std::move(sock);
}

class MultifdCliTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = std::make_unique<TempDir>("ferry-multifd-cli"); }

  std::string P(std::string_view name) const { return dir_->Path(name); }

  // `ferry recv tcp:127.0.0.1:0 --ready-file F --timeout T EXTRA...`; returns
  // the URI it listens on.
  void StartRecv(std::vector<std::string> extra, Process* recv, std::string* uri,
                 const std::string& timeout = kRecvTimeout) {
    std::vector<std::string> args = {"recv", "tcp:127.0.0.1:0", "--timeout", timeout};
    args.insert(args.end(), extra.begin(), extra.end());
    StartReadyRecv(*dir_, std::move(args), recv, uri);
  }

  void StartSend(const std::string& uri, std::vector<std::string> extra, Process* send) {
    std::vector<std::string> args = {"send", uri, "--connect-timeout", "20"};
    args.insert(args.end(), extra.begin(), extra.end());
    StartFerryOrFail(*dir_, "send", std::move(args), send);
  }

  // recv with multifd and 2 channels; `connect` opens raw connections to it.
  // Expects recv to refuse them: non-zero exit, `keyword` in its stderr.
  void ExpectRefused(const std::function<void(int port, std::vector<UniqueFd>* socks)>& connect,
                     const std::string& keyword, std::vector<std::string> recv_extra = {}) {
    Process recv;
    std::string uri;
    std::vector<std::string> extra = {"--json", "-c", "multifd=on", "-p", "multifd-channels=2"};
    extra.insert(extra.end(), recv_extra.begin(), recv_extra.end());
    ASSERT_NO_FATAL_FAILURE(StartRecv(extra, &recv, &uri));
    const int port = PortOf(uri);
    ASSERT_GT(port, 0) << uri;
    std::vector<UniqueFd> socks;  // kept open: recv must judge the bytes, not an EOF
    ASSERT_NO_FATAL_FAILURE(connect(port, &socks));
    ASSERT_TRUE(ExitsWithFailure(recv, kRefuseTimeout));
    const std::string err = Lower(recv.Stderr());
    EXPECT_NE(err.find(Lower(keyword)), std::string::npos)
        << "recv's stderr should mention \"" << keyword << "\"\n" << recv.Report();
    if (Result<json> j = FerryJson(recv); j.ok()) {
      EXPECT_NE(j->value("status", std::string()), "completed") << recv.Report();
    }
  }

  // Starts a multifd migration that does not end by itself and returns once
  // it is under way. A 1 GiB guest of random pages (every page goes in full
  // over the channels: seconds even unthrottled), a 50 MB/s rate limit, and
  // a guest dirtying 200 MB/s with a 0 ms downtime limit, so it never
  // converges.
  void StartEndlessMigration(Process* recv, Process* send) {
    const std::string out = P("received.bin");
    std::string uri;
    ASSERT_NO_FATAL_FAILURE(StartRecv(
        {"--json", "--memory-file", out, "-c", "multifd=on", "-p", "multifd-channels=4"}, recv, &uri));
    ASSERT_NO_FATAL_FAILURE(StartSend(uri,
                                      {"--ram", "1G", "--fill", "random=100", "--dirty-rate", "200M", "--hot-set",
                                       "64M", "--json", "-c", "multifd=on", "-p", "multifd-channels=4", "-p",
                                       "max-bandwidth=50000000", "-p", "downtime-limit=0"},
                                      send));
    // recv creates its memory file when the stream announces the RAM size.
    Status started = WaitForNonEmptyFile(out, kMigrationTimeout, recv);
    ASSERT_TRUE(started.ok()) << "waiting for the migration to start: " << started.message() << "\nsender:\n"
                              << send->Report();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ASSERT_TRUE(send->Running()) << "send ended before the migration could be disturbed\n"
                                 << send->Report() << recv->Report();
    ASSERT_TRUE(recv->Running()) << "recv ended before the migration could be disturbed\n"
                                 << send->Report() << recv->Report();
  }

  std::unique_ptr<TempDir> dir_;
};

// ---- The matrix --------------------------------------------------------------

using MatrixParam = std::tuple<std::string, std::string, int>;  // zero-page-detection, compression, channels

class MultifdMatrixTest : public MultifdCliTest, public ::testing::WithParamInterface<MatrixParam> {};

TEST_P(MultifdMatrixTest, LiveMigrationVerified) {
  const auto& [zero, compression, channels] = GetParam();
  const std::vector<std::string> multifd = {
      "-c", "multifd=on",
      "-p", "multifd-channels=" + std::to_string(channels),
      "-p", "multifd-compression=" + compression,
      "-p", "zero-page-detection=" + zero,
  };
  Process recv, send;
  std::string uri;
  std::vector<std::string> recv_args = {"--json"};
  recv_args.insert(recv_args.end(), multifd.begin(), multifd.end());
  ASSERT_NO_FATAL_FAILURE(StartRecv(recv_args, &recv, &uri));
  std::vector<std::string> send_args = {"--ram",        "128M", "--fill",    "random=40,zero=40,text=20",
                                        "--dirty-rate", "100M", "--hot-set", "16M",
                                        "--json"};
  send_args.insert(send_args.end(), multifd.begin(), multifd.end());
  ASSERT_NO_FATAL_FAILURE(StartSend(uri, send_args, &send));

  ASSERT_TRUE(ExitsWithCode(send, 0, kMigrationTimeout)) << "receiver:\n" << recv.Report();
  ASSERT_TRUE(ExitsWithCode(recv, 0, kExitTimeout)) << "sender:\n" << send.Report();
  json sj, rj;
  ASSERT_NO_FATAL_FAILURE(GetJson(send, &sj));
  ASSERT_NO_FATAL_FAILURE(GetJson(recv, &rj));
  EXPECT_EQ(sj.value("status", std::string()), "completed") << send.Report();
  EXPECT_EQ(rj.value("status", std::string()), "completed") << recv.Report();
  EXPECT_EQ(rj.value("verified", false), true) << recv.Report();
  EXPECT_EQ(sj.value("verified", false), true) << send.Report();
  EXPECT_EQ(JsonAt(rj, "/ram/total"), json(128ULL << 20)) << recv.Report();
  // Live: at least one dirty round after the first pass, so the barrier ran.
  std::optional<json> syncs = JsonAt(sj, "/ram/dirty-sync-count");
  ASSERT_TRUE(syncs && syncs->is_number()) << send.Report();
  EXPECT_GE(syncs->get<int64_t>(), 2) << send.Report();

  // The pages really went over the multifd channels, every channel was used.
  // (The source's channel counters are only reported while its sink exists;
  // an empty list there is accepted, the destination's must be complete.)
  for (const auto* side : {&sj, &rj}) {
    const Process& p = side == &sj ? send : recv;
    std::optional<json> chans = JsonAt(*side, "/multifd/channels");
    ASSERT_TRUE(chans && chans->is_array()) << "no multifd.channels in the JSON\n" << p.Report();
    if (side == &sj && chans->empty()) continue;
    ASSERT_EQ(chans->size(), static_cast<size_t>(channels)) << p.Report();
    uint64_t pages = 0;
    for (const json& c : *chans) {
      EXPECT_GT(c.value("packets", uint64_t{0}), 0u) << "a channel carried no packet: " << chans->dump() << "\n"
                                                   << p.Report();
      pages += c.value("pages", uint64_t{0});
    }
    EXPECT_GT(pages, 0u) << "no page went over multifd: " << chans->dump() << "\n" << p.Report();
    std::optional<json> bytes = JsonAt(*side, "/ram/multifd-bytes");
    ASSERT_TRUE(bytes && bytes->is_number()) << p.Report();
    EXPECT_GT(bytes->get<uint64_t>(), 0u) << p.Report();
  }
  // Where the zero pages went: listed in multifd packets (multifd), ZERO
  // records in the main stream (legacy), or sent in full (none).
  std::optional<json> in_packets = JsonAt(rj, "/multifd/zero-pages");
  ASSERT_TRUE(in_packets && in_packets->is_number()) << recv.Report();
  const uint64_t zero_records = JsonAt(rj, "/ram/duplicate").value_or(json(0)).get<uint64_t>();
  if (zero == "multifd") {
    EXPECT_GT(in_packets->get<uint64_t>(), 0u) << recv.Report();
  } else {
    EXPECT_EQ(in_packets->get<uint64_t>(), 0u) << recv.Report();
    if (zero == "legacy") {
      EXPECT_GT(zero_records, 0u) << recv.Report();
    } else {
      EXPECT_EQ(zero_records, 0u) << recv.Report();
    }
  }
}

std::string MatrixName(const ::testing::TestParamInfo<MatrixParam>& info) {
  const auto& [zero, compression, channels] = info.param;
  return "zero_" + zero + "_" + compression + "_" + std::to_string(channels) + "ch";
}

INSTANTIATE_TEST_SUITE_P(All, MultifdMatrixTest,
                         ::testing::Combine(::testing::Values("none", "legacy", "multifd"),
                                            ::testing::Values("none", "zstd"), ::testing::Values(1, 2, 4, 8)),
                         MatrixName);

// ---- Bad connections from a raw socket -------------------------------------------

TEST_F(MultifdCliTest, BadMagicIsRefused) {
  ExpectRefused(
      [](int port, std::vector<UniqueFd>* socks) {
        socks->emplace_back();
        ASSERT_NO_FATAL_FAILURE(RawConnect(port, InitPacket({.magic = 0xdeadbeef}), &socks->back()));
      },
      "magic");
}

TEST_F(MultifdCliTest, BadVersionIsRefused) {
  ExpectRefused(
      [](int port, std::vector<UniqueFd>* socks) {
        socks->emplace_back();
        ASSERT_NO_FATAL_FAILURE(RawConnect(port, InitPacket({.version = 2}), &socks->back()));
      },
      "version");
}

TEST_F(MultifdCliTest, WrongUuidIsRefused) {
  ExpectRefused(
      [](int port, std::vector<UniqueFd>* socks) {
        InitSpec s;
        s.uuid = {0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8};
        socks->emplace_back();
        ASSERT_NO_FATAL_FAILURE(RawConnect(port, InitPacket(s), &socks->back()));
      },
      "uuid");
}

// recv has a uuid of its own; a channel announcing the zero uuid is refused,
// and the message shows both.
TEST_F(MultifdCliTest, UuidOfTheDestinationIsChecked) {
  ExpectRefused(
      [](int port, std::vector<UniqueFd>* socks) {
        socks->emplace_back();
        ASSERT_NO_FATAL_FAILURE(RawConnect(port, InitPacket({}), &socks->back()));
      },
      "5b6ca0f4-6ad8-4f5c-9d6c-05a3c4b2c6f1", {"--uuid", "5b6ca0f4-6ad8-4f5c-9d6c-05a3c4b2c6f1"});
}

TEST_F(MultifdCliTest, ChannelIdOutOfRangeIsRefused) {
  ExpectRefused(
      [](int port, std::vector<UniqueFd>* socks) {
        socks->emplace_back();
        ASSERT_NO_FATAL_FAILURE(RawConnect(port, InitPacket({.id = 2}), &socks->back()));
      },
      "only 2 channels");
}

TEST_F(MultifdCliTest, DuplicateChannelIdIsRefused) {
  ExpectRefused(
      [](int port, std::vector<UniqueFd>* socks) {
        for (int i = 0; i < 2; ++i) {
          socks->emplace_back();
          ASSERT_NO_FATAL_FAILURE(RawConnect(port, InitPacket({.id = 1}), &socks->back()));
        }
      },
      "duplicate");
}

TEST_F(MultifdCliTest, SecondMainStreamIsRefused) {
  ExpectRefused(
      [](int port, std::vector<UniqueFd>* socks) {
        const std::vector<uint8_t> header = {0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3};
        for (int i = 0; i < 2; ++i) {
          socks->emplace_back();
          ASSERT_NO_FATAL_FAILURE(RawConnect(port, header, &socks->back()));
        }
      },
      "second migration stream");
}

// A connection that says nothing: recv gives up at its --timeout with a
// message instead of waiting forever.
TEST_F(MultifdCliTest, SilentConnectionTimesOut) {
  Process recv;
  std::string uri;
  ASSERT_NO_FATAL_FAILURE(StartRecv({"-c", "multifd=on", "-p", "multifd-channels=2"}, &recv, &uri, "2"));
  UniqueFd sock;
  ASSERT_NO_FATAL_FAILURE(RawConnect(PortOf(uri), {}, &sock));
  ASSERT_TRUE(ExitsWithCode(recv, 1, kRefuseTimeout));
  EXPECT_NE(Lower(recv.Stderr()).find("deadline"), std::string::npos) << recv.Report();
}

// A destination without multifd refuses a multifd channel by name.
TEST_F(MultifdCliTest, MultifdChannelToPlainRecvIsRefused) {
  Process recv;
  std::string uri;
  ASSERT_NO_FATAL_FAILURE(StartRecv({"--json"}, &recv, &uri));
  UniqueFd sock;
  ASSERT_NO_FATAL_FAILURE(RawConnect(PortOf(uri), InitPacket({}), &sock));
  ASSERT_TRUE(ExitsWithCode(recv, 1, kRefuseTimeout));
  EXPECT_NE(Lower(recv.Stderr()).find("multifd is off"), std::string::npos) << recv.Report();
}

// ---- Mismatched configurations between two ferry processes ------------------------

// multifd source, destination without multifd: recv refuses, send fails too.
TEST_F(MultifdCliTest, MultifdSourceToPlainDestinationFails) {
  Process recv, send;
  std::string uri;
  ASSERT_NO_FATAL_FAILURE(StartRecv({"--json"}, &recv, &uri));
  ASSERT_NO_FATAL_FAILURE(StartSend(uri, {"--ram", "64M", "--json", "-c", "multifd=on"}, &send));
  ASSERT_TRUE(ExitsWithCode(recv, 1, kRefuseTimeout)) << "sender:\n" << send.Report();
  EXPECT_NE(Lower(recv.Stderr()).find("multifd is off"), std::string::npos) << recv.Report();
  ASSERT_TRUE(ExitsWithCode(send, 1, kExitTimeout)) << "receiver:\n" << recv.Report();
}

// The source opens 4 channels, the destination expects 2.
TEST_F(MultifdCliTest, ChannelCountMismatchFails) {
  Process recv, send;
  std::string uri;
  ASSERT_NO_FATAL_FAILURE(StartRecv({"--json", "-c", "multifd=on", "-p", "multifd-channels=2"}, &recv, &uri));
  ASSERT_NO_FATAL_FAILURE(
      StartSend(uri, {"--ram", "64M", "--json", "-c", "multifd=on", "-p", "multifd-channels=4"}, &send));
  ASSERT_TRUE(ExitsWithCode(recv, 1, kRefuseTimeout)) << "sender:\n" << send.Report();
  EXPECT_NE(Lower(recv.Stderr()).find("only 2 channels"), std::string::npos) << recv.Report();
  ASSERT_TRUE(ExitsWithCode(send, 1, kExitTimeout)) << "receiver:\n" << recv.Report();
}

// Both ends agree on a non-zero uuid: the migration goes through.
TEST_F(MultifdCliTest, MatchingUuidMigrates) {
  const std::string uuid = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
  Process recv, send;
  std::string uri;
  ASSERT_NO_FATAL_FAILURE(
      StartRecv({"--json", "-c", "multifd=on", "-p", "multifd-channels=3", "--uuid", uuid}, &recv, &uri));
  ASSERT_NO_FATAL_FAILURE(StartSend(
      uri, {"--ram", "64M", "--json", "-c", "multifd=on", "-p", "multifd-channels=3", "--uuid", uuid}, &send));
  ASSERT_TRUE(ExitsWithCode(send, 0, kMigrationTimeout)) << "receiver:\n" << recv.Report();
  ASSERT_TRUE(ExitsWithCode(recv, 0, kExitTimeout)) << "sender:\n" << send.Report();
  json rj;
  ASSERT_NO_FATAL_FAILURE(GetJson(recv, &rj));
  EXPECT_EQ(rj.value("verified", false), true) << recv.Report();
}

// multifd over a unix socket: the channels connect to the same path.
TEST_F(MultifdCliTest, OverUnixSocket) {
  Process recv, send;
  const std::string path = P("migration.sock");
  Result<Process> r = StartFerry(*dir_, "recv",
                                 {"recv", "unix:" + path, "--ready-file", P("ready"), "--json", "-c", "multifd=on",
                                  "-p", "multifd-channels=3"});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  recv = std::move(*r);
  Result<std::string> uri = WaitForFile(P("ready"), kReadyTimeout, &recv);
  ASSERT_TRUE(uri.ok()) << uri.status().message();
  ASSERT_NO_FATAL_FAILURE(StartSend(
      *uri, {"--ram", "64M", "--dirty-rate", "50M", "--json", "-c", "multifd=on", "-p", "multifd-channels=3"},
      &send));
  ASSERT_TRUE(ExitsWithCode(send, 0, kMigrationTimeout)) << "receiver:\n" << recv.Report();
  ASSERT_TRUE(ExitsWithCode(recv, 0, kExitTimeout)) << "sender:\n" << send.Report();
  json rj;
  ASSERT_NO_FATAL_FAILURE(GetJson(recv, &rj));
  EXPECT_EQ(rj.value("verified", false), true) << recv.Report();
  EXPECT_EQ(JsonAt(rj, "/multifd/channels").value_or(json::array()).size(), 3u) << recv.Report();
}

// -c zero-copy-send=on (MSG_ZEROCOPY on the channels; the kernel may fall
// back to copying on loopback, the result must be the same).
TEST_F(MultifdCliTest, ZeroCopySendMigrates) {
  Process recv, send;
  std::string uri;
  ASSERT_NO_FATAL_FAILURE(StartRecv({"--json", "-c", "multifd=on", "-p", "multifd-channels=2"}, &recv, &uri));
  ASSERT_NO_FATAL_FAILURE(StartSend(uri,
                                    {"--ram", "64M", "--dirty-rate", "50M", "--json", "-c", "multifd=on", "-c",
                                     "zero-copy-send=on", "-p", "multifd-channels=2"},
                                    &send));
  ASSERT_TRUE(ExitsWithCode(send, 0, kMigrationTimeout)) << "receiver:\n" << recv.Report();
  ASSERT_TRUE(ExitsWithCode(recv, 0, kExitTimeout)) << "sender:\n" << send.Report();
  json rj;
  ASSERT_NO_FATAL_FAILURE(GetJson(recv, &rj));
  EXPECT_EQ(rj.value("verified", false), true) << recv.Report();
  // The sender reports its MSG_ZEROCOPY bookkeeping: every send numbered by
  // the kernel completed by the end (on loopback they are all copied).
  json sj;
  ASSERT_NO_FATAL_FAILURE(GetJson(send, &sj));
  ASSERT_TRUE(sj.contains("zero-copy")) << send.Report();
  const json& zc = sj["zero-copy"];
  EXPECT_GT(zc.value("sends", 0u), 0u) << zc.dump();
  EXPECT_EQ(zc.value("completed", 0u), zc.value("sends", 1u)) << zc.dump();
  EXPECT_LE(zc.value("copied", 0u), zc.value("completed", 0u)) << zc.dump();
  EXPECT_FALSE(rj.contains("zero-copy")) << "only the sender uses MSG_ZEROCOPY";
}

TEST_F(MultifdCliTest, BadOptionsAreUsageErrors) {
  const std::vector<std::vector<std::string>> cases = {
      {"send", "tcp:127.0.0.1:1", "--ram", "1M", "-c", "zero-copy-send=on"},  // needs multifd
      {"send", "tcp:127.0.0.1:1", "--ram", "1M", "-c", "multifd=on", "-c", "zero-copy-send=on", "-p",
       "multifd-compression=zstd"},
      {"send", "tcp:127.0.0.1:1", "--ram", "1M", "-c", "multifd=on", "--uuid", "not-a-uuid"},
      {"send", "fd:1", "--ram", "1M", "-c", "multifd=on"},
      {"recv", "tcp:127.0.0.1:0", "-p", "multifd-channels=0"},
      {"recv", "tcp:127.0.0.1:0", "-p", "multifd-compression=zlib"},
      {"recv", "tcp:127.0.0.1:0", "-c", "verify=maybe"},
      {"recv", "tcp:127.0.0.1:0", "--qemu-compat", "none,version=7.2", "-c", "multifd=on", "-p",
       "zero-page-detection=multifd"},
      {"recv", "tcp:127.0.0.1:0", "--qemu-compat", "none,version=9.1"},
      {"recv", "tcp:127.0.0.1:0", "--qemu-compat", ",version=10.0"},
      {"send", "tcp:127.0.0.1:1", "--ram", "1M", "-c", "validate-uuid=on"},  // needs --uuid
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    Result<Process> p = StartFerry(*dir_, "bad" + std::to_string(i), cases[i]);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    EXPECT_TRUE(ExitsWithCode(*p, 2, kExitTimeout));
  }
}

// ---- Channel loss ---------------------------------------------------------------

// The source is SIGKILLed mid-migration: every connection drops at once; the
// receiver threads and the main stream notice, recv fails.
TEST_F(MultifdCliTest, RecvFailsWhenSourceIsKilled) {
  Process recv, send;
  ASSERT_NO_FATAL_FAILURE(StartEndlessMigration(&recv, &send));
  KillSenderExpectRecvFails(recv, send, kExitTimeout);
}

// The destination is SIGKILLed mid-migration: the sender threads' writes
// fail, send reports failed (exit 1) and does not hang.
TEST_F(MultifdCliTest, SendFailsWhenReceiverIsKilled) {
  Process recv, send;
  ASSERT_NO_FATAL_FAILURE(StartEndlessMigration(&recv, &send));
  KillReceiverExpectSendFails(recv, send, kExitTimeout);
}

}  // namespace
}  // namespace ferry::test
