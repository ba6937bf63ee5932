#include "core/uuid.h"

#include <cstdio>

namespace ferry {

std::string FormatUuid(const Uuid& uuid) {
  std::string out;
  out.reserve(36);
  char b[4];
  for (size_t i = 0; i < uuid.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out += '-';
    std::snprintf(b, sizeof b, "%02x", uuid[i]);
    out += b;
  }
  return out;
}

Result<Uuid> ParseUuid(std::string_view text) {
  auto bad = [&] {
    return Status::InvalidArgument("bad uuid '" + std::string(text) +
                                   "' (expected 36 characters like 5b6ca0f4-6ad8-4f5c-9d6c-05a3c4b2c6f1)");
  };
  if (text.size() != 36) return bad();
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  Uuid out{};
  size_t byte = 0;
  for (size_t i = 0; i < text.size();) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') return bad();
      ++i;
      continue;
    }
    const int hi = nibble(text[i]);
    const int lo = nibble(text[i + 1]);
    if (hi < 0 || lo < 0) return bad();
    out[byte++] = static_cast<uint8_t>(hi << 4 | lo);
    i += 2;
  }
  return out;
}

}  // namespace ferry
