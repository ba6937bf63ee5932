#include "core/ram_saver.h"

#include <algorithm>

#include "core/wire.h"
#include "core/zero_page.h"

namespace ferry {

namespace {

// A RAM record's header: offset and flags, then the block's name unless it
// is the previous record's block (CONTINUE).
void PutRecordHeader(StreamWriter& w, const RamBlock*& last_block, RamBlock& block, uint64_t page_index,
                     uint64_t flags) {
  const uint64_t hdr = (page_index << kPageShift) | flags;
  if (&block == last_block) {
    w.PutBe64(hdr | wire::kRamContinue);
  } else {
    w.PutBe64(hdr);
    w.PutName(block.name);
    last_block = &block;
  }
}

}  // namespace

void PutPageRecord(StreamWriter& w, const RamBlock*& last_block, RamBlock& block, uint64_t page_index, bool zero) {
  PutRecordHeader(w, last_block, block, page_index, zero ? wire::kRamZero : wire::kRamPage);
  if (zero) {
    w.Put8(0);
  } else {
    w.PutRef(block.page(page_index), kPageSize);
  }
}

void StreamSink::Page(RamBlock& block, uint64_t page_index, bool zero) {
  PutPageRecord(w_, last_block_, block, page_index, zero);
}

bool StreamSink::ZeroRun(RamBlock& block, uint64_t first, uint64_t count) {
  PutRecordHeader(w_, last_block_, block, first, wire::kRamZeroRun);
  w_.PutBe64(count);
  return true;
}

void RamSaver::MarkAllDirty() {
  for (RamBlock& b : blocks_) b.dirty.SetAll();
}

Status RamSaver::WriteSetup() {
  w_.PutBe64(blocks_.total_bytes() | wire::kRamMemSize);
  for (RamBlock& b : blocks_) {
    w_.PutName(b.name);
    w_.PutBe64(b.used_length);
    FERRY_RETURN_IF_ERROR(sink_.OnBlockListed(b));
  }
  return w_.status();
}

bool StreamSink::PageRun(RamBlock& block, uint64_t first, uint64_t count) {
  PutRecordHeader(w_, last_block_, block, first, wire::kRamPageRun);
  w_.PutBe64(count);
  w_.PutRef(block.page(first), count * kPageSize);
  return true;
}

uint64_t RamSaver::DataRunEnd(RamBlock& b, uint64_t first, uint64_t max_pages) const {
  // Dirty pages after `first`, up to the run limit, that hold data: not known
  // to be zero and, where the saver looks for zeros, not zero.
  const uint64_t most = std::clamp<uint64_t>(max_pages, 1, kMaxPageRun);
  const uint64_t limit = b.dirty.FindNextClear(first + 1, std::min(b.pages(), first + most));
  uint64_t end = first + 1;
  while (end < limit && !b.KnownZero(end) && !(detect_zero_ && IsZeroPage(b.page(end)))) ++end;
  return end;
}

bool RamSaver::SendSome(uint64_t budget) {
  const uint64_t start = bytes();
  while (block_ < blocks_.size()) {
    RamBlock& b = blocks_[block_];
    const uint64_t n = b.pages();
    while (true) {
      uint64_t i = b.dirty.FindNextSet(page_);
      if (i >= n) break;
      b.dirty.Clear(i);
      page_ = i + 1;
      // A page known to be zero (never populated) is not read: reading it
      // would populate it. The sink gets it as zero whoever detects zeros
      // (the multifd sink then puts it in a packet's zero list, or sends it
      // as data from a zero buffer under zero-page-detection=none).
      const bool known_zero = b.KnownZero(i);
      if (known_zero && zero_runs_) {
        // The whole run of dirty, known-zero pages from here in one record:
        // the known-zero run first, then dirty bits only that far (bit i
        // itself was cleared above). A sink without the record says so once.
        const uint64_t kz_end = b.known_zero.FindNextClear(i);
        const uint64_t end = b.dirty.FindNextClear(i + 1, kz_end);
        if (end - i > 1 && !sink_.ZeroRun(b, i, end - i)) zero_runs_ = false;
        if (end - i > 1 && zero_runs_) {
          b.dirty.ClearRange(i, end - i);
          page_ = end;
          if (detect_zero_) {
            counters_.zero_pages += end - i;
          } else {
            counters_.normal_pages += end - i;
          }
          if (!w_.status().ok()) return false;
          if (bytes() - start >= budget) return false;
          continue;
        }
      }
      bool zero = known_zero || (detect_zero_ && IsZeroPage(b.page(i)));
      if (!zero && page_runs_) {
        // This data page and the dirty data pages right after it in one
        // record (bit i was cleared above), no more than the budget has
        // room for (max-bandwidth's windows are small).
        const uint64_t sent = bytes() - start;
        const uint64_t end = DataRunEnd(b, i, sent < budget ? (budget - sent) / kPageSize : 1);
        if (end - i > 1 && !sink_.PageRun(b, i, end - i)) page_runs_ = false;
        if (end - i > 1 && page_runs_) {
          b.dirty.ClearRange(i + 1, end - i - 1);
          page_ = end;
          counters_.normal_pages += end - i;
          if (!w_.status().ok()) return false;
          if (bytes() - start >= budget) return false;
          continue;
        }
      }
      if (zero && detect_zero_) {
        ++counters_.zero_pages;
      } else {
        ++counters_.normal_pages;
      }
      sink_.Page(b, i, zero);
      if (!w_.status().ok()) return false;
      if (bytes() - start >= budget) return false;
    }
    ++block_;
    page_ = 0;
  }
  return true;
}

Status RamSaver::EndSetupSection() {
  FERRY_RETURN_IF_ERROR(sink_.OnSetupEnd());
  FERRY_RETURN_IF_ERROR(sink_.OnSectionEnd());
  w_.PutBe64(wire::kRamEos);
  return w_.status();
}

Status RamSaver::EndIterateSection(bool round_done) {
  if (round_done) FERRY_RETURN_IF_ERROR(sink_.OnRoundEnd());
  FERRY_RETURN_IF_ERROR(sink_.OnSectionEnd());
  w_.PutBe64(wire::kRamEos);
  return w_.status();
}

Status RamSaver::EndCompleteSection() {
  FERRY_RETURN_IF_ERROR(sink_.OnComplete());
  FERRY_RETURN_IF_ERROR(sink_.OnSectionEnd());
  w_.PutBe64(wire::kRamEos);
  return w_.status();
}

uint64_t RamSaver::dirty_pages() const {
  uint64_t n = 0;
  for (const RamBlock& b : blocks_) n += b.dirty.Count();
  return n;
}

}  // namespace ferry
