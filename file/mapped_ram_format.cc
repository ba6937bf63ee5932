// mapped-ram's format: the per-block header, the layout of a block's bitmap
// and pages in the file (file/mapped_ram.h draws it), the bitmap's words in
// file order, and what a plain stream has where a header should be.
#include <endian.h>

#include <algorithm>
#include <bit>
#include <string>

#include "core/endian.h"
#include "core/wire.h"
#include "file/mapped_ram_internal.h"

namespace ferry::mapped_ram {

void WordsToFile(std::vector<uint64_t>& words) {
  if constexpr (std::endian::native != std::endian::little) {
    for (uint64_t& w : words) w = htole64(w);
  }
}

void WordsFromFile(std::vector<uint64_t>& words) {
  if constexpr (std::endian::native != std::endian::little) {
    for (uint64_t& w : words) w = le64toh(w);
  }
}

std::string PlainStreamHint(const uint8_t raw[kHeaderSize]) {
  if (LoadBe64(raw) == wire::kRamEos) return "the end of the block list";
  const size_t len = raw[0];
  if (len == 0) return "";
  const size_t shown = std::min(len, kHeaderSize - 1);
  for (size_t i = 1; i <= shown; ++i) {
    if (raw[i] < 0x20 || raw[i] > 0x7e) return "";
  }
  if (1 + len + 8 <= kHeaderSize) {
    const uint64_t length = LoadBe64(raw + 1 + len);
    if (length == 0 || length % kPageSize) return "";
  }
  return "what looks like the entry of block '" + std::string(reinterpret_cast<const char*>(raw + 1), shown) +
         (shown < len ? "...'" : "'");
}

void EncodeHeader(const Header& h, uint8_t out[kHeaderSize]) {
  StoreBe32(out, h.version);
  StoreBe64(out + 4, h.page_size);
  StoreBe64(out + 12, h.bitmap_offset);
  StoreBe64(out + 20, h.pages_offset);
}

Result<Header> DecodeHeader(const uint8_t in[kHeaderSize]) {
  Header h;
  h.version = LoadBe32(in);
  h.page_size = LoadBe64(in + 4);
  h.bitmap_offset = LoadBe64(in + 12);
  h.pages_offset = LoadBe64(in + 20);
  if (h.version != kVersion) {
    std::string msg = "mapped-ram header version " + std::to_string(h.version) + " is not supported (expected " +
                      std::to_string(kVersion) + ")";
    if (h.version == 0) msg += ": is this a plain stream? load without -c mapped-ram=on";
    return Status::Protocol(std::move(msg));
  }
  if (h.page_size != kPageSize) {
    return Status::Protocol("mapped-ram header: page size " + std::to_string(h.page_size) + " is not 4096");
  }
  return h;
}

uint64_t BitmapBytes(uint64_t pages) { return (pages + 63) / 64 * 8; }

Header LayoutFor(uint64_t header_offset, uint64_t used_length) {
  Header h;
  h.version = kVersion;
  h.page_size = kPageSize;
  h.bitmap_offset = header_offset + kHeaderSize;
  h.pages_offset = RoundUp(h.bitmap_offset + BitmapBytes(used_length / kPageSize), kFileOffsetAlignment);
  return h;
}

}  // namespace ferry::mapped_ram
