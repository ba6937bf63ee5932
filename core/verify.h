// ferry's verification section ("ferry-verify", version 2; capability
// "verify", never sent to QEMU). After the RAM, the source describes its
// final memory; the destination compares while reading.
//
//   be32 block count
//   per block: u8 len, name, be64 used_length,
//              runs covering the block's pages in order, each
//                be32 zeros    pages whose hash is that of a zero page
//                be32 listed   pages whose hashes follow
//                listed x be64 XXH3-64 of each of those pages
//              be64 high, be64 low of XXH3-128 over the runs (as sent)
//
// Per-page hashes let the destination name the first differing page and
// need no memory of their own (it hashes its page as each value arrives);
// the 128-bit digest over them guards the list. Runs keep a sparse guest's
// list small: zero pages cost nothing, the others 8 bytes per 4 KiB page
// (0.2%). Version 1 (still loaded: files saved earlier) listed every hash.
#pragma once

#include <string>

#include "core/ram_block.h"
#include "core/section.h"

namespace ferry {

// The per-page hash the section carries (XXH3-64 of the 4096 bytes), and
// its value for a zero page. Destination writers record PageHash of each
// page they write in RamBlock::page_hashes (ZeroPageHash for a page they
// zero), so that verification need not read the page again.
uint64_t PageHash(const uint8_t* page);
uint64_t ZeroPageHash();

// Writes the section payload for `blocks` (guest paused).
void WriteVerifyPayload(StreamWriter& w, const RamBlockList& blocks);

class VerifyLoader final : public SectionLoader {
 public:
  explicit VerifyLoader(const RamBlockList& blocks) : blocks_(blocks) {}
  std::string idstr() const override;
  uint32_t version() const override;
  // Fails with kMismatch naming the block and first differing page.
  Status Load(StreamReader& r, uint32_t version) override;
  bool seen() const { return seen_; }
  bool verified() const { return verified_; }

 private:
  const RamBlockList& blocks_;
  bool seen_ = false;
  bool verified_ = false;
};

}  // namespace ferry
