// Names the calling thread (what top -H, gdb and perf show). Linux keeps 15
// characters: longer names are cut, never refused.
//
//   SetThreadName("progress");
//   SetThreadName("multifd-send-", id);   // "multifd-send-3"
#pragma once

#include <cstdint>
#include <string_view>

namespace ferry {

void SetThreadName(std::string_view name);
void SetThreadName(std::string_view prefix, uint64_t index);

}  // namespace ferry
