// Files as migration channels: the plain stream written into a file from an
// offset (QEMU's file:PATH,offset=N), and the seekable channel the mapped-ram
// layout needs. Page data can go through a second descriptor opened with
// O_DIRECT while metadata stays buffered (as QEMU does for direct-io).
//
//   FERRY_ASSIGN_OR_RETURN(auto f, CreateFileForSave("/var/vm.mig", 0));
//   StreamWriter w(f.get());  ...  FERRY_RETURN_IF_ERROR(f->Finish());  // fdatasync
//
//   FERRY_ASSIGN_OR_RETURN(auto f, OpenFileForLoad("/var/vm.mig", 0));
//   StreamReader r(f.get());
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <stop_token>
#include <string>
#include <string_view>

#include "../core/channel.h"
#include "../core/status.h"
#include "../core/unique_fd.h"

namespace ferry {

class FileChannel : public SeekableChannel {
 public:
  // The file's path, for messages.
  virtual const std::string& path() const = 0;
  // Current size of the file in bytes.
  virtual Result<uint64_t> Size() const = 0;
  // Flushes written data to stable storage (fdatasync). A save is complete
  // only after this returned OK.
  virtual Status Finish() = 0;
};

// Creates PATH (0644) or opens it for writing: the bytes before `offset` are
// kept, everything from `offset` on is discarded; positioned at `offset`.
Result<std::unique_ptr<FileChannel>> CreateFileForSave(const std::string& path, uint64_t offset);
// Opens PATH for reading positioned at `offset`; kInvalidArgument if the file
// is shorter than that or is not a regular file.
Result<std::unique_ptr<FileChannel>> OpenFileForLoad(const std::string& path, uint64_t offset);

// FIFOs (named pipes) as one-way streams, for `ferry load FIFO` and `ferry
// save FIFO`. open() is done with O_NONBLOCK so that it never hangs: the
// wait for the other end — a writer's first bytes when reading, a reader
// when writing — is a poll bounded by `timeout` (kTimeout) and ended by
// `stop` (kCancelled). The descriptor is returned non-blocking; wrap it with
// MakeFdChannel (socket/), whose waits are bounded and cancellable.
bool IsFifo(const std::string& path);
Result<UniqueFd> OpenFifo(const std::string& path, bool write, std::chrono::milliseconds timeout,
                          std::stop_token stop = {});

// O_DIRECT support of the filesystem holding PATH: the alignment its direct
// I/O needs for memory and file offsets (statx STATX_DIOALIGN, with a probe
// open where statx does not say). kUnsupported, naming the filesystem, when
// O_DIRECT is refused.
struct DirectIoAlignment {
  uint32_t memory = 0;
  uint32_t offset = 0;
};
Result<DirectIoAlignment> ProbeDirectIo(const std::string& path);

// A second descriptor on the same file with O_DIRECT (for page data), for
// writing or reading. Fails clearly where the filesystem refuses O_DIRECT.
Result<UniqueFd> OpenDirect(const std::string& path, bool write);

// Messages shared by file/ for a failed transfer of PATH at OFFSET, built
// with ErrnoStatus: "writing PATH at offset N: <strerror>"; ENOSPC reads
// "disk full writing PATH at offset N: No space left on device" (EDQUOT:
// "disk quota exceeded writing ...").
Status FileWriteError(std::string_view path, uint64_t offset, int err);
Status FileReadError(std::string_view path, uint64_t offset, int err);

}  // namespace ferry
