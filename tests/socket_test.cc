// Tests for socket/ (tcp, unix, fd channels and listeners) and core/uri.cc.
//
// Everything here uses real sockets, pipes and threads. There are no timing
// assertions: deadlines only guard against hangs, and sleeps only make it
// likely (not required) that another thread is already blocked.
#include "socket/socket.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <future>
#include <memory>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "core/channel.h"
#include "core/status.h"
#include "core/unique_fd.h"
#include "core/uri.h"

namespace ferry {
namespace {

using namespace std::chrono_literals;
using ChannelPtr = std::unique_ptr<Channel>;
using ListenerPtr = std::unique_ptr<Listener>;

// ---------------------------------------------------------------------------
// Helpers

// Waits for a future, aborting the whole test binary if it never completes:
// a hang is a failure, but the blocked thread cannot be recovered.
template <typename T>
T Await(std::future<T>& f, std::chrono::seconds limit = 60s) {
  if (f.wait_for(limit) != std::future_status::ready) {
    std::fprintf(stderr, "hang guard: a blocked call did not return within %lld s\n",
                 static_cast<long long>(limit.count()));
    std::abort();
  }
  return f.get();
}

template <typename F>
auto Async(F&& f) {
  return std::async(std::launch::async, std::forward<F>(f));
}

Uri MustParse(const std::string& text) {
  Result<Uri> u = ParseUri(text);
  EXPECT_TRUE(u.ok()) << text << ": " << u.status().ToString();
  return u.ok() ? *u : Uri{};
}

// Deterministic pseudo-random bytes.
std::vector<uint8_t> Pattern(size_t n, uint32_t seed) {
  std::vector<uint8_t> out(n);
  uint32_t x = seed ? seed : 1;
  for (size_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    out[i] = static_cast<uint8_t>(x >> 7);
  }
  return out;
}

bool Ipv6LoopbackAvailable() {
  UniqueFd s(::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s.valid()) return false;
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  return ::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0;
}

// A port on 127.0.0.1 that nobody listens on (was free a moment ago).
uint16_t UnusedPort() {
  Result<ListenerPtr> l = Listener::Listen(MustParse("tcp:127.0.0.1:0"));
  EXPECT_TRUE(l.ok()) << l.status().ToString();
  if (!l.ok()) return 0;
  return MustParse((*l)->address()).port;
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/ferry-socket-test-XXXXXX";
    char* p = ::mkdtemp(tmpl);
    EXPECT_NE(p, nullptr) << std::strerror(errno);
    if (p) path_ = p;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

bool Exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

bool IsCloexec(int fd) { return (::fcntl(fd, F_GETFD) & FD_CLOEXEC) != 0; }

// Listens on `uri`, connects to the reported address and accepts.
void ConnectThroughListener(const std::string& uri, ChannelPtr* client, ChannelPtr* server,
                            std::string* address = nullptr) {
  Result<ListenerPtr> listener = Listener::Listen(MustParse(uri));
  ASSERT_TRUE(listener.ok()) << listener.status().ToString();
  std::string addr = (*listener)->address();
  if (address) *address = addr;
  auto connecting = Async([addr] { return Connect(MustParse(addr), 30s); });
  Result<ChannelPtr> accepted = (*listener)->Accept(30s);
  Result<ChannelPtr> connected = Await(connecting);
  ASSERT_TRUE(accepted.ok()) << accepted.status().ToString();
  ASSERT_TRUE(connected.ok()) << connected.status().ToString();
  *client = std::move(connected).value();
  *server = std::move(accepted).value();
}

// ---------------------------------------------------------------------------
// URI parsing

TEST(ParseUriTest, AcceptsTheDocumentedForms) {
  Result<Uri> tcp = ParseUri("tcp:host:4444");
  ASSERT_TRUE(tcp.ok()) << tcp.status().ToString();
  EXPECT_EQ(tcp->kind, Uri::Kind::kTcp);
  EXPECT_EQ(tcp->host, "host");
  EXPECT_EQ(tcp->port, 4444);
  EXPECT_EQ(tcp->ToString(), "tcp:host:4444");

  Result<Uri> v6 = ParseUri("tcp:[::1]:80");
  ASSERT_TRUE(v6.ok()) << v6.status().ToString();
  EXPECT_EQ(v6->kind, Uri::Kind::kTcp);
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 80);

  Result<Uri> port0 = ParseUri("tcp:127.0.0.1:0");
  ASSERT_TRUE(port0.ok());
  EXPECT_EQ(port0->port, 0);

  Result<Uri> un = ParseUri("unix:/x");
  ASSERT_TRUE(un.ok()) << un.status().ToString();
  EXPECT_EQ(un->kind, Uri::Kind::kUnix);
  EXPECT_EQ(un->path, "/x");

  Result<Uri> fd = ParseUri("fd:3");
  ASSERT_TRUE(fd.ok()) << fd.status().ToString();
  EXPECT_EQ(fd->kind, Uri::Kind::kFd);
  EXPECT_EQ(fd->fd, 3);
}

TEST(ParseUriTest, RejectsBadStrings) {
  for (const char* bad : {"tcp:host", "tcp:::1:80", "tcp:h:99999", "bogus:x", "fd:-1", "unix:",
                          "tcp::80", "tcp:[::1]80", "tcp:[::1", "tcp:h:", "tcp:h:8x", "fd:", "fd:abc",
                          ""}) {
    Result<Uri> u = ParseUri(bad);
    ASSERT_FALSE(u.ok()) << "'" << bad << "' was accepted";
    EXPECT_EQ(u.status().code(), Code::kInvalidArgument) << bad << ": " << u.status().ToString();
    EXPECT_NE(u.status().message().find("bad URI"), std::string::npos) << u.status().message();
  }
}

TEST(SocketUriTest, ConnectAndListenRejectHandMadeBadUris) {
  Uri empty_host;
  empty_host.kind = Uri::Kind::kTcp;
  empty_host.port = 80;
  Uri long_path;
  long_path.kind = Uri::Kind::kUnix;
  long_path.path = "/tmp/" + std::string(200, 'x');
  Uri empty_path;
  empty_path.kind = Uri::Kind::kUnix;
  Uri negative_fd;
  negative_fd.kind = Uri::Kind::kFd;
  negative_fd.fd = -1;
  for (const Uri& u : {empty_host, long_path, empty_path, negative_fd}) {
    Result<ChannelPtr> c = Connect(u, 1s);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), Code::kInvalidArgument) << c.status().ToString();
    Result<ListenerPtr> l = Listener::Listen(u);
    ASSERT_FALSE(l.ok());
    EXPECT_EQ(l.status().code(), Code::kInvalidArgument) << l.status().ToString();
  }
}

TEST(SocketUriTest, ConnectToPortZeroIsInvalid) {
  Result<ChannelPtr> c = Connect(MustParse("tcp:127.0.0.1:0"), 1s);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kInvalidArgument) << c.status().ToString();
}

TEST(SocketUriTest, ClosedDescriptorIsRejected) {
  int fds[2];
  ASSERT_EQ(::pipe2(fds, O_CLOEXEC), 0);
  ::close(fds[0]);
  ::close(fds[1]);
  Result<ChannelPtr> c = Connect(MustParse("fd:" + std::to_string(fds[0])), 1s);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kIo) << c.status().ToString();
  EXPECT_EQ(c.status().sys_errno(), EBADF);
}

// ---------------------------------------------------------------------------
// Every transport: a parameterized fixture holding a connected pair.
//
// `a` writes to `b`; for everything but a pipe, `b` can also write to `a`.

enum class Transport { kTcp4, kTcp6, kUnix, kSocketpair, kPipe };

std::string TransportName(const testing::TestParamInfo<Transport>& info) {
  switch (info.param) {
    case Transport::kTcp4: return "Tcp4";
    case Transport::kTcp6: return "Tcp6";
    case Transport::kUnix: return "Unix";
    case Transport::kSocketpair: return "FdSocketpair";
    case Transport::kPipe: return "FdPipe";
  }
  return "Unknown";
}

class TransportTest : public testing::TestWithParam<Transport> {
 protected:
  void SetUp() override {
    switch (GetParam()) {
      case Transport::kTcp4:
        ASSERT_NO_FATAL_FAILURE(ConnectThroughListener("tcp:127.0.0.1:0", &a_, &b_));
        break;
      case Transport::kTcp6:
        if (!Ipv6LoopbackAvailable()) GTEST_SKIP() << "::1 is not available";
        ASSERT_NO_FATAL_FAILURE(ConnectThroughListener("tcp:[::1]:0", &a_, &b_));
        break;
      case Transport::kUnix:
        ASSERT_NO_FATAL_FAILURE(ConnectThroughListener("unix:" + dir_.path() + "/s", &a_, &b_));
        break;
      case Transport::kSocketpair: {
        int sv[2];
        ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        a_ = MakeFdChannel(UniqueFd(sv[0]), "socketpair:a");
        b_ = MakeFdChannel(UniqueFd(sv[1]), "socketpair:b");
        break;
      }
      case Transport::kPipe: {
        int p[2];
        ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
        b_ = MakeFdChannel(UniqueFd(p[0]), "pipe:read");
        a_ = MakeFdChannel(UniqueFd(p[1]), "pipe:write");
        break;
      }
    }
  }
  bool Bidirectional() const { return GetParam() != Transport::kPipe; }
  bool IsSocket() const { return GetParam() != Transport::kPipe; }

  TempDir dir_;
  ChannelPtr a_, b_;
};

INSTANTIATE_TEST_SUITE_P(AllTransports, TransportTest,
                         testing::Values(Transport::kTcp4, Transport::kTcp6, Transport::kUnix,
                                         Transport::kSocketpair, Transport::kPipe),
                         TransportName);

// Waking a blocked caller needs shutdown(2): sockets only (a thread blocked
// on a pipe cannot be woken; later calls on it still fail, tested above).
class SocketTransportTest : public TransportTest {};
INSTANTIATE_TEST_SUITE_P(SocketTransports, SocketTransportTest,
                         testing::Values(Transport::kTcp4, Transport::kTcp6, Transport::kUnix,
                                         Transport::kSocketpair),
                         TransportName);

TEST_P(TransportTest, SmallRoundTrip) {
  const std::string msg = "hello, ferry";
  ASSERT_TRUE(a_->WriteAll(msg.data(), msg.size()).ok());
  std::string got(msg.size(), '\0');
  Status st = b_->ReadExact(got.data(), got.size());
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(got, msg);

  if (Bidirectional()) {
    const std::string reply = "and back";
    ASSERT_TRUE(b_->WriteAll(reply.data(), reply.size()).ok());
    std::string back(reply.size(), '\0');
    st = a_->ReadExact(back.data(), back.size());
    ASSERT_TRUE(st.ok()) << st.ToString();
    EXPECT_EQ(back, reply);
  }
  EXPECT_GE(a_->fd(), 0);
  EXPECT_TRUE(IsCloexec(a_->fd()));
  EXPECT_TRUE(IsCloexec(b_->fd()));
  EXPECT_FALSE(a_->Describe().empty());
}

TEST_P(TransportTest, LargeMultiIovecWriteArrivesIntact) {
  constexpr size_t kTotal = 64u << 20;
  constexpr size_t kPieces = 3000;  // more than IOV_MAX, so several batches
  const std::vector<uint8_t> src = Pattern(kTotal, 12345);

  // Cut the buffer into pieces of uneven sizes, some of them empty.
  std::vector<iovec> iov;
  std::vector<uint8_t> sizes_rng = Pattern(kPieces, 777);
  size_t avg = kTotal / kPieces;
  size_t off = 0;
  for (size_t i = 0; i < kPieces && off < kTotal; ++i) {
    size_t len = (i % 97 == 5) ? 0 : avg / 2 + (avg * sizes_rng[i]) / 256;
    if (i == kPieces - 1) len = kTotal - off;
    len = std::min(len, kTotal - off);
    iov.push_back({const_cast<uint8_t*>(src.data()) + off, len});
    off += len;
  }
  ASSERT_EQ(off, kTotal);
  ASSERT_GT(iov.size(), 1024u);

  auto writer = Async([&] { return a_->WriteAll(std::span<iovec>(iov)); });
  std::vector<uint8_t> dst(kTotal);
  Status rd = b_->ReadExact(dst.data(), dst.size());
  Status wr = Await(writer);
  ASSERT_TRUE(wr.ok()) << wr.ToString();
  ASSERT_TRUE(rd.ok()) << rd.ToString();
  EXPECT_TRUE(std::memcmp(src.data(), dst.data(), kTotal) == 0) << "received bytes differ";
}

TEST_P(TransportTest, EndOfStreamReadsZero) {
  ASSERT_TRUE(a_->WriteAll("abc", 3).ok());
  a_.reset();
  char buf[8];
  ASSERT_TRUE(b_->ReadExact(buf, 3).ok());
  EXPECT_EQ(std::memcmp(buf, "abc", 3), 0);
  Result<size_t> n = b_->ReadSome(buf, sizeof(buf));
  ASSERT_TRUE(n.ok()) << n.status().ToString();
  EXPECT_EQ(*n, 0u);
  // Still 0 when asked again.
  n = b_->ReadSome(buf, sizeof(buf));
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
}

TEST_P(TransportTest, ReadExactOnPrematureEofIsProtocolError) {
  ASSERT_TRUE(a_->WriteAll("12345", 5).ok());
  a_.reset();
  char buf[10];
  Status st = b_->ReadExact(buf, sizeof(buf));
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Code::kProtocol) << st.ToString();
  EXPECT_NE(st.message().find("5 of 10"), std::string::npos) << st.message();
}

TEST_P(SocketTransportTest, ShutdownWakesBlockedReader) {
  std::atomic<bool> started{false};
  auto reader = Async([&] {
    started = true;
    char buf[16];
    return b_->ReadSome(buf, sizeof(buf));
  });
  while (!started) std::this_thread::yield();
  std::this_thread::sleep_for(100ms);  // most likely blocked in recv() by now
  b_->Shutdown();
  b_->Shutdown();  // idempotent
  Result<size_t> r = Await(reader);
  ASSERT_FALSE(r.ok()) << "read returned " << *r;
  EXPECT_EQ(r.status().code(), Code::kCancelled) << r.status().ToString();
  EXPECT_NE(r.status().message().find("shut down"), std::string::npos);
}

TEST_P(SocketTransportTest, ShutdownWakesBlockedWriter) {
  // The peer never reads, so a large write fills both socket buffers and blocks.
  std::vector<uint8_t> big(64u << 20, 0x5a);
  auto writer = Async([&] { return a_->WriteAll(big.data(), big.size()); });
  std::this_thread::sleep_for(200ms);
  a_->Shutdown();
  Status st = Await(writer);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(st.code() == Code::kCancelled) << st.ToString();
}

TEST_P(SocketTransportTest, ShutdownWakesReaderAndWriterTogether) {
  std::vector<uint8_t> big(64u << 20, 0x17);
  auto writer = Async([&] { return a_->WriteAll(big.data(), big.size()); });
  auto reader = Async([&] {
    char buf[64];
    return a_->ReadSome(buf, sizeof(buf));
  });
  std::this_thread::sleep_for(200ms);
  std::thread other([&] { a_->Shutdown(); });  // concurrent with ours
  a_->Shutdown();
  other.join();
  Status w = Await(writer);
  Result<size_t> r = Await(reader);
  EXPECT_EQ(w.code(), Code::kCancelled) << w.ToString();
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCancelled) << r.status().ToString();
}

TEST_P(TransportTest, CallsAfterShutdownAreCancelled) {
  a_->Shutdown();
  b_->Shutdown();
  char buf[4];
  Result<size_t> r = b_->ReadSome(buf, sizeof(buf));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kCancelled);
  Status w = a_->WriteAll("x", 1);
  EXPECT_EQ(w.code(), Code::kCancelled) << w.ToString();
  EXPECT_NE(w.message().find(a_->Describe()), std::string::npos) << w.message();
}

TEST_P(TransportTest, WriteToVanishedPeerIsClosedWithoutSigpipe) {
  // Make sure SIGPIPE would kill us if it were raised.
  struct sigaction old {};
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigaction(SIGPIPE, &dfl, &old);

  b_.reset();
  std::vector<uint8_t> chunk(1 << 20, 1);
  Status st;
  // The first writes may still be accepted by the local kernel (tcp learns
  // about the close only from the peer's reset); keep going until it fails.
  for (int i = 0; i < 1000 && st.ok(); ++i) st = a_->WriteAll(chunk.data(), chunk.size());
  // Nothing left behind: SIGPIPE neither blocked nor pending in this thread.
  sigset_t mask, pending;
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, nullptr, &mask), 0);
  EXPECT_EQ(sigismember(&mask, SIGPIPE), 0);
  ASSERT_EQ(::sigpending(&pending), 0);
  EXPECT_EQ(sigismember(&pending, SIGPIPE), 0);
  ::sigaction(SIGPIPE, &old, nullptr);
  ASSERT_FALSE(st.ok()) << "writes kept succeeding after the peer closed";
  EXPECT_EQ(st.code(), Code::kClosed) << st.ToString();
  EXPECT_NE(st.message().find(a_->Describe()), std::string::npos) << st.message();
}

// ---------------------------------------------------------------------------
// tcp specifics

TEST(TcpTest, ListenerReportsRealPortAndPeersAreNamed) {
  ChannelPtr client, server;
  std::string address;
  ASSERT_NO_FATAL_FAILURE(ConnectThroughListener("tcp:127.0.0.1:0", &client, &server, &address));
  ASSERT_TRUE(address.starts_with("tcp:127.0.0.1:")) << address;
  Uri parsed = MustParse(address);
  EXPECT_NE(parsed.port, 0);

  // The client names the listener; the server names the client's address.
  EXPECT_EQ(client->Describe(), address);
  sockaddr_in local{};
  socklen_t len = sizeof(local);
  ASSERT_EQ(::getsockname(client->fd(), reinterpret_cast<sockaddr*>(&local), &len), 0);
  EXPECT_EQ(server->Describe(), "tcp:127.0.0.1:" + std::to_string(ntohs(local.sin_port)));

  for (int fd : {client->fd(), server->fd()}) {
    int nodelay = 0;
    socklen_t l = sizeof(nodelay);
    ASSERT_EQ(::getsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, &l), 0);
    EXPECT_NE(nodelay, 0) << "TCP_NODELAY not set on fd " << fd;
    EXPECT_TRUE(IsCloexec(fd));
    EXPECT_EQ(::fcntl(fd, F_GETFL) & O_NONBLOCK, 0) << "channel fd left non-blocking";
  }
}

TEST(TcpTest, Ipv6ListenerAddressUsesBrackets) {
  if (!Ipv6LoopbackAvailable()) GTEST_SKIP() << "::1 is not available";
  ChannelPtr client, server;
  std::string address;
  ASSERT_NO_FATAL_FAILURE(ConnectThroughListener("tcp:[::1]:0", &client, &server, &address));
  ASSERT_TRUE(address.starts_with("tcp:[::1]:")) << address;
  EXPECT_NE(MustParse(address).port, 0);
  EXPECT_TRUE(server->Describe().starts_with("tcp:[::1]:")) << server->Describe();
}

TEST(TcpTest, ConnectByNameTriesEveryAddress) {
  Result<ListenerPtr> l = Listener::Listen(MustParse("tcp:127.0.0.1:0"));
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  uint16_t port = MustParse((*l)->address()).port;
  // "localhost" may resolve to ::1 first, where nobody listens.
  auto connecting = Async([port] { return Connect(MustParse("tcp:localhost:" + std::to_string(port)), 30s); });
  Result<ChannelPtr> accepted = (*l)->Accept(30s);
  Result<ChannelPtr> connected = Await(connecting);
  ASSERT_TRUE(accepted.ok()) << accepted.status().ToString();
  ASSERT_TRUE(connected.ok()) << connected.status().ToString();
}

// ---------------------------------------------------------------------------
// Connect: retries, timeouts, cancellation

TEST(ConnectTest, RetriesUntilTcpListenerAppears) {
  uint16_t port = UnusedPort();
  ASSERT_NE(port, 0);
  const std::string uri = "tcp:127.0.0.1:" + std::to_string(port);
  auto connecting = Async([&] { return Connect(MustParse(uri), 30s); });
  std::this_thread::sleep_for(300ms);
  Result<ListenerPtr> l = Listener::Listen(MustParse(uri));
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  Result<ChannelPtr> accepted = (*l)->Accept(30s);
  Result<ChannelPtr> connected = Await(connecting);
  ASSERT_TRUE(accepted.ok()) << accepted.status().ToString();
  ASSERT_TRUE(connected.ok()) << connected.status().ToString();
  ASSERT_TRUE((*connected)->WriteAll("ping", 4).ok());
  char buf[4];
  ASSERT_TRUE((*accepted)->ReadExact(buf, 4).ok());
  EXPECT_EQ(std::memcmp(buf, "ping", 4), 0);
}

TEST(ConnectTest, RetriesUntilUnixListenerAppears) {
  TempDir dir;
  const std::string uri = "unix:" + dir.path() + "/later.sock";
  auto connecting = Async([&] { return Connect(MustParse(uri), 30s); });
  std::this_thread::sleep_for(300ms);
  Result<ListenerPtr> l = Listener::Listen(MustParse(uri));
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  Result<ChannelPtr> accepted = (*l)->Accept(30s);
  Result<ChannelPtr> connected = Await(connecting);
  ASSERT_TRUE(accepted.ok()) << accepted.status().ToString();
  ASSERT_TRUE(connected.ok()) << connected.status().ToString();
  EXPECT_EQ((*connected)->Describe(), uri);
}

TEST(ConnectTest, TimesOutWhenNobodyListens) {
  uint16_t port = UnusedPort();
  ASSERT_NE(port, 0);
  const std::string uri = "tcp:127.0.0.1:" + std::to_string(port);
  auto connecting = Async([&] { return Connect(MustParse(uri), 300ms); });
  Result<ChannelPtr> c = Await(connecting);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kTimeout) << c.status().ToString();
  EXPECT_NE(c.status().message().find("could not connect to " + uri), std::string::npos)
      << c.status().message();
  EXPECT_NE(c.status().message().find("after 0.3 s"), std::string::npos) << c.status().message();
}

TEST(ConnectTest, UnixTimeoutNamesMissingFile) {
  TempDir dir;
  const std::string uri = "unix:" + dir.path() + "/never.sock";
  Result<ChannelPtr> c = Connect(MustParse(uri), 200ms);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kTimeout) << c.status().ToString();
  EXPECT_NE(c.status().message().find(std::strerror(ENOENT)), std::string::npos) << c.status().message();
}

TEST(ConnectTest, StopTokenCancelsRetrying) {
  uint16_t port = UnusedPort();
  ASSERT_NE(port, 0);
  std::stop_source stop;
  auto connecting = Async([&] {
    return Connect(MustParse("tcp:127.0.0.1:" + std::to_string(port)), 600s, stop.get_token());
  });
  std::this_thread::sleep_for(150ms);
  stop.request_stop();
  Result<ChannelPtr> c = Await(connecting);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kCancelled) << c.status().ToString();
}

TEST(ConnectTest, AlreadyStoppedTokenCancelsAtOnce) {
  std::stop_source stop;
  stop.request_stop();
  Result<ChannelPtr> c = Connect(MustParse("tcp:127.0.0.1:1"), 600s, stop.get_token());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kCancelled) << c.status().ToString();
}

TEST(ConnectTest, FdUriWrapsDescriptor) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd peer(sv[1]);
  Result<ChannelPtr> c = Connect(MustParse("fd:" + std::to_string(sv[0])), 1s);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->fd(), sv[0]);
  EXPECT_EQ((*c)->Describe(), "fd:" + std::to_string(sv[0]));
  ASSERT_TRUE((*c)->WriteAll("xy", 2).ok());
  char buf[2];
  ASSERT_EQ(::read(peer.get(), buf, 2), 2);
  EXPECT_EQ(std::memcmp(buf, "xy", 2), 0);
}

// ---------------------------------------------------------------------------
// Listener: timeouts, cancellation, unix files, fd:

TEST(ListenerTest, AcceptTimesOut) {
  Result<ListenerPtr> l = Listener::Listen(MustParse("tcp:127.0.0.1:0"));
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  auto accepting = Async([&] { return (*l)->Accept(100ms); });
  Result<ChannelPtr> c = Await(accepting);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kTimeout) << c.status().ToString();
  EXPECT_NE(c.status().message().find((*l)->address()), std::string::npos) << c.status().message();
}

TEST(ListenerTest, ShutdownCancelsBlockedAccept) {
  Result<ListenerPtr> l = Listener::Listen(MustParse("tcp:127.0.0.1:0"));
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  auto accepting = Async([&] { return (*l)->Accept(600s); });
  std::this_thread::sleep_for(100ms);
  (*l)->Shutdown();
  (*l)->Shutdown();
  Result<ChannelPtr> c = Await(accepting);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kCancelled) << c.status().ToString();
  EXPECT_NE(c.status().message().find("shut down"), std::string::npos) << c.status().message();
  // And it stays shut down.
  c = (*l)->Accept(600s);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kCancelled);
}

TEST(ListenerTest, StopTokenCancelsBlockedAcceptAndListenerStaysUsable) {
  Result<ListenerPtr> l = Listener::Listen(MustParse("tcp:127.0.0.1:0"));
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  std::stop_source stop;
  auto accepting = Async([&] { return (*l)->Accept(600s, stop.get_token()); });
  std::this_thread::sleep_for(100ms);
  stop.request_stop();
  Result<ChannelPtr> c = Await(accepting);
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kCancelled) << c.status().ToString();

  // Already-stopped token: cancelled without waiting.
  c = (*l)->Accept(600s, stop.get_token());
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), Code::kCancelled);

  // A new Accept with a fresh token still works.
  std::string addr = (*l)->address();
  auto connecting = Async([addr] { return Connect(MustParse(addr), 30s); });
  std::stop_source fresh;
  c = (*l)->Accept(30s, fresh.get_token());
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  Result<ChannelPtr> cc = Await(connecting);
  ASSERT_TRUE(cc.ok()) << cc.status().ToString();
}

TEST(ListenerTest, UnixReplacesStaleSocketAndRemovesItsFile) {
  TempDir dir;
  const std::string path = dir.path() + "/ferry.sock";
  {
    // Leave a stale socket file behind, as a crashed process would.
    UniqueFd s(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strcpy(a.sun_path, path.c_str());
    ASSERT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  }
  ASSERT_TRUE(Exists(path));
  {
    Result<ListenerPtr> l = Listener::Listen(MustParse("unix:" + path));
    ASSERT_TRUE(l.ok()) << l.status().ToString();
    EXPECT_EQ((*l)->address(), "unix:" + path);
    auto connecting = Async([&] { return Connect(MustParse("unix:" + path), 30s); });
    Result<ChannelPtr> accepted = (*l)->Accept(30s);
    Result<ChannelPtr> connected = Await(connecting);
    ASSERT_TRUE(accepted.ok()) << accepted.status().ToString();
    ASSERT_TRUE(connected.ok()) << connected.status().ToString();
    EXPECT_TRUE((*accepted)->Describe().starts_with("unix:" + path)) << (*accepted)->Describe();
  }
  EXPECT_FALSE(Exists(path)) << "listener left its socket file behind";
}

TEST(ListenerTest, UnixRefusesToReplaceARegularFile) {
  TempDir dir;
  const std::string path = dir.path() + "/not-a-socket";
  { UniqueFd f(::open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600)); }
  Result<ListenerPtr> l = Listener::Listen(MustParse("unix:" + path));
  ASSERT_FALSE(l.ok());
  EXPECT_EQ(l.status().code(), Code::kInvalidArgument) << l.status().ToString();
  EXPECT_TRUE(Exists(path));
}

TEST(ListenerTest, FdListenerHandsOutItsDescriptorOnce) {
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  UniqueFd peer(sv[1]);
  const std::string uri = "fd:" + std::to_string(sv[0]);
  Result<ListenerPtr> l = Listener::Listen(MustParse(uri));
  ASSERT_TRUE(l.ok()) << l.status().ToString();
  EXPECT_EQ((*l)->address(), uri);
  Result<ChannelPtr> c = (*l)->Accept(1s);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(::write(peer.get(), "hi", 2), 2);
  char buf[2];
  ASSERT_TRUE((*c)->ReadExact(buf, 2).ok());
  EXPECT_EQ(std::memcmp(buf, "hi", 2), 0);

  Result<ChannelPtr> again = (*l)->Accept(1s);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), Code::kInvalidArgument) << again.status().ToString();
  EXPECT_NE(again.status().message().find("already"), std::string::npos) << again.status().message();
}

// ---------------------------------------------------------------------------
// fd: regular files

TEST(FdChannelTest, RegularFileWriteThenRead) {
  TempDir dir;
  const std::string path = dir.path() + "/data";
  const std::vector<uint8_t> src = Pattern(3 << 20, 99);
  {
    UniqueFd f(::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600));
    ASSERT_TRUE(f.valid());
    ChannelPtr w = MakeFdChannel(std::move(f), "file:" + path);
    std::vector<iovec> iov;
    for (size_t off = 0; off < src.size(); off += 1000) {
      iov.push_back({const_cast<uint8_t*>(src.data()) + off, std::min<size_t>(1000, src.size() - off)});
    }
    Status st = w->WriteAll(std::span<iovec>(iov));
    ASSERT_TRUE(st.ok()) << st.ToString();
  }
  UniqueFd f(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(f.valid());
  ChannelPtr r = MakeFdChannel(std::move(f), "file:" + path);
  std::vector<uint8_t> dst(src.size());
  ASSERT_TRUE(r->ReadExact(dst.data(), dst.size()).ok());
  EXPECT_EQ(dst, src);
  char extra;
  Result<size_t> n = r->ReadSome(&extra, 1);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  r->Shutdown();
  n = r->ReadSome(&extra, 1);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), Code::kCancelled);
}

}  // namespace
}  // namespace ferry
