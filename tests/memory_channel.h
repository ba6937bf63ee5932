// In-memory Channel test double for unit tests of stream logic: writes
// append to a byte vector; reads come from a fixed byte vector, optionally
// in small pieces to exercise partial reads.
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/channel.h"

namespace ferry::test {

class MemoryChannel final : public Channel {
 public:
  MemoryChannel() = default;
  explicit MemoryChannel(std::vector<uint8_t> input, size_t max_read = SIZE_MAX)
      : in_(std::move(input)), max_read_(max_read) {}

  Status WriteAll(std::span<iovec> iov) override {
    if (shut_) return Status::Cancelled("shut down");
    for (const iovec& v : iov) {
      auto* p = static_cast<const uint8_t*>(v.iov_base);
      out_.insert(out_.end(), p, p + v.iov_len);
    }
    ++writes_;
    return Status::Ok();
  }
  Result<size_t> ReadSome(void* buf, size_t len) override {
    if (shut_) return Status::Cancelled("shut down");
    size_t n = std::min({len, in_.size() - pos_, max_read_});
    if (n == 0) return size_t{0};
    std::memcpy(buf, in_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  void Shutdown() override { shut_ = true; }
  std::string Describe() const override { return "memory"; }

  std::vector<uint8_t>& out() { return out_; }
  // Reads the input again from the start.
  void Rewind() { pos_ = 0; }
  size_t writes() const { return writes_; }

 private:
  std::vector<uint8_t> in_;
  size_t pos_ = 0;
  size_t max_read_;
  std::vector<uint8_t> out_;
  size_t writes_ = 0;
  bool shut_ = false;
};

}  // namespace ferry::test
