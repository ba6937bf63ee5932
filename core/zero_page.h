// Zero-page test for 4 KiB pages, with the fastest variant the CPU offers
// chosen once at run time (AVX-512BW, AVX2, SSE2, scalar). Random pages are
// rejected after the first 64 bytes; zero pages are OR-ed 256 bytes at a
// time, so a scan of zero memory runs at memory bandwidth.
//
//   if (IsZeroPage(page)) ...                   // page: 4096 bytes
//   const ZeroCheck& z = BestZeroCheck();       // picked once, cached
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace ferry {

struct ZeroCheck {
  std::string_view name;                 // "avx512bw", "avx2", "sse2", "scalar"
  bool (*is_zero)(const uint8_t* page);  // page: 4096 bytes, any alignment
};

// The best variant this CPU runs.
const ZeroCheck& BestZeroCheck();
// Every variant this CPU can run, best first (for tests and micro-benchmarks).
std::vector<ZeroCheck> AvailableZeroChecks();

inline bool IsZeroPage(const uint8_t* page) { return BestZeroCheck().is_zero(page); }

}  // namespace ferry
