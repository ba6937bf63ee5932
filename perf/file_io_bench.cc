// file_io_bench: page I/O through ferry's IoEngine with O_DIRECT.
//
// Writes SIZE of random pages into a file under DIR, then reads them back,
// with each engine configuration:
//   uring+reg   io_uring, guest memory registered as fixed buffers
//   uring       io_uring, plain buffers
//   pwritev     the synchronous pwritev/preadv engine
// into a sparse file (ftruncate only: every write lands in a hole), into a
// file fallocate()d beforehand, and over data already written (reference).
//
// For each it prints throughput (including the closing fdatasync), CPU
// seconds per GiB of this process (getrusage: our threads and io_uring's
// io-wq workers, which are threads of this process), the part of that spent
// in io-wq workers (requests the kernel could not complete inline and
// punted), and the CPU the kernel's shared kworker threads used meanwhile
// (work done outside this process, e.g. converting unwritten extents; on a
// busy machine it also catches other programs' I/O). Creating the engine
// (registering the buffers pins every page once) is shown apart as
// "setup" and left out of the other columns.
//
//   file_io_bench [--dir /var/tmp] [--size-mib 1024] [--reps 3]
//                 [--request-kib 1024] [--queue-depth 16] [--run-pages 0]
//
// --run-pages N writes pages in shuffled runs of 1..N contiguous pages (as
// dirty pages come) instead of in order. The file is deleted at the end.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <ctime>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/status.h"
#include "core/unique_fd.h"
#include "file/file_channel.h"
#include "file/io_engine.h"

namespace {

using ferry::IoEngine;
using ferry::IoEngineOptions;
using ferry::Status;
using ferry::UniqueFd;

constexpr size_t kPage = 4096;
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

struct Args {
  std::string dir = "/var/tmp";
  size_t size_mib = 1024;
  int reps = 3;
  size_t request_kib = 1024;
  unsigned queue_depth = 16;
  size_t run_pages = 0;
};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "file_io_bench: %s\n", what.c_str());
  std::exit(1);
}

void Check(const Status& st, const std::string& what) {
  if (!st.ok()) Die(what + ": " + st.ToString());
}

// ---------------------------------------------------------------------------
// CPU accounting

double Seconds(const timeval& tv) { return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) * 1e-6; }

struct ProcessCpu {
  double user = 0, sys = 0;
  static ProcessCpu Now() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return {Seconds(ru.ru_utime), Seconds(ru.ru_stime)};
  }
};

// Seconds a task has run, from its schedstat (nanosecond resolution).
double TaskRunSeconds(const std::string& dir) {
  std::ifstream in(dir + "/schedstat");
  uint64_t ns = 0;
  in >> ns;
  return static_cast<double>(ns) * 1e-9;
}

std::string TaskName(const std::string& dir) {
  std::ifstream in(dir + "/comm");
  std::string name;
  std::getline(in, name);
  return name;
}

// CPU seconds used so far by the kernel's shared worker threads
// ("kworker/..."), where work like extent conversion after a direct write
// runs outside this process.
double KworkerSeconds() {
  double total = 0;
  DIR* d = opendir("/proc");
  if (d == nullptr) return 0;
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
    std::string dir = std::string("/proc/") + e->d_name;
    if (TaskName(dir).rfind("kworker", 0) == 0) total += TaskRunSeconds(dir);
  }
  closedir(d);
  return total;
}

// io-wq workers belonging to thread `owner` ("iou-wrk-<tid>"): how many
// there are and the CPU seconds they have used.
std::pair<int, double> IoWorkers(pid_t owner) {
  std::string want = "iou-wrk-" + std::to_string(owner);
  int count = 0;
  double cpu = 0;
  DIR* d = opendir("/proc/self/task");
  if (d == nullptr) return {0, 0};
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    std::string dir = std::string("/proc/self/task/") + e->d_name;
    if (TaskName(dir) != want) continue;
    ++count;
    cpu += TaskRunSeconds(dir);
  }
  closedir(d);
  return {count, cpu};
}

// ---------------------------------------------------------------------------
// Measurements

struct Sample {
  double seconds = 0;
  double cpu_user = 0, cpu_sys = 0;
  double worker_cpu = 0;
  int workers = 0;
  double kworker = 0;
  uint64_t requests = 0;
  double setup_seconds = 0;  // creating the engine (registration), wall
  double setup_cpu = 0;      // and CPU; both are left out of the rest
};

double ThreadCpuSeconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Runs `body` on a fresh thread (so io_uring's per-thread worker pool is
// new too and its workers can be told apart) and measures it.
Sample Measure(const std::function<void(Sample&)>& body) {
  Sample s;
  ProcessCpu cpu0 = ProcessCpu::Now();
  double kworker0 = KworkerSeconds();
  auto t0 = std::chrono::steady_clock::now();
  std::thread([&] {
    body(s);
    auto [n, cpu] = IoWorkers(static_cast<pid_t>(syscall(SYS_gettid)));
    s.workers = n;
    s.worker_cpu = cpu;
  }).join();
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() - s.setup_seconds;
  ProcessCpu cpu1 = ProcessCpu::Now();
  // Registration pins pages in the kernel: system time.
  s.cpu_user = cpu1.user - cpu0.user;
  s.cpu_sys = std::max(0.0, cpu1.sys - cpu0.sys - s.setup_cpu);
  s.kworker = KworkerSeconds() - kworker0;
  return s;
}

Sample Median(std::vector<Sample> v) {
  std::sort(v.begin(), v.end(), [](const Sample& a, const Sample& b) { return a.seconds < b.seconds; });
  return v[v.size() / 2];
}

void PrintHeader() {
  std::printf("%-22s %6s %9s %6s %6s %9s %7s %8s %8s %8s\n", "", "GiB/s", "CPU s/GiB", "user", "sys", "io-wq s/G",
              "workers", "kworker", "requests", "setup ms");
}

void PrintRow(const std::string& name, const Sample& s, double gib) {
  std::printf("%-22s %6.2f %9.3f %6.3f %6.3f %9.3f %7d %8.3f %8" PRIu64 " %8.1f\n", name.c_str(), gib / s.seconds,
              (s.cpu_user + s.cpu_sys) / gib, s.cpu_user / gib, s.cpu_sys / gib, s.worker_cpu / gib, s.workers,
              s.kworker / gib, s.requests, s.setup_seconds * 1e3);
  std::fflush(stdout);
}

struct EngineKind {
  const char* name;
  bool uring;
  bool registered;
};
constexpr EngineKind kEngines[] = {{"uring+reg", true, true}, {"uring", true, false}, {"pwritev", false, false}};

enum class Prep { kSparse, kFallocate, kOverwrite };
const char* PrepName(Prep p) {
  switch (p) {
    case Prep::kSparse: return "sparse";
    case Prep::kFallocate: return "fallocated";
    case Prep::kOverwrite: return "overwrite";
  }
  return "?";
}

class Bench {
 public:
  explicit Bench(Args a) : args_(std::move(a)) {
    bytes_ = args_.size_mib << 20;
    gib_ = static_cast<double>(bytes_) / kGiB;
    path_ = args_.dir + "/ferry-file-io-bench." + std::to_string(getpid());
    src_ = Map(bytes_);
    dst_ = Map(bytes_);
    std::mt19937_64 rng(20240611);
    auto* words = reinterpret_cast<uint64_t*>(src_);
    for (size_t i = 0; i < bytes_ / 8; ++i) words[i] = rng();
    std::memset(dst_, 0, bytes_);
    // The order pages are handed to the engine in.
    size_t pages = bytes_ / kPage;
    if (args_.run_pages == 0) {
      runs_.emplace_back(0, pages);
    } else {
      for (size_t first = 0; first < pages;) {
        size_t n = std::min(pages - first, 1 + rng() % args_.run_pages);
        runs_.emplace_back(first, n);
        first += n;
      }
      std::shuffle(runs_.begin(), runs_.end(), rng);
    }
  }
  ~Bench() {
    unlink(path_.c_str());
    munmap(src_, bytes_);
    munmap(dst_, bytes_);
  }

  void Run() {
    auto probe = ferry::ProbeDirectIo(path_);
    if (!probe.ok()) Die(probe.status().ToString());
    std::printf("file %s, %zu MiB, O_DIRECT (alignment %u/%u), max request %zu KiB, queue depth %u, %s, median of %d\n",
                path_.c_str(), args_.size_mib, probe->memory, probe->offset, args_.request_kib, args_.queue_depth,
                args_.run_pages ? ("shuffled runs of 1.." + std::to_string(args_.run_pages) + " pages").c_str()
                                : "pages in order",
                args_.reps);
    double load[3] = {};
    if (getloadavg(load, 3) > 0) std::printf("load average %.2f before the run\n", load[0]);

    std::printf("\nwrite\n");
    PrintHeader();
    double fallocate_seconds = 0;
    for (Prep prep : {Prep::kSparse, Prep::kFallocate, Prep::kOverwrite}) {
      for (const EngineKind& e : kEngines) {
        if (prep == Prep::kOverwrite && !e.registered) continue;  // one reference row is enough
        std::vector<Sample> samples;
        for (int r = 0; r < args_.reps; ++r) {
          double fs = PrepareFile(prep);
          if (prep == Prep::kFallocate) fallocate_seconds = std::max(fallocate_seconds, fs);
          samples.push_back(Measure([&](Sample& s) { WriteAll(e, s); }));
        }
        Sample m = Median(samples);
        PrintRow(std::string(e.name) + " " + PrepName(prep), m, gib_);
        results_.push_back({e.name, prep, m});
      }
    }
    std::printf("(fallocate of the whole file itself took %.3f s)\n", fallocate_seconds);

    std::printf("\nread (file fully written)\n");
    PrintHeader();
    for (const EngineKind& e : kEngines) {
      std::vector<Sample> samples;
      for (int r = 0; r < args_.reps; ++r) {
        std::memset(dst_, 0, bytes_);
        samples.push_back(Measure([&](Sample& s) { ReadAll(e, s); }));
        if (std::memcmp(src_, dst_, bytes_) != 0) Die(std::string("read back differs with ") + e.name);
      }
      PrintRow(e.name, Median(samples), gib_);
    }
    Summary(fallocate_seconds);
  }

 private:
  struct Result {
    std::string engine;
    Prep prep;
    Sample s;
  };

  static char* Map(size_t len) {
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) Die("mmap: " + std::string(strerror(errno)));
    return static_cast<char*>(p);
  }

  // Lays out the file for a write run; returns the fallocate time.
  double PrepareFile(Prep prep) {
    if (prep == Prep::kOverwrite) {
      // Usually the previous run left the file fully written.
      if (written_) return 0;
      PrepareFile(Prep::kFallocate);
      Sample ignored;
      WriteAll(kEngines[2], ignored);
      return 0;
    }
    unlink(path_.c_str());
    written_ = false;
    UniqueFd fd(open(path_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (!fd.valid()) Die("creating " + path_ + ": " + strerror(errno));
    if (ftruncate(fd.get(), static_cast<off_t>(bytes_)) != 0) Die("ftruncate: " + std::string(strerror(errno)));
    double took = 0;
    if (prep == Prep::kFallocate) {
      auto t0 = std::chrono::steady_clock::now();
      if (fallocate(fd.get(), 0, 0, static_cast<off_t>(bytes_)) != 0) Die("fallocate: " + std::string(strerror(errno)));
      took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }
    if (fsync(fd.get()) != 0) Die("fsync: " + std::string(strerror(errno)));
    return took;
  }

  std::unique_ptr<IoEngine> MakeEngine(const EngineKind& e, int fd, char* region, Sample& s) {
    double cpu0 = ThreadCpuSeconds();
    auto t0 = std::chrono::steady_clock::now();
    IoEngineOptions o;
    o.fd = fd;
    o.queue_depth = args_.queue_depth;
    o.max_request = args_.request_kib << 10;
    o.allow_uring = e.uring;
    if (e.registered) o.regions = {{region, bytes_}};
    std::string notice;
    auto io = ferry::MakeIoEngine(o, [&](std::string_view n) { notice = n; });
    Check(io.status(), "creating the engine");
    if (!notice.empty()) Die(std::string(e.name) + ": " + notice);
    if ((*io)->stats().registered != e.registered) Die(std::string(e.name) + ": registration not as asked");
    s.setup_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    s.setup_cpu = ThreadCpuSeconds() - cpu0;
    return std::move(io).value();
  }

  void WriteAll(const EngineKind& e, Sample& s) {
    auto fd = ferry::OpenDirect(path_, true);
    Check(fd.status(), "opening for O_DIRECT writes");
    auto io = MakeEngine(e, fd->get(), src_, s);
    for (auto [first, n] : runs_) {
      for (size_t p = first; p < first + n; ++p) {
        Check(io->Write(src_ + p * kPage, kPage, p * kPage), "write");
      }
    }
    Check(io->Drain(), "drain");
    if (fdatasync(fd->get()) != 0) Die("fdatasync: " + std::string(strerror(errno)));
    s.requests = io->stats().requests;
    written_ = true;
  }

  void ReadAll(const EngineKind& e, Sample& s) {
    auto fd = ferry::OpenDirect(path_, false);
    Check(fd.status(), "opening for O_DIRECT reads");
    auto io = MakeEngine(e, fd->get(), dst_, s);
    for (auto [first, n] : runs_) {
      for (size_t p = first; p < first + n; ++p) {
        Check(io->Read(dst_ + p * kPage, kPage, p * kPage), "read");
      }
    }
    Check(io->Drain(), "drain");
    s.requests = io->stats().requests;
  }

  const Sample* Find(const std::string& engine, Prep prep) const {
    for (const Result& r : results_) {
      if (r.engine == engine && r.prep == prep) return &r.s;
    }
    return nullptr;
  }

  void Summary(double fallocate_seconds) {
    auto cpu = [&](const Sample& s) { return (s.cpu_user + s.cpu_sys) / gib_; };
    std::printf("\nsummary\n");
    const Sample* reg = Find("uring+reg", Prep::kSparse);
    const Sample* plain = Find("uring", Prep::kSparse);
    if (reg && plain) {
      std::printf("  registered buffers, sparse:    CPU/GiB %.3f vs %.3f unregistered (x%.2f)\n", cpu(*reg), cpu(*plain),
                  cpu(*plain) / std::max(cpu(*reg), 1e-9));
    }
    const Sample* regf = Find("uring+reg", Prep::kFallocate);
    const Sample* plainf = Find("uring", Prep::kFallocate);
    if (regf && plainf) {
      std::printf("  registered buffers, fallocated: CPU/GiB %.3f vs %.3f unregistered (x%.2f)\n", cpu(*regf),
                  cpu(*plainf), cpu(*plainf) / std::max(cpu(*regf), 1e-9));
    }
    for (const EngineKind& e : kEngines) {
      const Sample* sp = Find(e.name, Prep::kSparse);
      const Sample* fa = Find(e.name, Prep::kFallocate);
      if (!sp || !fa) continue;
      double with_fallocate = fa->seconds + fallocate_seconds;
      std::printf(
          "  %-10s fallocate vs sparse: %.2f vs %.2f GiB/s (%.2f counting fallocate), CPU/GiB %.3f vs %.3f, "
          "io-wq %.3f vs %.3f s/GiB, kworker %.3f vs %.3f s/GiB\n",
          e.name, gib_ / fa->seconds, gib_ / sp->seconds, gib_ / with_fallocate, cpu(*fa), cpu(*sp),
          fa->worker_cpu / gib_, sp->worker_cpu / gib_, fa->kworker / gib_, sp->kworker / gib_);
    }
    const Sample* over = Find("uring+reg", Prep::kOverwrite);
    if (over) {
      std::printf("  overwrite (reference):          %.2f GiB/s, CPU/GiB %.3f, kworker %.3f s/GiB\n",
                  gib_ / over->seconds, cpu(*over), over->kworker / gib_);
    }
  }

  Args args_;
  size_t bytes_ = 0;
  double gib_ = 0;
  std::string path_;
  char* src_ = nullptr;
  char* dst_ = nullptr;
  std::vector<std::pair<size_t, size_t>> runs_;
  std::vector<Result> results_;
  bool written_ = false;  // the file holds all pages
};

Args Parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Die(k + " needs a value");
      return argv[++i];
    };
    auto number = [&]() -> size_t {
      std::string v = value();
      char* end = nullptr;
      unsigned long long n = std::strtoull(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0') Die(k + ": not a number: " + v);
      return static_cast<size_t>(n);
    };
    if (k == "--dir") {
      a.dir = value();
    } else if (k == "--size-mib") {
      a.size_mib = number();
    } else if (k == "--reps") {
      a.reps = static_cast<int>(number());
    } else if (k == "--request-kib") {
      a.request_kib = number();
    } else if (k == "--queue-depth") {
      a.queue_depth = static_cast<unsigned>(number());
    } else if (k == "--run-pages") {
      a.run_pages = number();
    } else if (k == "-h" || k == "--help") {
      std::printf(
          "usage: file_io_bench [--dir DIR] [--size-mib N] [--reps N] [--request-kib N] [--queue-depth N] "
          "[--run-pages N]\n");
      std::exit(0);
    } else {
      Die("unknown argument " + k);
    }
  }
  if (a.size_mib == 0 || a.reps <= 0 || a.request_kib == 0 || a.request_kib % 4 != 0) Die("bad sizes");
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  Bench bench(Parse(argc, argv));
  bench.Run();
  return 0;
}
