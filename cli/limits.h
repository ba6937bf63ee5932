// How much memory and disk this machine can give a guest: the bounds behind
// `ferry send --ram` (refused beyond them without --force) and the default of
// `ferry recv --max-ram`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/status.h"

namespace ferry::cli {

// A bound and where it comes from, in words ("available memory (MemAvailable
// in /proc/meminfo)").
struct Limit {
  uint64_t bytes = 0;
  std::string source;
};

// Memory a new allocation can take without swapping or the OOM killer:
// MemAvailable from /proc/meminfo, lowered to what the process's memory
// cgroup (v2 memory.max or v1 memory.limit_in_bytes, when set) has left.
Result<Limit> AvailableMemory();

// MemAvailable (bytes) from /proc/meminfo's text; nullopt if it is absent.
std::optional<uint64_t> ParseMemAvailable(std::string_view meminfo);

// Room a memory file at `path` may take: the free space of the filesystem
// that holds (or will hold) it, plus what the file already occupies there
// (it is overwritten in place). A file in tmpfs or ramfs lives in memory, so
// there the bound is also AvailableMemory() plus what the file occupies.
Result<Limit> MemoryFileRoom(const std::string& path);

// What `ferry send --ram SIZE` needs beyond the guest's own pages:
// buffers, dirty bitmaps, page tables.
inline constexpr uint64_t kSendMargin = 256ull << 20;

// The `ferry recv`/`load` cap: `max_ram` (the --max-ram text) when given,
// else the memory file's room (with --memory-file; the available memory when
// its directory cannot be checked) or the available memory.
Result<Limit> DestinationRamLimit(const std::string& max_ram, const std::string& memory_file);

}  // namespace ferry::cli
