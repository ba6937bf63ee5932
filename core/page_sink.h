// PageSink: where the RAM saver puts page contents. Chosen once at setup
// (StreamSink here; multifd, mapped-ram and RDMA sinks in their folders), so
// the page loop never asks which transport is in use.
//
// The saver owns the main stream's RAM section framing; the sink only adds
// page records (or hands pages to its own channels).
#pragma once

#include <cstdint>

#include "core/ram_block.h"
#include "core/status.h"
#include "core/stream.h"

namespace ferry {

class PageSink {
 public:
  virtual ~PageSink() = default;
  // Called when a RAM section starts in the main stream.
  virtual void BeginSection() {}
  // A page to send; `zero` says the saver already found it all zeros.
  virtual void Page(RamBlock& block, uint64_t page_index, bool zero) = 0;
  // Called before the saver closes a RAM section (writes EOS). Pages handed
  // over must be on their way (or written) when this returns OK.
  virtual Status EndSection() { return Status::Ok(); }
};

// Page records in the main stream: be64 offset|flags, the block name unless
// CONTINUE, then a zero byte or the page itself (queued by reference).
class StreamSink final : public PageSink {
 public:
  explicit StreamSink(StreamWriter& w) : w_(w) {}
  void BeginSection() override { last_block_ = nullptr; }
  void Page(RamBlock& block, uint64_t page_index, bool zero) override;

 private:
  StreamWriter& w_;
  const RamBlock* last_block_ = nullptr;
};

}  // namespace ferry
