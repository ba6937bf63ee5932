#include "core/thp.h"

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace ferry {

bool ThpEligible(const void* addr) {
  FILE* f = std::fopen("/proc/self/smaps", "re");
  if (!f) return false;
  const auto a = reinterpret_cast<uintptr_t>(addr);
  char line[512];
  bool in = false;
  bool eligible = false;
  // The kernel writes smaps one mapping at a time: stop at the one wanted.
  while (std::fgets(line, sizeof(line), f)) {
    unsigned long start = 0, end = 0;
    char perms[8];
    if (std::sscanf(line, "%lx-%lx %7s", &start, &end, perms) == 3) {
      if (in) break;  // past the mapping without a THPeligible line
      in = start <= a && a < end;
      continue;
    }
    if (in && std::strncmp(line, "THPeligible:", 12) == 0) {
      eligible = std::strtol(line + 12, nullptr, 10) == 1;
      break;
    }
  }
  std::fclose(f);
  return eligible;
}

}  // namespace ferry
