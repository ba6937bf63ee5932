// The CLI's guests: memory the `ferry` command migrates.
//
// SyntheticGuest maps anonymous memory (or a file, MAP_SHARED), fills it with
// a deterministic mix of random, zero and text-like pages, and can run a
// writer thread that dirties a hot set at a given rate while the migration
// runs — the stand-in for a running VM's vCPUs. It implements GuestControl so
// the source can pause it at switchover.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>
#include <string>
#include <thread>

#include "core/dirty_tracker.h"
#include "core/migration.h"
#include "core/ram_block.h"
#include "core/ram_loader.h"
#include "core/sigbus.h"
#include "core/status.h"
#include "core/unique_fd.h"

namespace ferry::cli {

// One mapping, unmapped on destruction.
class Mapping {
 public:
  Mapping() = default;
  ~Mapping();
  Mapping(Mapping&& o) noexcept;
  Mapping& operator=(Mapping&& o) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;

  // Anonymous, zero-filled. `huge`: ask for transparent huge pages.
  static Result<Mapping> Anonymous(uint64_t size, bool huge);
  // An existing file, MAP_SHARED (read-only when !writable). Covered by
  // MappedFileGuard: if the file shrinks meanwhile, CheckMappedFiles() says so
  // instead of SIGBUS killing the process.
  static Result<Mapping> OpenFile(const std::string& path, bool writable);
  // `fd`'s file set to `size` zero bytes (truncated first), its blocks
  // reserved with posix_fallocate before it is mapped (a full filesystem
  // fails here, "No space left on device", not with SIGBUS at the first
  // write) -- except on tmpfs, where that would allocate every zero page --
  // MAP_SHARED, covered by MappedFileGuard. `path` names it.
  static Result<Mapping> ReserveFile(int fd, const std::string& path, uint64_t size);

  // Faults every page in now (MADV_POPULATE_*), so the migration does not
  // pay for first-touch faults. `write` makes the pages private and writable.
  Status Populate(bool write);
  // For a file mapping: maps (read) only the file's data ranges (SEEK_DATA),
  // leaving its holes unpopulated as a running guest's untouched memory is;
  // a read fault on a hole would allocate a page. Anonymous: no-op.
  Status PopulateData();

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  // The mapped file (OpenFile), or -1.
  int fd() const { return fd_.get(); }

 private:
  uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
  UniqueFd fd_;
  std::unique_ptr<MappedFileGuard> guard_;  // file mappings; released before munmap
};

struct FillSpec {
  unsigned random_pct = 50;
  unsigned zero_pct = 50;
  unsigned text_pct = 0;
  // kPages: each 4 KiB page picks its kind; kRuns: each 2 MiB run does
  // (all its pages the same kind). Zero pages are never written either way.
  enum class Layout { kPages, kRuns };
  Layout layout = Layout::kPages;
};
// "pages" or "runs".
Result<FillSpec::Layout> ParseLayout(const std::string& text);
// Parses "random=50,zero=25,text=25" (missing kinds are 0; each a whole
// number 0-100 in decimal digits; they must sum to 100).
Result<FillSpec> ParseFill(const std::string& text);

// Fills memory page by page; page i's kind and bytes depend only on (seed, i).
// Stops early, returning false, once `*stop` is true (checked every 1 MiB or
// so per thread).
bool FillMemory(uint8_t* mem, uint64_t size, const FillSpec& spec, uint64_t seed,
                const std::atomic<bool>* stop = nullptr);

class SyntheticGuest final : public GuestControl {
 public:
  SyntheticGuest() = default;
  ~SyntheticGuest() override;

  Status Init(Mapping memory);
  RamBlockList& blocks() { return blocks_; }
  uint8_t* memory() const { return mem_.data(); }
  uint64_t size() const { return mem_.size(); }

  // Starts one writer dirtying random pages of the `hot_set` bytes from
  // `hot_offset` at `rate` bytes of pages per second. Writes go through
  // `tracker` when it needs to be told (the cooperative bitmap).
  void StartWriter(uint64_t rate, uint64_t hot_set, DirtyTracker* tracker, uint64_t seed,
                   uint64_t hot_offset = 0);
  void StopWriter();
  uint64_t writes() const { return writes_.load(std::memory_order_relaxed); }

  void Pause() override;
  void Resume() override;

 private:
  void WriterLoop(uint64_t rate, uint64_t hot_offset, uint64_t hot_set, DirtyTracker* tracker, uint64_t seed);

  Mapping mem_;
  RamBlockList blocks_;
  std::thread writer_;
  std::atomic<uint64_t> writes_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool pause_ = false;
  bool parked_ = false;
};

// Destination memory: anonymous by default, or one file for one block.
//
// A memory file that did not exist is created and, unless Keep() is called
// (the migration succeeded), removed again on destruction. A file that
// existed is opened only when the stream's block list arrives (so a stream
// refused before that leaves it untouched), then emptied and sized to the
// block (the load needs zeroed memory: its old contents are gone from that
// moment); on failure it is left in place with its old size restored.
class DestinationMemory final : public RamBlockAllocator {
 public:
  // `prealloc`: fault the memory in when it is allocated. `max_bytes`: the
  // most all blocks together may take (0 = no limit), `max_source` names
  // that limit in messages.
  DestinationMemory(std::string file, bool prealloc, uint64_t max_bytes = 0, std::string max_source = "")
      : file_(std::move(file)), prealloc_(prealloc), max_bytes_(max_bytes), max_source_(std::move(max_source)) {}
  ~DestinationMemory() override;
  Result<uint8_t*> Allocate(const std::string& name, uint64_t length) override;
  std::vector<Mapping>& mappings() { return maps_; }
  // Anonymous memory in transparent huge pages (MADV_HUGEPAGE, 2 MiB aligned;
  // the default), or in 4 KiB pages. Before the first Allocate.
  void set_huge_pages(bool on) { huge_ = on; }
  // The migration succeeded: keep the memory file as it is.
  void Keep() { keep_ = true; }

 private:
  std::string file_;
  bool prealloc_;
  bool huge_ = true;
  uint64_t max_bytes_;
  std::string max_source_;
  uint64_t allocated_ = 0;
  std::vector<Mapping> maps_;
  bool keep_ = false;
  bool created_ = false;                   // file_ did not exist before
  std::optional<uint64_t> original_size_;  // of a file that existed, once ferry changed it
};

}  // namespace ferry::cli
