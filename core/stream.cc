#include "core/endian.h"
#include "core/stream.h"

#include <climits>
#include <cstring>
#include <span>

namespace ferry {
namespace {

// writev() takes at most IOV_MAX buffers; a full batch is flushed.
constexpr size_t kMaxIov = IOV_MAX;
// Queued-by-reference bytes that trigger a flush: big enough for few
// syscalls per GiB, small enough that a cancel is noticed quickly.
constexpr uint64_t kRefFlushBytes = 8 * 1024 * 1024;

}  // namespace

StreamWriter::StreamWriter(Channel* channel, size_t buffer_size)
    : channel_(channel), buf_(buffer_size) {
  iov_.reserve(kMaxIov);
}

void StreamWriter::MakeRoom(size_t n) {
  if (avail() >= n) return;
  (void)Flush();
  if (status_.ok() && avail() < n) SetError(Status::Internal("stream buffer too small"));
}

void StreamWriter::PutBe16(uint16_t v) {
  if (avail() < 2) MakeRoom(2);
  if (!status_.ok()) return;
  StoreBe16(&buf_[used_], v);
  used_ += 2;
  bytes_ += 2;
}

void StreamWriter::PutBe32(uint32_t v) {
  if (avail() < 4) MakeRoom(4);
  if (!status_.ok()) return;
  StoreBe32(&buf_[used_], v);
  used_ += 4;
  bytes_ += 4;
}

void StreamWriter::PutBe64(uint64_t v) {
  if (avail() < 8) MakeRoom(8);
  if (!status_.ok()) return;
  StoreBe64(&buf_[used_], v);
  used_ += 8;
  bytes_ += 8;
}

void StreamWriter::PutBytes(const void* p, size_t len) {
  const auto* src = static_cast<const uint8_t*>(p);
  while (len > 0 && status_.ok()) {
    if (avail() == 0) MakeRoom(1);
    if (!status_.ok()) return;
    size_t n = std::min(len, avail());
    std::memcpy(&buf_[used_], src, n);
    used_ += n;
    bytes_ += n;
    src += n;
    len -= n;
  }
}

void StreamWriter::PutName(const std::string& s) {
  if (s.size() > 255) {
    SetError(Status::Internal("name longer than 255 bytes: " + s));
    return;
  }
  Put8(static_cast<uint8_t>(s.size()));
  PutBytes(s.data(), s.size());
}

void StreamWriter::CloseSegment() {
  if (used_ > seg_start_) {
    iov_.push_back({&buf_[seg_start_], used_ - seg_start_});
    seg_start_ = used_;
  }
}

void StreamWriter::PutRef(const void* p, size_t len) {
  if (!status_.ok() || len == 0) return;
  CloseSegment();
  iov_.push_back({const_cast<void*>(p), len});
  ref_bytes_ += len;
  bytes_ += len;
  // Leave room for one buffer segment after this reference.
  if (iov_.size() + 2 >= kMaxIov || ref_bytes_ >= kRefFlushBytes) (void)Flush();
}

Status StreamWriter::Flush() {
  if (!status_.ok()) return status_;
  CloseSegment();
  if (!iov_.empty()) {
    Status s = channel_->WriteAll(std::span<iovec>(iov_.data(), iov_.size()));
    if (!s.ok()) SetError(std::move(s));
  }
  iov_.clear();
  used_ = 0;
  seg_start_ = 0;
  ref_bytes_ = 0;
  return status_;
}

StreamReader::StreamReader(Channel* channel, size_t buffer_size)
    : channel_(channel), buf_(buffer_size) {}

bool StreamReader::ReadMore(bool eof_ok) {
  if (!status_.ok()) return false;
  if (eof_) {
    if (!eof_ok) {
      SetError(Status::Protocol("stream ended unexpectedly at byte offset " + std::to_string(bytes_) +
                                " (" + channel_->Describe() + ")"));
    }
    return false;
  }
  Result<size_t> n = channel_->ReadSome(&buf_[end_], buf_.size() - end_);
  if (!n.ok()) {
    SetError(n.status());
    return false;
  }
  if (*n == 0) {
    eof_ = true;
    if (!eof_ok) {
      SetError(Status::Protocol("stream ended unexpectedly at byte offset " + std::to_string(bytes_) +
                                " (" + channel_->Describe() + ")"));
    }
    return false;
  }
  end_ += *n;
  return true;
}

bool StreamReader::Fill(size_t need) {
  if (end_ - pos_ >= need) return true;
  if (!status_.ok()) return false;
  // Move the unread tail to the front so the buffer has room.
  if (pos_ > 0) {
    std::memmove(&buf_[0], &buf_[pos_], end_ - pos_);
    end_ -= pos_;
    pos_ = 0;
  }
  while (end_ < need) {
    if (!ReadMore(false)) return false;
  }
  return true;
}

uint16_t StreamReader::GetBe16() {
  if (!Fill(2)) return 0;
  const uint16_t v = LoadBe16(&buf_[pos_]);
  pos_ += 2;
  bytes_ += 2;
  return v;
}

uint32_t StreamReader::GetBe32() {
  if (!Fill(4)) return 0;
  const uint32_t v = LoadBe32(&buf_[pos_]);
  pos_ += 4;
  bytes_ += 4;
  return v;
}

uint64_t StreamReader::GetBe64() {
  if (!Fill(8)) return 0;
  const uint64_t v = LoadBe64(&buf_[pos_]);
  pos_ += 8;
  bytes_ += 8;
  return v;
}

void StreamReader::GetBytes(void* dst, size_t len) {
  auto* out = static_cast<uint8_t*>(dst);
  if (!status_.ok()) return;
  size_t have = std::min(len, end_ - pos_);
  std::memcpy(out, &buf_[pos_], have);
  pos_ += have;
  bytes_ += have;
  out += have;
  len -= have;
  if (len == 0) return;
  // Buffer is empty now. Small remainders go through the buffer (one
  // syscall brings in the next records too); large ones go straight to dst.
  if (len < buf_.size() / 4) {
    if (!Fill(len)) return;
    std::memcpy(out, &buf_[pos_], len);
    pos_ += len;
    bytes_ += len;
    return;
  }
  pos_ = end_ = 0;
  while (len > 0) {
    if (eof_) {
      SetError(Status::Protocol("stream ended unexpectedly at byte offset " + std::to_string(bytes_)));
      return;
    }
    Result<size_t> n = channel_->ReadSome(out, len);
    if (!n.ok()) {
      SetError(n.status());
      return;
    }
    if (*n == 0) {
      eof_ = true;
      continue;
    }
    out += *n;
    len -= *n;
    bytes_ += *n;
  }
}

std::string StreamReader::GetName() {
  uint8_t len = Get8();
  std::string s(len, '\0');
  GetBytes(s.data(), len);
  if (!status_.ok()) return {};
  return s;
}

void StreamReader::Skip(size_t len) {
  while (len > 0 && status_.ok()) {
    if (pos_ == end_ && !Fill(1)) return;
    size_t n = std::min(len, end_ - pos_);
    pos_ += n;
    bytes_ += n;
    len -= n;
  }
}

int StreamReader::Peek8() {
  if (!status_.ok()) return -1;
  if (pos_ == end_) {
    pos_ = end_ = 0;
    if (!ReadMore(true)) return -1;
  }
  return buf_[pos_];
}

}  // namespace ferry
