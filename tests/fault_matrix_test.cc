// The fault matrix (issue 9): real `ferry` processes, one fault each, and for
// every case an exit code, a time bound that detects a hang, and an intact
// source.
//
//   peer killed (SIGKILL) / peer stopped (SIGSTOP)
//     x the source, the destination, one multifd channel's connection (3
//       channels, through a forwarding proxy in this test that can reset or
//       stall one connection)
//     x early (the stream's RAM setup has arrived: recv created its memory
//       file; for a channel: all channels are up), mid (a rate-limited
//       migration under way), switchover (the source's guest is paused: the
//       test-only hook FERRY_TEST_PAUSE_AT=switchover:MS in cli/guest.cc holds
//       the source there and says so on stderr).
//     Killed: the other side fails (exit 1) at once. Stopped: the other side
//     fails within the no-progress bound (-p no-progress-timeout=3 on both
//     sides) saying "no progress"; after SIGCONT the stopped side fails too,
//     never exit 0.
//     The source is a memory file: idle for the killed rows (its bytes must be
//     unchanged), live for the stopped rows (--dirty-rate on a 1 MiB hot set:
//     everything beyond the hot set must be unchanged, and while its
//     destination is stopped before switchover the guest keeps writing).
//   destination out of space: recv --memory-file / load --memory-file on a
//     16 MiB tmpfs, and a source memory file truncated under the migration:
//     exit 1 with the reason, never SIGBUS (135).
//   stray connections during a multifd migration: once all connections are
//     in, strays (garbage or silent) are never accepted and the migration
//     completes verified; a stray that arrives between the source's
//     connections is refused naming its address (docs/cli-contract.md).
//   names that are not UTF-8 (\xff, escape and control characters) in a
//     hand-made stream, fed to recv fd:0 --json, load --json, inspect --json,
//     and in a verdict to send --json: exit 1, one valid JSON object on
//     stdout, no abort (134), no raw escape character on stderr; and inspect's
//     text report: no raw escape character on the terminal.
//
// FERRY_KEEP_TMP=1 keeps the temp dirs (outputs and logs) for a post-mortem.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <ostream>
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
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr uint64_t kMiB = 1ULL << 20;
// The source: a 32 MiB memory file, three quarters non-zero, sent at 6 MB/s:
// the first pass takes about 4 s, so "mid" (1 s in) is well inside it.
constexpr uint64_t kSourceSize = 32 * kMiB;
constexpr const char* kBandwidth = "max-bandwidth=6000000";
// The live source dirties this much at the start of its memory; it converges
// after its first pass with this downtime limit.
constexpr uint64_t kHotSet = 1 * kMiB;
constexpr const char* kDowntime = "downtime-limit=1000";
constexpr const char* kNoProgressParam = "no-progress-timeout=3";
constexpr auto kNoProgress = seconds(3);
// Hang detectors, counted from the fault: a killed peer is noticed at once;
// a stopped one within the no-progress timeout.
constexpr auto kKilledBound = seconds(15);
constexpr auto kStoppedBound = kNoProgress + seconds(15);
// How long the switchover hook holds the source (below the no-progress
// timeout, so that the hold alone never trips it).
constexpr int kHoldMs = 1500;
constexpr auto kStartTimeout = seconds(60);
constexpr auto kMigrationTimeout = seconds(120);
constexpr int kChannels = 3;
constexpr int kVictimChannel = 1;

PatternSpec SourcePattern() { return {.size = kSourceSize, .seed = 91, .random_pct = 50, .zero_pct = 25, .text_pct = 25}; }

// A hash of bytes [0, len) of a file ("" if unreadable).
std::string PrefixDigest(const std::string& path, uint64_t len) {
  std::string data = ReadFileOrEmpty(path);
  if (data.size() < len) return "";
  return std::to_string(std::hash<std::string_view>{}(std::string_view(data).substr(0, len)));
}

// Waits until `needle` appears in p's stderr; false if p ends or time runs out.
::testing::AssertionResult WaitForStderr(Process& p, const std::string& needle, Clock::duration timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (Contains(p.Stderr(), needle)) return ::testing::AssertionSuccess();
    if (!p.Running()) {
      if (Contains(p.Stderr(), needle)) return ::testing::AssertionSuccess();
      return ::testing::AssertionFailure() << "the process ended before saying \"" << needle << "\"\n" << p.Report();
    }
    std::this_thread::sleep_for(milliseconds(20));
  }
  return ::testing::AssertionFailure() << "no \"" << needle << "\" on stderr in time\n" << p.Report();
}

void SetLinger0(int fd) {
  linger l{1, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}

UniqueFd ConnectLoopback(int port) {
  UniqueFd sock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock.valid()) return sock;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (::connect(sock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return UniqueFd();
  return sock;
}

int LocalPort(int fd) {
  sockaddr_in addr{};
  socklen_t len = sizeof(addr);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) return -1;
  return ntohs(addr.sin_port);
}

// A listening socket on 127.0.0.1 with a kernel-chosen port.
UniqueFd ListenLoopback(int* port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return fd;
  int one = 1;
  ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd.get(), 16) != 0) {
    return UniqueFd();
  }
  *port = LocalPort(fd.get());
  return fd;
}

// ---- A forwarding proxy that can reset or stall one connection --------------
//
// Listens on 127.0.0.1 and forwards every connection to the destination's
// port, byte for byte, with at most 64 KiB in flight per direction (so the
// peers still feel back-pressure). It recognises multifd channels by their
// init packet (magic 0x11223344, channel id at byte 24) and the main stream by
// "QEVM". Sever(id) resets both halves of channel id's connection (RST, as a
// crashed host or a pulled cable would look); Stall(id) stops forwarding it in
// both directions (a peer that went silent). HoldFrom(n) connects the n-th and
// later connections upstream only after Release() (to place a stray in the
// destination's accept queue between the source's connections).
class TcpProxy {
 public:
  explicit TcpProxy(int upstream_port) : upstream_port_(upstream_port) {}
  ~TcpProxy() {
    stop_.store(true);
    {
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    }
    if (acceptor_.joinable()) acceptor_.join();
    std::vector<std::shared_ptr<Conn>> conns;
    {
      std::lock_guard<std::mutex> lock(mu_);
      conns = conns_;
    }
    for (auto& c : conns) {
      if (c->pump.joinable()) c->pump.join();
    }
  }

  bool Start() {
    listen_ = ListenLoopback(&port_);
    if (!listen_.valid()) return false;
    acceptor_ = std::thread([this] { AcceptLoop(); });
    return true;
  }
  std::string uri() const { return "tcp:127.0.0.1:" + std::to_string(port_); }

  void HoldFrom(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    hold_from_ = n;
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    hold_from_ = SIZE_MAX;
    cv_.notify_all();
  }

  // Waits until the main stream and `n` multifd channels have shown their
  // first bytes; or until `connections` connections are up and forwarding.
  bool WaitForChannels(int n, Clock::duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] {
      int channels = 0;
      bool main = false;
      for (auto& c : conns_) {
        if (c->channel >= 0) ++channels;
        if (c->channel == kMain) main = true;
      }
      return main && channels >= n;
    });
  }
  bool WaitForAccepted(size_t connections, Clock::duration timeout) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, timeout, [&] { return conns_.size() >= connections; });
  }

  ::testing::AssertionResult Sever(int channel) { return Apply(channel, &Conn::sever); }
  ::testing::AssertionResult Stall(int channel) { return Apply(channel, &Conn::stall); }

  std::string Describe() {
    std::lock_guard<std::mutex> lock(mu_);
    std::string s = "proxy 127.0.0.1:" + std::to_string(port_) + " -> " + std::to_string(upstream_port_) + ":";
    for (auto& c : conns_) {
      s += " [" + (c->channel == kMain ? std::string("main") : "ch" + std::to_string(c->channel)) + " c2u=" +
           std::to_string(c->c2u_bytes.load()) + " u2c=" + std::to_string(c->u2c_bytes.load()) +
           (c->sever.load() ? " severed" : "") + (c->stall.load() ? " stalled" : "") + "]";
    }
    return s;
  }

 private:
  static constexpr int kUnknown = -1;
  static constexpr int kMain = -2;

  struct Conn {
    UniqueFd client, upstream;
    std::atomic<bool> sever{false}, stall{false}, applied{false};
    std::atomic<uint64_t> c2u_bytes{0}, u2c_bytes{0};
    int channel = kUnknown;  // guarded by TcpProxy::mu_
    std::string head;        // first bytes from the client (pump thread only)
    std::thread pump;
  };

  ::testing::AssertionResult Apply(int channel, std::atomic<bool> Conn::*flag) {
    std::shared_ptr<Conn> target;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& c : conns_) {
        if (c->channel == channel) target = c;
      }
    }
    if (!target) return ::testing::AssertionFailure() << "no multifd channel " << channel << " seen: " << Describe();
    (*target).*flag = true;
    const auto deadline = Clock::now() + seconds(5);
    while (!target->applied.load() && Clock::now() < deadline) std::this_thread::sleep_for(milliseconds(5));
    if (!target->applied.load()) return ::testing::AssertionFailure() << "the proxy did not act: " << Describe();
    return ::testing::AssertionSuccess();
  }

  void AcceptLoop() {
    while (!stop_.load()) {
      pollfd p{listen_.get(), POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      UniqueFd client(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!client.valid()) continue;
      auto conn = std::make_shared<Conn>();
      conn->client = std::move(client);
      size_t index;
      {
        std::unique_lock<std::mutex> lock(mu_);
        index = accepted_++;
        cv_.wait(lock, [&] { return stop_.load() || index < hold_from_; });
      }
      if (stop_.load()) return;
      conn->upstream = ConnectLoopback(upstream_port_);
      if (!conn->upstream.valid()) {
        SetLinger0(conn->client.get());
        continue;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        conns_.push_back(conn);
        cv_.notify_all();
      }
      conn->pump = std::thread([this, conn] { Pump(*conn); });
    }
  }

  void Identify(Conn& c, const char* data, size_t n) {
    if (c.head.size() >= 25) return;
    c.head.append(data, std::min(n, 25 - c.head.size()));
    int kind = kUnknown;
    if (c.head.size() >= 4 && c.head.compare(0, 4, "QEVM") == 0) kind = kMain;
    if (c.head.size() >= 25 && c.head.compare(0, 4, "\x11\x22\x33\x44") == 0) {
      kind = static_cast<uint8_t>(c.head[24]);
    }
    if (kind != kUnknown) {
      std::lock_guard<std::mutex> lock(mu_);
      c.channel = kind;
      cv_.notify_all();
    }
  }

  void Pump(Conn& c) {
    constexpr size_t kBuf = 64 * 1024;
    std::vector<char> c2u(kBuf), u2c(kBuf);
    size_t c2u_len = 0, c2u_off = 0, u2c_len = 0, u2c_off = 0;
    bool client_eof = false, upstream_eof = false, shut_up = false, shut_client = false;
    auto reset_both = [&] {
      SetLinger0(c.client.get());
      SetLinger0(c.upstream.get());
      c.client.Reset();
      c.upstream.Reset();
    };
    while (!stop_.load()) {
      if (c.sever.load()) {
        reset_both();
        c.applied = true;
        return;
      }
      if (c.stall.load()) {
        c.applied = true;
        std::this_thread::sleep_for(milliseconds(20));
        continue;
      }
      if (client_eof && c2u_off == c2u_len && !shut_up) {
        ::shutdown(c.upstream.get(), SHUT_WR);
        shut_up = true;
      }
      if (upstream_eof && u2c_off == u2c_len && !shut_client) {
        ::shutdown(c.client.get(), SHUT_WR);
        shut_client = true;
      }
      if (shut_up && shut_client) return;
      pollfd p[2] = {{c.client.get(), 0, 0}, {c.upstream.get(), 0, 0}};
      if (c2u_off == c2u_len && !client_eof) p[0].events |= POLLIN;
      if (u2c_off < u2c_len) p[0].events |= POLLOUT;
      if (u2c_off == u2c_len && !upstream_eof) p[1].events |= POLLIN;
      if (c2u_off < c2u_len) p[1].events |= POLLOUT;
      if (::poll(p, 2, 50) <= 0) continue;
      auto failed = [&](ssize_t r) { return r < 0 && errno != EAGAIN && errno != EINTR; };
      if (p[0].revents & (POLLIN | POLLHUP | POLLERR) && (p[0].events & POLLIN)) {
        ssize_t r = ::recv(c.client.get(), c2u.data(), kBuf, MSG_DONTWAIT);
        if (r == 0) client_eof = true;
        if (failed(r)) return reset_both();  // a reset travels on as a reset
        if (r > 0) {
          Identify(c, c2u.data(), static_cast<size_t>(r));
          c2u_len = static_cast<size_t>(r);
          c2u_off = 0;
          c.c2u_bytes += static_cast<uint64_t>(r);
        }
      }
      if (p[1].revents & (POLLIN | POLLHUP | POLLERR) && (p[1].events & POLLIN)) {
        ssize_t r = ::recv(c.upstream.get(), u2c.data(), kBuf, MSG_DONTWAIT);
        if (r == 0) upstream_eof = true;
        if (failed(r)) return reset_both();
        if (r > 0) {
          u2c_len = static_cast<size_t>(r);
          u2c_off = 0;
          c.u2c_bytes += static_cast<uint64_t>(r);
        }
      }
      if (c2u_off < c2u_len && (p[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
        ssize_t r = ::send(c.upstream.get(), c2u.data() + c2u_off, c2u_len - c2u_off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (failed(r)) return reset_both();
        if (r > 0) c2u_off += static_cast<size_t>(r);
      }
      if (u2c_off < u2c_len && (p[0].revents & (POLLOUT | POLLERR | POLLHUP))) {
        ssize_t r = ::send(c.client.get(), u2c.data() + u2c_off, u2c_len - u2c_off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (failed(r)) return reset_both();
        if (r > 0) u2c_off += static_cast<size_t>(r);
      }
    }
  }

  const int upstream_port_;
  int port_ = -1;
  UniqueFd listen_;
  std::atomic<bool> stop_{false};
  std::thread acceptor_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<Conn>> conns_;  // connected upstream, in order
  size_t accepted_ = 0;
  size_t hold_from_ = SIZE_MAX;
};

// ---- The fixture ------------------------------------------------------------

class FaultMatrixTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = std::make_unique<TempDir>("ferry-faults"); }

  std::string P(std::string_view name) const { return dir_->Path(name); }

  // `ferry ARGS...` with stdout/stderr in DIR/NAME.{out,err} and extra
  // environment entries.
  void Start(const std::string& name, std::vector<std::string> args, Process* out,
             std::vector<std::string> env = {}, const std::string& stdin_path = "") {
    std::vector<std::string> argv{FERRY_BIN};
    argv.insert(argv.end(), args.begin(), args.end());
    SpawnOptions o;
    o.stdin_path = stdin_path;
    o.stdout_path = P(name + ".out");
    o.stderr_path = P(name + ".err");
    o.extra_env = std::move(env);
    Result<Process> p = Process::Spawn(std::move(argv), std::move(o));
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    *out = std::move(*p);
  }

  // `ferry recv tcp:127.0.0.1:0 --ready-file F --json EXTRA...`; the URI it listens on.
  void StartRecv(std::vector<std::string> extra, Process* recv, std::string* uri) {
    std::vector<std::string> args = {"recv", "tcp:127.0.0.1:0", "--ready-file", P("ready"), "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    ASSERT_NO_FATAL_FAILURE(Start("recv", std::move(args), recv));
    Result<std::string> u = WaitForFile(P("ready"), kReadyTimeout, recv);
    ASSERT_TRUE(u.ok()) << u.status().message();
    *uri = *u;
  }

  // The source's memory file: the pattern.
  void MakeSource() {
    Status s = WritePatternFile(P("source.mem"), SourcePattern());
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  // The source's memory file is as it was: all of it (idle guest), or all but
  // its hot set (live guest), same size.
  ::testing::AssertionResult SourceIntact(bool live) {
    Result<uint64_t> size = FileSize(P("source.mem"));
    if (!size.ok()) return ::testing::AssertionFailure() << size.status().ToString();
    if (*size != kSourceSize) {
      return ::testing::AssertionFailure() << "the source's memory file is " << *size << " bytes, was " << kSourceSize;
    }
    if (!live) return FileMatchesPattern(P("source.mem"), SourcePattern());
    Status s = WritePatternFile(P("pristine.mem"), SourcePattern());
    if (!s.ok()) return ::testing::AssertionFailure() << s.ToString();
    return FileRangeEquals(P("source.mem"), kHotSet, P("pristine.mem"), kHotSet, kSourceSize - kHotSet);
  }

  std::unique_ptr<TempDir> dir_;
};

// ---- Peer killed / peer stopped ----------------------------------------------

enum class Fault { kKill, kStop };
enum class Victim { kSource, kDestination, kChannel };
enum class Point { kEarly, kMid, kSwitchover };
using PeerParam = std::tuple<Fault, Victim, Point>;

// For gtest's test listing (ctest shows these).
void PrintTo(Fault f, std::ostream* os) { *os << (f == Fault::kKill ? "SIGKILL" : "SIGSTOP"); }
void PrintTo(Victim v, std::ostream* os) {
  *os << (v == Victim::kSource ? "source" : v == Victim::kDestination ? "destination" : "multifd channel");
}
void PrintTo(Point p, std::ostream* os) {
  *os << (p == Point::kEarly ? "early" : p == Point::kMid ? "mid" : "at switchover");
}

class PeerFaultTest : public FaultMatrixTest, public ::testing::WithParamInterface<PeerParam> {};

TEST_P(PeerFaultTest, FailsCleanlyWithTheSourceIntact) {
  const auto [fault, victim, point] = GetParam();
  const bool stop = fault == Fault::kStop;
  const bool multifd = victim == Victim::kChannel;
  const bool live = stop;  // the stopped rows run a live guest
  ASSERT_NO_FATAL_FAILURE(MakeSource());

  std::vector<std::string> common;
  if (multifd) common = {"-c", "multifd=on", "-p", "multifd-channels=" + std::to_string(kChannels)};
  if (stop) common.insert(common.end(), {"-p", kNoProgressParam});

  Process recv, send;
  std::string uri;
  std::vector<std::string> recv_args = {"--memory-file", P("dest.mem"), "--timeout", "30"};
  recv_args.insert(recv_args.end(), common.begin(), common.end());
  ASSERT_NO_FATAL_FAILURE(StartRecv(recv_args, &recv, &uri));
  std::unique_ptr<TcpProxy> proxy;
  if (multifd) {
    proxy = std::make_unique<TcpProxy>(PortOf(uri));
    ASSERT_TRUE(proxy->Start()) << std::strerror(errno);
    uri = proxy->uri();
  }
  std::vector<std::string> send_args = {"send", uri, "--memory-file", P("source.mem"), "--json", "-p", kBandwidth,
                                        "-p",   kDowntime, "--connect-timeout", "20"};
  if (live) send_args.insert(send_args.end(), {"--dirty-rate", "4M", "--hot-set", std::to_string(kHotSet)});
  send_args.insert(send_args.end(), common.begin(), common.end());
  std::vector<std::string> env;
  if (point == Point::kSwitchover) env.push_back("FERRY_TEST_PAUSE_AT=switchover:" + std::to_string(kHoldMs));
  ASSERT_NO_FATAL_FAILURE(Start("send", send_args, &send, env));
  auto report = [&] {
    return "sender:\n" + send.Report() + "receiver:\n" + recv.Report() + (proxy ? proxy->Describe() : "");
  };

  // Wait for the point.
  if (victim == Victim::kChannel && point == Point::kEarly) {
    ASSERT_TRUE(proxy->WaitForChannels(kChannels, kStartTimeout)) << report();
  } else if (point == Point::kSwitchover) {
    ASSERT_TRUE(WaitForStderr(send, "guest paused for switchover", kMigrationTimeout)) << report();
  } else {
    Status started = WaitForNonEmptyFile(P("dest.mem"), kStartTimeout, &recv);
    ASSERT_TRUE(started.ok()) << started.message() << "\n" << report();
    if (point == Point::kMid) std::this_thread::sleep_for(seconds(1));
  }
  ASSERT_TRUE(send.Running()) << "send ended before the fault\n" << report();
  ASSERT_TRUE(recv.Running()) << "recv ended before the fault\n" << report();

  // The fault.
  switch (victim) {
    case Victim::kSource:
      if (stop) ASSERT_TRUE(send.Signal(SIGSTOP).ok());
      else send.Kill();
      break;
    case Victim::kDestination:
      if (stop) ASSERT_TRUE(recv.Signal(SIGSTOP).ok());
      else recv.Kill();
      break;
    case Victim::kChannel:
      if (stop) ASSERT_TRUE(proxy->Stall(kVictimChannel)) << report();
      else ASSERT_TRUE(proxy->Sever(kVictimChannel)) << report();
      break;
  }
  const auto bound = stop ? kStoppedBound : kKilledBound;

  // The other side(s).
  if (victim == Victim::kSource) {
    EXPECT_TRUE(ExitsWithCode(recv, 1, bound)) << report();
    if (stop) {
      EXPECT_TRUE(Contains(recv.Stderr(), "no progress")) << report();
    }
    ExpectRecvDidNotSucceed(recv);
    if (stop) {
      // Woken up, the source finds its destination gone: it fails too.
      ASSERT_TRUE(send.Signal(SIGCONT).ok());
      EXPECT_TRUE(ExitsWithCode(send, 1, kStoppedBound)) << report();
      ExpectJsonStatus(send, "failed");
    }
  } else if (victim == Victim::kDestination) {
    if (stop && point != Point::kSwitchover) {
      // Before switchover the guest runs on while its destination is stopped.
      const std::string a = PrefixDigest(P("source.mem"), kHotSet);
      std::this_thread::sleep_for(milliseconds(500));
      const std::string b = PrefixDigest(P("source.mem"), kHotSet);
      EXPECT_NE(a, b) << "the source's guest did not write while its destination was stopped\n" << report();
    }
    EXPECT_TRUE(ExitsWithCode(send, 1, bound)) << report();
    if (stop) {
      EXPECT_TRUE(Contains(send.Stderr(), "no progress")) << report();
    }
    ExpectJsonStatus(send, "failed");
    if (stop) {
      // The source gave up (and resumed its guest). At switchover the whole
      // stream may already wait in the stopped destination's socket buffer:
      // a destination that wakes up and then reports success would leave two
      // live copies of the guest. It must not: the source hung up before
      // reading the verdict, and that is visible to the destination.
      ASSERT_TRUE(recv.Signal(SIGCONT).ok());
      EXPECT_TRUE(ExitsWithCode(recv, 1, kStoppedBound))
          << "the source failed, so the destination must not claim success\n" << report();
      ExpectRecvDidNotSucceed(recv);
    }
  } else {
    EXPECT_TRUE(ExitsWithCode(send, 1, bound)) << report();
    EXPECT_TRUE(ExitsWithCode(recv, 1, bound)) << report();
    if (stop) {
      EXPECT_TRUE(Contains(send.Stderr() + recv.Stderr(), "no progress")) << report();
    }
    ExpectJsonStatus(send, "failed");
    ExpectRecvDidNotSucceed(recv);
  }
  EXPECT_TRUE(SourceIntact(live)) << report();
}

std::string PeerName(const ::testing::TestParamInfo<PeerParam>& info) {
  const auto [fault, victim, point] = info.param;
  std::string s = fault == Fault::kKill ? "Killed" : "Stopped";
  s += victim == Victim::kSource ? "Source" : victim == Victim::kDestination ? "Destination" : "MultifdChannel";
  s += point == Point::kEarly ? "Early" : point == Point::kMid ? "Mid" : "AtSwitchover";
  return s;
}

INSTANTIATE_TEST_SUITE_P(Matrix, PeerFaultTest,
                         ::testing::Combine(::testing::Values(Fault::kKill, Fault::kStop),
                                            ::testing::Values(Victim::kSource, Victim::kDestination,
                                                              Victim::kChannel),
                                            ::testing::Values(Point::kEarly, Point::kMid, Point::kSwitchover)),
                         PeerName);

// ---- Out of space ---------------------------------------------------------------

class OutOfSpaceTest : public FaultMatrixTest {
 protected:
  void SetUp() override {
    FaultMatrixTest::SetUp();
    mnt_ = P("mnt");
    ASSERT_EQ(::mkdir(mnt_.c_str(), 0755), 0) << std::strerror(errno);
    if (::mount("tmpfs", mnt_.c_str(), "tmpfs", 0, "size=16m") != 0) {
      GTEST_SKIP() << "cannot mount a 16 MiB tmpfs at " << mnt_ << " (needs root / CAP_SYS_ADMIN): "
                   << std::strerror(errno);
    }
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) ::umount2(mnt_.c_str(), MNT_DETACH);
  }

  std::string mnt_;
  bool mounted_ = false;
};

// The destination's --memory-file is on a filesystem with 16 MiB for a
// 32 MiB guest: recv fails with the reason (not SIGBUS), and so does send,
// quoting the destination; the file recv created is not left behind.
TEST_F(OutOfSpaceTest, DestinationMemoryFile) {
  ASSERT_NO_FATAL_FAILURE(MakeSource());
  Process recv, send;
  std::string uri;
  const std::string out = mnt_ + "/guest.mem";
  // --max-ram above the tmpfs's size: the file itself must run out of space
  // (the default cap would refuse the stream before that, with another message).
  ASSERT_NO_FATAL_FAILURE(StartRecv({"--memory-file", out, "--timeout", "30", "--max-ram", "64M"}, &recv, &uri));
  ASSERT_NO_FATAL_FAILURE(Start("send", {"send", uri, "--memory-file", P("source.mem"), "--json"}, &send));
  EXPECT_TRUE(ExitsWithCode(recv, 1, seconds(30))) << "sender:\n" << send.Report();
  EXPECT_TRUE(Contains(recv.Stderr(), "No space left on device")) << recv.Report();
  ExpectRecvDidNotSucceed(recv);
  EXPECT_TRUE(ExitsWithCode(send, 1, seconds(30))) << "receiver:\n" << recv.Report();
  EXPECT_TRUE(Contains(send.Stderr(), "the destination reports")) << send.Report();
  EXPECT_TRUE(Contains(send.Stderr(), "No space left on device")) << send.Report();
  ExpectJsonStatus(send, "failed");
  EXPECT_FALSE(std::filesystem::exists(out)) << "recv left its partial memory file behind: " << out;
  EXPECT_TRUE(SourceIntact(false));
}

// `ferry load` of a good 32 MiB file into a memory file that does not fit.
TEST_F(OutOfSpaceTest, LoadIntoMemoryFile) {
  Process save, load;
  ASSERT_NO_FATAL_FAILURE(Start("save", {"save", P("guest.mig"), "--ram", "32M", "--fill", "random=100"}, &save));
  ASSERT_TRUE(ExitsWithCode(save, 0, seconds(60)));
  const std::string out = mnt_ + "/guest.mem";
  ASSERT_NO_FATAL_FAILURE(
      Start("load", {"load", P("guest.mig"), "--memory-file", out, "--max-ram", "64M", "--json"}, &load));
  EXPECT_TRUE(ExitsWithCode(load, 1, seconds(30)));
  EXPECT_TRUE(Contains(load.Stderr(), "No space left on device")) << load.Report();
  ExpectRecvDidNotSucceed(load);
  EXPECT_FALSE(std::filesystem::exists(out)) << "load left its partial memory file behind: " << out;
}

// The source's memory file shrinks under a running migration (another
// process truncated it): send fails with a message instead of dying of
// SIGBUS, recv fails too.
TEST_F(FaultMatrixTest, SourceMemoryFileTruncated) {
  ASSERT_NO_FATAL_FAILURE(MakeSource());
  Process recv, send;
  std::string uri;
  ASSERT_NO_FATAL_FAILURE(StartRecv({"--memory-file", P("dest.mem"), "--timeout", "30"}, &recv, &uri));
  ASSERT_NO_FATAL_FAILURE(
      Start("send", {"send", uri, "--memory-file", P("source.mem"), "--json", "-p", kBandwidth}, &send));
  Status started = WaitForNonEmptyFile(P("dest.mem"), kStartTimeout, &recv);
  ASSERT_TRUE(started.ok()) << started.message();
  std::this_thread::sleep_for(seconds(1));
  ASSERT_TRUE(send.Running()) << send.Report();
  ASSERT_EQ(::truncate(P("source.mem").c_str(), 4096), 0) << std::strerror(errno);
  EXPECT_TRUE(ExitsWithCode(send, 1, kKilledBound)) << "receiver:\n" << recv.Report();
  EXPECT_TRUE(Contains(send.Stderr(), "ferry: error")) << send.Report();
  ExpectJsonStatus(send, "failed");
  EXPECT_TRUE(ExitsWithCode(recv, 1, kKilledBound)) << "sender:\n" << send.Report();
  ExpectRecvDidNotSucceed(recv);
}

// ---- Stray connections during a multifd migration ---------------------------------

class StrayTest : public FaultMatrixTest {
 protected:
  // A multifd migration (3 channels) of the idle 32 MiB source at 6 MB/s.
  void StartMigration(const std::string& recv_timeout, bool through_proxy_holding_channels) {
    ASSERT_NO_FATAL_FAILURE(MakeSource());
    const std::vector<std::string> mf = {"-c", "multifd=on", "-p", "multifd-channels=" + std::to_string(kChannels)};
    std::vector<std::string> recv_args = {"--memory-file", P("dest.mem"), "--timeout", recv_timeout};
    recv_args.insert(recv_args.end(), mf.begin(), mf.end());
    ASSERT_NO_FATAL_FAILURE(StartRecv(recv_args, &recv_, &uri_));
    port_ = PortOf(uri_);
    std::string target = uri_;
    if (through_proxy_holding_channels) {
      proxy_ = std::make_unique<TcpProxy>(port_);
      proxy_->HoldFrom(1);  // the main stream goes through, the channels wait
      ASSERT_TRUE(proxy_->Start());
      target = proxy_->uri();
    }
    std::vector<std::string> send_args = {"send", target, "--memory-file", P("source.mem"), "--json",
                                          "-p",   kBandwidth, "--connect-timeout", "20"};
    send_args.insert(send_args.end(), mf.begin(), mf.end());
    ASSERT_NO_FATAL_FAILURE(Start("send", send_args, &send_));
  }

  std::string Report() {
    return "sender:\n" + send_.Report() + "receiver:\n" + recv_.Report() + (proxy_ ? proxy_->Describe() : "");
  }

  // Strays after all connections are in: never accepted, the migration
  // completes and verifies.
  void StrayMidMigration(const std::vector<uint8_t>& bytes) {
    ASSERT_NO_FATAL_FAILURE(StartMigration("30", false));
    Status started = WaitForNonEmptyFile(P("dest.mem"), kStartTimeout, &recv_);
    ASSERT_TRUE(started.ok()) << started.message();
    std::this_thread::sleep_for(milliseconds(500));
    ASSERT_TRUE(recv_.Running()) << Report();
    std::vector<UniqueFd> strays;
    for (int i = 0; i < 3; ++i) {
      UniqueFd s = ConnectLoopback(port_);
      // A destination that stopped listening once its connections were in
      // refuses strays outright: as good.
      if (!s.valid() && errno == ECONNREFUSED) continue;
      ASSERT_TRUE(s.valid()) << std::strerror(errno);
      if (!bytes.empty()) {
        ASSERT_EQ(::send(s.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
      }
      strays.push_back(std::move(s));  // kept open until the end
    }
    ASSERT_TRUE(ExitsWithCode(send_, 0, kMigrationTimeout)) << Report();
    ASSERT_TRUE(ExitsWithCode(recv_, 0, kKilledBound)) << Report();
    Result<json> rj = FerryJson(recv_);
    ASSERT_TRUE(rj.ok()) << rj.status().message();
    EXPECT_EQ(rj->value("verified", false), true) << recv_.Report();
    EXPECT_TRUE(SourceIntact(false));
  }

  // A stray placed in recv's accept queue between the source's main stream
  // and its channels: recv refuses it, naming its address, and fails; send
  // fails too.
  void StrayBetweenConnections(const std::vector<uint8_t>& bytes, const std::string& recv_timeout,
                               Clock::duration bound) {
    ASSERT_NO_FATAL_FAILURE(StartMigration(recv_timeout, true));
    ASSERT_TRUE(proxy_->WaitForAccepted(1, kStartTimeout)) << Report();  // the main stream is connected upstream
    UniqueFd stray = ConnectLoopback(port_);
    ASSERT_TRUE(stray.valid()) << std::strerror(errno);
    if (!bytes.empty()) {
      ASSERT_EQ(::send(stray.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
    }
    const std::string stray_addr = "127.0.0.1:" + std::to_string(LocalPort(stray.get()));
    proxy_->Release();
    EXPECT_TRUE(ExitsWithCode(recv_, 1, bound)) << Report();
    EXPECT_TRUE(Contains(recv_.Stderr(), stray_addr))
        << "recv's error should name the stray peer " << stray_addr << "\n" << Report();
    ExpectRecvDidNotSucceed(recv_);
    EXPECT_TRUE(ExitsWithCode(send_, 1, kStoppedBound)) << Report();
    ExpectJsonStatus(send_, "failed");
    EXPECT_TRUE(SourceIntact(false));
  }

  Process recv_, send_;
  std::string uri_;
  int port_ = -1;
  std::unique_ptr<TcpProxy> proxy_;
};

const std::vector<uint8_t> kGarbage = {'G', 'E', 'T', ' ', '/', ' ', 'H', 'T', 'T', 'P', '/', '1', '.', '1', '\r', '\n',
                                       0xff, 0x00, 0x11, 0x22, 0x33, 0x44, 0xde, 0xad, 0xbe, 0xef};

TEST_F(StrayTest, GarbageStraysMidMigrationAreIgnored) { StrayMidMigration(kGarbage); }

TEST_F(StrayTest, SilentStraysMidMigrationAreIgnored) { StrayMidMigration({}); }

TEST_F(StrayTest, GarbageStrayBetweenConnectionsIsRefused) { StrayBetweenConnections(kGarbage, "30", kKilledBound); }

// recv classifies connections one at a time: a silent one costs at most its
// --timeout (here 5 s).
TEST_F(StrayTest, SilentStrayBetweenConnectionsTimesOut) {
  StrayBetweenConnections({}, "5", seconds(5) + kKilledBound);
}

// ---- Names that are not UTF-8 -------------------------------------------------------

void PutBe32(std::string& s, uint32_t v) {
  uint8_t b[4];
  StoreBe32(b, v);
  s.append(reinterpret_cast<const char*>(b), sizeof(b));
}
void PutBe64(std::string& s, uint64_t v) {
  uint8_t b[8];
  StoreBe64(b, v);
  s.append(reinterpret_cast<const char*>(b), sizeof(b));
}

// A machine name with an invalid UTF-8 byte, an escape sequence and control
// characters; recv refuses it by name (machine type mismatch).
std::string MachineNameStream() {
  const std::string name = "\xff\x1b[31mevil\x07\x01\x7f\xc3";
  std::string s = "QEVM";
  PutBe32(s, 3);
  s.push_back(0x07);
  PutBe32(s, static_cast<uint32_t>(name.size()));
  s += name;
  return s;
}

// Machine "ferry", then a RAM setup whose block name is hostile and whose
// length (4097) is refused, naming the block.
std::string BlockNameStream() {
  const std::string name = "\xff\xfe" "blk\x1b]0;title\x07\x1b[2J\x01";
  std::string s = "QEVM";
  PutBe32(s, 3);
  s.push_back(0x07);
  PutBe32(s, 5);
  s += "ferry";
  s.push_back(0x01);  // section start
  PutBe32(s, 1);
  s.push_back(3);
  s += "ram";
  PutBe32(s, 0);
  PutBe32(s, 4);
  PutBe64(s, 8192 | 0x04);  // total | MEM_SIZE
  s.push_back(static_cast<char>(name.size()));
  s += name;
  PutBe64(s, 4097);
  PutBe64(s, 0x10);  // EOS
  s.push_back(0x7e);
  PutBe32(s, 1);
  return s;
}

enum class Reader { kRecvFd0, kLoad, kInspect, kInspectText };
using NameParam = std::tuple<std::string, Reader>;  // which stream, which command

void PrintTo(Reader r, std::ostream* os) {
  *os << (r == Reader::kRecvFd0       ? "recv fd:0 --json"
          : r == Reader::kLoad        ? "load --json"
          : r == Reader::kInspect     ? "inspect --json"
                                      : "inspect");
}

class NonUtf8NameTest : public FaultMatrixTest, public ::testing::WithParamInterface<NameParam> {};

// One JSON object on stdout, exit 1, no abort, no raw escape on stderr.
void ExpectCleanJsonFailure(Process& p) {
  ASSERT_TRUE(ExitsWithCode(p, 1, seconds(30)));
  Result<json> j = FerryJson(p);
  ASSERT_TRUE(j.ok()) << j.status().message();
  EXPECT_FALSE(Contains(p.Stderr(), "\x1b")) << "a raw escape character reached stderr\n" << p.Report();
}

TEST_P(NonUtf8NameTest, JsonStaysValid) {
  const auto& [which, reader] = GetParam();
  const std::string stream = which == "MachineName" ? MachineNameStream() : BlockNameStream();
  ASSERT_TRUE(WriteStringToFile(P("hostile.mig"), stream).ok());
  Process p;
  switch (reader) {
    case Reader::kRecvFd0:
      ASSERT_NO_FATAL_FAILURE(Start("recv", {"recv", "fd:0", "--json"}, &p, {}, P("hostile.mig")));
      break;
    case Reader::kLoad:
      ASSERT_NO_FATAL_FAILURE(Start("load", {"load", P("hostile.mig"), "--json"}, &p));
      break;
    case Reader::kInspect:
      ASSERT_NO_FATAL_FAILURE(Start("inspect", {"inspect", P("hostile.mig"), "--json"}, &p));
      break;
    case Reader::kInspectText:
      // The text report goes to a terminal: the names in it are escaped.
      ASSERT_NO_FATAL_FAILURE(Start("inspect", {"inspect", P("hostile.mig")}, &p));
      ASSERT_TRUE(ExitsWithCode(p, 1, seconds(30)));
      EXPECT_FALSE(Contains(p.Stdout() + p.Stderr(), "\x1b")) << "a raw escape character reached the terminal\n"
                                                                 << p.Report();
      EXPECT_TRUE(Contains(p.Stdout(), "INCOMPLETE")) << p.Report();
      return;
  }
  ASSERT_NO_FATAL_FAILURE(ExpectCleanJsonFailure(p));
  json j = *FerryJson(p);
  if (reader == Reader::kInspect) {
    EXPECT_EQ(j.value("complete", true), false) << p.Report();
  } else {
    EXPECT_EQ(j.value("status", std::string()), "failed") << p.Report();
    EXPECT_TRUE(j.contains("error") && j["error"].is_string()) << p.Report();
  }
}

std::string NameCaseName(const ::testing::TestParamInfo<NameParam>& info) {
  const auto& [which, reader] = info.param;
  return which + (reader == Reader::kRecvFd0 ? "RecvFd0"
                  : reader == Reader::kLoad  ? "Load"
                  : reader == Reader::kInspect ? "Inspect"
                                               : "InspectText");
}

INSTANTIATE_TEST_SUITE_P(Streams, NonUtf8NameTest,
                         ::testing::Combine(::testing::Values("MachineName", "BlockName"),
                                            ::testing::Values(Reader::kRecvFd0, Reader::kLoad, Reader::kInspect,
                                                              Reader::kInspectText)),
                         NameCaseName);

// A destination whose verdict text is not UTF-8: send --json still prints
// valid JSON and exits 1.
TEST_F(FaultMatrixTest, NonUtf8VerdictToSendJson) {
  int port = -1;
  UniqueFd listener = ListenLoopback(&port);
  ASSERT_TRUE(listener.valid()) << std::strerror(errno);
  std::atomic<bool> done{false};
  std::thread fake([&] {
    pollfd pl{listener.get(), POLLIN, 0};
    while (!done.load() && ::poll(&pl, 1, 100) <= 0) {
    }
    if (done.load()) return;
    UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn.valid()) return;
    const std::string msg = "load failed for block '\xff\xfe\x1b[31mevil\x07\x01'";
    std::string verdict;
    PutBe32(verdict, 0x46525944);  // "FRYD"
    PutBe32(verdict, 1);
    PutBe32(verdict, static_cast<uint32_t>(msg.size()));
    verdict += msg;
    ::send(conn.get(), verdict.data(), verdict.size(), MSG_NOSIGNAL);
    char buf[65536];
    while (!done.load()) {  // drain the stream until send hangs up
      pollfd pc{conn.get(), POLLIN, 0};
      if (::poll(&pc, 1, 100) <= 0) continue;
      if (::recv(conn.get(), buf, sizeof buf, 0) <= 0) break;
    }
  });
  struct Joiner {
    std::atomic<bool>& done;
    std::thread& t;
    ~Joiner() {
      done = true;
      t.join();
    }
  } joiner{done, fake};
  Process send;
  ASSERT_NO_FATAL_FAILURE(Start("send", {"send", "tcp:127.0.0.1:" + std::to_string(port), "--ram", "4M", "--json"},
                                &send));
  ExpectCleanJsonFailure(send);
  Result<json> j = FerryJson(send);
  if (j.ok()) {
    EXPECT_EQ(j->value("status", std::string()), "failed") << send.Report();
  }
}

}  // namespace
}  // namespace ferry::test
