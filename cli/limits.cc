#include "cli/limits.h"

#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "cli/report.h"
#include "core/params.h"

namespace ferry::cli {
namespace {

constexpr long kTmpfsMagic = 0x01021994;
constexpr long kRamfsMagic = 0x858458f6;

std::string ReadSmallFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return "";
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::optional<uint64_t> ParseNumber(const std::string& text) {
  try {
    size_t used = 0;
    const unsigned long long v = std::stoull(text, &used);
    return static_cast<uint64_t>(v);
  } catch (...) {
    return std::nullopt;
  }
}

// A "name value" line of a cgroup memory.stat.
uint64_t StatValue(const std::string& stat, const std::string& name) {
  std::istringstream in(stat);
  std::string key;
  uint64_t v = 0;
  while (in >> key >> v) {
    if (key == name) return v;
  }
  return 0;
}

// What the process's memory cgroup has left, if it sets a limit.
std::optional<Limit> CgroupRoom() {
  std::istringstream cg(ReadSmallFile("/proc/self/cgroup"));
  std::string line;
  while (std::getline(cg, line)) {
    // v2: "0::/path"; v1: "N:memory:/path" (or "N:...,memory,...:/path").
    const size_t a = line.find(':');
    const size_t b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    const std::string path = line.substr(b + 1);
    const bool v2 = line.compare(0, a, "0") == 0 && controllers.empty();
    const bool v1 = ("," + controllers + ",").find(",memory,") != std::string::npos;
    if (!v1 && !v2) continue;
    // Inside a container the cgroup may be mounted at its own root.
    for (const std::string& base : v2 ? std::vector<std::string>{"/sys/fs/cgroup" + path, "/sys/fs/cgroup"}
                                      : std::vector<std::string>{"/sys/fs/cgroup/memory" + path,
                                                                 "/sys/fs/cgroup/memory"}) {
      const std::string max = ReadSmallFile(base + (v2 ? "/memory.max" : "/memory.limit_in_bytes"));
      if (max.empty()) continue;
      const std::optional<uint64_t> limit = ParseNumber(max);  // "max" (v2, no limit) does not parse
      if (!limit || *limit >= (1ull << 60)) return std::nullopt;
      const std::optional<uint64_t> used =
          ParseNumber(ReadSmallFile(base + (v2 ? "/memory.current" : "/memory.usage_in_bytes")));
      if (!used) return std::nullopt;
      // Reclaimable page cache does not count against what is left.
      const std::string stat = ReadSmallFile(base + "/memory.stat");
      const uint64_t cache = StatValue(stat, v2 ? "inactive_file" : "total_inactive_file");
      const uint64_t in_use = *used > cache ? *used - cache : 0;
      return Limit{*limit > in_use ? *limit - in_use : 0, "what this process's memory cgroup has left"};
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<uint64_t> ParseMemAvailable(std::string_view meminfo) {
  std::istringstream in{std::string(meminfo)};
  std::string key, unit;
  uint64_t v = 0;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream l(line);
    if (!(l >> key >> v)) continue;
    if (key != "MemAvailable:") continue;
    l >> unit;
    return unit == "kB" ? v * 1024 : v;
  }
  return std::nullopt;
}

Result<Limit> AvailableMemory() {
  const std::string meminfo = ReadSmallFile("/proc/meminfo");
  std::optional<uint64_t> avail = ParseMemAvailable(meminfo);
  Limit l;
  if (avail) {
    l = {*avail, "the available memory (MemAvailable in /proc/meminfo)"};
  } else {
    const long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
    if (pages <= 0 || size <= 0) return Status::Unsupported("cannot tell how much memory is available");
    l = {static_cast<uint64_t>(pages) * static_cast<uint64_t>(size), "the free memory"};
  }
  if (std::optional<Limit> cg = CgroupRoom(); cg && cg->bytes < l.bytes) l = *cg;
  return l;
}

Result<Limit> MemoryFileRoom(const std::string& path) {
  std::string dir = ".";
  if (const size_t slash = path.rfind('/'); slash != std::string::npos) dir = slash == 0 ? "/" : path.substr(0, slash);
  uint64_t occupied = 0;
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) occupied = static_cast<uint64_t>(st.st_blocks) * 512;
  struct statvfs vfs;
  if (statvfs(dir.c_str(), &vfs) != 0) return ErrnoStatus("checking the free space for memory file " + path);
  Limit l{static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize + occupied, "the free space for " + path};
  struct statfs fs;
  if (statfs(dir.c_str(), &fs) == 0 && (fs.f_type == kTmpfsMagic || fs.f_type == kRamfsMagic)) {
    FERRY_ASSIGN_OR_RETURN(Limit mem, AvailableMemory());
    if (fs.f_type == kRamfsMagic || mem.bytes + occupied < l.bytes) {
      l = {mem.bytes + occupied, mem.source + ", " + path + " being in memory (tmpfs)"};
    }
  }
  return l;
}

Result<Limit> DestinationRamLimit(const std::string& max_ram, const std::string& memory_file) {
  if (!max_ram.empty()) {
    Result<uint64_t> v = ParseSize(max_ram);
    if (!v.ok()) return v.status().WithContext("--max-ram");
    if (*v == 0) return Status::InvalidArgument("--max-ram must be more than 0");
    return Limit{*v, "as set by --max-ram"};
  }
  Result<Limit> l = memory_file.empty() ? AvailableMemory() : MemoryFileRoom(memory_file);
  // A memory file in a directory that does not exist fails when it is
  // created, with its own message; until then memory is the bound.
  if (!l.ok() && !memory_file.empty()) l = AvailableMemory();
  if (!l.ok()) return l;
  l->source += " (--max-ram's default)";
  return l;
}

}  // namespace ferry::cli
