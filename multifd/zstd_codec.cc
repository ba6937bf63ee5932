// zstd streaming codec for multifd packets. One context per channel and
// direction lives as long as the channel: the compressed data of a packet may
// refer back to pages of earlier packets on the same channel, so packets must
// be decoded in the order they were made, by the same decompressor.
#include "multifd/zstd_codec.h"

#include <zstd.h>

#include <string>

#include "core/ram_block.h"

namespace ferry::multifd {
namespace {

std::string ZstdError(size_t code) { return ZSTD_getErrorName(code); }

}  // namespace

size_t MaxCompressedSize(uint32_t pages) { return 2 * size_t{pages} * kPageSize; }

ZstdCompressor::ZstdCompressor(int level) : ctx_(ZSTD_createCCtx()), level_(level) {
  // zstd clamps an out-of-range level itself, so this cannot fail on a valid
  // context; a null context is reported by CompressPages.
  if (ctx_ != nullptr) ZSTD_CCtx_setParameter(ctx_, ZSTD_c_compressionLevel, level_);
}

ZstdCompressor::~ZstdCompressor() { ZSTD_freeCCtx(ctx_); }

Result<size_t> ZstdCompressor::CompressPages(const uint8_t* const* pages, uint32_t count, uint8_t* out,
                                             size_t out_cap) {
  if (ctx_ == nullptr) return Status::Internal("multifd zstd: could not allocate a compression context");
  if (count == 0) return size_t{0};

  ZSTD_outBuffer dst{out, out_cap, 0};
  for (uint32_t i = 0; i < count; ++i) {
    const bool last = i + 1 == count;
    const ZSTD_EndDirective mode = last ? ZSTD_e_flush : ZSTD_e_continue;
    ZSTD_inBuffer src{pages[i], kPageSize, 0};
    while (true) {
      const size_t left = ZSTD_compressStream2(ctx_, &dst, &src, mode);
      if (ZSTD_isError(left)) {
        // The stream is unusable now; start a clean session so the object is
        // at least in a defined state (the channel fails anyway).
        ZSTD_CCtx_reset(ctx_, ZSTD_reset_session_only);
        return Status::Internal("multifd zstd: compression failed: " + ZstdError(left));
      }
      // continue: done once zstd took the whole page; flush: once nothing
      // is left in its buffers either.
      const bool done = src.pos == src.size && (!last || left == 0);
      if (done) break;
      if (dst.pos == dst.size) {
        ZSTD_CCtx_reset(ctx_, ZSTD_reset_session_only);
        return Status::Internal("multifd zstd: output buffer of " + std::to_string(out_cap) +
                                " bytes is too small for " + std::to_string(count) + " pages");
      }
    }
  }
  return dst.pos;
}

ZstdDecompressor::ZstdDecompressor() : ctx_(ZSTD_createDCtx()) {}

ZstdDecompressor::~ZstdDecompressor() { ZSTD_freeDCtx(ctx_); }

Status ZstdDecompressor::DecompressPages(const uint8_t* in, size_t len, uint8_t* const* pages, uint32_t count) {
  if (ctx_ == nullptr) return Status::Internal("multifd zstd: could not allocate a decompression context");

  // On any error the stream is out of step with the sender; reset it so the
  // context is in a defined state, and report.
  auto fail = [this](std::string msg) {
    ZSTD_DCtx_reset(ctx_, ZSTD_reset_session_only);
    return Status::Protocol("multifd zstd: " + std::move(msg));
  };

  ZSTD_inBuffer src{in, len, 0};
  for (uint32_t i = 0; i < count; ++i) {
    ZSTD_outBuffer dst{pages[i], kPageSize, 0};
    while (dst.pos < dst.size) {
      const size_t in_before = src.pos;
      const size_t out_before = dst.pos;
      const size_t r = ZSTD_decompressStream(ctx_, &dst, &src);
      if (ZSTD_isError(r)) return fail("corrupt data: " + ZstdError(r));
      // No progress with room to write means the input is used up (zstd
      // may still emit buffered output with no new input, so only a call
      // that moved nothing ends the page).
      if (src.pos == in_before && dst.pos == out_before) {
        return fail("input ends early: decompressed only " + std::to_string(dst.pos) + " of " +
                    std::to_string(kPageSize) + " bytes of page " + std::to_string(i));
      }
    }
  }

  // Nothing may be left: zstd reads ahead, so data beyond the last page can
  // already sit decoded in its buffer, or still be in the input. Remaining
  // input may only be something that decodes to nothing (an empty block);
  // a 1-byte probe shows whether anything decodes to data.
  const size_t left_over = src.size - src.pos;
  auto excess = [&] {
    if (left_over == 0) return fail("input decodes to more than " + std::to_string(count) + " pages");
    return fail(std::to_string(left_over) + " bytes of input left over after " + std::to_string(count) + " pages");
  };
  uint8_t probe;
  while (true) {
    ZSTD_outBuffer dst{&probe, 1, 0};
    const size_t in_before = src.pos;
    const size_t r = ZSTD_decompressStream(ctx_, &dst, &src);
    if (ZSTD_isError(r)) return fail("corrupt data after the last page: " + ZstdError(r));
    if (dst.pos != 0) return excess();
    if (src.pos == in_before) break;  // no progress: done, or stuck on input zstd cannot use
  }
  if (src.pos != src.size) return excess();
  return Status::Ok();
}

}  // namespace ferry::multifd
