// PageSink: where the RAM saver puts page contents. Chosen once at setup
// (StreamSink here; MultifdSink in multifd/, later mapped-ram and RDMA
// sinks), so the page loop never asks which transport is in use.
//
// The saver owns the main stream's RAM section framing and calls the sink's
// hooks in this order inside every RAM section, before it writes EOS:
//
//   START (setup):   BeginSection, {block entry, OnBlockListed}..., OnSetupEnd,
//                    OnSectionEnd
//   PART (iterate):  BeginSection, Page..., [OnRoundEnd if the pass over
//                    the dirty bitmap finished], OnSectionEnd
//   END (complete):  BeginSection, Page..., OnComplete, OnSectionEnd
//
// A sink may write to the main stream in the hooks (multifd's
// MULTIFD_FLUSH record) — always from the migration thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ram_block.h"
#include "stats.h"
#include "status.h"
#include "stream.h"

namespace ferry {

class PageSink {
 public:
  virtual ~PageSink() = default;
  virtual void BeginSection() {}
  // A page to send; `zero` says the saver already found it all zeros (only
  // when the saver detects zero pages; see PageSinkFactory). Errors of the
  // sink's own threads surface through the main StreamWriter's status (the
  // sink sets it from the migration thread), so the page loop stays flat.
  virtual void Page(RamBlock& block, uint64_t page_index, bool zero) = 0;
  // `count` >= 1 pages from `first` on, all known to be zero (never
  // populated), in one go. Returns false when this sink has no such record
  // (then the saver gives it the pages one by one). Only called when the
  // peer is ferry (RamSaver::SetRunRecords).
  virtual bool ZeroRun(RamBlock& block, uint64_t first, uint64_t count) {
    (void)block;
    (void)first;
    (void)count;
    return false;
  }
  // `count` >= 2 dirty data pages from `first` on, none zero (as far as the
  // saver tests), in one go. Returns false when this sink has no such record
  // (then the saver gives it the pages one by one). Only called when the
  // peer is ferry (RamSaver::SetRunRecords).
  virtual bool PageRun(RamBlock& block, uint64_t first, uint64_t count) {
    (void)block;
    (void)first;
    (void)count;
    return false;
  }
  // After each block's entry {name, length} in the setup list (mapped-ram
  // writes its per-block header here and moves the main stream past the
  // block's page region).
  virtual Status OnBlockListed(RamBlock& block) {
    (void)block;
    return Status::Ok();
  }
  virtual Status OnSetupEnd() { return Status::Ok(); }
  virtual Status OnRoundEnd() { return Status::Ok(); }
  virtual Status OnComplete() { return Status::Ok(); }
  virtual Status OnSectionEnd() { return Status::Ok(); }
  // Bytes the sink has taken for its own channels so far (not the main
  // stream's): page data and packet headers. The source counts them for the
  // rate limit, slice sizes, bandwidth and progress. Migration thread.
  virtual uint64_t accounted_bytes() const { return 0; }
  // Wakes every thread of the sink blocked on I/O; later calls fail. Any
  // thread (MigrationSource::Cancel).
  virtual void Abort() {}
  // Adds the sink's counters (multifd bytes, per-channel, zero pages found by
  // workers). Any thread.
  virtual void FillStats(MigrationStats& stats) const { (void)stats; }
};

// Builds the sink for one migration, once, at setup.
class PageSinkFactory {
 public:
  virtual ~PageSinkFactory() = default;
  virtual Result<std::unique_ptr<PageSink>> Make(StreamWriter& main) = 0;
  // True: the saver tests pages for zeros itself and sends ZERO records in
  // the main stream (QEMU 7.2's "legacy" detection).
  virtual bool saver_detects_zero() const { return true; }
  // Capabilities both ends must agree on that this sink implies, announced
  // in the configuration section (mapped-ram's "mapped-ram").
  virtual std::vector<std::string> announced_capabilities() const { return {}; }
};

// Page records in the main stream: be64 offset|flags, the block name unless
// CONTINUE, then a zero byte or the page itself (queued by reference).
class StreamSink final : public PageSink {
 public:
  explicit StreamSink(StreamWriter& w) : w_(w) {}
  void BeginSection() override { last_block_ = nullptr; }
  void Page(RamBlock& block, uint64_t page_index, bool zero) override;
  // One ZERO_RUN record (ferry's extension, wire::kRamZeroRun).
  bool ZeroRun(RamBlock& block, uint64_t first, uint64_t count) override;
  // One PAGE_RUN record (ferry's extension, wire::kRamPageRun).
  bool PageRun(RamBlock& block, uint64_t first, uint64_t count) override;

 private:
  StreamWriter& w_;
  const RamBlock* last_block_ = nullptr;
};

}  // namespace ferry
