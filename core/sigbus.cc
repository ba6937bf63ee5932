#include "core/sigbus.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <mutex>
#include <vector>

namespace ferry {
namespace {

// What the signal handler sees: lock-free atomics only. A slot is in use
// while start != 0.
struct Slot {
  std::atomic<uintptr_t> start{0};
  std::atomic<uintptr_t> end{0};
  std::atomic<uint64_t> faults{0};
  std::atomic<uint64_t> first_fault{UINT64_MAX};  // offset in the mapping
};
Slot g_slots[MappedFileGuard::kMaxGuards];
std::atomic<uintptr_t> g_page_mask{~uintptr_t{4095}};
struct sigaction g_previous;  // written once, before the handler is installed

// The registered guards, for CheckMappedFiles (never touched by the handler).
std::mutex g_mu;
std::vector<const MappedFileGuard*> g_guards;  // guarded by g_mu
bool g_installed = false;                      // guarded by g_mu

void OnSigbus(int sig, siginfo_t* info, void* context) {
  const int saved_errno = errno;
  const auto addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (Slot& s : g_slots) {
    const uintptr_t start = s.start.load(std::memory_order_acquire);
    if (start == 0 || addr < start || addr >= s.end.load(std::memory_order_acquire)) continue;
    // The file no longer backs this page: put a private zero page in its
    // place (mmap is a plain system call, safe here) and let the access
    // complete. The migration sees the count at its next check.
    void* page = reinterpret_cast<void*>(addr & g_page_mask.load(std::memory_order_relaxed));
    void* p = mmap(page, ~g_page_mask.load(std::memory_order_relaxed) + 1, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (p == MAP_FAILED) break;
    s.faults.fetch_add(1, std::memory_order_relaxed);
    const uint64_t offset = reinterpret_cast<uintptr_t>(page) - start;  // of the page
    uint64_t first = s.first_fault.load(std::memory_order_relaxed);
    while (offset < first && !s.first_fault.compare_exchange_weak(first, offset, std::memory_order_relaxed)) {
    }
    errno = saved_errno;
    return;
  }
  // Not a registered mapping: whatever handled SIGBUS before ferry did.
  errno = saved_errno;
  if ((g_previous.sa_flags & SA_SIGINFO) && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(sig, info, context);
  } else if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN &&
             g_previous.sa_handler != nullptr) {
    g_previous.sa_handler(sig);
  } else {
    // Back to the default action; the faulting access runs again and the
    // process ends with SIGBUS as it would have without ferry.
    signal(SIGBUS, SIG_DFL);
  }
}

Status InstallLocked() {
  if (g_installed) return Status::Ok();
  const long page = sysconf(_SC_PAGESIZE);
  if (page > 0) g_page_mask.store(~static_cast<uintptr_t>(page - 1));
  struct sigaction sa = {};
  sa.sa_sigaction = OnSigbus;
  sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_NODEFER;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGBUS, &sa, &g_previous) != 0) return ErrnoStatus("installing the SIGBUS handler");
  g_installed = true;
  return Status::Ok();
}

std::string Bytes(uint64_t n) { return std::to_string(n) + " bytes"; }

std::string FreeSpace(int fd) {
  struct statvfs v;
  if (fstatvfs(fd, &v) != 0) return "unknown free space";
  return Bytes(static_cast<uint64_t>(v.f_bavail) * v.f_frsize) + " free";
}

}  // namespace

Result<std::unique_ptr<MappedFileGuard>> MappedFileGuard::Register(void* addr, uint64_t len, int fd,
                                                                     std::string path) {
  if (addr == nullptr || len == 0) return Status::InvalidArgument("MappedFileGuard: empty mapping");
  UniqueFd dup(fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!dup.valid()) return ErrnoStatus("duplicating the descriptor of " + path);
  std::lock_guard<std::mutex> lock(g_mu);
  FERRY_RETURN_IF_ERROR(InstallLocked());
  const auto start = reinterpret_cast<uintptr_t>(addr);
  for (int i = 0; i < kMaxGuards; ++i) {
    Slot& s = g_slots[i];
    if (s.start.load(std::memory_order_acquire) != 0) continue;
    s.faults.store(0, std::memory_order_relaxed);
    s.first_fault.store(UINT64_MAX, std::memory_order_relaxed);
    s.end.store(start + len, std::memory_order_release);
    s.start.store(start, std::memory_order_release);
    std::unique_ptr<MappedFileGuard> g(new MappedFileGuard(i, start, len, std::move(dup), std::move(path)));
    g_guards.push_back(g.get());
    return g;
  }
  return Status::Unsupported("more than " + std::to_string(kMaxGuards) + " memory files mapped at once");
}

MappedFileGuard::~MappedFileGuard() {
  std::lock_guard<std::mutex> lock(g_mu);
  Slot& s = g_slots[slot_];
  s.start.store(0, std::memory_order_release);
  s.end.store(0, std::memory_order_release);
  g_guards.erase(std::remove(g_guards.begin(), g_guards.end(), this), g_guards.end());
}

uint64_t MappedFileGuard::faults() const { return g_slots[slot_].faults.load(std::memory_order_relaxed); }

bool MappedFileGuard::Overlaps(const void* addr, uint64_t len) const {
  const auto a = reinterpret_cast<uintptr_t>(addr);
  return a < start_ + len_ && start_ < a + len;
}

Status MappedFileGuard::Check() const {
  const uint64_t n = faults();
  struct stat st;
  const bool sized = fstat(fd_.get(), &st) == 0;
  const uint64_t now = sized ? static_cast<uint64_t>(st.st_size) : 0;
  if (n == 0 && (!sized || now >= len_)) return Status::Ok();
  if (n > 0 && sized && now >= len_) {
    // Still long enough: the pages could not be allocated (a full tmpfs,
    // whose pages are allocated at the first write).
    return ErrnoStatus("the memory file " + path_ + " could not take " + std::to_string(n) + " page" +
                           (n > 1 ? "s" : "") + " written during the migration (the first at offset " +
                           std::to_string(g_slots[slot_].first_fault.load(std::memory_order_relaxed)) +
                           "; its filesystem has " + FreeSpace(fd_.get()) + "), so this copy cannot be trusted",
                       ENOSPC);
  }
  std::string msg = "the memory file " + path_ + " shrank during the migration: ";
  msg += sized ? "it is now " + Bytes(now) + ", " + Bytes(len_) + " were mapped" : Bytes(len_) + " were mapped";
  if (n > 0) {
    msg += "; " + std::to_string(n) + " page" + (n > 1 ? "s" : "") + " past its end read as zeros (the first at offset " +
           std::to_string(g_slots[slot_].first_fault.load(std::memory_order_relaxed)) + ")";
  }
  msg += ", so this copy cannot be trusted (another process truncated the file)";
  return Status::Io(std::move(msg), 0);
}

Status ExplainMappedFileFault(const RamBlockList& blocks, const Status& s) {
  if (s.sys_errno() != EFAULT) return s;
  std::lock_guard<std::mutex> lock(g_mu);
  for (const MappedFileGuard* g : g_guards) {
    for (const RamBlock& b : blocks) {
      if (!g->Overlaps(b.host, b.used_length)) continue;
      struct statvfs v;
      if (fstatvfs(g->fd(), &v) == 0 && v.f_bavail == 0) {
        return ErrnoStatus(s.message() + " -- the filesystem holding the memory file " + g->path() +
                               " is full (its pages are allocated as they are written)",
                           ENOSPC);
      }
    }
  }
  return s;
}

Status CheckMappedFiles(const RamBlockList& blocks) {
  std::lock_guard<std::mutex> lock(g_mu);
  for (const MappedFileGuard* g : g_guards) {
    for (const RamBlock& b : blocks) {
      if (!g->Overlaps(b.host, b.used_length)) continue;
      FERRY_RETURN_IF_ERROR(g->Check());
      break;
    }
  }
  return Status::Ok();
}

}  // namespace ferry
