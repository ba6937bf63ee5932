// Channel: the byte pipe every transport implements (socket/, tls/, rdma/,
// file/). It is deliberately small: write a vector of buffers completely,
// read what is available, shut down.
//
// Thread safety: one reader thread and one writer thread may use a channel
// at the same time; Shutdown() may be called from any thread at any time and
// must wake both of them (their calls then fail with kClosed or kCancelled).
//
//   std::unique_ptr<Channel> ch = ...;
//   iovec iov[2] = {{hdr, 8}, {page, 4096}};
//   FERRY_RETURN_IF_ERROR(ch->WriteAll(iov));
//   FERRY_RETURN_IF_ERROR(ch->ReadExact(buf, 64));
#pragma once

#include <limits.h>
#include <sys/uio.h>

#include <cstddef>
#include <span>
#include <string>

#include "progress.h"
#include "status.h"

namespace ferry {

// The most iovecs one writev()/sendmsg() takes (IOV_MAX); longer lists are
// written in batches of this many.
#ifdef IOV_MAX
inline constexpr size_t kIovBatch = IOV_MAX;
#else
inline constexpr size_t kIovBatch = 1024;
#endif

class Channel {
 public:
  virtual ~Channel() = default;

  // Writes every byte of every buffer, in order, or fails. Partial writes are
  // retried inside. The iovec array itself may be modified (advanced).
  virtual Status WriteAll(std::span<iovec> iov) = 0;

  // Reads between 1 and len bytes into buf. Returns 0 only at a clean end of
  // stream (the peer closed after a complete write).
  virtual Result<size_t> ReadSome(void* buf, size_t len) = 0;

  // Wakes every thread blocked in WriteAll/ReadSome and makes later calls
  // fail. Idempotent; safe from any thread and from signal-free contexts.
  virtual void Shutdown() = 0;

  // Human-readable peer description for messages: "tcp:127.0.0.1:4444".
  virtual std::string Describe() const = 0;

  // The underlying descriptor, or -1 when there is none (TLS, RDMA).
  virtual int fd() const { return -1; }

  // Whether a ReadSome would return without waiting (bytes, end of stream or
  // an error to report), waiting up to wait_ms for it. The default polls
  // fd() (false without one); channels that buffer (tls/) override it.
  virtual bool WaitReadable(int wait_ms);

  // Bounds every blocking wait of this channel (core/progress.h): a call
  // fails with kTimeout ("no progress for N s") once neither it nor any
  // channel sharing the bound's clock moved a byte for bound.limit. Call
  // before the channel's I/O starts, not while another thread uses it.
  // Channels that never wait (regular files) ignore it.
  virtual void SetProgressBound(const ProgressBound& bound) { (void)bound; }
  virtual ProgressBound progress_bound() const { return {}; }

  // Reads exactly len bytes; a premature end of stream is kProtocol
  // ("stream ended after N of M bytes").
  Status ReadExact(void* buf, size_t len);

  // Convenience for one buffer.
  Status WriteAll(const void* buf, size_t len);
};

// Steps past `n` bytes that a writev/readv-like call transferred, starting at
// buffer `first`: fully used buffers (and empty ones) are skipped, a partly
// used one is advanced in place. Returns the index of the first buffer with
// bytes left (iov.size() when none).
size_t AdvanceIovecs(std::span<iovec> iov, size_t first, size_t n);

// A Channel over something with positions (a file): positioned I/O that
// does not move the stream position, and Seek for the stream itself.
// Positioned calls may come from several threads at once.
class SeekableChannel : public Channel {
 public:
  // The stream position: where the next WriteAll/ReadSome goes.
  virtual uint64_t position() const = 0;
  virtual Status Seek(uint64_t offset) = 0;
  // Writes all of iov at `offset`.
  virtual Status PwriteAll(std::span<iovec> iov, uint64_t offset) = 0;
  // Reads exactly len bytes at `offset`; kProtocol if the file is shorter.
  virtual Status PreadExact(void* buf, size_t len, uint64_t offset) = 0;
};

}  // namespace ferry
