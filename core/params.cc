#include "core/params.h"

#include <charconv>
#include <cmath>

namespace ferry {

Result<uint64_t> ParseSize(std::string_view text) {
  std::string s(text);
  auto bad = [&] {
    return Status::InvalidArgument("bad size '" + s + "' (expected a number with an optional K, M, G or T suffix, e.g. 4G)");
  };
  if (s.empty()) return bad();
  uint64_t mult = 1;
  char last = s.back();
  if (last == 'b' || last == 'B') {
    s.pop_back();
    if (s.empty()) return bad();
    last = s.back();
  }
  switch (last) {
    case 'k': case 'K': mult = 1ull << 10; break;
    case 'm': case 'M': mult = 1ull << 20; break;
    case 'g': case 'G': mult = 1ull << 30; break;
    case 't': case 'T': mult = 1ull << 40; break;
    default: break;
  }
  std::string num = mult == 1 ? s : s.substr(0, s.size() - 1);
  if (num.empty()) return bad();
  double v = 0;
  auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), v);
  if (ec != std::errc() || p != num.data() + num.size() || v < 0 || !std::isfinite(v)) return bad();
  long double bytes = static_cast<long double>(v) * mult;
  if (bytes > 1.8e19L) return bad();
  return static_cast<uint64_t>(bytes);
}

namespace {

Result<uint64_t> ParseUint(std::string_view name, std::string_view value) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || ec != std::errc() || p != value.data() + value.size()) {
    return Status::InvalidArgument("parameter '" + std::string(name) + "' needs a non-negative integer, got '" +
                                   std::string(value) + "'");
  }
  return v;
}

}  // namespace

Status MigrationParams::SetParameter(std::string_view name, std::string_view value) {
  if (name == "downtime-limit") {
    FERRY_ASSIGN_OR_RETURN(uint64_t v, ParseUint(name, value));
    if (v > 2000 * 1000) return Status::InvalidArgument("downtime-limit must be at most 2000000 ms");
    downtime_limit_ms = v;
    return Status::Ok();
  }
  if (name == "max-bandwidth") {
    // QEMU takes bytes/s; ferry also accepts size suffixes ("500M").
    FERRY_ASSIGN_OR_RETURN(uint64_t v, ParseSize(value));
    max_bandwidth = v;
    return Status::Ok();
  }
  return Status::InvalidArgument("unknown parameter '" + std::string(name) +
                                 "' (ferry knows: downtime-limit, max-bandwidth)");
}

Status MigrationParams::SetCapability(std::string_view name, bool on) {
  if (name == "verify") {
    if (on && qemu_compat) return Status::InvalidArgument("capability 'verify' cannot be used with --qemu-compat");
    verify = on;
    return Status::Ok();
  }
  static constexpr std::string_view kQemuCaps[] = {
      "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events", "postcopy-ram",
      "x-colo", "release-ram", "return-path", "pause-before-switchover", "multifd", "dirty-bitmaps",
      "postcopy-blocktime", "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot",
      "zero-copy-send", "postcopy-preempt", "switchover-ack", "dirty-limit", "mapped-ram"};
  for (std::string_view c : kQemuCaps) {
    if (name == c) {
      if (!on) return Status::Ok();  // off is what ferry does anyway
      return Status::Unsupported("capability '" + std::string(name) + "' is not supported by this ferry yet");
    }
  }
  return Status::InvalidArgument("unknown capability '" + std::string(name) + "'");
}

void MigrationParams::SetQemuCompat(std::string machine_name) {
  qemu_compat = true;
  verify = false;
  machine = std::move(machine_name);
}

}  // namespace ferry
