// Test support: child processes (Process, ExitStatus).
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
#include "tests/support/fd_io.h"

extern char** environ;

namespace ferry::test {
namespace {

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

}  // namespace ferry::test
