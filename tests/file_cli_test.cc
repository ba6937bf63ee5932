// `ferry save/load/send file:/recv file:/inspect` end to end, through the
// real binary. Files live under /var/tmp (O_DIRECT needs a real filesystem,
// not tmpfs).
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"

namespace ferry::test {
namespace {

constexpr auto kTimeout = std::chrono::seconds(180);

class FileCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    setenv("TMPDIR", "/var/tmp", 1);
    dir_ = std::make_unique<TempDir>("ferry-file");
  }
  std::string P(const std::string& name) const { return dir_->Path(name); }

  // Runs ferry ARGS to the end; returns the process (exited).
  Process Run(const std::string& name, std::vector<std::string> args) {
    Result<Process> p = StartFerry(*dir_, name, std::move(args));
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    if (!p.ok()) return Process();
    Result<ExitStatus> st = p->Wait(kTimeout);
    if (!st.ok()) p->Kill();
    return std::move(*p);
  }
  static int Code(const Process& p) {
    return p.exit_status() && p.exit_status()->exited ? p.exit_status()->code : -1000 - (p.exit_status() ? p.exit_status()->signal : 0);
  }

  // save INPUT into NAME.mig with `opts`, load it back with the same opts,
  // compare; then inspect says complete.
  void RoundTrip(const std::vector<std::string>& opts, uint64_t size = 64ull << 20) {
    const std::string in = P("in.ram"), mig = P("f.mig"), out = P("out.ram");
    ASSERT_TRUE(WritePatternFile(in, {.size = size, .seed = 7}).ok());
    std::vector<std::string> save = {"save", mig, "--memory-file", in, "--json"};
    save.insert(save.end(), opts.begin(), opts.end());
    Process s = Run("save", save);
    ASSERT_EQ(Code(s), 0) << s.Report();
    std::vector<std::string> load = {"load", mig, "--memory-file", out, "--json"};
    load.insert(load.end(), opts.begin(), opts.end());
    Process l = Run("load", load);
    ASSERT_EQ(Code(l), 0) << l.Report();
    Result<nlohmann::json> j = FerryJson(l);
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    EXPECT_EQ((*j)["verified"], true) << j->dump();
    EXPECT_EQ((*j)["status"], "completed") << j->dump();
    EXPECT_TRUE(FilesEqual(out, in));
    Process i = Run("inspect", {"inspect", mig});
    EXPECT_EQ(Code(i), 0) << i.Report();
    EXPECT_NE(i.Stdout().find("\ncomplete\n"), std::string::npos) << i.Stdout();
  }

  std::unique_ptr<TempDir> dir_;
};

TEST_F(FileCliTest, PlainStream) { RoundTrip({}); }
TEST_F(FileCliTest, MappedRam) { RoundTrip({"-c", "mapped-ram=on"}); }
TEST_F(FileCliTest, MappedRamDirectIo) { RoundTrip({"-c", "mapped-ram=on", "-p", "direct-io=on"}); }
TEST_F(FileCliTest, MappedRamMultifd2) {
  RoundTrip({"-c", "mapped-ram=on", "-c", "multifd=on", "-p", "multifd-channels=2"});
}
TEST_F(FileCliTest, MappedRamMultifd2DirectIo) {
  RoundTrip({"-c", "mapped-ram=on", "-c", "multifd=on", "-p", "multifd-channels=2", "-p", "direct-io=on"});
}
TEST_F(FileCliTest, MappedRamMultifd4) {
  RoundTrip({"-c", "mapped-ram=on", "-c", "multifd=on", "-p", "multifd-channels=4"});
}
TEST_F(FileCliTest, MappedRamMultifd4DirectIo) {
  RoundTrip({"-c", "mapped-ram=on", "-c", "multifd=on", "-p", "multifd-channels=4", "-p", "direct-io=on"});
}

TEST_F(FileCliTest, LiveSaveWithDirtyRate) {
  for (bool mapped : {false, true}) {
    SCOPED_TRACE(mapped ? "mapped-ram" : "plain");
    const std::string mig = P(mapped ? "live-m.mig" : "live.mig");
    std::vector<std::string> extra;
    if (mapped) extra = {"-c", "mapped-ram=on", "-c", "multifd=on", "-p", "multifd-channels=2"};
    std::vector<std::string> save = {"save", mig, "--ram", "256M", "--dirty-rate", "200M", "--hot-set", "16M", "--json"};
    save.insert(save.end(), extra.begin(), extra.end());
    Process s = Run(mapped ? "save-m" : "save", save);
    ASSERT_EQ(Code(s), 0) << s.Report();
    std::vector<std::string> load = {"load", mig, "--json"};
    load.insert(load.end(), extra.begin(), extra.end());
    Process l = Run(mapped ? "load-m" : "load", load);
    ASSERT_EQ(Code(l), 0) << l.Report();
    Result<nlohmann::json> j = FerryJson(l);
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    EXPECT_EQ((*j)["verified"], true) << j->dump();
  }
}

TEST_F(FileCliTest, OffsetKeepsPrefix) {
  const std::string in = P("in.ram"), mig = P("off.mig"), out = P("out.ram");
  ASSERT_TRUE(WritePatternFile(in, {.size = 16ull << 20, .seed = 3}).ok());
  std::string prefix(4096, '\0');
  for (size_t i = 0; i < prefix.size(); ++i) prefix[i] = static_cast<char>('A' + i % 26);
  ASSERT_TRUE(WriteStringToFile(mig, prefix + "this tail is replaced").ok());
  Process s = Run("send", {"send", "file:" + mig + ",offset=4096", "--memory-file", in});
  ASSERT_EQ(Code(s), 0) << s.Report();
  EXPECT_TRUE(FileEqualsBuffer(mig, 0, prefix.data(), prefix.size()));
  Process l = Run("recv", {"recv", "file:" + mig + ",offset=4096", "--memory-file", out, "--json"});
  ASSERT_EQ(Code(l), 0) << l.Report();
  EXPECT_TRUE(FilesEqual(out, in));
  Process i = Run("inspect", {"inspect", mig, "--offset", "4096"});
  EXPECT_EQ(Code(i), 0) << i.Report();
  // Without the offset the prefix is not a stream.
  Process bad = Run("recv0", {"recv", "file:" + mig, "--memory-file", P("x.ram")});
  EXPECT_NE(Code(bad), 0) << bad.Report();
  EXPECT_GT(Code(bad), 0) << bad.Report();
}

TEST_F(FileCliTest, UsageErrors) {
  Process a = Run("a", {"save", P("a.mig"), "--ram", "16M", "-c", "multifd=on"});
  EXPECT_EQ(Code(a), 2) << a.Report();
  EXPECT_NE(a.Stderr().find("mapped-ram"), std::string::npos) << a.Report();
  Process b = Run("b", {"save", P("b.mig"), "--ram", "16M", "-p", "direct-io=on"});
  EXPECT_EQ(Code(b), 2) << b.Report();
  Process c = Run("c", {"send", "tcp:127.0.0.1:1", "--ram", "16M", "-c", "mapped-ram=on"});
  EXPECT_EQ(Code(c), 2) << c.Report();
  Process d = Run("d", {"load", P("missing.mig")});
  EXPECT_GT(Code(d), 0) << d.Report();
}

// Damaged files: truncated anywhere, the wrong layout, garbage. Every load
// fails with a message, never a crash; inspect says INCOMPLETE.
class DamagedFileTest : public FileCliTest {
 protected:
  std::string ExpectLoadFails(const std::string& name, const std::string& file, std::vector<std::string> opts) {
    std::vector<std::string> args = {"load", file, "--memory-file", P(name + ".ram")};
    args.insert(args.end(), opts.begin(), opts.end());
    Process l = Run(name, args);
    EXPECT_GT(Code(l), 0) << l.Report();
    EXPECT_NE(l.Stderr().find("error"), std::string::npos) << l.Report();
    return l.Stderr();
  }
  void ExpectInspectIncomplete(const std::string& name, const std::string& file) {
    Process i = Run(name + "-inspect", {"inspect", file});
    EXPECT_EQ(Code(i), 1) << i.Report();
    EXPECT_NE(i.Stdout().find("INCOMPLETE"), std::string::npos) << i.Report();
  }
  static void Truncate(const std::string& from, const std::string& to, uint64_t size) {
    ASSERT_TRUE(CopyFile(from, to).ok());
    ASSERT_EQ(truncate(to.c_str(), static_cast<off_t>(size)), 0);
  }
};

TEST_F(DamagedFileTest, TruncatedAndSwappedLayouts) {
  for (bool mapped : {false, true}) {
    SCOPED_TRACE(mapped ? "mapped-ram" : "plain");
    std::vector<std::string> opts;
    if (mapped) opts = {"-c", "mapped-ram=on"};
    const std::string tag = mapped ? "m" : "p";
    const std::string mig = P(tag + ".mig");
    std::vector<std::string> save = {"save", mig, "--ram", "32M"};
    save.insert(save.end(), opts.begin(), opts.end());
    Process s = Run("save-" + tag, save);
    ASSERT_EQ(Code(s), 0) << s.Report();
    Result<uint64_t> size = FileSize(mig);
    ASSERT_TRUE(size.ok());
    for (uint64_t cut : {uint64_t{0}, uint64_t{6}, uint64_t{40}, uint64_t{100}, *size / 3, *size / 2, *size - 100,
                         *size - 1}) {
      SCOPED_TRACE("truncated at " + std::to_string(cut));
      const std::string t = P(tag + "-cut" + std::to_string(cut) + ".mig");
      Truncate(mig, t, cut);
      ExpectLoadFails(tag + "-cut" + std::to_string(cut), t, opts);
      ExpectInspectIncomplete(tag + "-cut" + std::to_string(cut), t);
    }
    // The other layout's options.
    std::vector<std::string> other;
    if (!mapped) other = {"-c", "mapped-ram=on"};
    // Either way the message names the layout.
    const std::string err = ExpectLoadFails(tag + "-swapped", mig, other);
    EXPECT_NE(err.find("mapped-ram"), std::string::npos) << err;
  }
}

TEST_F(DamagedFileTest, Garbage) {
  const std::string g = P("garbage.mig");
  std::string bytes(1 << 20, '\0');
  std::mt19937_64 rng(5);
  for (char& c : bytes) c = static_cast<char>(rng());
  ASSERT_TRUE(WriteStringToFile(g, bytes).ok());
  ExpectLoadFails("garbage", g, {});
  ExpectLoadFails("garbage-m", g, {"-c", "mapped-ram=on"});
  ExpectInspectIncomplete("garbage", g);
  // A valid header followed by garbage.
  const std::string h = P("header.mig");
  ASSERT_TRUE(WriteStringToFile(h, std::string("QEVM\0\0\0\3", 8) + bytes).ok());
  ExpectLoadFails("header", h, {});
  ExpectLoadFails("header-m", h, {"-c", "mapped-ram=on"});
  ExpectInspectIncomplete("header", h);
}

// Single corrupted bytes anywhere in the metadata: inspect and load end with
// an exit code (never a signal), whatever the byte.
TEST_F(DamagedFileTest, CorruptedBytes) {
  for (bool mapped : {false, true}) {
    SCOPED_TRACE(mapped ? "mapped-ram" : "plain");
    const std::string mig = P(mapped ? "cm.mig" : "cp.mig");
    std::vector<std::string> opts;
    if (mapped) opts = {"-c", "mapped-ram=on"};
    std::vector<std::string> save = {"save", mig, "--ram", "4M"};
    save.insert(save.end(), opts.begin(), opts.end());
    Process s = Run("csave", save);
    ASSERT_EQ(Code(s), 0) << s.Report();
    const std::string good = ReadFileOrEmpty(mig);
    ASSERT_FALSE(good.empty());
    std::mt19937_64 rng(mapped ? 11 : 12);
    for (int i = 0; i < 24; ++i) {
      std::string bad = good;
      // Mostly the header region and the tail (sections, verification, EOF).
      const uint64_t pos = i % 2 ? rng() % std::min<uint64_t>(good.size(), 160)
                                 : good.size() - 1 - rng() % std::min<uint64_t>(good.size(), 40000);
      bad[pos] = static_cast<char>(bad[pos] ^ (1 + rng() % 255));
      const std::string f = P("corrupt.mig");
      ASSERT_TRUE(WriteStringToFile(f, bad).ok());
      SCOPED_TRACE("byte " + std::to_string(pos));
      Process in = Run("cinspect", {"inspect", f});
      EXPECT_GE(Code(in), 0) << in.Report();
      EXPECT_LE(Code(in), 1) << in.Report();
      std::vector<std::string> load = {"load", f, "--memory-file", P("c.ram")};
      load.insert(load.end(), opts.begin(), opts.end());
      Process l = Run("cload", load);
      EXPECT_GE(Code(l), 0) << l.Report();
    }
  }
}

TEST_F(FileCliTest, DiskFull) {
  const std::string mnt = P("small");
  ASSERT_EQ(mkdir(mnt.c_str(), 0755), 0);
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64M") != 0) {
    GTEST_SKIP() << "cannot mount a 64M tmpfs at " << mnt << " (needs root / CAP_SYS_ADMIN): " << strerror(errno);
  }
  struct Unmount {
    std::string path;
    ~Unmount() { umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  for (bool mapped : {false, true}) {
    SCOPED_TRACE(mapped ? "mapped-ram" : "plain");
    const std::string mig = mnt + (mapped ? "/full-m.mig" : "/full.mig");
    std::vector<std::string> save = {"save", mig, "--ram", "256M", "--fill", "random=100", "--json"};
    if (mapped) save.insert(save.end(), {"-c", "mapped-ram=on"});
    Process s = Run(mapped ? "full-m" : "full", save);
    EXPECT_EQ(Code(s), 1) << s.Report();
    const std::string err = s.Stderr();
    EXPECT_TRUE(err.find("disk full") != std::string::npos || err.find("No space") != std::string::npos)
        << s.Report();
    Result<nlohmann::json> j = FerryJson(s);
    ASSERT_TRUE(j.ok()) << j.status().ToString();
    EXPECT_EQ((*j)["status"], "failed");
    std::vector<std::string> load = {"load", mig, "--memory-file", P("partial.ram")};
    if (mapped) load.insert(load.end(), {"-c", "mapped-ram=on"});
    Process l = Run(mapped ? "load-full-m" : "load-full", load);
    EXPECT_GT(Code(l), 0) << l.Report();
    Process i = Run(mapped ? "inspect-full-m" : "inspect-full", {"inspect", mig});
    EXPECT_EQ(Code(i), 1) << i.Report();
    EXPECT_NE(i.Stdout().find("INCOMPLETE"), std::string::npos) << i.Report();
    unlink(mig.c_str());
  }
}

TEST_F(FileCliTest, InspectJson) {
  const std::string mig = P("j.mig");
  Process s = Run("save", {"save", mig, "--ram", "16M", "-c", "mapped-ram=on"});
  ASSERT_EQ(Code(s), 0) << s.Report();
  Process i = Run("inspect", {"inspect", mig, "--json"});
  ASSERT_EQ(Code(i), 0) << i.Report();
  Result<nlohmann::json> j = FerryJson(i);
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_EQ((*j)["complete"], true);
  EXPECT_EQ((*j)["mapped-ram"], true);
  EXPECT_EQ((*j)["machine"], "ferry");
  EXPECT_EQ((*j)["verify"], true);
  ASSERT_EQ((*j)["blocks"].size(), 1u);
  EXPECT_EQ((*j)["blocks"][0]["size"], 16u << 20);
  EXPECT_GT((*j)["blocks"][0]["mapped-ram"]["pages-present"].get<uint64_t>(), 0u);
}

}  // namespace
}  // namespace ferry::test
