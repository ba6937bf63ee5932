#include "cli/guest.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>
#include <vector>

#include "core/thread_name.h"
#include "core/unique_fd.h"
#include "core/worker_pool.h"

namespace ferry::cli {

Mapping::~Mapping() {
  guard_.reset();  // before the range can be reused by another mapping
  if (data_) munmap(data_, size_);
}
Mapping::Mapping(Mapping&& o) noexcept
    : data_(std::exchange(o.data_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      fd_(std::move(o.fd_)),
      guard_(std::move(o.guard_)) {}
Mapping& Mapping::operator=(Mapping&& o) noexcept {
  if (this != &o) {
    guard_.reset();
    if (data_) munmap(data_, size_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
    fd_ = std::move(o.fd_);
    guard_ = std::move(o.guard_);
  }
  return *this;
}

Result<Mapping> Mapping::Anonymous(uint64_t size, bool huge) {
  if (size == 0 || size % kPageSize) {
    return Status::InvalidArgument("RAM size must be a non-zero multiple of 4 KiB, got " + std::to_string(size));
  }
  // With huge pages asked for, the mapping starts on a 2 MiB boundary (over-
  // mapped, the ends trimmed): every 2 MiB region of the guest can then be
  // one huge page, so a write faults in (and zeroes) 2 MiB at once, and a
  // region the migration never writes stays unpopulated.
  constexpr uint64_t kHuge = 2ull << 20;
  const uint64_t slack = huge && size >= kHuge ? kHuge : 0;
  void* p = mmap(nullptr, size + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap of " + std::to_string(size) + " bytes of guest RAM");
  if (slack) {
    const auto start = reinterpret_cast<uintptr_t>(p);
    const uintptr_t aligned = (start + kHuge - 1) & ~(kHuge - 1);
    if (aligned > start) munmap(p, aligned - start);
    if (const uint64_t tail = start + slack - aligned; tail > 0) munmap(reinterpret_cast<void*>(aligned + size), tail);
    p = reinterpret_cast<void*>(aligned);
  }
  if (huge) (void)madvise(p, size, MADV_HUGEPAGE);
  Mapping m;
  m.data_ = static_cast<uint8_t*>(p);
  m.size_ = size;
  return m;
}

Status Mapping::Populate(bool write) {
  if (madvise(data_, size_, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) == 0) return Status::Ok();
  if (errno != EINVAL) return ErrnoStatus("prefaulting guest memory");
  // Kernels before 5.14: touch every page.
  volatile uint8_t sink = 0;
  for (uint64_t off = 0; off < size_; off += kPageSize) {
    if (write) {
      data_[off] = data_[off];
    } else {
      sink = sink + data_[off];
    }
  }
  return Status::Ok();
}

Status Mapping::PopulateData() {
  if (!fd_.valid()) return Status::Ok();
  const off_t end = static_cast<off_t>(size_);
  off_t pos = 0;
  while (pos < end) {
    off_t data = lseek(fd_.get(), pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only holes from here
      return Populate(/*write=*/false);  // no SEEK_DATA: everything is data
    }
    off_t hole = lseek(fd_.get(), data, SEEK_HOLE);
    if (hole < 0 || hole > end) hole = end;
    const uint64_t first = static_cast<uint64_t>(data) & kPageMask;
    const uint64_t last = std::min<uint64_t>((static_cast<uint64_t>(hole) + kPageSize - 1) & kPageMask, size_);
    if (last > first && madvise(data_ + first, last - first, MADV_POPULATE_READ) != 0) {
      if (errno != EINVAL) return ErrnoStatus("prefaulting guest memory");
      volatile uint8_t sink = 0;
      for (uint64_t off = first; off < last; off += kPageSize) sink = sink + data_[off];
    }
    if (hole <= pos) break;
    pos = hole;
  }
  return Status::Ok();
}

Result<Mapping> Mapping::OpenFile(const std::string& path, bool writable) {
  UniqueFd fd(open(path.c_str(), (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("open memory file " + path);
  struct stat st;
  if (fstat(fd.get(), &st) != 0) return ErrnoStatus("stat " + path);
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument("memory file " + path + " is not a regular file");
  const uint64_t size = st.st_size;
  if (size == 0 || size % kPageSize) {
    return Status::InvalidArgument("memory file " + path + " is " + std::to_string(size) +
                                   " bytes; it must be a non-zero multiple of 4096");
  }
  void* p = mmap(nullptr, size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd.get(), 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap " + path);
  Mapping m;
  m.data_ = static_cast<uint8_t*>(p);
  m.size_ = size;
  FERRY_ASSIGN_OR_RETURN(m.guard_, MappedFileGuard::Register(p, size, fd.get(), path));
  m.fd_ = std::move(fd);  // SEEK_HOLE finds the pages never written
  return m;
}

Result<Mapping> Mapping::ReserveFile(int fd, const std::string& path, uint64_t size) {
  if (size == 0 || size % kPageSize) {
    return Status::InvalidArgument("RAM size must be a non-zero multiple of 4 KiB, got " + std::to_string(size));
  }
  if (ftruncate(fd, 0) != 0 || ftruncate(fd, static_cast<off_t>(size)) != 0) {
    return ErrnoStatus("sizing memory file " + path + " to " + std::to_string(size) + " bytes");
  }
  // On a disk filesystem every block is reserved now, so that no page fault
  // later finds the filesystem full. Not on tmpfs (/dev/shm, memfd): there a
  // reserved block is an allocated page of memory, and the pages the
  // migration leaves zero would all be allocated for nothing. The space
  // there was checked against the block size before (DestinationRamLimit);
  // should it run out anyway, a write fault is absorbed by MappedFileGuard
  // and reported as such, and a read() into such a page fails with EFAULT,
  // which MigrationDestination explains (core/sigbus.h).
  struct statfs fs;
  const bool tmpfs = fstatfs(fd, &fs) == 0 && static_cast<uint64_t>(fs.f_type) == TMPFS_MAGIC;
  if (!tmpfs) {
    if (int err = posix_fallocate(fd, 0, static_cast<off_t>(size)); err != 0) {
      return ErrnoStatus("reserving " + std::to_string(size) + " bytes for memory file " + path, err);
    }
  }
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return ErrnoStatus("mmap " + path);
  Mapping m;
  m.data_ = static_cast<uint8_t*>(p);
  m.size_ = size;
  FERRY_ASSIGN_OR_RETURN(m.guard_, MappedFileGuard::Register(p, size, fd, path));
  return m;
}

Result<FillSpec> ParseFill(const std::string& text) {
  FillSpec f{0, 0, 0};
  std::stringstream ss(text);
  std::string item;
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("bad --fill '" + text + "': " + why +
                                   " (expected e.g. random=50,zero=50 or random=40,zero=30,text=30)");
  };
  while (std::getline(ss, item, ',')) {
    size_t eq = item.find('=');
    if (eq == std::string::npos) return bad("'" + item + "' has no '='");
    std::string key = item.substr(0, eq);
    const std::string num = item.substr(eq + 1);
    // Decimal digits only: no sign, no spaces (std::stoul would take "-10").
    if (num.empty() || num.size() > 3 || num.find_first_not_of("0123456789") != std::string::npos) {
      return bad("'" + item + "' is not a percentage (a whole number from 0 to 100)");
    }
    const unsigned v = static_cast<unsigned>(std::stoul(num));
    if (v > 100) return bad("'" + item + "' is more than 100 percent");
    if (key == "random") f.random_pct = v;
    else if (key == "zero") f.zero_pct = v;
    else if (key == "text") f.text_pct = v;
    else return bad("unknown kind '" + key + "'");
  }
  if (f.random_pct + f.zero_pct + f.text_pct != 100) return bad("percentages must add up to 100");
  return f;
}

Result<FillSpec::Layout> ParseLayout(const std::string& text) {
  if (text == "pages") return FillSpec::Layout::kPages;
  if (text == "runs") return FillSpec::Layout::kRuns;
  return Status::InvalidArgument("--layout must be pages or runs, got '" + text + "'");
}

namespace {

uint64_t SplitMix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

constexpr const char* kWords[] = {"migration ", "memory ", "page ", "guest ", "dirty ", "bitmap ", "stream ",
                                  "section ", "ferry ", "channel ", "the ", "of ", "and ", "to ", "a ", "in "};

void FillPage(uint8_t* page, uint64_t index, const FillSpec& spec, uint64_t seed) {
  uint64_t s = seed * 0x2545f4914f6cdd1dull + index;
  unsigned pick = SplitMix(s) % 100;
  if (spec.layout == FillSpec::Layout::kRuns) {
    // One pick per 2 MiB run (512 pages), from its own stream.
    uint64_t rs = (seed ^ 0x52554e53ull) * 0x9e3779b97f4a7c15ull + (index >> 9);
    pick = SplitMix(rs) % 100;
  }
  if (pick < spec.random_pct) {
    // xorshift-multiply stream: fast and incompressible.
    uint64_t x = SplitMix(s) | 1;
    auto* w = reinterpret_cast<uint64_t*>(page);
    for (size_t i = 0; i < kPageSize / 8; ++i) {
      x ^= x >> 12;
      x ^= x << 25;
      x ^= x >> 27;
      w[i] = x * 0x2545f4914f6cdd1dull;
    }
  } else if (pick < spec.random_pct + spec.zero_pct) {
    // Left untouched: fresh mappings are zero, and an untouched page costs no RSS.
  } else {
    size_t pos = 0;
    uint64_t r = SplitMix(s);
    while (pos < kPageSize) {
      const char* word = kWords[r & 15];
      r = (r >> 4) | (r << 60);
      if ((pos & 255) == 0) r ^= SplitMix(s);
      size_t n = std::min(strlen(word), kPageSize - pos);
      std::memcpy(page + pos, word, n);
      pos += n;
    }
  }
}

}  // namespace

bool FillMemory(uint8_t* mem, uint64_t size, const FillSpec& spec, uint64_t seed, const std::atomic<bool>* stop) {
  const uint64_t pages = size / kPageSize;
  const unsigned threads = std::max(1u, std::min(8u, std::thread::hardware_concurrency()));
  ParallelFor(threads, "fill-", [&](unsigned t) {
    uint64_t since_check = 0;
    for (uint64_t i = t; i < pages; i += threads) {
      if (stop && ++since_check == 256) {
        since_check = 0;
        if (stop->load(std::memory_order_relaxed)) return;
      }
      FillPage(mem + i * kPageSize, i, spec, seed);
    }
  });
  return !(stop && stop->load());
}

SyntheticGuest::~SyntheticGuest() { StopWriter(); }

Status SyntheticGuest::Init(Mapping memory) {
  mem_ = std::move(memory);
  FERRY_RETURN_IF_ERROR(blocks_.Add("ram", mem_.data(), mem_.size()));
  blocks_[0].backing_fd = mem_.fd();  // -1 for anonymous memory
  return Status::Ok();
}

void SyntheticGuest::StartWriter(uint64_t rate, uint64_t hot_set, DirtyTracker* tracker, uint64_t seed,
                                 uint64_t hot_offset) {
  if (rate == 0 || writer_.joinable()) return;
  hot_offset = std::min<uint64_t>(hot_offset & kPageMask, mem_.size() - kPageSize);
  hot_set = std::clamp<uint64_t>(hot_set & kPageMask, kPageSize, mem_.size() - hot_offset);
  writer_ = std::thread([=, this] {
    ferry::SetThreadName("guest-writer");
    WriterLoop(rate, hot_offset, hot_set, tracker, seed);
  });
}

void SyntheticGuest::StopWriter() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (writer_.joinable()) writer_.join();
}

namespace {

// Test hook (tests/waits_test.cc): with FERRY_TEST_HOLD_AT_SWITCHOVER=PATH in
// the environment, the guest, once paused for switchover, writes PATH and
// holds the migration there until PATH is removed (at most 30 s), so a test
// can act on the destination at exactly that moment; Resume() then writes
// PATH.resumed. Not for production use.
const char* SwitchoverHook() {
  const char* path = std::getenv("FERRY_TEST_HOLD_AT_SWITCHOVER");
  return path && *path ? path : nullptr;
}

void HoldAtSwitchover(const char* path) {
  if (FILE* f = std::fopen(path, "w")) {
    std::fputs("paused\n", f);
    std::fclose(f);
  }
  for (int i = 0; i < 3000 && ::access(path, F_OK) == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace

void SyntheticGuest::Pause() {
  {
    std::unique_lock<std::mutex> lock(mu_);
    pause_ = true;
    cv_.notify_all();
    // Wait until the writer is parked (or not running at all).
    cv_.wait(lock, [&] { return parked_ || !writer_.joinable() || stop_; });
  }
  if (const char* hook = SwitchoverHook()) HoldAtSwitchover(hook);
  // Test hook (tests/fault_matrix_test.cc): FERRY_TEST_PAUSE_AT=switchover:MS
  // holds the source MS ms with its guest paused for switchover, after saying
  // so on stderr, so that a test can fault a peer at exactly that moment.
  if (const char* at = getenv("FERRY_TEST_PAUSE_AT"); at && std::strncmp(at, "switchover:", 11) == 0) {
    const long ms = std::strtol(at + 11, nullptr, 10);
    std::fprintf(stderr, "ferry: test hook: guest paused for switchover, holding %ld ms\n", ms);
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  }
}

void SyntheticGuest::Resume() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    pause_ = false;
  }
  cv_.notify_all();
  if (const char* hook = SwitchoverHook()) {
    const std::string marker = std::string(hook) + ".resumed";
    if (FILE* f = std::fopen(marker.c_str(), "w")) {
      std::fputs("resumed\n", f);
      std::fclose(f);
    }
  }
}

void SyntheticGuest::WriterLoop(uint64_t rate, uint64_t hot_offset, uint64_t hot_set, DirtyTracker* tracker,
                                uint64_t seed) {
  using Clock = std::chrono::steady_clock;
  const bool mark = tracker && tracker->needs_mark_dirty();
  const uint64_t hot_pages = hot_set / kPageSize;
  const double pages_per_sec = static_cast<double>(rate) / kPageSize;
  uint64_t s = seed ^ 0xfeedface;
  uint64_t counter = 0;
  const auto start = Clock::now();
  uint64_t done = 0;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stop_) return;
      if (pause_) {
        parked_ = true;
        cv_.notify_all();
        cv_.wait(lock, [&] { return !pause_ || stop_; });
        parked_ = false;
        if (stop_) return;
      }
    }
    // Write the pages that are due, in small batches so a pause is quick.
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    const uint64_t due = static_cast<uint64_t>(elapsed * pages_per_sec);
    uint64_t batch = std::min<uint64_t>(due > done ? due - done : 0, 256);
    for (uint64_t k = 0; k < batch; ++k) {
      const uint64_t page = SplitMix(s) % hot_pages;
      uint8_t* p = mem_.data() + hot_offset + page * kPageSize + (SplitMix(s) % (kPageSize / 8)) * 8;
      ++counter;
      std::memcpy(p, &counter, 8);
      if (mark) tracker->MarkDirty(p, 8);
    }
    done += batch;
    writes_.fetch_add(batch, std::memory_order_relaxed);
    if (batch == 0) {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(2), [&] { return stop_ || pause_; });
    }
  }
}

DestinationMemory::~DestinationMemory() {
  if (keep_ || file_.empty()) return;
  maps_.clear();
  if (created_) {
    unlink(file_.c_str());
  } else if (original_size_) {
    (void)truncate(file_.c_str(), static_cast<off_t>(*original_size_));
  }
}

Result<uint8_t*> DestinationMemory::Allocate(const std::string& name, uint64_t length) {
  if (max_bytes_ != 0 && (length > max_bytes_ || allocated_ > max_bytes_ - length)) {
    return Status::InvalidArgument("RAM block '" + name + "' (" + std::to_string(length) + " bytes) would bring " +
                                   "this destination's RAM to " + std::to_string(allocated_ + length) +
                                   " bytes, more than it may allocate: " + std::to_string(max_bytes_) + " bytes" +
                                   (max_source_.empty() ? "" : ", " + max_source_));
  }
  if (!file_.empty()) {
    if (!maps_.empty()) {
      return Status::Unsupported("--memory-file holds one RAM block, but the stream also carries block '" + name + "'");
    }
    UniqueFd fd(open(file_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (fd.valid()) {
      created_ = true;
    } else if (errno == EEXIST) {
      fd.Reset(open(file_.c_str(), O_RDWR | O_CLOEXEC));
      if (!fd.valid()) return ErrnoStatus("open memory file " + file_);
      struct stat st;
      if (fstat(fd.get(), &st) != 0) return ErrnoStatus("stat " + file_);
      if (!S_ISREG(st.st_mode)) return Status::InvalidArgument("memory file " + file_ + " is not a regular file");
      original_size_ = static_cast<uint64_t>(st.st_size);
    } else {
      return ErrnoStatus("create memory file " + file_);
    }
    FERRY_ASSIGN_OR_RETURN(Mapping m, Mapping::ReserveFile(fd.get(), file_, length));
    maps_.push_back(std::move(m));
  } else {
    FERRY_ASSIGN_OR_RETURN(Mapping m, Mapping::Anonymous(length, huge_));
    maps_.push_back(std::move(m));
  }
  allocated_ += length;
  if (prealloc_) FERRY_RETURN_IF_ERROR(maps_.back().Populate(/*write=*/true));
  return maps_.back().data();
}

}  // namespace ferry::cli
