// zstd for multifd, as QEMU does it: one compression stream per channel that
// lives across packets; each packet's pages are fed in order and the stream
// is flushed (ZSTD_e_flush) at the packet's end, so a packet decodes on its
// own given the previous ones of the same channel.
//
//   ZstdCompressor c(level);
//   FERRY_ASSIGN_OR_RETURN(size_t n, c.CompressPages(pages, count, out, out_cap));
//   ZstdDecompressor d;
//   FERRY_RETURN_IF_ERROR(d.DecompressPages(in, n, dst_pages, count));
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/status.h"

typedef struct ZSTD_CCtx_s ZSTD_CCtx;
typedef struct ZSTD_DCtx_s ZSTD_DCtx;

namespace ferry::multifd {

// Output room a packet of `pages` pages may need (QEMU uses 2 x raw size).
size_t MaxCompressedSize(uint32_t pages);

class ZstdCompressor {
 public:
  explicit ZstdCompressor(int level);
  ~ZstdCompressor();
  ZstdCompressor(const ZstdCompressor&) = delete;
  ZstdCompressor& operator=(const ZstdCompressor&) = delete;
  // Compresses `count` 4 KiB pages (pointers) into out; returns the size.
  Result<size_t> CompressPages(const uint8_t* const* pages, uint32_t count, uint8_t* out, size_t out_cap);

 private:
  ZSTD_CCtx* ctx_;
  int level_;
};

class ZstdDecompressor {
 public:
  ZstdDecompressor();
  ~ZstdDecompressor();
  ZstdDecompressor(const ZstdDecompressor&) = delete;
  ZstdDecompressor& operator=(const ZstdDecompressor&) = delete;
  // Decompresses exactly `count` pages of 4 KiB from in[0..len) into the
  // given destinations; kProtocol if the data is corrupt, too short, or
  // longer than `count` pages.
  Status DecompressPages(const uint8_t* in, size_t len, uint8_t* const* pages, uint32_t count);

 private:
  ZSTD_DCtx* ctx_;
};

}  // namespace ferry::multifd
