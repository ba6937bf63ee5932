// XXH3-64 of a page compiled for AVX2 (see core/page_hash_simd.h). This file
// holds nothing else: the target pragma covers everything below it, and the
// function is only ever called once the CPU said it runs AVX2.
#include "core/page_hash_simd.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("avx2")
// With the target on, GCC 12's AVX-512 intrinsics (part of immintrin.h)
// trip -Wuninitialized on their own "undefined" vectors: a false positive.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>  // xxhash.h includes it only under -mavx2 and the like
#define XXH_INLINE_ALL
#define XXH_VECTOR XXH_AVX2
#include <xxhash.h>

namespace ferry::detail {
namespace {
uint64_t PageHashAvx2(const uint8_t* page) { return XXH3_64bits(page, 4096); }
}  // namespace
const PageHashFn kPageHashAvx2 = &PageHashAvx2;
}  // namespace ferry::detail
#else
namespace ferry::detail {
const PageHashFn kPageHashAvx2 = nullptr;
}  // namespace ferry::detail
#endif
