#include "tests/support/qemu.h"

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <regex>
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

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::string(v) : std::string();
}

}  // namespace

std::string FindQemu() {
  const std::string env = Env("FERRY_QEMU");
  return FindProgram(env.empty() ? "qemu-system-x86_64" : env);
}

std::string QemuVersion::ToString() const {
  return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(micro);
}

std::vector<std::string> QemuInstall::Command() const {
  std::vector<std::string> argv = {bin};
  if (!datadir.empty()) argv.insert(argv.end(), {"-L", datadir});
  return argv;
}

QemuInstall LocateQemu() {
  QemuInstall q;
  q.requested = Env("FERRY_QEMU");
  if (q.requested.empty()) q.requested = "qemu-system-x86_64";
  q.datadir = Env("FERRY_QEMU_DATADIR");
  q.bin = FindQemu();
  if (q.bin.empty()) {
    q.status = Status::Unsupported("QEMU '" + q.requested + "' " +
                               (q.requested.find('/') != std::string::npos ? "does not exist or is not executable"
                                                                           : "is not in PATH"));
    return q;
  }
  if (!q.datadir.empty() && !std::filesystem::is_directory(q.datadir)) {
    q.status = Status::Unsupported("FERRY_QEMU_DATADIR '" + q.datadir + "' is not a directory");
    return q;
  }
  TempDir dir("ferry-qemu-version");
  std::vector<std::string> argv = q.Command();
  argv.push_back("--version");
  Result<ExitStatus> st = RunToCompletion(
      argv, {.stdout_path = dir.Path("version.out"), .stderr_path = dir.Path("version.err")}, seconds(30));
  const std::string out = ReadFileOrEmpty(dir.Path("version.out"));
  const std::string cmd = q.bin + (q.datadir.empty() ? "" : " -L " + q.datadir) + " --version";
  if (!st.ok() || !st->success()) {
    q.status = Status::Unsupported("'" + cmd + "' failed (" + (st.ok() ? st->ToString() : st.status().ToString()) +
                                "): " + out + ReadFileOrEmpty(dir.Path("version.err")));
    return q;
  }
  std::smatch m;
  if (!std::regex_search(out, m, std::regex(R"(version (\d+)\.(\d+)(?:\.(\d+))?)"))) {
    q.status = Status::Unsupported("'" + cmd + "' printed no version: " + out);
    return q;
  }
  q.version.major = std::stoi(m[1]);
  q.version.minor = std::stoi(m[2]);
  q.version.micro = m[3].matched ? std::stoi(m[3]) : 0;
  q.version.line = out.substr(0, out.find('\n'));
  return q;
}

bool AllowSkip() {
  const std::string v = Env("FERRY_ALLOW_SKIP");
  return !v.empty() && v != "0";
}

bool RequireQemu(const QemuInstall& qemu, std::string_view who) {
  if (qemu.ok()) return true;
  const bool is_default = Env("FERRY_QEMU").empty();
  std::string how =
      is_default
          ? "Debian's qemu-system-x86 (QEMU 7.2) provides it: `bash .ci/deps` installs it, or set FERRY_QEMU to "
            "another qemu-system-x86_64"
          : "FERRY_QEMU='" + qemu.requested + "'" +
                (qemu.datadir.empty() ? std::string() : " FERRY_QEMU_DATADIR='" + qemu.datadir + "'") +
                ": the qemu10.0/ tests use the QEMU 10.0 that `bash .ci/deps` unpacks into "
                "/var/cache/ferry/qemu-10.0/root (CMake cache variable FERRY_QEMU10_ROOT), the qemu7.2/ tests "
                "Debian's qemu-system-x86 (FERRY_QEMU72)";
  const std::string msg = "the " + std::string(who) + " tests need a real QEMU: " + qemu.status.message() +
                          ".\n" + how + ".\nSet FERRY_ALLOW_SKIP=1 to skip these tests instead.";
  // (GTEST_SKIP and FAIL return from the function they are in: the lambdas.)
  if (AllowSkip()) {
    [&] { GTEST_SKIP() << msg; }();
  } else {
    [&] { FAIL() << msg; }();  // fatal: a SetUp that calls this keeps the test body from running
  }
  return false;
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

QemuInstall QemuTest::qemu_;
std::string QemuTest::pattern_;
QemuSuite QemuTest::suite_;
TempDir* QemuTest::suite_dir_ = nullptr;
Status QemuTest::pattern_status_;

void QemuTest::SetUpQemuSuite(QemuSuite suite) {
  suite_ = std::move(suite);
  qemu_ = LocateQemu();
  if (!qemu_.ok()) return;
  std::printf("[ QEMU     ] %s suite: %s (%s%s)\n", suite_.name.c_str(), qemu_.version.line.c_str(),
              qemu_.bin.c_str(), qemu_.datadir.empty() ? "" : (" -L " + qemu_.datadir).c_str());
  if (suite_.guest.size == 0 || suite_.guest.size % 8192 != 0) {
    pattern_status_ = Status::InvalidArgument("the guest's size (" + std::to_string(suite_.guest.size) +
                                              " bytes) must be a non-zero multiple of 8 KiB: QEMU rounds -m up");
    return;
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
  if (!RequireQemu(qemu_, suite_.name)) return;
  ASSERT_TRUE(pattern_status_.ok()) << "writing the pattern file: " << pattern_status_.ToString();
  RecordProperty("qemu", qemu_.version.ToString());
  dir_ = std::make_unique<TempDir>("ferry-" + suite_.name);
}

void QemuTest::StartQemu(const std::string& name, const QemuOptions& o, Qemu* q) {
  const std::string sock = P("qmp-" + name + ".sock");
  const uint64_t size = suite_.guest.size;
  const std::string mem = size % (1 << 20) == 0 ? std::to_string(size >> 20) + "M" : std::to_string(size >> 10) + "K";
  std::vector<std::string> argv = qemu_.Command();
  argv.insert(argv.end(), {"-M", "none", "-m", mem, "-accel", "tcg", "-nodefaults", "-display", "none", "-S"});
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
