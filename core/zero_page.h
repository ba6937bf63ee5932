// Zero-page test for 4 KiB pages. Random pages are rejected after the first
// 8 bytes; zero pages are scanned in 64-byte strides the compiler vectorises.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ferry {

inline bool IsZeroPage(const uint8_t* p, size_t len = 4096) {
  uint64_t first;
  std::memcpy(&first, p, 8);
  if (first != 0) return false;
  const auto* w = reinterpret_cast<const uint64_t*>(p);
  const size_t words = len / 8;
  for (size_t i = 0; i < words; i += 32) {
    uint64_t acc = 0;
    for (size_t j = 0; j < 32; ++j) acc |= w[i + j];
    if (acc) return false;
  }
  return true;
}

}  // namespace ferry
