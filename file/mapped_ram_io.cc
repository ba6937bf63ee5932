// mapped-ram's page-data descriptors and I/O engine options, shared by the
// writer and the readers.
#include <fcntl.h>

#include "core/format.h"
#include "file/mapped_ram_internal.h"

namespace ferry::mapped_ram {

Status CheckDirectIo(const std::string& path) {
  FERRY_ASSIGN_OR_RETURN(DirectIoAlignment a, ProbeDirectIo(path));
  auto fits = [](uint32_t align) { return align == 0 || (kPageSize % align == 0); };
  if (!fits(a.memory) || !fits(a.offset)) {
    return Status::Unsupported("direct I/O on " + path + " needs " + std::to_string(a.memory) + "-byte memory and " +
                               std::to_string(a.offset) + "-byte offset alignment; mapped-ram pages are 4096 bytes");
  }
  return Status::Ok();
}

Result<UniqueFd> DataFd(FileChannel& file, bool write, bool direct) {
  if (direct) {
    auto fd = OpenDirect(file.path(), write);
    if (!fd.ok()) return fd.status().WithContext("mapped-ram direct I/O");
    return std::move(*fd);
  }
  if (file.fd() >= 0) {
    int fd = ::fcntl(file.fd(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return ErrnoStatus("duplicating the descriptor of " + file.path());
    return UniqueFd(fd);
  }
  int fd = ::open(file.path().c_str(), (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("opening " + file.path());
  return UniqueFd(fd);
}

IoEngineOptions EngineOptions(int fd, const FileOptions& o, std::vector<iovec> regions) {
  IoEngineOptions e;
  e.fd = fd;
  e.queue_depth = o.queue_depth;
  e.max_request = size_t{kMaxRunPages} * kPageSize;
  if (o.register_buffers) e.regions = std::move(regions);
  e.allow_uring = o.allow_uring;
  return e;
}

}  // namespace ferry::mapped_ram
