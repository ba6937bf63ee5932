// Hostile and careless input through the real `ferry` binary: bytes that are
// not text in --json and on the terminal, a summary that must not land in
// the stream, trailing bytes, bad --fill values, guests too large for the
// machine, the destination's RAM cap and memory-file clean-up, a memory file
// on a filesystem that runs out of space, and memory files truncated by
// someone else mid-migration. Every case asserts an exit code (never a
// death by signal) and what the user is told.
//
// FERRY_KEEP_TMP=1 keeps the temp dirs (outputs and logs) for a post-mortem.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/unique_fd.h"
#include "core/wire.h"
#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"

namespace ferry::test {
namespace {

using nlohmann::json;
using std::chrono::milliseconds;
using std::chrono::seconds;

constexpr auto kExitTimeout = seconds(60);

std::string Bytes(std::initializer_list<std::string> parts) {
  std::string s;
  for (const std::string& p : parts) s += p;
  return s;
}

std::string Be32(uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

// The header and a configuration section naming `machine`.
std::string StreamStart(const std::string& machine) {
  return Bytes({"QEVM", Be32(3), std::string(1, '\x07'), Be32(static_cast<uint32_t>(machine.size())), machine});
}

bool HasRawControl(const std::string& s) {
  for (char c : s) {
    const auto b = static_cast<uint8_t>(c);
    if ((b < 0x20 && c != '\n') || b == 0x7f) return true;
  }
  return false;
}

uint64_t MemAvailable() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  uint64_t v = 0;
  std::string unit;
  while (f >> key >> v >> unit) {
    if (key == "MemAvailable:") return v * 1024;
  }
  return 0;
}

class InputCliTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = std::make_unique<TempDir>("ferry-input-cli"); }
  std::string P(std::string_view name) const { return dir_->Path(name); }

  Process Start(const std::string& name, std::vector<std::string> args, FerryIo io = {}) {
    Result<Process> p = StartFerry(*dir_, name, std::move(args), std::move(io));
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return p.ok() ? std::move(*p) : Process();
  }
  // Runs to the end; the process (exited, or killed after the timeout).
  Process Run(const std::string& name, std::vector<std::string> args, FerryIo io = {}) {
    Process p = Start(name, std::move(args), std::move(io));
    if (p.valid()) {
      Result<ExitStatus> st = p.Wait(kExitTimeout);
      if (!st.ok()) p.Kill();
    }
    return p;
  }
  static int Code(const Process& p) {
    const auto& st = p.exit_status();
    if (!st) return -1;
    return st->exited ? st->code : -1000 - st->signal;
  }
  // A saved ferry stream of a synthetic guest (send fd:1 > file).
  std::string SaveStream(const std::string& name, const std::string& ram) {
    const std::string path = P(name);
    Process s = Run(name + "-send", {"send", "fd:1", "--ram", ram}, {.stdout_path = path});
    EXPECT_EQ(Code(s), 0) << s.Report();
    return path;
  }
  void StartRecv(std::vector<std::string> extra, Process* recv, std::string* uri) {
    std::vector<std::string> args = {"recv", "tcp:127.0.0.1:0", "--ready-file", P("ready")};
    args.insert(args.end(), extra.begin(), extra.end());
    *recv = Start("recv", std::move(args));
    ASSERT_TRUE(recv->valid());
    Result<std::string> u = WaitForFile(P("ready"), kReadyTimeout, recv);
    ASSERT_TRUE(u.ok()) << u.status().message();
    *uri = *u;
  }

  std::unique_ptr<TempDir> dir_;
};

// ---------------------------------------------------------------- JSON

// The 17-byte stream of the issue: a \xff in the machine name used to abort
// `recv --json` and `load --json` (SIGABRT from the JSON library).
TEST_F(InputCliTest, JsonSurvivesAMachineNameThatIsNotUtf8) {
  const std::string bad = P("bad.mig");
  ASSERT_TRUE(WriteStringToFile(bad, StreamStart("fer\xff")).ok());
  ASSERT_EQ(FileSize(bad).value(), 17u);
  Process load = Run("load", {"load", bad, "--json"});
  Process recv = Run("recv", {"recv", "fd:0", "--json"}, {.stdin_path = bad});
  for (Process* p : {&load, &recv}) {
    ASSERT_EQ(Code(*p), 1) << p->Report();
    Result<json> j = FerryJson(*p);
    ASSERT_TRUE(j.ok()) << j.status().message();
    EXPECT_EQ((*j)["status"], "failed");
    const std::string error = (*j)["error"];
    EXPECT_NE(error.find("'fer\\xff'"), std::string::npos) << error;
    EXPECT_NE(p->Stderr().find("'fer\\xff'"), std::string::npos) << p->Report();
  }
  Process inspect = Run("inspect", {"inspect", bad, "--json"});
  EXPECT_EQ(Code(inspect), 1) << inspect.Report();
  Result<json> j = FerryJson(inspect);
  ASSERT_TRUE(j.ok()) << j.status().message();
  EXPECT_EQ((*j)["machine"], "fer\\xff");
  EXPECT_NE((*j)["verdict"].get<std::string>().find("not printable"), std::string::npos) << j->dump();
}

// A destination whose verdict is not UTF-8 (a hostile or broken peer): `send
// --json` used to abort printing it.
TEST_F(InputCliTest, SendJsonSurvivesAVerdictThatIsNotUtf8) {
  UniqueFd lsock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  ASSERT_TRUE(lsock.valid());
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(lsock.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(lsock.get(), 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(lsock.get(), reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string uri = "tcp:127.0.0.1:" + std::to_string(ntohs(addr.sin_port));

  // The fake destination answers at once and then swallows the stream.
  const std::string reason = "block \xff\xfe\x1b[31m is wrong";
  std::thread peer([&] {
    UniqueFd c(::accept4(lsock.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c.valid()) return;
    const std::string verdict = Be32(wire::kVerdictMagic) + Be32(1) + Be32(static_cast<uint32_t>(reason.size())) + reason;
    (void)::send(c.get(), verdict.data(), verdict.size(), MSG_NOSIGNAL);
    char buf[65536];
    while (::recv(c.get(), buf, sizeof(buf), 0) > 0) {
    }
  });
  Process send = Run("send", {"send", uri, "--ram", "4M", "--json"});
  ::shutdown(lsock.get(), SHUT_RDWR);
  peer.join();
  ASSERT_EQ(Code(send), 1) << send.Report();
  Result<json> j = FerryJson(send);
  ASSERT_TRUE(j.ok()) << j.status().message();
  EXPECT_EQ((*j)["status"], "failed");
  const std::string error = (*j)["error"];
  EXPECT_NE(error.find("block \\xff\\xfe\x1b[31m is wrong"), std::string::npos) << error;
  // On the terminal the escape sequence is shown, not obeyed.
  EXPECT_FALSE(HasRawControl(send.Stderr())) << send.Report();
  EXPECT_NE(send.Stderr().find("block \\xff\\xfe\\x1b[31m is wrong"), std::string::npos) << send.Report();
}

// ---------------------------------------------------------------- terminal

TEST_F(InputCliTest, TerminalOutputEscapesNamesFromTheStream) {
  const std::string esc = P("esc.mig");
  ASSERT_TRUE(WriteStringToFile(esc, StreamStart("\x1b]0;owned\x07\x1b[2J")).ok());
  Process load = Run("load", {"load", esc});
  EXPECT_EQ(Code(load), 1) << load.Report();
  EXPECT_FALSE(HasRawControl(load.Stderr())) << load.Report();
  EXPECT_FALSE(HasRawControl(load.Stdout())) << load.Report();
  EXPECT_NE(load.Stderr().find("\\x1b]0;owned\\x07\\x1b[2J"), std::string::npos) << load.Report();
  Process inspect = Run("inspect", {"inspect", esc});
  EXPECT_EQ(Code(inspect), 1) << inspect.Report();
  EXPECT_FALSE(HasRawControl(inspect.Stdout())) << inspect.Report();
  EXPECT_NE(inspect.Stdout().find("machine '\\x1b]0;owned"), std::string::npos) << inspect.Report();
  EXPECT_NE(inspect.Stdout().find("not printable"), std::string::npos) << inspect.Report();
}

// ---------------------------------------------------------------- streams

// `ferry send fd:1 > f`: the summary goes to stderr, the file holds the
// stream and nothing else.
TEST_F(InputCliTest, SendToStdoutKeepsTheSummaryOutOfTheStream) {
  for (bool json_out : {false, true}) {
    SCOPED_TRACE(json_out ? "--json" : "text");
    const std::string mig = P(json_out ? "j.mig" : "t.mig");
    std::vector<std::string> args = {"send", "fd:1", "--ram", "4M"};
    if (json_out) args.push_back("--json");
    Process s = Run("send", args, {.stdout_path = mig});
    ASSERT_EQ(Code(s), 0) << s.Report();
    EXPECT_NE(s.Stderr().find(json_out ? "\"status\":\"completed\"" : "ferry send: completed"), std::string::npos)
        << s.Report();
    Process i = Run("inspect", {"inspect", mig});
    EXPECT_EQ(Code(i), 0) << i.Report();
    EXPECT_NE(i.Stdout().find("\ncomplete\n"), std::string::npos) << i.Stdout();
    Process l = Run("load", {"load", mig});
    EXPECT_EQ(Code(l), 0) << l.Report();
  }
}

// Bytes after the VM description: load and recv from a pipe refuse them,
// inspect flags them.
TEST_F(InputCliTest, TrailingBytesAreRefusedAndFlagged) {
  const std::string good = SaveStream("good.mig", "4M");
  const uint64_t end = FileSize(good).value();
  const std::string bad = P("bad.mig");
  ASSERT_TRUE(CopyFile(good, bad).ok());
  {
    std::ofstream f(bad, std::ios::app | std::ios::binary);
    f << "ferry send: completed in 0.01 s\n";
  }
  Process load = Run("load", {"load", bad, "--json", "--memory-file", P("out.ram")});
  EXPECT_EQ(Code(load), 1) << load.Report();
  EXPECT_NE(load.Stderr().find("goes on after the end of the stream"), std::string::npos) << load.Report();
  EXPECT_NE(load.Stderr().find("stream offset " + std::to_string(end)), std::string::npos) << load.Report();
  EXPECT_FALSE(std::filesystem::exists(P("out.ram"))) << "the failed load left its memory file behind";
  Process recv = Run("recv", {"recv", "fd:0"}, {.stdin_path = bad});
  EXPECT_EQ(Code(recv), 1) << recv.Report();
  EXPECT_NE(recv.Stderr().find("goes on after the end of the stream"), std::string::npos) << recv.Report();
  Process inspect = Run("inspect", {"inspect", bad});
  EXPECT_EQ(Code(inspect), 1) << inspect.Report();
  EXPECT_NE(inspect.Stdout().find("32 trailing bytes after the VM description"), std::string::npos)
      << inspect.Report();
  Process ok = Run("load-good", {"load", good});
  EXPECT_EQ(Code(ok), 0) << ok.Report();
}

// ---------------------------------------------------------------- options

TEST_F(InputCliTest, FillPercentagesMustBePercentages) {
  for (const std::string fill : {"random=-10,zero=110", "random=abc,zero=100", "random=150", "random=50,zero=+50"}) {
    Process s = Run("send", {"send", "unix:" + P("nobody"), "--ram", "4M", "--fill", fill});
    EXPECT_EQ(Code(s), 2) << s.Report();
    EXPECT_NE(s.Stderr().find("bad --fill"), std::string::npos) << s.Report();
  }
}

TEST_F(InputCliTest, ThpMustBeOnOrOff) {
  Process s = Run("send", {"send", "unix:" + P("nobody"), "--ram", "4M", "--thp", "yes"});
  EXPECT_EQ(Code(s), 2) << s.Report();
  EXPECT_NE(s.Stderr().find("--thp must be on or off, got 'yes'"), std::string::npos) << s.Report();
  Process r = Run("recv", {"recv", "unix:" + P("sock"), "--ram", "4M", "--thp", "always"});
  EXPECT_EQ(Code(r), 2) << r.Report();
  EXPECT_NE(r.Stderr().find("--thp must be on or off, got 'always'"), std::string::npos) << r.Report();
}

TEST_F(InputCliTest, SyntheticGuestLargerThanTheMachineNeedsForce) {
  const uint64_t avail = MemAvailable();
  ASSERT_GT(avail, 0u);
  const std::string huge = std::to_string((2 * avail >> 30) + 1) + "G";
  Process s = Run("send", {"send", "unix:" + P("nobody"), "--ram", huge, "--connect-timeout", "0.2"});
  EXPECT_EQ(Code(s), 2) << s.Report();
  EXPECT_NE(s.Stderr().find("more than this machine can hold"), std::string::npos) << s.Report();
  EXPECT_NE(s.Stderr().find("--force"), std::string::npos) << s.Report();
  // With --force it goes on (all-zero pages are never touched) and fails only
  // for want of a destination.
  Process f = Run("forced", {"send", "unix:" + P("nobody"), "--ram", huge, "--force", "--fill", "zero=100",
                             "--connect-timeout", "0.2"});
  EXPECT_TRUE(f.exit_status() && f.exit_status()->exited) << f.Report();
  EXPECT_EQ(f.Stderr().find("more than this machine can hold"), std::string::npos) << f.Report();
}

// SIGTERM while a large synthetic guest is being filled: exit 3 at once.
TEST_F(InputCliTest, FillStopsOnSigterm) {
  const uint64_t avail = MemAvailable();
  const uint64_t gib = std::min<uint64_t>(8, avail / 4 >> 30);
  if (gib < 1) GTEST_SKIP() << "less than 4 GiB available";
  Process s = Start("send", {"send", "unix:" + P("nobody"), "--ram", std::to_string(gib) + "G", "--fill",
                             "random=100", "--connect-timeout", "60"});
  std::this_thread::sleep_for(milliseconds(300));
  ASSERT_TRUE(s.Signal(SIGTERM).ok());
  const auto t0 = Clock::now();
  ASSERT_TRUE(ExitsWithCode(s, 3, seconds(20)));
  EXPECT_LT(Clock::now() - t0, seconds(10)) << s.Report();
  if (gib >= 4) {
    EXPECT_NE(s.Stderr().find("cancelled while filling"), std::string::npos) << s.Report();
  }
}

// ---------------------------------------------------------------- the RAM cap

TEST_F(InputCliTest, MaxRamRefusesALargerStreamBeforeAllocating) {
  Process recv, send;
  std::string uri;
  ASSERT_NO_FATAL_FAILURE(StartRecv({"--max-ram", "32M", "--memory-file", P("out.ram"), "--json"}, &recv, &uri));
  send = Run("send", {"send", uri, "--ram", "64M"});
  ASSERT_TRUE(ExitsWithCode(recv, 1, kExitTimeout));
  EXPECT_EQ(Code(send), 1) << send.Report();
  // (Whether the source can show the destination's reason depends on the
  // verdict getting through while it is still sending; not asserted here.)
  EXPECT_NE(recv.Stderr().find("67108864 bytes (64.00 MiB)"), std::string::npos) << recv.Report();
  EXPECT_NE(recv.Stderr().find("33554432 bytes (32.00 MiB)"), std::string::npos) << recv.Report();
  Result<json> j = FerryJson(recv);
  ASSERT_TRUE(j.ok()) << j.status().message();
  EXPECT_NE((*j)["error"].get<std::string>().find("more than this destination may allocate"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(P("out.ram"))) << "refused before allocating, yet the file exists";

  // --ram beyond the cap is a usage error.
  Process r2 = Run("recv2", {"recv", "tcp:127.0.0.1:0", "--ram", "64M", "--max-ram", "32M"});
  EXPECT_EQ(Code(r2), 2) << r2.Report();
}

// ---------------------------------------------------------------- memory files

// A destination memory file on a filesystem too small for it: refused by the
// default cap (the free space); with a cap raised by hand the reservation
// fails cleanly (ENOSPC) — never SIGBUS — and no file is left behind; a file
// that existed is kept, at its old size.
TEST_F(InputCliTest, MemoryFileOnAFullFilesystem) {
  const std::string mnt = P("mnt");
  std::filesystem::create_directory(mnt);
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=8M") != 0) {
    GTEST_SKIP() << "cannot mount a tmpfs at " << mnt << " (needs root / CAP_SYS_ADMIN): " << strerror(errno);
  }
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  const std::string mig = SaveStream("s16.mig", "16M");
  const std::string out = mnt + "/x.ram";

  Process by_default = Run("load1", {"load", mig, "--memory-file", out, "--json"});
  EXPECT_EQ(Code(by_default), 1) << by_default.Report();
  EXPECT_NE(by_default.Stderr().find("more than this destination may allocate"), std::string::npos)
      << by_default.Report();
  EXPECT_NE(by_default.Stderr().find("--max-ram's default"), std::string::npos) << by_default.Report();
  EXPECT_FALSE(std::filesystem::exists(out));

  Process raised = Run("load2", {"load", mig, "--memory-file", out, "--max-ram", "1G", "--json"});
  EXPECT_EQ(Code(raised), 1) << raised.Report();
  EXPECT_NE(raised.Stderr().find("No space left on device"), std::string::npos) << raised.Report();
  EXPECT_FALSE(std::filesystem::exists(out)) << "the failed load left its memory file behind";

  const std::string existing = mnt + "/vm.mem";
  ASSERT_TRUE(WriteStringToFile(existing, std::string(2 << 20, 'v')).ok());
  Process pre = Run("load3", {"load", mig, "--memory-file", existing, "--max-ram", "1G"});
  EXPECT_EQ(Code(pre), 1) << pre.Report();
  ASSERT_TRUE(std::filesystem::exists(existing)) << "a file ferry did not create was removed";
  EXPECT_EQ(std::filesystem::file_size(existing), 2u << 20);

  // And a stream that fits loads there.
  const std::string small = SaveStream("s4.mig", "4M");
  Process fits = Run("load4", {"load", small, "--memory-file", out});
  EXPECT_EQ(Code(fits), 0) << fits.Report();
  EXPECT_EQ(std::filesystem::file_size(out), 4u << 20);
}

// Another process truncates a memory file mid-migration: the side that maps
// it fails with a clear error instead of dying of SIGBUS, and the other side
// fails too (never a false success).
TEST_F(InputCliTest, MemoryFileTruncatedMidMigration) {
  for (const bool source_side : {true, false}) {
    SCOPED_TRACE(source_side ? "source's file" : "destination's file");
    const std::string src = P("src.ram"), out = P("out.ram");
    std::filesystem::remove(P("ready"));
    ASSERT_TRUE(WritePatternFile(src, {.size = 64 << 20, .seed = 3, .random_pct = 100, .zero_pct = 0,
                                       .text_pct = 0})
                    .ok());
    Process recv, send;
    std::string uri;
    ASSERT_NO_FATAL_FAILURE(StartRecv({"--memory-file", out}, &recv, &uri));
    // 64 MiB at 16 MB/s: about 4 s, time enough to cut the file.
    send = Start("send", {"send", uri, "--memory-file", src, "-p", "max-bandwidth=16M"});
    ASSERT_TRUE(WaitForNonEmptyFile(out, seconds(30), &recv).ok());
    std::this_thread::sleep_for(milliseconds(800));
    ASSERT_EQ(truncate((source_side ? src : out).c_str(), 4 << 20), 0);
    ASSERT_TRUE(ExitsWithCode(send, 1, kExitTimeout)) << "receiver:\n" << recv.Report();
    ASSERT_TRUE(ExitsWithCode(recv, 1, kExitTimeout)) << "sender:\n" << send.Report();
    // The side whose file it is says why.
    Process& owner = source_side ? send : recv;
    const std::string path = source_side ? src : out;
    EXPECT_NE(owner.Stderr().find("the memory file " + path + " shrank during the migration"), std::string::npos)
        << owner.Report();
    EXPECT_FALSE(std::filesystem::exists(out)) << "the failed destination left its memory file behind";
  }
}

}  // namespace
}  // namespace ferry::test
