// `ferry save` / `ferry load` against QEMU 7.2 with plain stream files:
// QEMU migrates into "exec:cat > F" and ferry loads F; ferry saves F and QEMU
// starts with -incoming "exec:cat F". Guest memory compared byte for byte
// with a pattern (QEMU -M none -m 256M, loaded with the generic loader, read
// back with pmemsave).
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <dirent.h>
#include <memory>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/support/ferry_cli.h"
#include "tests/support/process.h"
#include "tests/support/qmp.h"

namespace ferry::test {
namespace {

using nlohmann::json;
using std::chrono::seconds;

constexpr uint64_t kRam = 256ULL << 20;
constexpr auto kTimeout = seconds(180);

// Does any process have `parent` as its parent?
bool AnyChildOf(pid_t parent) {
  DIR* d = opendir("/proc");
  if (!d) return false;
  bool found = false;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    const std::string stat = ReadFileOrEmpty(std::string("/proc/") + e->d_name + "/stat");
    const size_t close = stat.rfind(')');
    if (close == std::string::npos) continue;
    char state = 0;
    long ppid = 0;
    if (std::sscanf(stat.c_str() + close + 1, " %c %ld", &state, &ppid) == 2 && ppid == parent) {
      found = true;
      break;
    }
  }
  closedir(d);
  return found;
}

class FileInteropTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const char* env = std::getenv("FERRY_QEMU");
    qemu_ = FindProgram(env != nullptr && *env != '\0' ? env : "qemu-system-x86_64");
    if (qemu_.empty()) GTEST_SKIP() << "qemu-system-x86_64 not found (set FERRY_QEMU); this suite needs QEMU";
    setenv("TMPDIR", "/var/tmp", 1);
    dir_ = std::make_unique<TempDir>("ferry-file-interop");
    pattern_ = P("pattern.bin");
    spec_ = {.size = kRam, .seed = 0xf11e, .random_pct = 50, .zero_pct = 25, .text_pct = 25};
    ASSERT_TRUE(WritePatternFile(pattern_, spec_).ok());
  }
  std::string P(const std::string& n) const { return dir_->Path(n); }

  void StartQemu(const std::string& name, bool load_pattern, const std::string& incoming) {
    const std::string sock = P("qmp-" + name + ".sock");
    std::vector<std::string> argv = {qemu_, "-M", "none", "-m", "256M", "-accel", "tcg", "-nodefaults",
                                     "-display", "none", "-S", "-qmp", "unix:" + sock + ",server=on,wait=off"};
    if (load_pattern) argv.insert(argv.end(), {"-device", "loader,file=" + pattern_ + ",addr=0,force-raw=on"});
    if (!incoming.empty()) argv.insert(argv.end(), {"-incoming", incoming});
    SpawnOptions so{.stdout_path = P("qemu-" + name + ".out"), .stderr_path = P("qemu-" + name + ".err")};
    Result<Process> p = Process::Spawn(std::move(argv), std::move(so));
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    qemu_proc_ = std::move(*p);
    Result<std::unique_ptr<QmpClient>> c = QmpClient::Connect(sock, seconds(30), &qemu_proc_);
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    qmp_ = std::move(*c);
    Result<json> r = qmp_->Execute("migrate-set-parameters", {{"max-bandwidth", 10ULL << 30}});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
  }
  void ExpectCompleted() {
    Result<json> info = qmp_->WaitForMigration(kTimeout);
    ASSERT_TRUE(info.ok()) << info.status().ToString() << "\n" << qemu_proc_.Report();
    ASSERT_EQ((*info)["status"], "completed") << info->dump(2) << "\n" << qemu_proc_.Report();
  }

  std::string qemu_;
  std::unique_ptr<TempDir> dir_;
  std::string pattern_;
  PatternSpec spec_;
  Process qemu_proc_;
  std::unique_ptr<QmpClient> qmp_;
};

TEST_F(FileInteropTest, QemuSavesFerryLoads) {
  ASSERT_NO_FATAL_FAILURE(StartQemu("src", true, ""));
  const std::string stream = P("qemu.mig");
  Result<json> r = qmp_->Execute("migrate", {{"uri", "exec:cat > " + stream}});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_NO_FATAL_FAILURE(ExpectCompleted());
  const auto deadline = Clock::now() + seconds(10);
  while (AnyChildOf(qemu_proc_.pid()) && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const std::string out = P("out.ram");
  Result<Process> load =
      StartFerry(*dir_, "load", {"load", stream, "--qemu-compat", "none", "--memory-file", out, "--json"});
  ASSERT_TRUE(load.ok()) << load.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*load, 0, kTimeout));
  Result<json> j = FerryJson(*load);
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_EQ((*j)["status"], "completed");
  EXPECT_TRUE(FilesEqual(out, pattern_)) << load->Report();
  // ferry inspect walks QEMU's file too (timer/globalstate sections, CONTINUE across sections).
  Result<Process> inspect = StartFerry(*dir_, "inspect", {"inspect", stream});
  ASSERT_TRUE(inspect.ok());
  EXPECT_TRUE(ExitsWithCode(*inspect, 0, seconds(60)));
  EXPECT_NE(inspect->Stdout().find("configuration: machine 'none'"), std::string::npos) << inspect->Report();
}

TEST_F(FileInteropTest, FerrySavesQemuLoads) {
  const std::string copy = P("pattern-copy.bin"), stream = P("ferry.mig");
  ASSERT_TRUE(CopyFile(pattern_, copy).ok());
  Result<Process> save =
      StartFerry(*dir_, "save", {"save", stream, "--qemu-compat", "none", "--memory-file", copy, "--json"});
  ASSERT_TRUE(save.ok()) << save.status().ToString();
  ASSERT_TRUE(ExitsWithCode(*save, 0, kTimeout));
  // ferry's own walker agrees the file is complete.
  Result<Process> inspect = StartFerry(*dir_, "inspect", {"inspect", stream});
  ASSERT_TRUE(inspect.ok());
  EXPECT_TRUE(ExitsWithCode(*inspect, 0, seconds(60)));

  ASSERT_NO_FATAL_FAILURE(StartQemu("dst", false, "exec:cat " + stream));
  ASSERT_NO_FATAL_FAILURE(ExpectCompleted());
  const std::string dump = P("dump.bin");
  Result<json> r = qmp_->Execute("pmemsave", {{"val", 0}, {"size", kRam}, {"filename", dump}}, seconds(120));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(FilesEqual(dump, pattern_)) << save->Report() << qemu_proc_.Report();
  EXPECT_TRUE(FilesEqual(copy, pattern_)) << "ferry save modified its --memory-file";
}

}  // namespace
}  // namespace ferry::test
