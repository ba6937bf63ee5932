// Bounded waits, end to end (issue 9): a peer that goes silent — stopped
// with SIGSTOP mid-stream or at switchover, a listener that accepts and never
// reads — makes the other side fail within -p no-progress-timeout (plus
// slack) instead of hanging; at switchover the source's guest is resumed;
// SIGINT/SIGTERM end a wait on a FIFO; a migration that cannot converge says
// so and fails or switches over as chosen.
//
// Time bounds here only detect a hang: kSlack is far above what any of these
// needs on an idle machine. FERRY_KEEP_TMP=1 keeps the temp dirs.
//
// The switchover test of the CLI uses a test-only hook of the synthetic
// guest (cli/guest.cc): with FERRY_TEST_HOLD_AT_SWITCHOVER=PATH, `ferry
// send` writes PATH once the guest is paused for switchover and waits until
// PATH is removed, and writes PATH.resumed when it resumes the guest.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli/guest.h"
#include "core/migration.h"
#include "core/unique_fd.h"
#include "socket/socket.h"
#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"
#include "tests/support/text.h"

namespace ferry::test {
namespace {

using namespace std::chrono_literals;
using std::chrono::seconds;

// The no-progress bound the tests ask for, and the slack on top of it for
// buffers to fill and processes to start (a hang guard, not a measurement).
constexpr int kBoundSeconds = 2;
constexpr auto kSlack = seconds(25);
constexpr auto kExitTimeout = seconds(120);

const std::string kBound = "no-progress-timeout=" + std::to_string(kBoundSeconds);
const std::string kNoProgress = "no progress for " + std::to_string(kBoundSeconds) + " s";

double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

struct Recv {
  Process proc;
  std::string uri;
};

Recv StartRecv(const TempDir& dir, const std::string& name, std::vector<std::string> extra = {}) {
  Recv r;
  std::vector<std::string> args{"recv", "tcp:127.0.0.1:0", "--ready-file", dir.Path(name + ".ready"), "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  auto p = StartFerry(dir, name, args);
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  if (!p.ok()) return r;
  r.proc = std::move(*p);
  auto uri = WaitForFile(dir.Path(name + ".ready"), kReadyTimeout, &r.proc);
  EXPECT_TRUE(uri.ok()) << uri.status().ToString();
  if (uri.ok()) r.uri = *uri;
  return r;
}

// A source that keeps migrating until something stops it: its guest dirties
// more than max-bandwidth lets through, and it never gives up on that.
std::vector<std::string> EndlessSend(const std::string& uri, std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"send",       uri,         "--ram",          "64M",
                                "--hot-set",  "32M",       "--dirty-rate",   "200M",
                                "-p",         "max-bandwidth=40M", "-p",     "max-stalled-passes=0",
                                "-p",         kBound,      "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// Waits for `p` to exit (hang guard `limit`), returning the exit status and
// how long it took.
struct Ended {
  ExitStatus status;
  double seconds = 0;
};
Result<Ended> WaitEnded(Process& p, Clock::duration limit) {
  const auto start = Clock::now();
  Result<ExitStatus> st = p.Wait(limit);
  if (!st.ok()) {
    const std::string report = p.Report();
    p.Kill();
    return Status::Timeout("still running after " + std::to_string(SecondsSince(start)) + " s (killed it):\n" +
                           report);
  }
  return Ended{*st, SecondsSince(start)};
}

// Resident memory of process `pid` in bytes (0 if unknown).
uint64_t Rss(pid_t pid) {
  const std::string status = ReadFileOrEmpty("/proc/" + std::to_string(pid) + "/status");
  const size_t at = status.find("VmRSS:");
  return at == std::string::npos ? 0 : std::strtoull(status.c_str() + at + 6, nullptr, 10) * 1024;
}

// Waits until the destination holds `bytes` more of guest memory than when
// this was called: pages are arriving, the stream is flowing. (Socket reads
// do not show in /proc/PID/io; the pages the destination writes do show in
// its resident memory.)
::testing::AssertionResult StreamFlowing(Process& recv, Process& send, uint64_t bytes = 16 << 20) {
  const uint64_t base = Rss(recv.pid());
  const auto start = Clock::now();
  while (Rss(recv.pid()) < base + bytes) {
    if (!recv.Running() || !send.Running()) {
      return ::testing::AssertionFailure() << "a side ended early\n" << recv.Report() << "\n" << send.Report();
    }
    if (SecondsSince(start) > 120) return ::testing::AssertionFailure() << "the stream never got going";
    std::this_thread::sleep_for(20ms);
  }
  return ::testing::AssertionSuccess();
}

std::string JsonError(const Process& p) {
  auto j = FerryJson(p);
  if (!j.ok()) return "";
  auto e = JsonAt(*j, "/error");
  return e && e->is_string() ? e->get<std::string>() : "";
}

// ---------------------------------------------------------------------------
// A silent peer mid-stream

// An endless migration (`extra` on both sides) in which one side is stopped
// with SIGSTOP once the stream flows; the other side must fail with exit 1
// within the no-progress bound, and the stopped side (let go again) fails too.
struct StoppedMidStream {
  Recv recv;
  Process send;
  Process* other = nullptr;  // the side that was not stopped
};

void StopMidStream(const TempDir& dir, bool stop_source, const std::vector<std::string>& extra, StoppedMidStream* r) {
  std::vector<std::string> recv_args{"-p", kBound};
  recv_args.insert(recv_args.end(), extra.begin(), extra.end());
  r->recv = StartRecv(dir, "recv", recv_args);
  auto send = StartFerry(dir, "send", EndlessSend(r->recv.uri, extra));
  ASSERT_TRUE(send.ok()) << send.status().ToString();
  r->send = std::move(*send);
  ASSERT_TRUE(StreamFlowing(r->recv.proc, r->send));  // (it never ends by itself)
  Process& stopped = stop_source ? r->send : r->recv.proc;
  r->other = stop_source ? &r->recv.proc : &r->send;
  ASSERT_TRUE(stopped.Signal(SIGSTOP).ok());
  auto ended = WaitEnded(*r->other, seconds(kBoundSeconds) + kSlack);
  ASSERT_TRUE(stopped.Signal(SIGCONT).ok());
  ASSERT_TRUE(ended.ok()) << ended.status().message();
  EXPECT_TRUE(ended->status.exited && ended->status.code == 1) << ended->status.ToString() << "\n"
                                                                << r->other->Report();
  EXPECT_TRUE(Contains(r->other->Stderr(), kNoProgress)) << r->other->Report();
  EXPECT_TRUE(ExitsWithFailure(stopped, kExitTimeout));
}

const std::vector<std::string> kMultifd4{"-c", "multifd=on", "-p", "multifd-channels=4"};

TEST(Waits, DestinationStoppedMidStreamFailsTheSource) {
  TempDir dir;
  StoppedMidStream r;
  ASSERT_NO_FATAL_FAILURE(StopMidStream(dir, /*stop_source=*/false, {}, &r));
  EXPECT_TRUE(Contains(r.send.Stderr(), "write to " + r.recv.uri.substr(0, r.recv.uri.rfind(':')))) << r.send.Report();
  EXPECT_TRUE(Contains(JsonError(r.send), kNoProgress)) << r.send.Report();
}

TEST(Waits, SourceStoppedMidStreamFailsTheDestination) {
  TempDir dir;
  StoppedMidStream r;
  ASSERT_NO_FATAL_FAILURE(StopMidStream(dir, /*stop_source=*/true, {}, &r));
  EXPECT_TRUE(Contains(r.recv.proc.Stderr(), "read from tcp:127.0.0.1:")) << r.recv.proc.Report();
}

TEST(Waits, MultifdDestinationStoppedFailsTheSource) {
  TempDir dir;
  StoppedMidStream r;
  ASSERT_NO_FATAL_FAILURE(StopMidStream(dir, /*stop_source=*/false, kMultifd4, &r));
}

TEST(Waits, MultifdSourceStoppedFailsTheDestination) {
  TempDir dir;
  StoppedMidStream r;
  ASSERT_NO_FATAL_FAILURE(StopMidStream(dir, /*stop_source=*/true, kMultifd4, &r));
}

TEST(Waits, ListenerThatAcceptsAndNeverReadsFailsTheSource) {
  TempDir dir;
  UniqueFd ls(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(ls.valid());
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(ls.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(ls.get(), 4), 0);
  socklen_t len = sizeof a;
  ASSERT_EQ(::getsockname(ls.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
  const std::string uri = "tcp:127.0.0.1:" + std::to_string(ntohs(a.sin_port));
  UniqueFd held;  // accepted, never read
  std::thread acceptor([&] { held.Reset(::accept4(ls.get(), nullptr, nullptr, SOCK_CLOEXEC)); });

  auto send = StartFerry(dir, "send", {"send", uri, "--ram", "64M", "-p", kBound, "--json"});
  ASSERT_TRUE(send.ok()) << send.status().ToString();
  auto ended = WaitEnded(*send, seconds(kBoundSeconds) + kSlack);
  acceptor.join();
  ASSERT_TRUE(ended.ok()) << ended.status().message();
  EXPECT_TRUE(ended->status.exited && ended->status.code == 1) << ended->status.ToString() << "\n" << send->Report();
  EXPECT_TRUE(Contains(send->Stderr(), kNoProgress)) << send->Report();
  EXPECT_TRUE(Contains(JsonError(*send), kNoProgress)) << send->Report();
}

// ---------------------------------------------------------------------------
// A silent peer at switchover

// Runs `ferry send` with the switchover hook; once the guest is paused,
// stops the destination and lets the source go on. `stream_sent`: the whole
// stream fits in the socket buffers, so only the verdict is missing.
void StopDestinationAtSwitchover(const std::vector<std::string>& send_extra, bool stream_sent) {
  TempDir dir;
  Recv recv = StartRecv(dir, "recv", {"-p", kBound});
  const std::string hold = dir.Path("hold");
  std::vector<std::string> argv{FERRY_BIN, "send", recv.uri, "-p", kBound, "--json"};
  argv.insert(argv.end(), send_extra.begin(), send_extra.end());
  SpawnOptions o;
  o.stdout_path = dir.Path("send.out");
  o.stderr_path = dir.Path("send.err");
  o.extra_env = {"FERRY_TEST_HOLD_AT_SWITCHOVER=" + hold};
  auto send = Process::Spawn(argv, o);
  ASSERT_TRUE(send.ok()) << send.status().ToString();
  ASSERT_TRUE(WaitForFile(hold, seconds(120), &*send).ok()) << "never reached switchover\n" << send->Report();
  ASSERT_TRUE(recv.proc.Signal(SIGSTOP).ok());
  ASSERT_EQ(::unlink(hold.c_str()), 0);  // the source goes on, with its guest paused
  auto ended = WaitEnded(*send, seconds(kBoundSeconds) + kSlack);
  ASSERT_TRUE(recv.proc.Signal(SIGCONT).ok());
  ASSERT_TRUE(ended.ok()) << ended.status().message();
  EXPECT_TRUE(ended->status.exited && ended->status.code == 1) << ended->status.ToString() << "\n" << send->Report();
  const std::string err = send->Stderr();
  EXPECT_TRUE(Contains(err, kNoProgress)) << send->Report();
  EXPECT_TRUE(Contains(err, "the guest was resumed and keeps running on the source")) << send->Report();
  EXPECT_TRUE(Contains(JsonError(*send), "the guest was resumed")) << send->Report();
  EXPECT_EQ(ReadFileOrEmpty(hold + ".resumed"), "resumed\n") << "the guest was not resumed\n" << send->Report();
  if (stream_sent) {
    // The destination holds everything once it runs again and may well
    // report success: the source's message says not to trust that copy.
    EXPECT_TRUE(Contains(err, "the whole stream was sent: do not start the guest on the destination"))
        << send->Report();
    EXPECT_TRUE(recv.proc.Wait(kExitTimeout).ok()) << recv.proc.Report();
  } else {
    EXPECT_TRUE(Contains(err, "switchover failed")) << send->Report();
    EXPECT_TRUE(ExitsWithFailure(recv.proc, kExitTimeout));
  }
}

// The final RAM is far more than the socket buffers hold: the source blocks
// writing it.
TEST(Waits, DestinationStoppedWhileTheFinalRamIsSentResumesTheGuest) {
  StopDestinationAtSwitchover({"--ram", "256M", "--hot-set", "192M", "--dirty-rate", "1G", "-p",
                               "downtime-limit=1000000"},
                              /*stream_sent=*/false);
}

// Everything fits in the buffers: the source blocks waiting for the verdict.
TEST(Waits, VerdictThatNeverComesResumesTheGuest) {
  StopDestinationAtSwitchover({"--ram", "4M"}, /*stream_sent=*/true);
}

// In process, with the synthetic guest's writer: after a timeout at
// switchover the writer runs again.
class StopAtSwitchover final : public GuestControl {
 public:
  StopAtSwitchover(cli::SyntheticGuest& guest, Process& dest) : guest_(guest), dest_(dest) {}
  void Pause() override {
    guest_.Pause();
    EXPECT_TRUE(dest_.Signal(SIGSTOP).ok());
    ++pauses;
  }
  void Resume() override {
    ++resumes;
    guest_.Resume();
  }
  std::atomic<int> pauses{0}, resumes{0};

 private:
  cli::SyntheticGuest& guest_;
  Process& dest_;
};

TEST(Waits, GuestWriterRunsAgainAfterATimeoutAtSwitchover) {
  TempDir dir;
  cli::SyntheticGuest guest;
  {
    auto m = cli::Mapping::Anonymous(128 << 20, false);
    ASSERT_TRUE(m.ok());
    cli::FillMemory(m->data(), m->size(), cli::FillSpec{80, 20, 0}, 3);
    ASSERT_TRUE(guest.Init(std::move(*m)).ok());
  }
  auto tracker = MakeDirtyTracker(DirtyTrackerKind::kBest, [](std::string_view) {});
  ASSERT_TRUE(tracker.ok()) << tracker.status().ToString();
  Recv recv = StartRecv(dir, "recv", {"-p", kBound});
  auto uri = ParseUri(recv.uri);
  ASSERT_TRUE(uri.ok());
  auto ch = Connect(*uri, 10s);
  ASSERT_TRUE(ch.ok()) << ch.status().ToString();

  guest.StartWriter(512 << 20, 96 << 20, tracker->get(), 5);
  StopAtSwitchover control(guest, recv.proc);
  MigrationParams p;
  p.no_progress_timeout_s = kBoundSeconds;
  p.downtime_limit_ms = 1000000;  // switch over after the first pass, with lots still dirty
  MigrationSource src(p, guest.blocks(), **tracker, &control);
  auto run = std::async(std::launch::async, [&] { return src.Run(**ch, /*await_confirmation=*/true); });
  ASSERT_EQ(run.wait_for(seconds(kBoundSeconds) + kSlack + seconds(60)), std::future_status::ready)
      << "the source hung at switchover";
  Status s = run.get();
  EXPECT_TRUE(recv.proc.Signal(SIGCONT).ok());
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(control.pauses.load(), 1);
  EXPECT_EQ(control.resumes.load(), 1);
  EXPECT_EQ(s.code(), Code::kTimeout) << s.ToString();
  EXPECT_TRUE(Contains(s.message(), kNoProgress)) << s.message();
  EXPECT_TRUE(Contains(s.message(), "the guest was resumed")) << s.message();
  EXPECT_EQ(src.Stats().state, MigrationState::kFailed);
  // The writer runs again.
  const uint64_t w0 = guest.writes();
  const auto start = Clock::now();
  while (guest.writes() < w0 + 1000 && SecondsSince(start) < 60) std::this_thread::sleep_for(10ms);
  EXPECT_GE(guest.writes(), w0 + 1000) << "the guest's writer did not run again after the failure";
  guest.StopWriter();
  EXPECT_TRUE(ExitsWithFailure(recv.proc, kExitTimeout));
}

// ---------------------------------------------------------------------------
// FIFOs and cancellation

std::string MakeFifo(const TempDir& dir, const std::string& name) {
  const std::string path = dir.Path(name);
  EXPECT_EQ(::mkfifo(path.c_str(), 0600), 0);
  return path;
}

TEST(Waits, LoadFromAFifoWithoutAWriterIsCancelledBySigint) {
  TempDir dir;
  const std::string fifo = MakeFifo(dir, "f");
  auto load = StartFerry(dir, "load", {"load", fifo, "--json"});
  ASSERT_TRUE(load.ok()) << load.status().ToString();
  std::this_thread::sleep_for(500ms);
  ASSERT_TRUE(load->Running()) << load->Report();
  ASSERT_TRUE(load->Signal(SIGINT).ok());
  auto ended = WaitEnded(*load, seconds(10));
  ASSERT_TRUE(ended.ok()) << ended.status().message();
  EXPECT_TRUE(ended->status.exited && ended->status.code == 3) << ended->status.ToString() << "\n" << load->Report();
  auto j = FerryJson(*load);
  ASSERT_TRUE(j.ok()) << j.status().message();
  EXPECT_EQ((*j)["status"], "cancelled");
}

TEST(Waits, LoadFromAFifoWithoutAWriterIsCancelledBySigterm) {
  TempDir dir;
  const std::string fifo = MakeFifo(dir, "f");
  auto load = StartFerry(dir, "load", {"load", fifo});
  ASSERT_TRUE(load.ok()) << load.status().ToString();
  std::this_thread::sleep_for(500ms);
  ASSERT_TRUE(load->Signal(SIGTERM).ok());
  EXPECT_TRUE(ExitsWithCode(*load, 3, seconds(10)));
}

TEST(Waits, LoadFromAFifoGivesUpAfterTheTimeout) {
  TempDir dir;
  const std::string fifo = MakeFifo(dir, "f");
  auto load = StartFerry(dir, "load", {"load", fifo, "--timeout", "1"});
  ASSERT_TRUE(load.ok()) << load.status().ToString();
  EXPECT_TRUE(ExitsWithCode(*load, 1, seconds(1) + kSlack));
  EXPECT_TRUE(Contains(load->Stderr(), "nothing was written to FIFO")) << load->Report();
}

TEST(Waits, SaveToAFifoWithoutAReaderIsCancelledBySigterm) {
  TempDir dir;
  const std::string fifo = MakeFifo(dir, "f");
  auto save = StartFerry(dir, "save", {"save", fifo, "--ram", "8M"});
  ASSERT_TRUE(save.ok()) << save.status().ToString();
  std::this_thread::sleep_for(500ms);
  ASSERT_TRUE(save->Running()) << save->Report();
  ASSERT_TRUE(save->Signal(SIGTERM).ok());
  EXPECT_TRUE(ExitsWithCode(*save, 3, seconds(10)));
}

TEST(Waits, FifosCarryAStreamBothWays) {
  TempDir dir;
  // save into a FIFO that `cat` drains into a file...
  const std::string out_fifo = MakeFifo(dir, "out");
  const std::string saved = dir.Path("saved.mig");
  auto cat_out = Process::Spawn({"/bin/sh", "-c", "exec cat \"$0\" > \"$1\"", out_fifo, saved});
  ASSERT_TRUE(cat_out.ok()) << cat_out.status().ToString();
  auto save = StartFerry(dir, "save", {"save", out_fifo, "--ram", "32M", "--dirty-rate", "20M", "-p", kBound});
  ASSERT_TRUE(save.ok());
  EXPECT_TRUE(ExitsWithCode(*save, 0, kExitTimeout));
  EXPECT_TRUE(ExitsWithCode(*cat_out, 0, kExitTimeout));
  // ...and load it back through another FIFO that `cat` fills.
  const std::string in_fifo = MakeFifo(dir, "in");
  auto load = StartFerry(dir, "load", {"load", in_fifo, "--json", "-p", kBound});
  ASSERT_TRUE(load.ok());
  std::this_thread::sleep_for(300ms);  // the loader waits for its writer
  auto cat_in = Process::Spawn({"/bin/sh", "-c", "exec cat \"$0\" > \"$1\"", saved, in_fifo});
  ASSERT_TRUE(cat_in.ok());
  EXPECT_TRUE(ExitsWithCode(*load, 0, kExitTimeout));
  EXPECT_TRUE(ExitsWithCode(*cat_in, 0, kExitTimeout));
  auto j = FerryJson(*load);
  ASSERT_TRUE(j.ok()) << j.status().message();
  EXPECT_EQ((*j)["verified"], true);
}

TEST(Waits, BadParametersAndFifoMisusesAreUsageErrors) {
  TempDir dir;
  const std::string fifo = MakeFifo(dir, "f");
  const std::vector<std::vector<std::string>> bad = {
      {"send", "tcp:127.0.0.1:1", "-p", "no-progress-timeout=abc"},
      {"send", "tcp:127.0.0.1:1", "-p", "no-progress-timeout=-1"},
      {"send", "tcp:127.0.0.1:1", "-p", "no-progress-timeout=604801"},
      {"recv", "tcp:127.0.0.1:0", "-p", "no-progress-timeout=1.5"},
      {"send", "tcp:127.0.0.1:1", "-p", "max-stalled-passes=x"},
      {"send", "tcp:127.0.0.1:1", "-p", "on-stall=maybe"},
      {"load", fifo, "-c", "mapped-ram=on"},
      {"save", fifo, "-c", "mapped-ram=on"},
      {"inspect", fifo},  // would wait in open() for a writer
  };
  int i = 0;
  for (const auto& args : bad) {
    auto p = StartFerry(dir, "bad" + std::to_string(i++), args);
    ASSERT_TRUE(p.ok());
    EXPECT_TRUE(ExitsWithCode(*p, 2, kExitTimeout));
  }
}

// ---------------------------------------------------------------------------
// Non-convergence

// The guest dirties its 8 MiB hot set much faster than 8 MB/s moves it: every
// pass leaves the whole hot set dirty (~1 s of downtime > 300 ms).
std::vector<std::string> StalledSend(const std::string& uri, std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"send",         uri,        "--ram", "16M", "--hot-set", "8M", "--dirty-rate",
                                "200M",         "-p",       "max-bandwidth=8M", "-p", "max-stalled-passes=3",
                                "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

TEST(Waits, NonConvergingMigrationFails) {
  TempDir dir;
  Recv recv = StartRecv(dir, "recv");
  auto send = StartFerry(dir, "send", StalledSend(recv.uri));
  ASSERT_TRUE(send.ok());
  EXPECT_TRUE(ExitsWithCode(*send, 1, kExitTimeout));
  const std::string err = send->Stderr();
  EXPECT_TRUE(Contains(err, "not converging")) << send->Report();
  EXPECT_TRUE(Contains(err, "has not shrunk for 3 passes")) << send->Report();
  EXPECT_TRUE(Contains(err, "keeps running on the source")) << send->Report();
  auto j = FerryJson(*send);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)["status"], "failed");
  EXPECT_TRUE(Contains(JsonError(*send), "not converging"));
  EXPECT_GE((*j)["ram"]["dirty-sync-count"].get<uint64_t>(), 4u);
  EXPECT_TRUE(ExitsWithFailure(recv.proc, kExitTimeout));
}

TEST(Waits, NonConvergingMigrationSwitchesOverWhenAskedTo) {
  TempDir dir;
  Recv recv = StartRecv(dir, "recv");
  auto send = StartFerry(dir, "send", StalledSend(recv.uri, {"-p", "on-stall=switchover"}));
  ASSERT_TRUE(send.ok());
  EXPECT_TRUE(ExitsWithCode(*send, 0, kExitTimeout));
  EXPECT_TRUE(ExitsWithCode(recv.proc, 0, kExitTimeout));
  auto j = FerryJson(recv.proc);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)["verified"], true);
}

// Runs argv with stderr on a pseudo-terminal (ferry draws its progress line
// only on a terminal); returns everything written there.
struct PtyRun {
  std::string output;
  int wstatus = -1;
};
Result<PtyRun> RunWithStderrOnPty(const std::vector<std::string>& argv, Clock::duration limit) {
  int master = ::posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0) return ErrnoStatus("posix_openpt");
  UniqueFd m(master);
  if (::grantpt(master) != 0 || ::unlockpt(master) != 0) return ErrnoStatus("grantpt/unlockpt");
  const char* slave_name = ::ptsname(master);
  if (!slave_name) return ErrnoStatus("ptsname");
  const std::string slave(slave_name);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid < 0) return ErrnoStatus("fork");
  if (pid == 0) {
    ::setsid();
    const int s = ::open(slave.c_str(), O_RDWR);
    const int null = ::open("/dev/null", O_RDWR);
    if (s < 0 || null < 0) ::_exit(126);
    ::dup2(null, 0);
    ::dup2(null, 1);
    ::dup2(s, 2);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  PtyRun out;
  const auto start = Clock::now();
  ::fcntl(master, F_SETFL, ::fcntl(master, F_GETFL) | O_NONBLOCK);
  bool exited = false;
  while (true) {
    char buf[4096];
    const ssize_t n = ::read(master, buf, sizeof buf);
    if (n > 0) {
      out.output.append(buf, static_cast<size_t>(n));
      continue;
    }
    if (!exited && ::waitpid(pid, &out.wstatus, WNOHANG) == pid) exited = true;
    if (exited && (n == 0 || (n < 0 && errno != EAGAIN))) break;
    if (exited && n < 0 && errno == EAGAIN) break;  // drained after the exit
    if (Clock::now() - start > limit) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &out.wstatus, 0);
      return Status::Timeout("still running after the limit; output so far:\n" + out.output);
    }
    std::this_thread::sleep_for(20ms);
  }
  return out;
}

TEST(Waits, ProgressLineSaysNotConverging) {
  TempDir dir;
  Recv recv = StartRecv(dir, "recv");
  std::vector<std::string> argv{FERRY_BIN};
  for (const std::string& a : StalledSend(recv.uri, {"-p", "max-stalled-passes=6"})) argv.push_back(a);
  auto run = RunWithStderrOnPty(argv, kExitTimeout);
  ASSERT_TRUE(run.ok()) << run.status().message();
  EXPECT_TRUE(WIFEXITED(run->wstatus) && WEXITSTATUS(run->wstatus) == 1) << run->output;
  EXPECT_TRUE(Contains(run->output, "[send active]")) << run->output;
  EXPECT_TRUE(Contains(run->output, "not converging")) << run->output;
  EXPECT_TRUE(ExitsWithFailure(recv.proc, kExitTimeout));
}

}  // namespace
}  // namespace ferry::test
