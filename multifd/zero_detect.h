// Zero-page detection for multifd sender threads, with the fastest variant
// the CPU offers chosen once at run time (AVX-512BW, AVX2, SSE2, scalar).
//
//   const ZeroCheck& z = BestZeroCheck();       // picked once, cached
//   if (z.is_zero(page)) ...                    // page: 4096 bytes
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace ferry::multifd {

struct ZeroCheck {
  std::string_view name;                 // "avx512bw", "avx2", "sse2", "scalar"
  bool (*is_zero)(const uint8_t* page);  // page: 4096 bytes, any alignment
};

// The best variant this CPU runs.
const ZeroCheck& BestZeroCheck();
// Every variant this CPU can run (for tests and micro-benchmarks).
std::vector<ZeroCheck> AvailableZeroChecks();

}  // namespace ferry::multifd
