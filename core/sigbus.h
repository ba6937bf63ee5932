// Guest memory mapped from a file, protected against the file shrinking.
//
// When another process truncates a file that ferry has mapped (a VMM's
// /dev/shm/vm.mem, a destination --memory-file), touching a page past the
// file's new end raises SIGBUS, which kills the process. A mapping
// registered here is covered by ferry's SIGBUS handler instead: it maps a
// private zero page over the faulting page (the access completes and reads
// zeros; a write lands in that private page) and counts the fault. Nothing
// read from such a page may be trusted, so CheckMappedFiles() turns any
// fault, or a file now shorter than its mapping, into an error that the
// migration reports at its next check ("the memory file X shrank during the
// migration ...") instead of dying.
//
// The kernel does not raise SIGBUS when it is the one touching the missing
// page (read() into it, writev() from it): that fails with EFAULT, and the
// size check in CheckMappedFiles() names the real cause.
//
//   FERRY_ASSIGN_OR_RETURN(auto guard, MappedFileGuard::Register(addr, len, fd, path));
//   ...                                   // guard must be destroyed before munmap
//   FERRY_RETURN_IF_ERROR(CheckMappedFiles(blocks));
//
// Signal handlers are per process, so the registry is too (the one piece of
// global state in ferry): at most kMaxGuards mappings at a time. Any other
// SIGBUS goes to the handler that was installed before ferry's (or kills the
// process as usual).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/ram_block.h"
#include "core/status.h"
#include "core/unique_fd.h"

namespace ferry {

class MappedFileGuard {
 public:
  static constexpr int kMaxGuards = 64;

  // Covers [addr, addr + len), a MAP_SHARED mapping of `fd` (duplicated:
  // the caller keeps its own) from offset 0. `path` names the file in
  // messages. Installs the SIGBUS handler on first use.
  static Result<std::unique_ptr<MappedFileGuard>> Register(void* addr, uint64_t len, int fd, std::string path);
  ~MappedFileGuard();
  MappedFileGuard(const MappedFileGuard&) = delete;
  MappedFileGuard& operator=(const MappedFileGuard&) = delete;

  // Faults the handler has absorbed in this mapping so far.
  uint64_t faults() const;
  // OK while no page faulted and the file still covers the mapping.
  Status Check() const;
  bool Overlaps(const void* addr, uint64_t len) const;
  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }

 private:
  MappedFileGuard(int slot, uintptr_t start, uint64_t len, UniqueFd fd, std::string path)
      : slot_(slot), start_(start), len_(len), fd_(std::move(fd)), path_(std::move(path)) {}

  int slot_;
  uintptr_t start_;
  uint64_t len_;
  UniqueFd fd_;
  std::string path_;
};

// The first failing Check() of the guards overlapping any of `blocks`.
Status CheckMappedFiles(const RamBlockList& blocks);

// `s` (a failure) with the likely cause added when it is EFAULT and a memory
// file of `blocks` lies on a full filesystem: the kernel copying into a page
// it cannot allocate (read() into a tmpfs file's hole) fails that way
// instead of raising SIGBUS. Otherwise `s` as it is.
Status ExplainMappedFileFault(const RamBlockList& blocks, const Status& s);

}  // namespace ferry
