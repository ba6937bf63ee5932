// RamSaver: the source half of QEMU's "ram" section (version 4).
//
//   setup     be64 total|MEM_SIZE, per block {u8 len, name, be64 length}, EOS
//   iterate   page records for dirty pages, EOS
//   complete  the remaining dirty pages, EOS
//
// The saver walks each block's dirty bitmap in order, clears a page's bit
// before reading the page, and gives the page to its PageSink. With
// `detect_zero` it tests pages itself (QEMU 7.2's "legacy" detection) and
// sends zero pages as ZERO records. Pages whose RamBlock::known_zero bit is
// set are never read: they go to the sink as zero pages in every mode.
#pragma once

#include <cstdint>

#include "core/page_sink.h"
#include "core/ram_block.h"
#include "core/stream.h"

namespace ferry {

// One RAM page record of the main stream: be64 offset|PAGE or ZERO, with
// CONTINUE when `block` is `last_block` (else the block name follows), then
// the page, or for ZERO the fill byte 0. `last_block` is the stream's
// CONTINUE state (reset to null at every section start).
void PutPageRecord(StreamWriter& w, const RamBlock*& last_block, RamBlock& block, uint64_t page_index, bool zero);

struct RamSaverCounters {
  uint64_t normal_pages = 0;
  uint64_t zero_pages = 0;
};

class RamSaver {
 public:
  RamSaver(RamBlockList& blocks, StreamWriter& w, PageSink& sink, bool detect_zero)
      : blocks_(blocks), w_(w), sink_(sink), detect_zero_(detect_zero) {}

  // The peer is ferry: runs of known-zero pages may go as one ZERO_RUN
  // record and runs of data pages as one PAGE_RUN record (if the sink has
  // them) instead of one record per page.
  void SetRunRecords(bool on) { zero_runs_ = page_runs_ = on; }
  // Pages in one PAGE_RUN record at most (2 MiB).
  static constexpr uint64_t kMaxPageRun = 512;
  // Marks every page dirty (the first round sends all of RAM).
  void MarkAllDirty();
  // Writes the setup data of the START section (then call EndSetupSection).
  Status WriteSetup();
  // Sends dirty pages from the round cursor until `budget` bytes went into
  // the main stream or the round ends. Returns true when the round is done
  // (cursor wrapped; call StartRound after the next dirty sync).
  bool SendSome(uint64_t budget);
  // Restarts the cursor at the first block.
  void StartRound() { block_ = 0; page_ = 0; }
  // Section framing around the page records; see PageSink for the order of
  // the sink hooks. Each End* writes EOS last.
  void BeginSection() { sink_.BeginSection(); }
  Status EndSetupSection();
  // `round_done`: the pass over the dirty bitmap finished in this section.
  Status EndIterateSection(bool round_done);
  Status EndCompleteSection();

  uint64_t dirty_pages() const;
  // Bytes sent so far: the main stream plus what the sink took for its own
  // channels.
  uint64_t bytes() const { return w_.bytes() + sink_.accounted_bytes(); }
  const RamSaverCounters& counters() const { return counters_; }

 private:
  // The end of the run of dirty data pages that starts at `first` (a dirty
  // data page whose bit is already cleared), at most `max_pages` long.
  uint64_t DataRunEnd(RamBlock& b, uint64_t first, uint64_t max_pages) const;

  RamBlockList& blocks_;
  StreamWriter& w_;
  PageSink& sink_;
  bool detect_zero_;
  bool zero_runs_ = false;
  bool page_runs_ = false;
  size_t block_ = 0;
  uint64_t page_ = 0;
  RamSaverCounters counters_;
};

}  // namespace ferry
