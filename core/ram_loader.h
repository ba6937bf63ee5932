// RamLoader: the destination half of QEMU's "ram" section (version 4).
//
// Every record is checked before memory is touched: known flags in a valid
// combination, the block known and of the right size, the page inside the
// block. Errors name the block, the offset and the stream position.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/ram_block.h"
#include "core/section.h"

namespace ferry {

// Creates a block the stream names when the destination was not told its
// RAM size in advance (ferry recv without --ram).
class RamBlockAllocator {
 public:
  virtual ~RamBlockAllocator() = default;
  // Returns page-aligned memory of `length` bytes, all zeros.
  virtual Result<uint8_t*> Allocate(const std::string& name, uint64_t length) = 0;
};

struct RamLoaderCounters {
  uint64_t normal_pages = 0;
  uint64_t zero_pages = 0;
};

class RamLoader final : public SectionLoader {
 public:
  // `fresh_memory`: every block starts all zeros (a new mapping), so a ZERO
  // record for a page never written needs no write at all.
  RamLoader(RamBlockList& blocks, RamBlockAllocator* allocator, bool fresh_memory)
      : blocks_(blocks), allocator_(allocator), fresh_(fresh_memory) {}

  std::string idstr() const override { return "ram"; }
  uint32_t version() const override { return 4; }
  Status Load(StreamReader& r, uint32_t version) override;

  bool setup_seen() const { return setup_seen_; }
  const RamLoaderCounters& counters() const { return counters_; }

 private:
  Status LoadBlockList(StreamReader& r, uint64_t total);
  RamBlock* BlockFor(StreamReader& r, uint64_t flags, uint64_t at);
  size_t IndexOf(const RamBlock* b) const;

  RamBlockList& blocks_;
  RamBlockAllocator* allocator_;
  bool fresh_;
  bool setup_seen_ = false;
  RamBlock* last_block_ = nullptr;
  std::vector<DirtyBitmap> written_;  // per block, pages holding non-zero data
  RamLoaderCounters counters_;
};

}  // namespace ferry
