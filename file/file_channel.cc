// File channels and O_DIRECT probing. See file_channel.h for the interface.
//
// Layout of this file:
//   - error messages and small helpers (filesystem names, raw statx)
//   - FileChannelImpl: the one FileChannel implementation
//   - CreateFileForSave / OpenFileForLoad
//   - ProbeDirectIo / OpenDirect
#include "core/channel.h"
#include "file/file_channel.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <span>
#include <stop_token>
#include <string>
#include <utility>

namespace ferry {

Status FileWriteError(std::string_view path, uint64_t offset, int err) {
  std::string what;
  if (err == ENOSPC) {
    what = "disk full writing ";
  } else if (err == EDQUOT) {
    what = "disk quota exceeded writing ";
  } else {
    what = "writing ";
  }
  what += path;
  what += " at offset " + std::to_string(offset);
  return ErrnoStatus(what, err);
}

Status FileReadError(std::string_view path, uint64_t offset, int err) {
  std::string what = "reading ";
  what += path;
  what += " at offset " + std::to_string(offset);
  return ErrnoStatus(what, err);
}

namespace {

// Offsets are handed to the kernel as off_t.
constexpr uint64_t kMaxOffset = static_cast<uint64_t>(INT64_MAX);

// ---------------------------------------------------------------------------
// Helpers

uint64_t TotalBytes(std::span<const iovec> iov) {
  uint64_t total = 0;
  for (const iovec& v : iov) total += v.iov_len;
  return total;
}

// The directory holding `path` (for a file that does not exist yet).
std::string ParentDir(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  size_t slash = p.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return p.substr(0, slash);
}

// A readable name for the filesystem type statfs() reports.
std::string FsTypeName(uint64_t magic) {
  struct Known {
    uint64_t magic;
    const char* name;
  };
  static constexpr Known kKnown[] = {
      {0xEF53, "ext4"},          {0x01021994, "tmpfs"},      {0x858458f6, "ramfs"},
      {0x58465342, "xfs"},       {0x9123683E, "btrfs"},      {0xF2F52010, "f2fs"},
      {0x6969, "nfs"},           {0x65735546, "fuse"},       {0x794c7630, "overlayfs"},
      {0x2fc12fc1, "zfs"},       {0xFF534D42, "cifs"},       {0xFE534D42, "smb2"},
      {0x01021997, "9p"},        {0x73717368, "squashfs"},   {0x4d44, "vfat"},
      {0x2011BAB0, "exfat"},     {0x958458f6, "hugetlbfs"},  {0x9fa0, "proc"},
      {0x62656572, "sysfs"},     {0xf15f, "ecryptfs"},       {0x00c36400, "ceph"},
      {0x7461636f, "ocfs2"},     {0x5346414F, "afs"},        {0xE0F5E1E2, "erofs"},
      {0x3434, "nilfs2"},        {0x52654973, "reiserfs"},   {0x64646178, "daxfs"},
  };
  for (const Known& k : kKnown) {
    if (k.magic == magic) return k.name;
  }
  char buf[48];
  std::snprintf(buf, sizeof(buf), "filesystem type 0x%llx", static_cast<unsigned long long>(magic));
  return buf;
}

// The filesystem type holding `path` (or its directory when it does not exist).
std::string FsTypeOf(const std::string& path) {
  struct statfs fs {};
  if (::statfs(path.c_str(), &fs) != 0 && ::statfs(ParentDir(path).c_str(), &fs) != 0) {
    return "unknown filesystem";
  }
  // f_type is a signed word on some ABIs; the magic numbers are 32-bit.
  return FsTypeName(static_cast<uint64_t>(fs.f_type) & 0xffffffffu);
}

Status DirectIoRefused(const std::string& path) {
  return Status::Unsupported("O_DIRECT is not supported by the filesystem holding " + path + " (" +
                             FsTypeOf(path) + ")");
}

// statx(2) as the kernel defines it. Older C library headers lack the
// direct-I/O alignment fields (and the mask bit), so this file does not rely
// on them: the layout below is the kernel ABI, checked by the asserts.
struct KernelStatxTime {
  int64_t tv_sec;
  uint32_t tv_nsec;
  int32_t reserved;
};
struct KernelStatx {
  uint32_t mask;
  uint32_t blksize;
  uint64_t attributes;
  uint32_t nlink;
  uint32_t uid;
  uint32_t gid;
  uint16_t mode;
  uint16_t spare0;
  uint64_t ino;
  uint64_t size;
  uint64_t blocks;
  uint64_t attributes_mask;
  KernelStatxTime atime, btime, ctime, mtime;
  uint32_t rdev_major, rdev_minor;
  uint32_t dev_major, dev_minor;
  uint64_t mnt_id;
  uint32_t dio_mem_align;
  uint32_t dio_offset_align;
  uint64_t spare3[12];
};
static_assert(sizeof(KernelStatx) == 0x100);
static_assert(offsetof(KernelStatx, mnt_id) == 0x90);
static_assert(offsetof(KernelStatx, dio_mem_align) == 0x98);
static_assert(offsetof(KernelStatx, dio_offset_align) == 0x9c);

constexpr uint32_t kStatxType = 0x00000001u;
constexpr uint32_t kStatxDioAlign = 0x00002000u;
constexpr int kAtEmptyPath = 0x1000;

// What statx said about direct I/O: nothing (old kernel, or a filesystem
// that does not fill it in), "not supported", or the two alignments.
struct DioReport {
  bool reported = false;
  DirectIoAlignment align;
  uint32_t blksize = 0;
};

DioReport StatxDio(int dirfd, const char* path, int flags) {
  DioReport out;
#ifdef SYS_statx
  KernelStatx sx;
  std::memset(&sx, 0, sizeof(sx));
  if (::syscall(SYS_statx, dirfd, path, flags, kStatxType | kStatxDioAlign, &sx) != 0) return out;
  out.blksize = sx.blksize;
  if (sx.mask & kStatxDioAlign) {
    out.reported = true;
    out.align.memory = sx.dio_mem_align;
    out.align.offset = sx.dio_offset_align;
  }
#else
  (void)dirfd;
  (void)path;
  (void)flags;
#endif
  return out;
}

// Alignment to assume when O_DIRECT works but nobody said how much it needs:
// the preferred block size, kept between a sector and a page (page data is
// page-aligned anyway, so erring towards 4096 costs nothing).
DirectIoAlignment GuessAlignment(uint32_t blksize) {
  uint32_t a = 4096;
  if (blksize >= 512 && blksize < 4096 && (blksize & (blksize - 1)) == 0) a = blksize;
  return {a, a};
}

Result<DirectIoAlignment> FromReport(const DioReport& r, const std::string& path) {
  // The kernel reports zeros for files that cannot do direct I/O.
  if (r.align.offset == 0 || r.align.memory == 0) return DirectIoRefused(path);
  return r.align;
}

// ---------------------------------------------------------------------------
// FileChannelImpl

class FileChannelImpl final : public FileChannel {
 public:
  FileChannelImpl(UniqueFd fd, std::string path, uint64_t position, bool block_device)
      : fd_(std::move(fd)), path_(std::move(path)), pos_(position), block_device_(block_device) {}

  Status WriteAll(std::span<iovec> iov) override {
    FERRY_RETURN_IF_ERROR(CheckOpen());
    size_t first = AdvanceIovecs(iov, 0, 0);
    while (first < iov.size()) {
      FERRY_RETURN_IF_ERROR(CheckOpen());
      size_t count = std::min(iov.size() - first, kIovBatch);
      ssize_t n = ::writev(fd_.get(), &iov[first], static_cast<int>(count));
      if (n < 0) {
        if (errno == EINTR) continue;
        return FileWriteError(path_, pos_.load(), errno);
      }
      if (n == 0) return Status::Io("writing " + path_ + " at offset " + std::to_string(pos_.load()) +
                                    ": the kernel accepted no bytes", EIO);
      pos_.fetch_add(static_cast<uint64_t>(n));
      first = AdvanceIovecs(iov, first, static_cast<size_t>(n));
    }
    return Status::Ok();
  }

  Result<size_t> ReadSome(void* buf, size_t len) override {
    FERRY_RETURN_IF_ERROR(CheckOpen());
    if (len == 0) return size_t{0};
    for (;;) {
      ssize_t n = ::read(fd_.get(), buf, len);
      if (n >= 0) {
        pos_.fetch_add(static_cast<uint64_t>(n));
        return static_cast<size_t>(n);
      }
      if (errno != EINTR) return FileReadError(path_, pos_.load(), errno);
      FERRY_RETURN_IF_ERROR(CheckOpen());
    }
  }

  // Regular files never block for long; marking the channel is enough to
  // stop the loops above at their next step.
  void Shutdown() override { closed_.store(true); }

  std::string Describe() const override { return "file:" + path_; }
  int fd() const override { return fd_.get(); }
  const std::string& path() const override { return path_; }

  uint64_t position() const override { return pos_.load(); }

  Status Seek(uint64_t offset) override {
    FERRY_RETURN_IF_ERROR(CheckOpen());
    if (offset > kMaxOffset) return Status::InvalidArgument("offset " + std::to_string(offset) + " is too large");
    if (::lseek(fd_.get(), static_cast<off_t>(offset), SEEK_SET) < 0) {
      return ErrnoStatus("seeking " + path_ + " to offset " + std::to_string(offset));
    }
    pos_.store(offset);
    return Status::Ok();
  }

  Status PwriteAll(std::span<iovec> iov, uint64_t offset) override {
    FERRY_RETURN_IF_ERROR(CheckOpen());
    FERRY_RETURN_IF_ERROR(CheckRange(offset, TotalBytes(iov)));
    size_t first = AdvanceIovecs(iov, 0, 0);
    while (first < iov.size()) {
      FERRY_RETURN_IF_ERROR(CheckOpen());
      size_t count = std::min(iov.size() - first, kIovBatch);
      ssize_t n = ::pwritev(fd_.get(), &iov[first], static_cast<int>(count), static_cast<off_t>(offset));
      if (n < 0) {
        if (errno == EINTR) continue;
        return FileWriteError(path_, offset, errno);
      }
      if (n == 0) return Status::Io("writing " + path_ + " at offset " + std::to_string(offset) +
                                    ": the kernel accepted no bytes", EIO);
      offset += static_cast<uint64_t>(n);
      first = AdvanceIovecs(iov, first, static_cast<size_t>(n));
    }
    return Status::Ok();
  }

  Status PreadExact(void* buf, size_t len, uint64_t offset) override {
    FERRY_RETURN_IF_ERROR(CheckOpen());
    FERRY_RETURN_IF_ERROR(CheckRange(offset, len));
    auto* p = static_cast<char*>(buf);
    size_t got = 0;
    while (got < len) {
      ssize_t n = ::pread(fd_.get(), p + got, len - got, static_cast<off_t>(offset + got));
      if (n < 0) {
        if (errno == EINTR) {
          FERRY_RETURN_IF_ERROR(CheckOpen());
          continue;
        }
        return FileReadError(path_, offset + got, errno);
      }
      if (n == 0) {
        return Status::Protocol("file " + path_ + " ends at " + std::to_string(offset + got) + ", wanted bytes " +
                                std::to_string(offset) + ".." + std::to_string(offset + len));
      }
      got += static_cast<size_t>(n);
    }
    return Status::Ok();
  }

  Result<uint64_t> Size() const override {
    if (block_device_) {
      uint64_t bytes = 0;
      if (::ioctl(fd_.get(), BLKGETSIZE64, &bytes) != 0) return ErrnoStatus("getting the size of " + path_);
      return bytes;
    }
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0) return ErrnoStatus("getting the size of " + path_);
    return static_cast<uint64_t>(st.st_size);
  }

  Status Finish() override {
    FERRY_RETURN_IF_ERROR(CheckOpen());
    while (::fdatasync(fd_.get()) != 0) {
      if (errno == EINTR) continue;
      if (errno == ENOSPC) return ErrnoStatus("disk full flushing " + path_ + " to stable storage");
      return ErrnoStatus("flushing " + path_ + " to stable storage");
    }
    return Status::Ok();
  }

 private:
  Status CheckOpen() const {
    if (closed_.load()) return Status::Cancelled(Describe() + " was shut down");
    return Status::Ok();
  }

  Status CheckRange(uint64_t offset, uint64_t len) const {
    if (offset > kMaxOffset || len > kMaxOffset - offset) {
      return Status::InvalidArgument("bytes " + std::to_string(offset) + ".." + std::to_string(offset + len) +
                                     " of " + path_ + " lie beyond the largest file offset");
    }
    return Status::Ok();
  }

  UniqueFd fd_;
  std::string path_;
  std::atomic<uint64_t> pos_;
  std::atomic<bool> closed_{false};
  bool block_device_;
};

Result<uint64_t> BlockDeviceSize(int fd, const std::string& path) {
  uint64_t bytes = 0;
  if (::ioctl(fd, BLKGETSIZE64, &bytes) != 0) return ErrnoStatus("getting the size of " + path);
  return bytes;
}

}  // namespace

// ---------------------------------------------------------------------------
// Opening

Result<std::unique_ptr<FileChannel>> CreateFileForSave(const std::string& path, uint64_t offset) {
  if (path.empty()) return Status::InvalidArgument("empty file name");
  if (offset > kMaxOffset) return Status::InvalidArgument("file offset " + std::to_string(offset) + " is too large");
  // Read access lets the mapped-ram writer read back what it wrote; a file
  // we may only write to is still good enough for a plain save.
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid() && errno == EACCES) fd.Reset(::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644));
  if (!fd.valid()) return ErrnoStatus("creating " + path);

  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("checking " + path);
  bool block = S_ISBLK(st.st_mode);
  if (S_ISREG(st.st_mode)) {
    // Keep the prefix, drop whatever an older, longer file left behind.
    while (::ftruncate(fd.get(), static_cast<off_t>(offset)) != 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("truncating " + path + " to offset " + std::to_string(offset));
    }
  } else if (block) {
    FERRY_ASSIGN_OR_RETURN(uint64_t size, BlockDeviceSize(fd.get(), path));
    if (size < offset) {
      return Status::InvalidArgument("block device " + path + " holds " + std::to_string(size) +
                                     " bytes, less than offset " + std::to_string(offset));
    }
  } else {
    return Status::InvalidArgument(path + " is not a regular file or block device");
  }
  if (::lseek(fd.get(), static_cast<off_t>(offset), SEEK_SET) < 0) {
    return ErrnoStatus("seeking " + path + " to offset " + std::to_string(offset));
  }
  return std::unique_ptr<FileChannel>(std::make_unique<FileChannelImpl>(std::move(fd), path, offset, block));
}

Result<std::unique_ptr<FileChannel>> OpenFileForLoad(const std::string& path, uint64_t offset) {
  if (path.empty()) return Status::InvalidArgument("empty file name");
  if (offset > kMaxOffset) return Status::InvalidArgument("file offset " + std::to_string(offset) + " is too large");
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return ErrnoStatus("opening " + path);

  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("checking " + path);
  bool block = S_ISBLK(st.st_mode);
  uint64_t size = 0;
  if (S_ISREG(st.st_mode)) {
    size = static_cast<uint64_t>(st.st_size);
  } else if (block) {
    FERRY_ASSIGN_OR_RETURN(size, BlockDeviceSize(fd.get(), path));
  } else {
    return Status::InvalidArgument(path + " is not a regular file or block device");
  }
  if (size < offset) {
    return Status::InvalidArgument("file " + path + " is " + std::to_string(size) + " bytes long, shorter than offset " +
                                   std::to_string(offset));
  }
  if (::lseek(fd.get(), static_cast<off_t>(offset), SEEK_SET) < 0) {
    return ErrnoStatus("seeking " + path + " to offset " + std::to_string(offset));
  }
  return std::unique_ptr<FileChannel>(std::make_unique<FileChannelImpl>(std::move(fd), path, offset, block));
}

// ---------------------------------------------------------------------------
// FIFOs

bool IsFifo(const std::string& path) {
  struct stat st {};
  return !path.empty() && ::stat(path.c_str(), &st) == 0 && S_ISFIFO(st.st_mode);
}

Result<UniqueFd> OpenFifo(const std::string& path, bool write, std::chrono::milliseconds timeout,
                          std::stop_token stop) {
  using Clock = std::chrono::steady_clock;
  // Pause between attempts to open a FIFO for writing while it has no reader.
  constexpr std::chrono::milliseconds kRetry(50);
  const std::string name = "FIFO " + path;
  auto cancelled = [&] {
    return Status::Cancelled(std::string(write ? "waiting for a reader of " : "waiting for a writer on ") + name +
                             " cancelled");
  };
  if (stop.stop_requested()) return cancelled();

  // A stop request makes this eventfd readable, so poll() below wakes.
  UniqueFd wake(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake.valid()) return ErrnoStatus("eventfd for " + name);
  struct Signal {
    int fd;
    void operator()() const noexcept {
      uint64_t one = 1;
      if (::write(fd, &one, sizeof(one)) < 0) {
        // Only a full counter fails, and that still wakes poll().
      }
    }
  };
  std::stop_callback<Signal> on_stop(stop, Signal{wake.get()});

  const bool forever = timeout.count() <= 0 || timeout > std::chrono::hours(24 * 365);
  const Clock::time_point deadline = forever ? Clock::time_point::max() : Clock::now() + timeout;
  auto poll_ms = [&](std::chrono::milliseconds cap) {
    if (forever) return static_cast<int>(cap.count());
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    return static_cast<int>(std::clamp(left, std::chrono::milliseconds(0), cap).count());
  };
  constexpr std::chrono::milliseconds kStep = std::chrono::hours(1);

  UniqueFd fd;
  while (true) {
    fd.Reset(::open(path.c_str(), (write ? O_WRONLY : O_RDONLY) | O_NONBLOCK | O_CLOEXEC));
    if (fd.valid()) break;
    const int err = errno;
    if (err == EINTR) continue;
    // ENXIO: opening for writing while nobody has the FIFO open for reading.
    if (!(write && err == ENXIO)) return ErrnoStatus(std::string("opening ") + name, err);
    if (Clock::now() >= deadline) {
      return Status::Timeout("nobody opened " + name + " for reading within " + FormatDuration(timeout));
    }
    pollfd p{wake.get(), POLLIN, 0};
    if (::poll(&p, 1, poll_ms(kRetry)) > 0 || stop.stop_requested()) return cancelled();
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("checking " + path);
  if (!S_ISFIFO(st.st_mode)) return Status::InvalidArgument(path + " is no longer a FIFO");
  if (write) return fd;

  // A reader opened without a writer reads end-of-stream at once; wait
  // until a writer has sent something (or came and went: then the stream
  // is empty, which the loader reports).
  while (true) {
    pollfd p[2] = {{fd.get(), POLLIN, 0}, {wake.get(), POLLIN, 0}};
    const int rc = ::poll(p, 2, poll_ms(kStep));
    if (rc < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("waiting for a writer on " + name);
    }
    if (p[1].revents != 0 || stop.stop_requested()) return cancelled();
    if (p[0].revents != 0) return fd;
    if (Clock::now() >= deadline) {
      return Status::Timeout("nothing was written to " + name + " within " + FormatDuration(timeout));
    }
  }
}

// ---------------------------------------------------------------------------
// O_DIRECT

namespace {

// An existing file or block device: ask statx, else try an O_DIRECT open
// (read-only, so nothing about the file changes).
Result<DirectIoAlignment> ProbeExisting(const std::string& path, bool block) {
  DioReport r = StatxDio(AT_FDCWD, path.c_str(), 0);
  if (r.reported) return FromReport(r, path);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
  if (!fd.valid()) {
    if (errno == EINVAL) return DirectIoRefused(path);
    return ErrnoStatus("opening " + path + " for direct I/O");
  }
  if (block) {
    int sector = 0;
    if (::ioctl(fd.get(), BLKSSZGET, &sector) == 0 && sector > 0) {
      auto a = static_cast<uint32_t>(sector);
      return DirectIoAlignment{a, a};
    }
  }
  return GuessAlignment(r.blksize);
}

// A file that does not exist yet: try an anonymous file in its directory.
Result<DirectIoAlignment> ProbeInDirectory(const std::string& dir, const std::string& path) {
  UniqueFd fd(::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  if (!fd.valid() && errno != ENOENT && errno != ENOTDIR && errno != EACCES && errno != EROFS) {
    // No O_TMPFILE here: a named file, removed at once.
    std::string name = dir + "/.ferry-dio-probe-XXXXXX";
    int raw = ::mkostemp(name.data(), O_CLOEXEC);
    if (raw >= 0) {
      ::unlink(name.c_str());
      fd.Reset(raw);
    }
  }
  if (!fd.valid()) return ErrnoStatus("checking direct I/O support in " + dir + " for " + path);

  DioReport r = StatxDio(fd.get(), "", kAtEmptyPath);
  if (r.reported) return FromReport(r, path);
  int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags < 0) return ErrnoStatus("checking direct I/O support for " + path);
  if (::fcntl(fd.get(), F_SETFL, flags | O_DIRECT) != 0) {
    if (errno == EINVAL) return DirectIoRefused(path);
    return ErrnoStatus("checking direct I/O support for " + path);
  }
  return GuessAlignment(r.blksize);
}

}  // namespace

Result<DirectIoAlignment> ProbeDirectIo(const std::string& path) {
  if (path.empty()) return Status::InvalidArgument("empty file name");
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISREG(st.st_mode) || S_ISBLK(st.st_mode)) return ProbeExisting(path, S_ISBLK(st.st_mode));
    if (S_ISDIR(st.st_mode)) return ProbeInDirectory(path, path);
    return Status::Unsupported("O_DIRECT needs a regular file or block device, and " + path + " is neither");
  }
  if (errno != ENOENT) return ErrnoStatus("checking " + path);
  return ProbeInDirectory(ParentDir(path), path);
}

Result<UniqueFd> OpenDirect(const std::string& path, bool write) {
  if (path.empty()) return Status::InvalidArgument("empty file name");
  int flags = (write ? O_WRONLY : O_RDONLY) | O_DIRECT | O_CLOEXEC;
  UniqueFd fd(::open(path.c_str(), flags));
  if (!fd.valid()) {
    if (errno == EINVAL) return DirectIoRefused(path);
    return ErrnoStatus(std::string("opening ") + path + " for direct I/O " + (write ? "writes" : "reads"));
  }
  return fd;
}

}  // namespace ferry
