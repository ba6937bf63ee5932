// Batched positioned page I/O. See io_engine.h for the interface.
//
// Layout of this file:
//   - shared pieces: request spans, error messages
//   - SyncEngine: pwritev/preadv, one merged request at a time
//   - UringEngine: io_uring with registered buffers, queue_depth in flight
//   - MakeIoEngine()
//
// Both engines only ever join requests; they never cut one. A short
// transfer is continued from wherever the kernel stopped, which for O_DIRECT
// is an aligned place (the kernel does not stop mid-block).
#include "file/io_engine.h"

#include "core/channel.h"

#include <fcntl.h>
#include <limits.h>
#include <liburing.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "file/file_channel.h"

namespace ferry {
namespace {

// The kernel refuses fixed buffers larger than this.
constexpr size_t kMaxFixedBuffer = size_t{1} << 30;
// Largest transfer put into one SQE (its length field is 32 bits). Page
// aligned, so a continuation after it starts on an aligned offset.
constexpr size_t kMaxSqeBytes = size_t{1} << 30;
constexpr unsigned kMaxQueueDepth = 4096;
constexpr uint64_t kMaxOffset = static_cast<uint64_t>(INT64_MAX);
// EAGAIN/EINTR completions are retried this many times per request.
constexpr int kMaxRetries = 100;

enum class Op { kWrite, kRead };

std::string ErrnoText(int err) {
  char buf[128];
  return strerror_r(err, buf, sizeof(buf));
}

// The file behind a descriptor, for messages: its path, or "fd N".
std::string DescribeFd(int fd) {
  std::string link = "/proc/self/fd/" + std::to_string(fd);
  char buf[PATH_MAX];
  ssize_t n = ::readlink(link.c_str(), buf, sizeof(buf) - 1);
  if (n <= 0) return "fd " + std::to_string(fd);
  return std::string(buf, static_cast<size_t>(n));
}

Status TransferError(Op op, int fd, uint64_t offset, int err) {
  std::string path = DescribeFd(fd);
  Status st = op == Op::kWrite ? FileWriteError(path, offset, err) : FileReadError(path, offset, err);
  if (err == EINVAL) {
    int flags = ::fcntl(fd, F_GETFL);
    if (flags >= 0 && (flags & O_DIRECT)) {
      st = st.WithContext("O_DIRECT I/O needs memory, length and offset aligned to the device block size");
    }
  }
  return st;
}

Status EndOfFile(int fd, uint64_t at, uint64_t start, uint64_t end) {
  return Status::Protocol("file " + DescribeFd(fd) + " ends at offset " + std::to_string(at) + ", wanted bytes " +
                          std::to_string(start) + ".." + std::to_string(end));
}

Status NoProgress(Op op, int fd, uint64_t offset) {
  return Status::Io(std::string(op == Op::kWrite ? "writing " : "reading ") + DescribeFd(fd) + " at offset " +
                        std::to_string(offset) + ": the kernel transferred no bytes",
                    EIO);
}

Status CheckRequest(const void* buf, size_t len, uint64_t offset) {
  if (buf == nullptr) return Status::InvalidArgument("I/O request without a buffer");
  if (offset > kMaxOffset || len > kMaxOffset - offset) {
    return Status::InvalidArgument("I/O request at offset " + std::to_string(offset) + " of " + std::to_string(len) +
                                   " bytes lies beyond the largest file offset");
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------
// SyncEngine: pwritev/preadv.
//
// Requests are collected while they continue each other in the file; those
// that also continue each other in memory are joined into one iovec, the
// rest become further iovecs of the same call. One syscall per run.

class SyncEngine final : public IoEngine {
 public:
  SyncEngine(int fd, size_t max_request) : fd_(fd), max_request_(max_request) {}
  ~SyncEngine() override { (void)Drain(); }

  Status Write(const void* buf, size_t len, uint64_t offset) override {
    return Queue(Op::kWrite, const_cast<void*>(buf), len, offset);
  }
  Status Read(void* buf, size_t len, uint64_t offset) override { return Queue(Op::kRead, buf, len, offset); }

  Status Drain() override {
    Flush();
    return error_;
  }

  std::string_view name() const override { return "pwritev"; }
  Stats stats() const override { return stats_; }

 private:
  Status Queue(Op op, void* buf, size_t len, uint64_t offset) {
    if (!error_.ok()) return error_;
    FERRY_RETURN_IF_ERROR(CheckRequest(buf, len, offset));
    if (len == 0) return Status::Ok();
    char* p = static_cast<char*>(buf);
    if (!iov_.empty()) {
      bool joins = op == op_ && offset == start_ + bytes_ && bytes_ + len <= max_request_;
      iovec& last = iov_.back();
      bool memory_joins = static_cast<char*>(last.iov_base) + last.iov_len == p;
      if (joins && (memory_joins || iov_.size() < kIovBatch)) {
        if (memory_joins) {
          last.iov_len += len;
        } else {
          iov_.push_back({p, len});
        }
        bytes_ += len;
        return Status::Ok();
      }
      Flush();
      if (!error_.ok()) return error_;
    }
    op_ = op;
    start_ = offset;
    bytes_ = len;
    iov_.push_back({p, len});
    return Status::Ok();
  }

  // Issues the collected run; records the first error.
  void Flush() {
    if (iov_.empty()) return;
    if (error_.ok()) {
      ++stats_.requests;
      size_t first = 0;
      uint64_t offset = start_;
      bool continuation = false;
      while (first < iov_.size()) {
        if (continuation) ++stats_.continuations;
        int count = static_cast<int>(std::min(iov_.size() - first, kIovBatch));
        ssize_t n = op_ == Op::kWrite ? ::pwritev(fd_, &iov_[first], count, static_cast<off_t>(offset))
                                      : ::preadv(fd_, &iov_[first], count, static_cast<off_t>(offset));
        if (n < 0) {
          if (errno == EINTR) continue;
          error_ = TransferError(op_, fd_, offset, errno);
          break;
        }
        if (n == 0) {
          error_ = op_ == Op::kRead ? EndOfFile(fd_, offset, start_, start_ + bytes_) : NoProgress(op_, fd_, offset);
          break;
        }
        stats_.bytes += static_cast<uint64_t>(n);
        offset += static_cast<uint64_t>(n);
        // Step over what was transferred.
        first = AdvanceIovecs(iov_, first, static_cast<size_t>(n));
        continuation = true;
      }
    }
    iov_.clear();
    bytes_ = 0;
  }

  int fd_;
  size_t max_request_;
  Status error_;
  Stats stats_;
  // The run being collected.
  Op op_ = Op::kWrite;
  uint64_t start_ = 0;
  size_t bytes_ = 0;
  std::vector<iovec> iov_;
};

// ---------------------------------------------------------------------------
// UringEngine

class UringEngine final : public IoEngine {
 public:
  UringEngine(int fd, unsigned queue_depth, size_t max_request)
      : fd_(fd), depth_(queue_depth), max_request_(max_request) {}

  ~UringEngine() override {
    if (!ring_ready_) return;
    (void)Drain();
    io_uring_queue_exit(&ring_);  // also drops the buffer registration
  }

  // 0 or a negative errno from io_uring_queue_init.
  int Init() {
    int rc = io_uring_queue_init(depth_, &ring_, 0);
    if (rc < 0) return rc;
    ring_ready_ = true;
    slots_.resize(depth_);
    free_.reserve(depth_);
    for (unsigned i = depth_; i > 0; --i) free_.push_back(i - 1);
    return 0;
  }

  // Registers the regions as fixed buffers, split into pieces the kernel
  // accepts. Returns a one-line notice when that failed, else "".
  std::string Register(const std::vector<iovec>& regions) {
    std::vector<iovec> pieces;
    uint64_t total = 0;
    for (const iovec& r : regions) {
      auto* base = static_cast<char*>(r.iov_base);
      size_t left = r.iov_len;
      while (left > 0) {
        size_t n = std::min(left, kMaxFixedBuffer);
        pieces.push_back({base, n});
        base += n;
        left -= n;
      }
      total += r.iov_len;
    }
    if (pieces.empty()) return "";
    int rc = io_uring_register_buffers(&ring_, pieces.data(), static_cast<unsigned>(pieces.size()));
    if (rc < 0) {
      std::string msg = "io_uring: registering " + std::to_string(total >> 20) + " MiB of memory as fixed buffers failed (" +
                        ErrnoText(-rc) + ")";
      if (rc == -ENOMEM || rc == -EPERM) msg += "; raise the locked-memory limit (ulimit -l) to use them";
      return msg + "; using unregistered buffers";
    }
    stats_.registered = true;
    buffers_.reserve(pieces.size());
    for (size_t i = 0; i < pieces.size(); ++i) {
      auto begin = reinterpret_cast<uintptr_t>(pieces[i].iov_base);
      buffers_.push_back({begin, begin + pieces[i].iov_len, static_cast<int>(i)});
    }
    std::sort(buffers_.begin(), buffers_.end(), [](const Buffer& a, const Buffer& b) { return a.begin < b.begin; });
    return "";
  }

  Status Write(const void* buf, size_t len, uint64_t offset) override {
    return Queue(Op::kWrite, const_cast<void*>(buf), len, offset);
  }
  Status Read(void* buf, size_t len, uint64_t offset) override { return Queue(Op::kRead, buf, len, offset); }

  Status Drain() override {
    if (has_pending_) {
      has_pending_ = false;
      if (error_.ok()) Issue(pending_);
    }
    while (!broken_ && in_flight_ > 0) SubmitAndReap(1);
    return error_;
  }

  std::string_view name() const override { return "io_uring"; }
  Stats stats() const override { return stats_; }

 private:
  struct Request {
    Op op = Op::kWrite;
    char* buf = nullptr;
    size_t len = 0;  // bytes still to transfer
    uint64_t offset = 0;
    int buf_index = -1;  // registered buffer holding [buf, buf+len), or -1
    uint64_t start = 0;  // where the request began, for messages
    uint64_t end = 0;
    int retries = 0;
  };
  struct Buffer {
    uintptr_t begin;
    uintptr_t end;
    int index;
  };

  // The registered buffer that holds all of [p, p+len), or -1.
  int FindBuffer(const char* p, size_t len) const {
    auto begin = reinterpret_cast<uintptr_t>(p);
    auto it = std::upper_bound(buffers_.begin(), buffers_.end(), begin,
                               [](uintptr_t v, const Buffer& b) { return v < b.begin; });
    if (it == buffers_.begin()) return -1;
    --it;
    if (begin >= it->end || len > it->end - begin) return -1;
    return it->index;
  }

  Status Queue(Op op, void* buf, size_t len, uint64_t offset) {
    if (!error_.ok()) return error_;
    FERRY_RETURN_IF_ERROR(CheckRequest(buf, len, offset));
    if (len == 0) return Status::Ok();
    char* p = static_cast<char*>(buf);
    int index = FindBuffer(p, len);
    if (has_pending_) {
      Request& r = pending_;
      // Joined requests must stay inside one registered buffer (or none).
      if (r.op == op && r.buf + r.len == p && r.offset + r.len == offset && r.len + len <= max_request_ &&
          r.buf_index == index) {
        r.len += len;
        r.end += len;
        return Status::Ok();
      }
      has_pending_ = false;
      Issue(pending_);
      if (!error_.ok()) return error_;
    }
    pending_ = Request{op, p, len, offset, index, offset, offset + len, 0};
    has_pending_ = true;
    return Status::Ok();
  }

  // Puts a request into a free slot, waiting for one if all are busy.
  void Issue(const Request& r) {
    while (!broken_ && free_.empty()) SubmitAndReap(1);
    if (broken_ || !error_.ok()) return;
    unsigned slot = free_.back();
    free_.pop_back();
    slots_[slot] = r;
    ++in_flight_;
    ++stats_.requests;
    if (r.buf_index >= 0) ++stats_.fixed_requests;
    Prepare(slot);
    // A full queue goes to the kernel at once; Drain() sends the rest.
    if (free_.empty()) SubmitAndReap(0);
  }

  void Prepare(unsigned slot) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      // Cannot happen while the ring has a place per slot; stay safe anyway.
      io_uring_submit(&ring_);
      sqe = io_uring_get_sqe(&ring_);
      if (sqe == nullptr) {
        Fail(Status::Internal("io_uring submission queue unexpectedly full"));
        broken_ = true;
        return;
      }
    }
    const Request& r = slots_[slot];
    auto n = static_cast<unsigned>(std::min(r.len, kMaxSqeBytes));
    if (r.op == Op::kWrite) {
      if (r.buf_index >= 0) {
        io_uring_prep_write_fixed(sqe, fd_, r.buf, n, r.offset, r.buf_index);
      } else {
        io_uring_prep_write(sqe, fd_, r.buf, n, r.offset);
      }
    } else {
      if (r.buf_index >= 0) {
        io_uring_prep_read_fixed(sqe, fd_, r.buf, n, r.offset, r.buf_index);
      } else {
        io_uring_prep_read(sqe, fd_, r.buf, n, r.offset);
      }
    }
    io_uring_sqe_set_data64(sqe, slot);
  }

  // Submits what is prepared, waits for `wait` completions and handles
  // every completion that is there.
  void SubmitAndReap(unsigned wait) {
    int rc = io_uring_submit_and_wait(&ring_, wait);
    if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
      // The ring itself failed: nothing more will complete that we could
      // wait for. Report it and stop using the ring.
      Fail(ErrnoStatus("io_uring submission on " + DescribeFd(fd_), -rc));
      broken_ = true;
      return;
    }
    io_uring_cqe* cqe = nullptr;
    while (io_uring_peek_cqe(&ring_, &cqe) == 0 && cqe != nullptr) {
      auto slot = static_cast<unsigned>(io_uring_cqe_get_data64(cqe));
      int res = cqe->res;
      io_uring_cqe_seen(&ring_, cqe);
      Complete(slot, res);
    }
  }

  void Complete(unsigned slot, int res) {
    Request& r = slots_[slot];
    if (res < 0) {
      if ((res == -EAGAIN || res == -EINTR) && error_.ok() && ++r.retries <= kMaxRetries) {
        Prepare(slot);
        return;
      }
      Fail(TransferError(r.op, fd_, r.offset, -res), r.offset);
      Release(slot);
      return;
    }
    if (res == 0) {
      Fail(r.op == Op::kRead ? EndOfFile(fd_, r.offset, r.start, r.end) : NoProgress(r.op, fd_, r.offset), r.offset);
      Release(slot);
      return;
    }
    auto n = static_cast<size_t>(res);
    stats_.bytes += n;
    r.buf += n;
    r.offset += n;
    r.len -= std::min(n, r.len);
    if (r.len == 0 || !error_.ok()) {
      Release(slot);
      return;
    }
    // Short transfer: send the rest (still inside the same fixed buffer).
    ++stats_.continuations;
    Prepare(slot);
  }

  void Release(unsigned slot) {
    free_.push_back(slot);
    --in_flight_;
  }

  // The error to report: the first one, except that among failed transfers
  // the one at the lowest file offset wins. Completions arrive in any
  // order, and on a full disk every request after the first that did not
  // fit fails too; the lowest names where the file stops being complete.
  void Fail(Status st, uint64_t offset = UINT64_MAX) {
    if (error_.ok() || (offset < error_offset_ && error_offset_ != UINT64_MAX)) {
      error_ = std::move(st);
      error_offset_ = offset;
    }
  }

  int fd_;
  unsigned depth_;
  size_t max_request_;
  io_uring ring_{};
  bool ring_ready_ = false;
  bool broken_ = false;
  std::vector<Request> slots_;
  std::vector<unsigned> free_;
  unsigned in_flight_ = 0;  // slots in use: prepared or submitted
  std::vector<Buffer> buffers_;
  Request pending_;
  bool has_pending_ = false;
  Status error_;
  uint64_t error_offset_ = UINT64_MAX;  // of the transfer error_ is about; UINT64_MAX: not a transfer error
  Stats stats_;
};

}  // namespace

Result<std::unique_ptr<IoEngine>> MakeIoEngine(const IoEngineOptions& options,
                                               const std::function<void(std::string_view)>& note) {
  if (options.fd < 0) return Status::InvalidArgument("I/O engine without a file descriptor");
  if (options.queue_depth == 0 || options.queue_depth > kMaxQueueDepth) {
    return Status::InvalidArgument("I/O queue depth " + std::to_string(options.queue_depth) +
                                   " is out of range (1.." + std::to_string(kMaxQueueDepth) + ")");
  }
  if (options.max_request == 0) return Status::InvalidArgument("I/O merge limit of 0 bytes");

  if (options.allow_uring) {
    auto engine = std::make_unique<UringEngine>(options.fd, options.queue_depth, options.max_request);
    int rc = engine->Init();
    if (rc == 0) {
      std::string notice = engine->Register(options.regions);
      if (!notice.empty() && note) note(notice);
      return std::unique_ptr<IoEngine>(std::move(engine));
    }
    if (note) note("io_uring unavailable (" + ErrnoText(-rc) + "); using pwritev/preadv");
  }
  return std::unique_ptr<IoEngine>(std::make_unique<SyncEngine>(options.fd, options.max_request));
}

}  // namespace ferry
