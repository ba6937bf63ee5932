#include "tests/support/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>

#include "core/unique_fd.h"

extern char** environ;

namespace ferry::test {
namespace {

constexpr uint64_t kPage = 4096;

std::string Quote(const std::string& s) {
  if (!s.empty() && s.find_first_of(" \t\n'\"\\$`*?;&|<>()") == std::string::npos) return s;
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string Tail(const std::string& text, size_t max_bytes) {
  if (text.size() <= max_bytes) return text;
  return "[... " + std::to_string(text.size() - max_bytes) + " bytes cut ...]\n" +
         text.substr(text.size() - max_bytes);
}

bool LooksLikeText(const std::string& s) {
  size_t odd = 0;
  for (unsigned char c : s) {
    if (c == 0 || (c < 0x20 && c != '\n' && c != '\r' && c != '\t')) ++odd;
  }
  return odd == 0;
}

std::string Trim(std::string s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

// Reads up to n bytes at off; returns the count (short only at end of file)
// or -1 with errno set.
ssize_t PreadFull(int fd, void* buf, size_t n, uint64_t off) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, static_cast<char*>(buf) + done, n - done,
                        static_cast<off_t>(off + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(done);
}

Status WriteFull(int fd, const void* buf, size_t n, const std::string& what) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = ::write(fd, static_cast<const char*>(buf) + done, n - done);
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write " + what);
    }
    done += static_cast<size_t>(r);
  }
  return Status::Ok();
}

}  // namespace

// ---- ExitStatus / Process ------------------------------------------------------

std::string ExitStatus::ToString() const {
  if (exited) return "exit code " + std::to_string(code);
  if (signal != 0) {
    const char* name = strsignal(signal);
    return "killed by signal " + std::to_string(signal) + " (" + (name ? name : "?") + ")";
  }
  return "unknown exit status";
}

Process::~Process() { Kill(); }

Process::Process(Process&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)),
      status_(std::move(o.status_)),
      argv_(std::move(o.argv_)),
      options_(std::move(o.options_)) {}

Process& Process::operator=(Process&& o) noexcept {
  if (this != &o) {
    Kill();
    pid_ = std::exchange(o.pid_, -1);
    status_ = std::move(o.status_);
    argv_ = std::move(o.argv_);
    options_ = std::move(o.options_);
  }
  return *this;
}

Result<Process> Process::Spawn(std::vector<std::string> argv, SpawnOptions options) {
  if (argv.empty()) return Status::InvalidArgument("Process::Spawn: empty argv");
  std::string exe = argv[0].find('/') != std::string::npos ? argv[0] : FindProgram(argv[0]);
  if (exe.empty()) return Status::InvalidArgument("program not found in PATH: " + argv[0]);

  // Redirections are opened here, where errors can be reported properly.
  const std::string in_path = options.stdin_path.empty() ? "/dev/null" : options.stdin_path;
  UniqueFd in(::open(in_path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!in.valid()) return ErrnoStatus("open " + in_path + " for a child's stdin");
  UniqueFd out, err;
  if (!options.stdout_path.empty()) {
    out.Reset(::open(options.stdout_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!out.valid()) return ErrnoStatus("open " + options.stdout_path + " for a child's stdout");
  }
  if (!options.stderr_path.empty()) {
    err.Reset(::open(options.stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (!err.valid()) return ErrnoStatus("open " + options.stderr_path + " for a child's stderr");
  }

  // Everything the child needs is prepared before fork: after it, the child
  // only makes async-signal-safe calls.
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  std::vector<std::string> env;
  for (char** e = environ; e && *e; ++e) env.emplace_back(*e);
  for (const auto& e : options.extra_env) env.push_back(e);
  std::vector<char*> cenv;
  for (auto& e : env) cenv.push_back(e.data());
  cenv.push_back(nullptr);

  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) return ErrnoStatus("pipe2");
  UniqueFd report_r(pipefd[0]), report_w(pipefd[1]);

  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) return ErrnoStatus("fork");
  if (pid == 0) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the test died already
    struct sigaction sa;
    std::memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    for (int s = 1; s < NSIG; ++s) ::sigaction(s, &sa, nullptr);  // SIGKILL/SIGSTOP just fail
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (::dup2(in.get(), 0) < 0) ::_exit(127);
    if (out.valid() && ::dup2(out.get(), 1) < 0) ::_exit(127);
    if (err.valid() && ::dup2(err.get(), 2) < 0) ::_exit(127);
    // Descriptors the test left without O_CLOEXEC must not leak into the child.
    ::close_range(3, ~0U, CLOSE_RANGE_CLOEXEC);
    ::execve(exe.c_str(), cargv.data(), cenv.data());
    int e = errno;
    ssize_t ignored = ::write(report_w.get(), &e, sizeof(e));
    (void)ignored;
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // also from here, so it holds before we return
  report_w.Reset();
  int child_errno = 0;
  ssize_t n;
  do {
    n = ::read(report_r.get(), &child_errno, sizeof(child_errno));
  } while (n < 0 && errno == EINTR);

  Process p;
  p.pid_ = pid;
  p.argv_ = std::move(argv);
  p.options_ = std::move(options);
  if (n == static_cast<ssize_t>(sizeof(child_errno))) {
    p.Kill();  // reaps the failed child
    return ErrnoStatus("execute " + exe, child_errno);
  }
  return p;
}

void Process::Reap(int wstatus) {
  ExitStatus s;
  if (WIFEXITED(wstatus)) {
    s.exited = true;
    s.code = WEXITSTATUS(wstatus);
  } else if (WIFSIGNALED(wstatus)) {
    s.signal = WTERMSIG(wstatus);
  }
  status_ = s;
}

bool Process::Running() {
  if (pid_ <= 0 || status_) return false;
  int ws = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &ws, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return true;
  if (r == pid_) {
    Reap(ws);
  } else {
    status_ = ExitStatus{};  // ECHILD: someone else reaped it
  }
  return false;
}

Result<ExitStatus> Process::Wait(Clock::duration timeout) {
  if (pid_ <= 0) return Status::InvalidArgument("Wait on a process that was never started");
  const auto deadline = Clock::now() + timeout;
  auto nap = std::chrono::microseconds(500);
  while (Running()) {
    const auto now = Clock::now();
    if (now >= deadline) {
      return Status::Timeout(
          "still running after " +
          std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count()) +
          " ms: " + CommandLine());
    }
    std::this_thread::sleep_for(std::min<Clock::duration>(nap, deadline - now));
    nap = std::min<std::chrono::microseconds>(nap * 2, std::chrono::milliseconds(20));
  }
  return *status_;
}

Status Process::Signal(int sig) {
  if (!Running()) return Status::Ok();
  if (::kill(pid_, sig) != 0) return ErrnoStatus("kill " + std::to_string(pid_));
  return Status::Ok();
}

void Process::Kill() {
  if (pid_ <= 0 || status_) return;
  ::kill(-pid_, SIGKILL);
  ::kill(pid_, SIGKILL);
  int ws = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &ws, 0);
  } while (r < 0 && errno == EINTR);
  if (r == pid_) {
    Reap(ws);
  } else {
    status_ = ExitStatus{};
  }
}

std::string Process::CommandLine() const {
  std::string s;
  for (const auto& a : argv_) {
    if (!s.empty()) s += ' ';
    s += Quote(a);
  }
  if (!options_.stdin_path.empty()) s += " < " + Quote(options_.stdin_path);
  if (!options_.stdout_path.empty()) s += " > " + Quote(options_.stdout_path);
  if (!options_.stderr_path.empty()) s += " 2> " + Quote(options_.stderr_path);
  return s;
}

std::string Process::Stdout() const {
  return options_.stdout_path.empty() ? std::string() : ReadFileOrEmpty(options_.stdout_path);
}

std::string Process::Stderr() const {
  return options_.stderr_path.empty() ? std::string() : ReadFileOrEmpty(options_.stderr_path);
}

std::string Process::Report(size_t max_bytes) const {
  std::string r = "$ " + CommandLine() + "\n  pid " + std::to_string(pid_) + ": ";
  if (pid_ <= 0) {
    r += "never started";
  } else if (status_) {
    r += status_->ToString();
  } else {
    r += "still running";
  }
  r += "\n";
  if (!options_.stderr_path.empty()) {
    std::string err = Stderr();
    r += "  --- stderr (" + std::to_string(err.size()) + " bytes) ---\n" + Tail(err, max_bytes);
    if (!err.empty() && err.back() != '\n') r += '\n';
    r += "  --- end of stderr ---\n";
  }
  if (!options_.stdout_path.empty()) {
    std::string out = Stdout();
    if (LooksLikeText(out)) {
      r += "  --- stdout (" + std::to_string(out.size()) + " bytes) ---\n" + Tail(out, max_bytes);
      if (!out.empty() && out.back() != '\n') r += '\n';
      r += "  --- end of stdout ---\n";
    } else {
      r += "  (stdout: " + std::to_string(out.size()) + " bytes of binary data)\n";
    }
  }
  return r;
}

Result<ExitStatus> RunToCompletion(std::vector<std::string> argv, SpawnOptions options,
                                   Clock::duration timeout) {
  FERRY_ASSIGN_OR_RETURN(Process p, Process::Spawn(std::move(argv), std::move(options)));
  Result<ExitStatus> st = p.Wait(timeout);
  if (!st.ok()) {
    p.Kill();
    return Status::Timeout(st.status().message() + "\n" + p.Report());
  }
  return st;
}

// ---- Files -------------------------------------------------------------------------

TempDir::TempDir(std::string_view prefix) {
  std::string base = "/tmp";
  if (const char* t = std::getenv("TMPDIR"); t != nullptr && *t != '\0' && std::strlen(t) < 48) {
    base = t;
  }
  std::string tmpl = base + "/" + std::string(prefix) + "-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    throw std::runtime_error("mkdtemp " + tmpl + ": " + std::strerror(errno));
  }
  path_ = tmpl;
}

TempDir::~TempDir() {
  if (const char* keep = std::getenv("FERRY_KEEP_TMP"); keep != nullptr && std::strcmp(keep, "1") == 0) {
    std::fprintf(stderr, "FERRY_KEEP_TMP=1: keeping %s\n", path_.c_str());
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string TempDir::Path(std::string_view name) const { return path_ + "/" + std::string(name); }

std::string ReadFileOrEmpty(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return "";
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

Status WriteStringToFile(const std::string& path, std::string_view content) {
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoStatus("open " + path);
  return WriteFull(fd.get(), content.data(), content.size(), path);
}

Result<uint64_t> FileSize(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus("stat " + path);
  return static_cast<uint64_t>(st.st_size);
}

Status CopyFile(const std::string& from, const std::string& to) {
  std::error_code ec;
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) return Status::Io("copy " + from + " to " + to + ": " + ec.message(), ec.value());
  return Status::Ok();
}

Status WaitForNonEmptyFile(const std::string& path, Clock::duration timeout, Process* watch) {
  const auto deadline = Clock::now() + timeout;
  auto present = [&] {
    struct stat st;
    return ::stat(path.c_str(), &st) == 0 && st.st_size > 0;
  };
  for (;;) {
    if (present()) return Status::Ok();
    if (watch != nullptr && !watch->Running()) {
      // One last look: it may have written the file and then exited.
      if (present()) return Status::Ok();
      return Status::Closed("the process ended before " + path + " appeared:\n" + watch->Report());
    }
    if (Clock::now() >= deadline) {
      std::string msg = path + " did not appear in time";
      if (watch != nullptr) msg += ":\n" + watch->Report();
      return Status::Timeout(msg);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

Result<std::string> WaitForFile(const std::string& path, Clock::duration timeout, Process* watch) {
  FERRY_RETURN_IF_ERROR(WaitForNonEmptyFile(path, timeout, watch));
  return Trim(ReadFileOrEmpty(path));
}

std::string FindProgram(std::string_view name) {
  if (name.find('/') != std::string_view::npos) {
    return ::access(std::string(name).c_str(), X_OK) == 0 ? std::string(name) : std::string();
  }
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
  size_t start = 0;
  while (start <= dirs.size()) {
    size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::string dir = dirs.substr(start, end - start);
    if (dir.empty()) dir = ".";
    std::string candidate = dir + "/" + std::string(name);
    struct stat st;
    if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
        ::access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    start = end + 1;
  }
  return "";
}

Result<uint16_t> PickUnusedTcpPort() {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    return ErrnoStatus("bind 127.0.0.1:0");
  }
  socklen_t len = sizeof(addr);
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return ErrnoStatus("getsockname");
  }
  return static_cast<uint16_t>(ntohs(addr.sin_port));
}

// ---- Pattern ---------------------------------------------------------------------------

namespace {

uint64_t Mix64(uint64_t x) {
  x ^= x >> 31;
  x *= 0x7fb5d329728ea185ULL;
  x ^= x >> 27;
  x *= 0x81dadef4bc2d9d45ULL;
  x ^= x >> 33;
  return x;
}

uint64_t Hash2(uint64_t a, uint64_t b) { return Mix64(a * 0xd1342543de82ef95ULL ^ Mix64(b + 0x632be59bd9b4e019ULL)); }

enum class PageKind { kRandom, kZero, kText };

PageKind KindFor(const PatternSpec& s, uint64_t h) {
  const unsigned r = static_cast<unsigned>(h % 100);
  if (r < s.random_pct) return PageKind::kRandom;
  if (r < s.random_pct + s.zero_pct) return PageKind::kZero;
  return PageKind::kText;
}

PageKind PageKindAt(const PatternSpec& s, uint64_t page) {
  // A quarter of the 2 MiB runs are one kind throughout (long zero runs,
  // long random runs); the rest mix kinds every 64 KiB.
  const uint64_t run = Hash2(s.seed ^ 0x2b1d, page / 512);
  if ((run >> 40) % 4 == 0) return KindFor(s, run);
  return KindFor(s, Hash2(s.seed ^ 0x64c0, page / 16));
}

void FillRandom(uint64_t state, uint8_t* out, size_t len) {
  for (size_t i = 0; i < len; i += 8) {
    state += 0x9e3779b97f4a7c15ULL;
    uint64_t v = Mix64(state);
    std::memcpy(out + i, &v, std::min<size_t>(8, len - i));
  }
}

constexpr const char* kWords[] = {"alpha", "bravo",  "charlie", "delta",  "echo",   "foxtrot",
                                  "golf",  "hotel",  "india",   "juliet", "kilo",   "lima",
                                  "mike",  "kernel", "page",    "dirty",  "bitmap", "ferry"};

void FillText(const PatternSpec& s, uint64_t page, uint8_t* out) {
  char buf[kPage + 256];
  size_t used = 0;
  uint64_t h = Hash2(s.seed ^ 0x7e47, page);
  for (unsigned line = 0; used < kPage; ++line) {
    h = Mix64(h + line);
    const char* w1 = kWords[h % std::size(kWords)];
    const char* w2 = kWords[(h >> 16) % std::size(kWords)];
    const char* w3 = kWords[(h >> 32) % std::size(kWords)];
    int n = std::snprintf(buf + used, sizeof(buf) - used,
                          "ferry pattern seed=%" PRIu64 " page=%09" PRIu64 " line=%02u: %s %s %s %" PRIu64 "\n",
                          s.seed, page, line, w1, w2, w3, (h >> 48));
    if (n <= 0) break;
    used += static_cast<size_t>(n);
  }
  std::memcpy(out, buf, kPage);
}

void GeneratePage(const PatternSpec& s, uint64_t page, uint8_t* out) {
  switch (PageKindAt(s, page)) {
    case PageKind::kZero:
      std::memset(out, 0, kPage);
      return;
    case PageKind::kText: {
      FillText(s, page, out);
      // A quarter of the text pages are part zero: text then zeros (a page
      // mostly unused), or zeros then text (the first bytes are zero, the page
      // is not).
      const uint64_t h = Hash2(s.seed ^ 0x7e58, page);
      const size_t cut = 1 + static_cast<size_t>((h >> 8) % (kPage - 1));
      if (h % 8 == 0) std::memset(out + cut, 0, kPage - cut);
      if (h % 8 == 1) std::memset(out, 0, cut);
      return;
    }
    case PageKind::kRandom: {
      const uint64_t h = Hash2(s.seed ^ 0x4a4d, page);
      switch ((h >> 56) % 64) {
        case 0:  // zero but for one byte
          std::memset(out, 0, kPage);
          out[(h >> 8) % kPage] = static_cast<uint8_t>(1 + (h >> 24) % 255);
          return;
        case 1:  // random first half, zero second half
          FillRandom(h, out, kPage / 2);
          std::memset(out + kPage / 2, 0, kPage / 2);
          return;
        case 2:  // one non-zero byte value throughout
          std::memset(out, 0xff, kPage);
          return;
        default:
          FillRandom(h, out, kPage);
          return;
      }
    }
  }
}

}  // namespace

void GeneratePattern(const PatternSpec& spec, uint64_t offset, uint8_t* out, size_t len) {
  uint8_t tmp[kPage];
  while (len > 0) {
    const uint64_t page = offset / kPage;
    const size_t in_page = static_cast<size_t>(offset % kPage);
    const size_t n = std::min<size_t>(len, kPage - in_page);
    if (in_page == 0 && n == kPage) {
      GeneratePage(spec, page, out);
    } else {
      GeneratePage(spec, page, tmp);
      std::memcpy(out, tmp + in_page, n);
    }
    out += n;
    offset += n;
    len -= n;
  }
}

Status WritePatternFile(const std::string& path, const PatternSpec& spec) {
  if (spec.random_pct + spec.zero_pct + spec.text_pct != 100) {
    return Status::InvalidArgument("PatternSpec percentages must add up to 100");
  }
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoStatus("open " + path);
  constexpr size_t kChunk = 4 << 20;
  std::unique_ptr<uint8_t[]> buf(new uint8_t[kChunk]);
  for (uint64_t off = 0; off < spec.size; off += kChunk) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, spec.size - off));
    GeneratePattern(spec, off, buf.get(), n);
    FERRY_RETURN_IF_ERROR(WriteFull(fd.get(), buf.get(), n, path));
  }
  if (::fsync(fd.get()) != 0 && errno != EINVAL) return ErrnoStatus("fsync " + path);
  return Status::Ok();
}

// ---- Comparison ------------------------------------------------------------------------

namespace {

// Produces `n` expected bytes at `rel` (relative to the compared range).
using ExpectedFn = std::function<Status(uint64_t rel, uint8_t* buf, size_t n)>;

std::string Hex16(const uint8_t* p, size_t avail) {
  std::string s;
  char b[4];
  for (size_t i = 0; i < std::min<size_t>(16, avail); ++i) {
    std::snprintf(b, sizeof(b), "%02x", p[i]);
    if (i) s += ' ';
    s += b;
  }
  return s;
}

std::string OffsetText(uint64_t off) {
  char b[96];
  std::snprintf(b, sizeof(b), "%" PRIu64 " (0x%" PRIx64 ", page %" PRIu64 ")", off, off, off / kPage);
  return b;
}

bool AllZero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

::testing::AssertionResult CompareRange(const std::string& actual, uint64_t actual_offset,
                                        uint64_t len, const std::string& expected_desc,
                                        uint64_t expected_offset, const ExpectedFn& expected) {
  UniqueFd fd(::open(actual.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) {
    return ::testing::AssertionFailure() << "cannot open " << actual << ": " << std::strerror(errno);
  }
  constexpr size_t kChunk = 4 << 20;
  std::unique_ptr<uint8_t[]> a(new uint8_t[kChunk]), e(new uint8_t[kChunk]);

  bool have_first = false;
  std::string first;
  uint64_t pages_differing = 0, zero_in_actual = 0;
  std::vector<uint64_t> first_pages;

  for (uint64_t rel = 0; rel < len; rel += kChunk) {
    const size_t n = static_cast<size_t>(std::min<uint64_t>(kChunk, len - rel));
    ssize_t got = PreadFull(fd.get(), a.get(), n, actual_offset + rel);
    if (got < 0) {
      return ::testing::AssertionFailure() << "read " << actual << ": " << std::strerror(errno);
    }
    if (static_cast<size_t>(got) < n) {
      return ::testing::AssertionFailure()
             << actual << " ends at " << (actual_offset + rel + static_cast<uint64_t>(got))
             << " bytes, before the end of the compared range (" << (actual_offset + len) << ")";
    }
    if (Status st = expected(rel, e.get(), n); !st.ok()) {
      return ::testing::AssertionFailure() << "expected data (" << expected_desc << "): " << st.ToString();
    }
    if (std::memcmp(a.get(), e.get(), n) == 0) continue;
    // Walk page by page (pages of the actual file) to count and locate.
    size_t pos = 0;
    while (pos < n) {
      const uint64_t abs = actual_offset + rel + pos;
      const size_t seg = static_cast<size_t>(std::min<uint64_t>(n - pos, kPage - abs % kPage));
      if (std::memcmp(a.get() + pos, e.get() + pos, seg) != 0) {
        ++pages_differing;
        if (AllZero(a.get() + pos, seg)) ++zero_in_actual;
        if (first_pages.size() < 8) first_pages.push_back(abs / kPage);
        if (!have_first) {
          size_t i = 0;
          while (a[pos + i] == e[pos + i]) ++i;
          const size_t at = pos + i;
          const uint64_t rel_at = rel + at;
          first = "first difference at " + actual + " offset " + OffsetText(actual_offset + rel_at) +
                  ", " + expected_desc + " offset " + OffsetText(expected_offset + rel_at) +
                  "\n  actual:   " + Hex16(a.get() + at, n - at) +
                  "\n  expected: " + Hex16(e.get() + at, n - at);
          have_first = true;
        }
      }
      pos += seg;
    }
  }
  if (!have_first) return ::testing::AssertionSuccess();
  std::string pages;
  for (uint64_t p : first_pages) pages += (pages.empty() ? "" : ", ") + std::to_string(p);
  const uint64_t total_pages = (len + kPage - 1) / kPage;
  return ::testing::AssertionFailure()
         << actual << " differs from " << expected_desc << " (" << len << " bytes compared)\n  "
         << first << "\n  " << pages_differing << " of ~" << total_pages << " pages differ ("
         << zero_in_actual << " of them are all-zero in the actual file); first differing pages: "
         << pages;
}

}  // namespace

::testing::AssertionResult FileRangeEquals(const std::string& actual, uint64_t actual_offset,
                                           const std::string& expected, uint64_t expected_offset,
                                           uint64_t len) {
  UniqueFd efd(::open(expected.c_str(), O_RDONLY | O_CLOEXEC));
  if (!efd.valid()) {
    return ::testing::AssertionFailure() << "cannot open " << expected << ": " << std::strerror(errno);
  }
  return CompareRange(actual, actual_offset, len, expected, expected_offset,
                      [&](uint64_t rel, uint8_t* buf, size_t n) -> Status {
                        ssize_t got = PreadFull(efd.get(), buf, n, expected_offset + rel);
                        if (got < 0) return ErrnoStatus("read " + expected);
                        if (static_cast<size_t>(got) < n) {
                          return Status::InvalidArgument(expected + " is shorter than the compared range");
                        }
                        return Status::Ok();
                      });
}

::testing::AssertionResult FilesEqual(const std::string& actual, const std::string& expected) {
  Result<uint64_t> as = FileSize(actual);
  Result<uint64_t> es = FileSize(expected);
  if (!as.ok()) return ::testing::AssertionFailure() << as.status().ToString();
  if (!es.ok()) return ::testing::AssertionFailure() << es.status().ToString();
  if (*as != *es) {
    ::testing::AssertionResult prefix = FileRangeEquals(actual, 0, expected, 0, std::min(*as, *es));
    return ::testing::AssertionFailure()
           << actual << " is " << *as << " bytes but " << expected << " is " << *es << " bytes; "
           << (prefix ? std::string("the common prefix is identical")
                      : std::string("and in the common prefix: ") + prefix.message());
  }
  return FileRangeEquals(actual, 0, expected, 0, *as);
}

::testing::AssertionResult FileEqualsBuffer(const std::string& actual, uint64_t offset,
                                            const void* data, size_t len) {
  return CompareRange(actual, offset, len, "the expected buffer", 0,
                      [&](uint64_t rel, uint8_t* buf, size_t n) -> Status {
                        std::memcpy(buf, static_cast<const uint8_t*>(data) + rel, n);
                        return Status::Ok();
                      });
}

::testing::AssertionResult FileMatchesPattern(const std::string& actual, const PatternSpec& spec) {
  Result<uint64_t> as = FileSize(actual);
  if (!as.ok()) return ::testing::AssertionFailure() << as.status().ToString();
  const std::string desc = "pattern(seed=" + std::to_string(spec.seed) + ")";
  const uint64_t common = std::min(*as, spec.size);
  ::testing::AssertionResult r =
      CompareRange(actual, 0, common, desc, 0, [&](uint64_t rel, uint8_t* buf, size_t n) -> Status {
        GeneratePattern(spec, rel, buf, n);
        return Status::Ok();
      });
  if (*as != spec.size) {
    return ::testing::AssertionFailure()
           << actual << " is " << *as << " bytes, expected " << spec.size << "; "
           << (r ? std::string("the common prefix matches") : std::string("and: ") + r.message());
  }
  return r;
}

}  // namespace ferry::test
