// XXH3-64 of one 4 KiB page, one variant per instruction set; PageHash
// (core/verify.cc) picks the best the CPU runs, once. Every variant returns
// the same value: XXH3's result does not depend on the vector width.
//
// Debian's libxxhash is built for baseline x86-64 (SSE2). Measured here on
// 1 GiB of random pages: 177 ms with it, 105 ms with the AVX2 variant, 95 ms
// with AVX-512 (all compiled from the same xxhash.h; perf/micro_bench's
// BM_PageHash, 64 MiB: 6.5 against 18.7 GB/s). The library's own run-time
// dispatch (XXH3_64bits_dispatch) exists only in its shared build, and a
// static libferry must link too. Private header.
#pragma once

#include <cstdint>

namespace ferry::detail {

// Null where this build cannot have the variant (not x86-64, not GCC).
using PageHashFn = uint64_t (*)(const uint8_t* page);
extern const PageHashFn kPageHashAvx2;
extern const PageHashFn kPageHashAvx512;

}  // namespace ferry::detail
