#include "tests/support/qemu.h"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <thread>
#include <utility>

namespace ferry::test {
namespace {

using nlohmann::json;
using std::chrono::seconds;

// True if some process has `pid` as its parent (scans /proc/*/stat).
bool HasChildren(pid_t pid) {
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || !std::isdigit(static_cast<unsigned char>(name[0]))) continue;
    const std::string stat = ReadFileOrEmpty(e.path().string() + "/stat");
    const size_t paren = stat.rfind(')');  // "pid (comm) state ppid ..."
    if (paren == std::string::npos) continue;
    char state = 0;
    long ppid = 0;
    if (std::sscanf(stat.c_str() + paren + 1, " %c %ld", &state, &ppid) == 2 && ppid == pid) {
      return true;
    }
  }
  return false;
}

}  // namespace

std::string FindQemu() {
  const char* env = std::getenv("FERRY_QEMU");
  return FindProgram(env != nullptr && *env != '\0' ? env : "qemu-system-x86_64");
}

void WaitForNoChildren(pid_t pid, Clock::duration timeout) {
  const auto deadline = Clock::now() + timeout;
  while (HasChildren(pid) && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

::testing::AssertionResult Qemu::Execute(std::string_view command, json arguments,
                                         Clock::duration timeout) {
  Result<json> r = qmp->Execute(command, std::move(arguments), timeout);
  if (r.ok()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << r.status().ToString() << "\n" << proc.Report();
}

std::string QemuTest::qemu_bin_;
std::string QemuTest::qemu_version_;
std::string QemuTest::pattern_;
QemuSuite QemuTest::suite_;
TempDir* QemuTest::suite_dir_ = nullptr;
Status QemuTest::pattern_status_;

void QemuTest::SetUpQemuSuite(QemuSuite suite) {
  suite_ = std::move(suite);
  qemu_bin_ = FindQemu();
  if (qemu_bin_.empty()) return;
  if (FILE* f = popen(("'" + qemu_bin_ + "' --version").c_str(), "r")) {
    char line[256] = {};
    if (fgets(line, sizeof(line), f)) {
      const std::string text(line);
      const size_t at = text.find("version ");
      if (at != std::string::npos) qemu_version_ = text.substr(at + 8, text.find_first_of(" \n", at + 8) - at - 8);
    }
    pclose(f);
  }
  suite_dir_ = new TempDir("ferry-" + suite_.name + "-suite");
  pattern_ = suite_dir_->Path("pattern.bin");
  pattern_status_ = WritePatternFile(pattern_, suite_.guest);
}

void QemuTest::TearDownTestSuite() {
  delete suite_dir_;
  suite_dir_ = nullptr;
}

void QemuTest::SetUp() {
  if (qemu_bin_.empty()) {
    GTEST_SKIP() << "qemu-system-x86_64 not found in PATH (install Debian's qemu-system-x86, or set "
                    "FERRY_QEMU); the "
                 << suite_.name << " suite needs a real QEMU";
  }
  ASSERT_TRUE(pattern_status_.ok()) << "writing the pattern file: " << pattern_status_.ToString();
  dir_ = std::make_unique<TempDir>("ferry-" + suite_.name);
}

void QemuTest::StartQemu(const std::string& name, const QemuOptions& o, Qemu* q) {
  const std::string sock = P("qmp-" + name + ".sock");
  std::vector<std::string> argv = {qemu_bin_, "-M", "none", "-m",
                                   std::to_string(suite_.guest.size >> 20) + "M", "-accel", "tcg",
                                   "-nodefaults", "-display", "none", "-S"};
  if (o.load_pattern) {
    argv.insert(argv.end(), {"-device", "loader,file=" + pattern_ + ",addr=0,force-raw=on"});
  }
  argv.insert(argv.end(), {"-qmp", "unix:" + sock + ",server=on,wait=off"});
  if (!o.incoming.empty()) argv.insert(argv.end(), {"-incoming", o.incoming});
  argv.insert(argv.end(), o.extra_args.begin(), o.extra_args.end());
  SpawnOptions so;
  so.stdout_path = P("qemu-" + name + ".out");
  so.stderr_path = P("qemu-" + name + ".err");
  Result<Process> p = Process::Spawn(std::move(argv), std::move(so));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  q->proc = std::move(*p);
  Result<std::unique_ptr<QmpClient>> c = QmpClient::Connect(sock, seconds(30), &q->proc);
  ASSERT_TRUE(c.ok()) << "QEMU '" << name << "': " << c.status().ToString();
  q->qmp = std::move(*c);

  if (!o.capabilities.empty()) {
    json caps = json::array();
    for (const std::string& cap : o.capabilities) caps.push_back({{"capability", cap}, {"state", true}});
    ASSERT_TRUE(q->Execute("migrate-set-capabilities", {{"capabilities", caps}}));
  }
  ASSERT_TRUE(q->Execute("migrate-set-parameters", o.parameters));
}

::testing::AssertionResult QemuTest::MigrationEnds(Qemu& q, const std::string& want,
                                                   const Process* peer) {
  Result<json> info = q.qmp->WaitForMigration(suite_.migration_timeout);
  const std::string reports = q.proc.Report() + (peer ? peer->Report() : std::string());
  if (!info.ok()) return ::testing::AssertionFailure() << info.status().ToString() << "\n" << reports;
  const json status = info->value("status", json());
  if (status == want) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "QEMU's migration status is " << status.dump() << ", not \""
                                       << want << "\"\nquery-migrate: " << info->dump(2) << "\n"
                                       << reports;
}

void QemuTest::MigrateToFile(Qemu& src, const std::string& stream) {
  ASSERT_TRUE(src.Migrate("exec:cat > " + stream));
  ASSERT_TRUE(MigrationEnds(src, "completed"));
  WaitForNoChildren(src.proc.pid(), seconds(10));
}

::testing::AssertionResult QemuTest::Pmemsave(Qemu& q, const std::string& file) {
  return q.Execute("pmemsave", {{"val", 0}, {"size", suite_.guest.size}, {"filename", file}},
                   seconds(120));
}

void QemuTest::ExpectGuestMemoryIsPattern(Qemu& q, const std::string& dump, const Process* peer) {
  ASSERT_TRUE(Pmemsave(q, dump));
  EXPECT_TRUE(FilesEqual(dump, pattern_)) << (peer ? peer->Report() : std::string()) << q.proc.Report();
}

}  // namespace ferry::test
