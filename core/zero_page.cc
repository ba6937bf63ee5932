// Zero-page tests, one per instruction set, all in this file: each SIMD
// variant is compiled for its own target with a function attribute, and only
// called after the CPU (and the OS, for the wider registers) said it runs it.
//
// All variants share one shape: the first 64 bytes decide most non-zero pages
// (random or written memory almost never starts with 64 zero bytes); the rest
// is OR-ed together 256 bytes at a time, leaving at the first block with a set
// bit. The first block re-reads the head (from L1) so that every block has
// the same size. Loads are unaligned: callers need not align pages.
#include "core/zero_page.h"

#include <immintrin.h>

#include <cstring>

namespace ferry {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kHead = 64;
constexpr size_t kStep = 256;
static_assert(kPage % kStep == 0 && kStep % kHead == 0);

uint64_t LoadU64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// OR of the 8-byte words in [p, p + n).
uint64_t OrWords(const uint8_t* p, size_t n) {
  uint64_t acc = 0;
  for (size_t i = 0; i < n; i += 8) acc |= LoadU64(p + i);
  return acc;
}

bool IsZeroScalar(const uint8_t* page) {
  if (OrWords(page, kHead) != 0) return false;
  for (size_t off = 0; off < kPage; off += kStep) {
    if (OrWords(page + off, kStep) != 0) return false;
  }
  return true;
}

__attribute__((target("sse2"))) bool IsZeroSse2(const uint8_t* page) {
  auto load = [](const uint8_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); };
  auto all_zero = [](__m128i v) { return _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128())) == 0xffff; };
  __m128i head =
      _mm_or_si128(_mm_or_si128(load(page), load(page + 16)), _mm_or_si128(load(page + 32), load(page + 48)));
  if (!all_zero(head)) return false;
  for (size_t off = 0; off < kPage; off += kStep) {
    const uint8_t* p = page + off;
    __m128i a = _mm_setzero_si128();
    __m128i b = _mm_setzero_si128();
    for (size_t i = 0; i < kStep; i += 32) {
      a = _mm_or_si128(a, load(p + i));
      b = _mm_or_si128(b, load(p + i + 16));
    }
    if (!all_zero(_mm_or_si128(a, b))) return false;
  }
  return true;
}

__attribute__((target("avx2"))) bool IsZeroAvx2(const uint8_t* page) {
  const auto* v = reinterpret_cast<const __m256i*>(page);  // unaligned loads only
  const __m256i head = _mm256_or_si256(_mm256_loadu_si256(v), _mm256_loadu_si256(v + 1));
  if (!_mm256_testz_si256(head, head)) return false;
  for (size_t off = 0; off < kPage; off += kStep) {
    const uint8_t* p = page + off;
    __m256i a = _mm256_setzero_si256();
    __m256i b = _mm256_setzero_si256();
    for (size_t i = 0; i < kStep; i += 64) {
      a = _mm256_or_si256(a, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i)));
      b = _mm256_or_si256(b, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i + 32)));
    }
    const __m256i acc = _mm256_or_si256(a, b);
    if (!_mm256_testz_si256(acc, acc)) return false;
  }
  return true;
}

__attribute__((target("avx512bw"))) bool IsZeroAvx512bw(const uint8_t* page) {
  const __m512i head = _mm512_loadu_si512(page);
  if (_mm512_test_epi8_mask(head, head) != 0) return false;
  for (size_t off = 0; off < kPage; off += kStep) {
    const uint8_t* p = page + off;
    __m512i a = _mm512_setzero_si512();
    __m512i b = _mm512_setzero_si512();
    for (size_t i = 0; i < kStep; i += 128) {
      a = _mm512_or_si512(a, _mm512_loadu_si512(p + i));
      b = _mm512_or_si512(b, _mm512_loadu_si512(p + i + 64));
    }
    const __m512i acc = _mm512_or_si512(a, b);
    if (_mm512_test_epi8_mask(acc, acc) != 0) return false;
  }
  return true;
}

std::vector<ZeroCheck> Detect() {
  // libgcc's feature bits include the OS check (XCR0) for AVX and AVX-512
  // register state, so a CPU flag alone never selects unusable registers.
  __builtin_cpu_init();
  std::vector<ZeroCheck> v;
  if (__builtin_cpu_supports("avx512bw")) v.push_back({"avx512bw", &IsZeroAvx512bw});
  if (__builtin_cpu_supports("avx2")) v.push_back({"avx2", &IsZeroAvx2});
  if (__builtin_cpu_supports("sse2")) v.push_back({"sse2", &IsZeroSse2});
  v.push_back({"scalar", &IsZeroScalar});
  return v;
}

}  // namespace

const ZeroCheck& BestZeroCheck() {
  static const ZeroCheck best = Detect().front();
  return best;
}

std::vector<ZeroCheck> AvailableZeroChecks() { return Detect(); }

}  // namespace ferry
