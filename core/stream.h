// Buffered big-endian reader and writer over a Channel.
//
// Errors are sticky: after the first failure every Put is a no-op, every Get
// returns 0, and status() reports the first error ("first error wins"). This
// keeps record encoders and decoders flat; check status() at record
// boundaries.
//
// Pages are queued by reference (PutRef) so the writer hands guest memory
// straight to writev() without copying it.
//
//   StreamWriter w(channel);
//   w.PutBe64(offset | wire::kRamPage);
//   w.PutRef(host_page, 4096);   // not copied: must stay mapped until Flush
//   FERRY_RETURN_IF_ERROR(w.Flush());
//
//   StreamReader r(channel);
//   uint64_t hdr = r.GetBe64();
//   r.GetBytes(dst, 4096);
//   FERRY_RETURN_IF_ERROR(r.status());
#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "channel.h"
#include "status.h"

namespace ferry {

class StreamWriter {
 public:
  static constexpr size_t kDefaultBuffer = 256 * 1024;
  explicit StreamWriter(Channel* channel, size_t buffer_size = kDefaultBuffer);
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  void Put8(uint8_t v) {
    if (avail() < 1) MakeRoom(1);
    if (!status_.ok()) return;
    buf_[used_++] = v;
    bytes_ += 1;
  }
  void PutBe16(uint16_t v);
  void PutBe32(uint32_t v);
  void PutBe64(uint64_t v);
  // Copies len bytes into the buffer.
  void PutBytes(const void* p, size_t len);
  // A u8 length then the bytes (section and block names; len <= 255).
  void PutName(const std::string& s);
  // Queues len bytes at p without copying. p must stay valid until the next
  // Flush() returns (or the writer is destroyed).
  void PutRef(const void* p, size_t len);

  // Writes everything queued. Returns the sticky status.
  Status Flush();

  const Status& status() const { return status_; }
  void SetError(Status s) {
    if (status_.ok()) status_ = std::move(s);
  }
  // Total bytes put (queued or written).
  uint64_t bytes() const { return bytes_; }
  // Bytes queued by reference since the last flush.
  uint64_t pending_ref_bytes() const { return ref_bytes_; }
  // The channel written to.
  Channel* channel() const { return channel_; }

 private:
  size_t avail() const { return buf_.size() - used_; }
  void MakeRoom(size_t n);
  void CloseSegment();

  Channel* channel_;
  std::vector<uint8_t> buf_;
  size_t used_ = 0;
  size_t seg_start_ = 0;  // start of the buffer bytes not yet in iov_
  std::vector<iovec> iov_;
  uint64_t ref_bytes_ = 0;
  uint64_t bytes_ = 0;
  Status status_;
};

class StreamReader {
 public:
  static constexpr size_t kDefaultBuffer = 1024 * 1024;
  explicit StreamReader(Channel* channel, size_t buffer_size = kDefaultBuffer);
  StreamReader(const StreamReader&) = delete;
  StreamReader& operator=(const StreamReader&) = delete;

  uint8_t Get8() {
    if (pos_ == end_ && !Fill(1)) return 0;
    bytes_ += 1;
    return buf_[pos_++];
  }
  uint16_t GetBe16();
  uint32_t GetBe32();
  uint64_t GetBe64();
  // Reads exactly len bytes into dst. Large reads bypass the buffer.
  void GetBytes(void* dst, size_t len);
  // Reads a u8 length and that many bytes.
  std::string GetName();
  // Skips len bytes.
  void Skip(size_t len);
  // The next byte without consuming it; -1 at a clean end of stream (not an
  // error) or after an error.
  int Peek8();

  const Status& status() const { return status_; }
  void SetError(Status s) {
    if (status_.ok()) status_ = std::move(s);
  }
  // Bytes consumed so far: the stream offset of the next byte.
  uint64_t offset() const { return bytes_; }
  // Bytes read from the channel but not consumed yet. The channel position
  // minus this is where the next byte comes from.
  size_t buffered() const { return end_ - pos_; }
  // Forgets buffered bytes: call after moving the channel (SeekableChannel)
  // so the next read comes from the new position. `skipped` bytes are added
  // to offset() so stream offsets in messages stay meaningful.
  void DiscardBuffer(uint64_t skipped) {
    pos_ = end_ = 0;
    bytes_ += skipped;
  }

 private:
  // Ensures at least `need` bytes are buffered (need <= buffer size); on
  // failure sets the error and returns false.
  bool Fill(size_t need);
  bool ReadMore(bool eof_ok);

  Channel* channel_;
  std::vector<uint8_t> buf_;
  size_t pos_ = 0;
  size_t end_ = 0;
  uint64_t bytes_ = 0;
  bool eof_ = false;
  Status status_;
};

}  // namespace ferry
