// ferry demo and ferry inspect.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <iostream>
#include <thread>

#include "cli/commands.h"
#include "cli/report.h"
#include "file/file_channel.h"
#include "file/inspect.h"

namespace ferry::cli {

int RunDemo(const std::string& self, const std::string& ram, const std::string& dirty_rate) {
  char dir_template[] = "/tmp/ferry-demo-XXXXXX";
  if (!mkdtemp(dir_template)) return Fail(ErrnoStatus("mkdtemp"));
  const std::string dir = dir_template;
  const std::string ready = dir + "/ready";
  const std::string recv_out = dir + "/recv.txt";
  std::cout << "ferry demo: a live migration of a " << ram << " guest between two processes on loopback\n"
            << "  destination: " << self << " recv tcp:127.0.0.1:0\n"
            << "  source:      " << self << " send ... --ram " << ram << " --dirty-rate " << dirty_rate
            << " --hot-set 64M\n\n"
            << std::flush;
  pid_t child = fork();
  if (child < 0) return Fail(ErrnoStatus("fork"));
  if (child == 0) {
    int fd = open(recv_out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) dup2(fd, STDOUT_FILENO);
    sigset_t set;
    sigemptyset(&set);
    pthread_sigmask(SIG_SETMASK, &set, nullptr);
    execl(self.c_str(), self.c_str(), "recv", "tcp:127.0.0.1:0", "--ready-file", ready.c_str(), "--timeout", "60",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  std::string uri;
  for (int i = 0; i < 600 && uri.empty(); ++i) {
    std::ifstream f(ready);
    if (f) std::getline(f, uri);
    if (uri.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (uri.empty()) {
    kill(child, SIGKILL);
    waitpid(child, nullptr, 0);
    return Fail(Status::Timeout("the destination did not start listening"));
  }
  SendOpts so;
  so.uri = uri;
  so.ram = ram;
  so.dirty_rate = dirty_rate;
  so.hot_set = "64M";
  so.fill = "random=40,zero=40,text=20";
  int rc = RunSend(so);
  int status = 0;
  waitpid(child, &status, 0);
  std::cout << "\n";
  std::ifstream f(recv_out);
  std::cout << f.rdbuf();
  unlink(recv_out.c_str());
  unlink(ready.c_str());
  rmdir(dir.c_str());
  const bool recv_ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  std::cout << "\nferry demo: " << (rc == 0 && recv_ok ? "migration completed and verified" : "migration FAILED")
            << "\n";
  return rc == 0 && recv_ok ? kExitOk : kExitFailed;
}

int RunInspect(const std::string& path, uint64_t offset, bool json) {
  // Opening a FIFO would wait for a writer, with SIGINT blocked: refuse it.
  if (IsFifo(path)) return Fail(Status::InvalidArgument(path + " is a FIFO: inspect walks a saved file"), kExitUsage);
  Result<InspectReport> rep = InspectFile(path, offset);
  if (!rep.ok()) return Fail(rep.status(), kExitUsage);
  const InspectReport& r = *rep;
  std::cout << InspectText(r, json) << std::flush;
  return r.complete() ? kExitOk : kExitFailed;
}

std::string SelfPath(const char* argv0) {
  char buf[4096];
  ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  if (n > 0) return std::string(buf, n);
  return argv0;
}

}  // namespace ferry::cli
