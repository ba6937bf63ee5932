// Small text formatting shared by error messages.
#pragma once

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <string>

namespace ferry {

// 0x-prefixed lower-case hex, no padding: Hex(4096) == "0x1000".
inline std::string Hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%" PRIx64, v);
  return buf;
}

}  // namespace ferry
