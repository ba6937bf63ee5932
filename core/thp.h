// Transparent huge pages and guest memory.
//
//   if (ThpEligible(block.host)) { ... a 2 MiB region is one fault ... }
#pragma once

namespace ferry {

// Whether the mapping holding `addr` can be backed by transparent huge pages
// (the kernel's "THPeligible" for it in /proc/self/smaps: THP enabled by
// /sys/kernel/mm/transparent_hugepage/enabled and not refused by madvise or
// prctl). false when the kernel does not say.
bool ThpEligible(const void* addr);

}  // namespace ferry
