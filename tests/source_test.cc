// The source side as a VMM embeds it: a MigrationSource in this process
// (with a synthetic guest and the real dirty tracker) against a real
// `ferry recv` process over TCP. Covers cancel and a vanished destination:
// the guest must stay intact and running, and a retry must succeed.
#include <gtest/gtest.h>
#include <signal.h>
#include <xxhash.h>

#include <future>
#include <thread>

#include "cli/guest.h"
#include "core/migration.h"
#include "socket/socket.h"
#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"

namespace ferry {
namespace {

using namespace std::chrono_literals;
using test::Process;
using test::TempDir;

XXH128_hash_t Digest(const uint8_t* p, uint64_t n) { return XXH3_128bits(p, n); }

struct Recv {
  Process proc;
  std::string uri;
};

Recv StartRecv(const TempDir& dir, const std::string& name) {
  Recv r;
  auto p = test::StartFerry(dir, name, {"recv", "tcp:127.0.0.1:0", "--ready-file", dir.Path(name + ".ready"), "--json"});
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  if (!p.ok()) return r;
  r.proc = std::move(*p);
  auto uri = test::WaitForFile(dir.Path(name + ".ready"), test::kReadyTimeout, &r.proc);
  EXPECT_TRUE(uri.ok()) << uri.status().ToString();
  if (uri.ok()) {
    r.uri = *uri;
    while (!r.uri.empty() && (r.uri.back() == '\n' || r.uri.back() == ' ')) r.uri.pop_back();
  }
  return r;
}

std::unique_ptr<Channel> ConnectTo(const std::string& text) {
  auto uri = ParseUri(text);
  EXPECT_TRUE(uri.ok()) << uri.status().ToString();
  auto ch = Connect(*uri, 10s);
  EXPECT_TRUE(ch.ok()) << ch.status().ToString();
  return ch.ok() ? std::move(*ch) : nullptr;
}

// Waits (hang guard only, no timing assertion) until `pred` holds.
template <typename Pred>
bool WaitUntil(Pred pred, std::chrono::seconds limit = 60s) {
  auto end = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return pred();
}

class SourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto m = cli::Mapping::Anonymous(256 << 20, false);
    ASSERT_TRUE(m.ok());
    cli::FillMemory(m->data(), m->size(), cli::FillSpec{80, 20, 0}, 11);
    ASSERT_TRUE(guest_.Init(std::move(*m)).ok());
  }
  std::unique_ptr<DirtyTracker> Tracker() {
    auto t = MakeDirtyTracker(DirtyTrackerKind::kBest, [](std::string_view) {});
    EXPECT_TRUE(t.ok());
    return t.ok() ? std::move(*t) : nullptr;
  }
  // A source that sends slowly enough to be interrupted.
  MigrationParams Slow() {
    MigrationParams p;
    p.max_bandwidth = 32 << 20;
    return p;
  }

  cli::SyntheticGuest guest_;
  TempDir dir_;
};

TEST_F(SourceTest, CancelLeavesGuestIntactAndARetrySucceeds) {
  const XXH128_hash_t before = Digest(guest_.memory(), guest_.size());
  {
    Recv recv = StartRecv(dir_, "recv1");
    auto ch = ConnectTo(recv.uri);
    ASSERT_TRUE(ch);
    auto tracker = Tracker();
    MigrationSource src(Slow(), guest_.blocks(), *tracker, &guest_);
    auto run = std::async(std::launch::async, [&] { return src.Run(*ch, true); });
    ASSERT_TRUE(WaitUntil([&] { return src.Stats().ram.transferred > (16u << 20); }));
    src.Cancel();
    ASSERT_EQ(run.wait_for(60s), std::future_status::ready) << "Run did not return after Cancel";
    Status s = run.get();
    EXPECT_EQ(s.code(), Code::kCancelled) << s.ToString();
    EXPECT_EQ(src.Stats().state, MigrationState::kCancelled);
    auto st = recv.proc.Wait(60s);
    ASSERT_TRUE(st.ok());
    EXPECT_FALSE(st->success()) << "the destination reported success for a cancelled migration\n"
                                << recv.proc.Report();
  }
  const XXH128_hash_t after = Digest(guest_.memory(), guest_.size());
  EXPECT_TRUE(XXH128_isEqual(before, after)) << "guest memory changed by a cancelled migration";

  // Second attempt, same guest, new migration object.
  Recv recv = StartRecv(dir_, "recv2");
  auto ch = ConnectTo(recv.uri);
  ASSERT_TRUE(ch);
  auto tracker = Tracker();
  MigrationSource src(MigrationParams{}, guest_.blocks(), *tracker, &guest_);
  Status s = src.Run(*ch, true);
  ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << recv.proc.Report();
  EXPECT_TRUE(src.Stats().verified);
  auto st = recv.proc.Wait(60s);
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(st->success()) << recv.proc.Report();
  auto j = test::FerryJson(recv.proc);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)["verified"], true);
}

TEST_F(SourceTest, DestinationKilledFailsTheSourceAndTheGuestKeepsRunning) {
  auto tracker = Tracker();
  guest_.StartWriter(32 << 20, 16 << 20, tracker.get(), 5);
  Recv recv = StartRecv(dir_, "recv");
  auto ch = ConnectTo(recv.uri);
  ASSERT_TRUE(ch);
  MigrationSource src(Slow(), guest_.blocks(), *tracker, &guest_);
  auto run = std::async(std::launch::async, [&] { return src.Run(*ch, true); });
  ASSERT_TRUE(WaitUntil([&] { return src.Stats().ram.transferred > (16u << 20); }));
  ASSERT_TRUE(recv.proc.Signal(SIGKILL).ok());
  ASSERT_EQ(run.wait_for(60s), std::future_status::ready) << "the source did not notice the destination died";
  Status s = run.get();
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(src.Stats().state, MigrationState::kFailed);
  EXPECT_FALSE(src.Stats().error.empty());
  // The guest was never paused for good: its writer still makes progress.
  const uint64_t w0 = guest_.writes();
  EXPECT_TRUE(WaitUntil([&] { return guest_.writes() > w0 + 100; })) << "guest writer stalled after the failure";
  guest_.StopWriter();
}

TEST_F(SourceTest, LiveMigrationWithWriterConvergesAndVerifies) {
  auto tracker = Tracker();
  guest_.StartWriter(64 << 20, 8 << 20, tracker.get(), 9);
  Recv recv = StartRecv(dir_, "recv");
  auto ch = ConnectTo(recv.uri);
  ASSERT_TRUE(ch);
  MigrationSource src(MigrationParams{}, guest_.blocks(), *tracker, &guest_);
  Status s = src.Run(*ch, true);
  ASSERT_TRUE(s.ok()) << s.ToString() << "\n" << recv.proc.Report();
  MigrationStats st = src.Stats();
  EXPECT_EQ(st.state, MigrationState::kCompleted);
  EXPECT_TRUE(st.verified);
  EXPECT_GE(st.ram.dirty_sync_count, 2u);
  auto es = recv.proc.Wait(60s);
  ASSERT_TRUE(es.ok());
  EXPECT_TRUE(es->success()) << recv.proc.Report();
  guest_.StopWriter();
}

}  // namespace
}  // namespace ferry
