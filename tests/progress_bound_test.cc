// Unit tests of the no-progress bound (core/progress.h), of the socket
// channel's bounded and cancellable waits on sockets and pipes, and of the
// source's ordering at switchover (the guest is resumed before the error is
// reported). Time limits here are small; the only timing assertions are
// generous upper bounds that catch a hang, plus "did not give up while the
// shared clock was moving", which holds with a wide margin.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <future>
#include <thread>
#include <vector>

#include "core/migration.h"
#include "core/progress.h"
#include "core/unique_fd.h"
#include "socket/socket.h"

namespace ferry {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

// ---------------------------------------------------------------------------
// ProgressBound

TEST(ProgressBound, UnboundedNeverExpires) {
  ProgressBound b = ProgressBound::Make(0ms);
  EXPECT_FALSE(b.bounded());
  EXPECT_EQ(b.clock, nullptr);
  EXPECT_FALSE(b.Expired(Clock::now() - 1000h));
  EXPECT_EQ(b.PollMs(Clock::now()), -1);
  EXPECT_EQ(b.PollMs(Clock::now(), 100), 100);
  b.Note();  // no clock: a no-op
}

TEST(ProgressBound, ExpiresAfterTheLimitWithoutProgress) {
  ProgressBound b{50ms, nullptr};
  EXPECT_TRUE(b.bounded());
  EXPECT_TRUE(b.Expired(Clock::now() - 100ms));
  EXPECT_FALSE(b.Expired(Clock::now()));
  EXPECT_EQ(b.PollMs(Clock::now() - 100ms), 0);
  const int ms = b.PollMs(Clock::now());
  EXPECT_GT(ms, 0);
  EXPECT_LE(ms, 50);
  EXPECT_LE(b.PollMs(Clock::now(), 10), 10);
}

TEST(ProgressBound, TheSharedClockMovesTheDeadline) {
  ProgressBound b = ProgressBound::Make(10s);
  ASSERT_NE(b.clock, nullptr);
  ProgressBound other = b;  // a second channel of the same migration
  const auto long_ago = Clock::now() - 60s;
  // The clock started at Make(): a wait that began long ago still has time.
  EXPECT_FALSE(b.Expired(long_ago));
  EXPECT_GE(b.LastProgress(long_ago), Clock::now() - 1s);
  other.Note();
  EXPECT_GE(b.clock->last(), Clock::now() - 1s);
  // Without the clock, the same wait would have expired.
  EXPECT_TRUE((ProgressBound{10s, nullptr}).Expired(long_ago));
}

TEST(ProgressBound, ErrorNamesWhatAndTheLimit) {
  Status s = (ProgressBound{2s, nullptr}).Error("write to tcp:1.2.3.4:5");
  EXPECT_EQ(s.code(), Code::kTimeout);
  EXPECT_EQ(s.message(), "write to tcp:1.2.3.4:5: no progress for 2 s");
  EXPECT_EQ(FormatDuration(1500ms), "1.5 s");
  EXPECT_EQ(FormatDuration(30s), "30 s");
}

struct Pipe {
  UniqueFd r, w;
  Pipe() {
    int fds[2];
    EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    r.Reset(fds[0]);
    w.Reset(fds[1]);
  }
};

TEST(WaitForFd, ReadyWokenOrExpired) {
  Pipe p;
  const ProgressBound bound{200ms, nullptr};
  auto start = Clock::now();
  Result<WaitResult> r = WaitForFd(p.r.get(), POLLIN, -1, bound, start);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, WaitResult::kExpired);
  EXPECT_LT(SecondsSince(start), 30);

  ASSERT_EQ(::write(p.w.get(), "x", 1), 1);
  r = WaitForFd(p.r.get(), POLLIN, -1, bound, Clock::now());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, WaitResult::kReady);

  Pipe q;
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  ASSERT_TRUE(wake.valid());
  std::thread t([&] {
    std::this_thread::sleep_for(50ms);
    uint64_t one = 1;
    EXPECT_EQ(::write(wake.get(), &one, sizeof one), 8);
  });
  start = Clock::now();
  r = WaitForFd(q.r.get(), POLLIN, wake.get(), ProgressBound{}, start);  // unbounded: only the wake ends it
  t.join();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, WaitResult::kWoken);
  EXPECT_LT(SecondsSince(start), 30);
}

TEST(WaitForFd, ProgressElsewhereKeepsTheWaitGoing) {
  Pipe p;
  const ProgressBound bound = ProgressBound::Make(2s);
  std::atomic<bool> done{false};
  const auto start = Clock::now();
  // Another channel of the migration moves bytes for 1 s.
  std::thread busy([&] {
    while (SecondsSince(start) < 1.0) {
      bound.Note();
      std::this_thread::sleep_for(20ms);
    }
    done = true;
  });
  Result<WaitResult> r = WaitForFd(p.r.get(), POLLIN, -1, bound, start);
  const bool busy_done = done.load();
  busy.join();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, WaitResult::kExpired);
  EXPECT_TRUE(busy_done) << "gave up while another channel was still making progress";
  EXPECT_LT(SecondsSince(start), 60);
}

// ---------------------------------------------------------------------------
// The socket channel

struct SocketPair {
  UniqueFd a, b;
  SocketPair() {
    int fds[2];
    EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    a.Reset(fds[0]);
    b.Reset(fds[1]);
  }
};

TEST(FdChannelBound, ReadFromASilentSocketTimesOut) {
  SocketPair sp;
  auto ch = MakeFdChannel(std::move(sp.a), "unix:test-peer");
  ch->SetProgressBound(ProgressBound::Make(300ms));
  EXPECT_EQ(ch->progress_bound().limit, 300ms);
  char buf[16];
  const auto start = Clock::now();
  Result<size_t> n = ch->ReadSome(buf, sizeof buf);
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), Code::kTimeout) << n.status().ToString();
  EXPECT_NE(n.status().message().find("read from unix:test-peer: no progress for 0.3 s"), std::string::npos)
      << n.status().message();
  EXPECT_LT(SecondsSince(start), 30);
}

TEST(FdChannelBound, WriteToAPeerThatNeverReadsTimesOut) {
  SocketPair sp;
  auto ch = MakeFdChannel(std::move(sp.a), "unix:never-reads");
  ch->SetProgressBound(ProgressBound::Make(300ms));
  std::vector<uint8_t> data(64 << 20, 0x5a);
  const auto start = Clock::now();
  Status s = ch->WriteAll(data.data(), data.size());
  EXPECT_EQ(s.code(), Code::kTimeout) << s.ToString();
  EXPECT_NE(s.message().find("write to unix:never-reads: no progress for 0.3 s"), std::string::npos) << s.message();
  EXPECT_LT(SecondsSince(start), 30);
}

TEST(FdChannelBound, SlowButSteadyPeerIsNotAStall) {
  SocketPair sp;
  auto ch = MakeFdChannel(std::move(sp.a), "unix:slow");
  ch->SetProgressBound(ProgressBound::Make(1s));
  // The peer sends a byte every 100 ms for 2 s: never a second without one.
  std::thread peer([&] {
    for (int i = 0; i < 20; ++i) {
      std::this_thread::sleep_for(100ms);
      ASSERT_EQ(::write(sp.b.get(), "x", 1), 1);
    }
    ::shutdown(sp.b.get(), SHUT_WR);
  });
  size_t total = 0;
  char buf[4];
  while (true) {
    Result<size_t> n = ch->ReadSome(buf, sizeof buf);
    ASSERT_TRUE(n.ok()) << n.status().ToString();
    if (*n == 0) break;
    total += *n;
  }
  peer.join();
  EXPECT_EQ(total, 20u);
}

TEST(FdChannelBound, ShutdownWakesAnUnboundedSocketWait) {
  SocketPair sp;
  auto ch = MakeFdChannel(std::move(sp.a), "unix:idle");
  ch->SetProgressBound(ProgressBound::Make(0ms));  // wait forever
  auto reader = std::async(std::launch::async, [&] {
    char buf[8];
    return ch->ReadSome(buf, sizeof buf).status();
  });
  std::this_thread::sleep_for(50ms);
  ch->Shutdown();
  ASSERT_EQ(reader.wait_for(30s), std::future_status::ready) << "Shutdown did not wake the read";
  EXPECT_EQ(reader.get().code(), Code::kCancelled);
}

TEST(FdChannelBound, PipesAreBoundedWokenAndGetTheirFlagsBack) {
  {
    Pipe p;
    const int raw = p.r.get();
    const int flags_before = ::fcntl(raw, F_GETFL);
    ASSERT_FALSE(flags_before & O_NONBLOCK);
    UniqueFd keep(::dup(raw));  // same open file description, outlives the channel
    {
      auto ch = MakeFdChannel(std::move(p.r), "pipe:read");
      EXPECT_TRUE(::fcntl(keep.get(), F_GETFL) & O_NONBLOCK);
      ch->SetProgressBound(ProgressBound::Make(300ms));
      char buf[8];
      Result<size_t> n = ch->ReadSome(buf, sizeof buf);
      ASSERT_FALSE(n.ok());
      EXPECT_EQ(n.status().code(), Code::kTimeout) << n.status().ToString();
      EXPECT_NE(n.status().message().find("no progress for 0.3 s"), std::string::npos);
    }
    EXPECT_EQ(::fcntl(keep.get(), F_GETFL), flags_before) << "the pipe's flags were not restored";
  }
  {
    Pipe p;
    auto ch = MakeFdChannel(std::move(p.w), "pipe:write");
    ch->SetProgressBound(ProgressBound::Make(300ms));
    std::vector<uint8_t> data(4 << 20, 1);
    Status s = ch->WriteAll(data.data(), data.size());
    EXPECT_EQ(s.code(), Code::kTimeout) << s.ToString();
  }
  {
    // Unbounded: only Shutdown ends the wait, for a reader and for a writer.
    Pipe p;
    auto r = MakeFdChannel(std::move(p.r), "pipe:r");
    Pipe q;
    auto w = MakeFdChannel(std::move(q.w), "pipe:w");
    auto reading = std::async(std::launch::async, [&] {
      char buf[8];
      return r->ReadSome(buf, sizeof buf).status();
    });
    std::vector<uint8_t> data(4 << 20, 1);
    auto writing = std::async(std::launch::async, [&] { return w->WriteAll(data.data(), data.size()); });
    std::this_thread::sleep_for(50ms);
    r->Shutdown();
    w->Shutdown();
    ASSERT_EQ(reading.wait_for(30s), std::future_status::ready) << "Shutdown did not wake the pipe read";
    ASSERT_EQ(writing.wait_for(30s), std::future_status::ready) << "Shutdown did not wake the pipe write";
    EXPECT_EQ(reading.get().code(), Code::kCancelled);
    EXPECT_EQ(writing.get().code(), Code::kCancelled);
  }
}

TEST(FdChannelBound, TcpChannelsGetKeepaliveFromTheBound) {
  auto uri = ParseUri("tcp:127.0.0.1:0");
  ASSERT_TRUE(uri.ok());
  auto listener = Listener::Listen(*uri);
  ASSERT_TRUE(listener.ok()) << listener.status().ToString();
  auto bound_uri = ParseUri((*listener)->address());
  ASSERT_TRUE(bound_uri.ok());
  auto ch = Connect(*bound_uri, 10s);
  ASSERT_TRUE(ch.ok()) << ch.status().ToString();
  auto accepted = (*listener)->Accept(10s);
  ASSERT_TRUE(accepted.ok()) << accepted.status().ToString();

  auto opt = [](int fd, int level, int name) {
    int v = -1;
    socklen_t len = sizeof(v);
    EXPECT_EQ(::getsockopt(fd, level, name, &v, &len), 0);
    return v;
  };
  // Before a bound: keepalive with the defaults of an unbounded channel.
  for (int fd : {(*ch)->fd(), (*accepted)->fd()}) {
    EXPECT_EQ(opt(fd, SOL_SOCKET, SO_KEEPALIVE), 1);
    EXPECT_EQ(opt(fd, IPPROTO_TCP, TCP_KEEPIDLE), 60);
  }
  (*ch)->SetProgressBound(ProgressBound::Make(30s));
  const int fd = (*ch)->fd();
  EXPECT_EQ(opt(fd, SOL_SOCKET, SO_KEEPALIVE), 1);
  EXPECT_EQ(opt(fd, IPPROTO_TCP, TCP_KEEPIDLE), 15);
  EXPECT_EQ(opt(fd, IPPROTO_TCP, TCP_KEEPINTVL), 7);
  EXPECT_EQ(opt(fd, IPPROTO_TCP, TCP_KEEPCNT), 4);
  EXPECT_EQ(opt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT), 45000);
}

// ---------------------------------------------------------------------------
// The source at switchover

// Page-aligned guest memory filled with one byte value.
class PageMemory {
 public:
  PageMemory(size_t size, uint8_t fill) : size_(size), p_(static_cast<uint8_t*>(std::aligned_alloc(4096, size))) {
    std::memset(p_, fill, size_);
  }
  ~PageMemory() { std::free(p_); }
  PageMemory(const PageMemory&) = delete;
  PageMemory& operator=(const PageMemory&) = delete;
  uint8_t* data() const { return p_; }
  size_t size() const { return size_; }

 private:
  size_t size_;
  uint8_t* p_;
};

// Writes go nowhere until `fail` is set, then fail.
class BreakableChannel final : public Channel {
 public:
  Status WriteAll(std::span<iovec> iov) override {
    if (fail.load()) return Status::Io("write to breakable: injected failure", EIO);
    (void)iov;
    return Status::Ok();
  }
  Result<size_t> ReadSome(void*, size_t) override { return Status::Io("read from breakable: nothing", EIO); }
  void Shutdown() override {}
  std::string Describe() const override { return "breakable"; }
  std::atomic<bool> fail{false};
};

class RecordingGuest final : public GuestControl {
 public:
  explicit RecordingGuest(BreakableChannel* ch) : ch_(ch) {}
  void Pause() override {
    ++pauses;
    ch_->fail = true;  // the link breaks right at switchover
  }
  void Resume() override {
    ++resumes;
    // The error must not be out yet: the source still says "device".
    if (source) state_at_resume = source->Stats().state;
  }
  MigrationSource* source = nullptr;
  int pauses = 0;
  int resumes = 0;
  MigrationState state_at_resume = MigrationState::kNone;

 private:
  BreakableChannel* ch_;
};

TEST(SwitchoverOrdering, AFailureWhileTheGuestIsPausedResumesItBeforeTheErrorIsReported) {
  PageMemory mem(4 << 20, 7);
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", mem.data(), mem.size()).ok());
  auto tracker = MakeDirtyTracker(DirtyTrackerKind::kAllOnce, [](std::string_view) {});
  ASSERT_TRUE(tracker.ok()) << tracker.status().ToString();
  BreakableChannel ch;
  RecordingGuest guest(&ch);
  MigrationSource src(MigrationParams{}, blocks, **tracker, &guest);
  guest.source = &src;
  Status s = src.Run(ch, /*await_confirmation=*/false);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(guest.pauses, 1);
  EXPECT_EQ(guest.resumes, 1) << "the guest was left paused";
  EXPECT_EQ(guest.state_at_resume, MigrationState::kDevice) << "the error was published before the guest resumed";
  EXPECT_NE(s.message().find("switchover failed"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("injected failure"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("the guest was resumed"), std::string::npos) << s.message();
  EXPECT_EQ(src.Stats().state, MigrationState::kFailed);
}

TEST(SwitchoverOrdering, ADestinationThatNeverConfirmsTimesOutAndTheGuestResumes) {
  PageMemory mem(1 << 20, 3);
  RamBlockList blocks;
  ASSERT_TRUE(blocks.Add("ram", mem.data(), mem.size()).ok());
  auto tracker = MakeDirtyTracker(DirtyTrackerKind::kAllOnce, [](std::string_view) {});
  ASSERT_TRUE(tracker.ok());
  SocketPair sp;
  auto ch = MakeFdChannel(std::move(sp.a), "unix:silent-destination");
  // The "destination" reads everything and never answers.
  std::atomic<bool> stop{false};
  std::thread sink([&] {
    char buf[65536];
    while (!stop.load() && ::read(sp.b.get(), buf, sizeof buf) > 0) {
    }
  });
  class Guest final : public GuestControl {
   public:
    void Pause() override { ++pauses; }
    void Resume() override { ++resumes; }
    int pauses = 0, resumes = 0;
  } guest;
  MigrationParams p;
  p.no_progress_timeout_s = 1;
  MigrationSource src(p, blocks, **tracker, &guest);
  const auto start = Clock::now();
  Status s = src.Run(*ch, /*await_confirmation=*/true);
  EXPECT_LT(SecondsSince(start), 60);
  stop = true;
  ::shutdown(sp.b.get(), SHUT_RDWR);
  sink.join();
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.code(), Code::kTimeout) << s.ToString();
  EXPECT_NE(s.message().find("the destination did not confirm the migration"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("no progress for 1 s"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("do not start the guest on the destination"), std::string::npos) << s.message();
  EXPECT_EQ(guest.pauses, 1);
  EXPECT_EQ(guest.resumes, 1);
}

}  // namespace
}  // namespace ferry
