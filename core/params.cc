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

Result<uint64_t> ParseParameterUint(std::string_view name, std::string_view value) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (value.empty() || ec != std::errc() || p != value.data() + value.size()) {
    return Status::InvalidArgument("parameter '" + std::string(name) + "' needs a non-negative integer, got '" +
                                   std::string(value) + "'");
  }
  return v;
}

Status MigrationParams::SetParameter(std::string_view name, std::string_view value) {
  if (name == "downtime-limit") {
    FERRY_ASSIGN_OR_RETURN(uint64_t v, ParseParameterUint(name, value));
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
  if (name == "no-progress-timeout") {
    FERRY_ASSIGN_OR_RETURN(uint64_t v, ParseParameterUint(name, value));
    if (v > 7 * 24 * 3600) {
      return Status::InvalidArgument("no-progress-timeout must be at most 604800 s (a week; 0 waits forever), got " +
                                     std::string(value));
    }
    no_progress_timeout_s = static_cast<uint32_t>(v);
    return Status::Ok();
  }
  if (name == "max-stalled-passes") {
    FERRY_ASSIGN_OR_RETURN(uint64_t v, ParseParameterUint(name, value));
    if (v > 1000000) {
      return Status::InvalidArgument("max-stalled-passes must be at most 1000000 (0 = never give up), got " +
                                     std::string(value));
    }
    max_stalled_passes = v;
    return Status::Ok();
  }
  if (name == "on-stall") {
    if (value == "fail") on_stall = OnStall::kFail;
    else if (value == "switchover") on_stall = OnStall::kSwitchover;
    else return Status::InvalidArgument("on-stall must be fail or switchover, got '" + std::string(value) + "'");
    return Status::Ok();
  }
  std::string known;
  for (std::string_view n : kParameters) known += (known.empty() ? "" : ", ") + std::string(n);
  return Status::InvalidArgument("unknown parameter '" + std::string(name) + "' (core knows: " + known +
                                 "; the transports' parameters are set through Plan, core/setup.h)");
}

// Core's own combinations; the transports check theirs (core/setup.h: Plan).
Status MigrationParams::Validate() const {
  if (validate_uuid && !uuid) {
    return Status::InvalidArgument("validate-uuid needs the VM's uuid (--uuid UUID) to put in the stream");
  }
  return Status::Ok();
}

Status MigrationParams::SetCapability(std::string_view name, bool on) {
  if (name == "validate-uuid") {
    validate_uuid = on;
    return Status::Ok();
  }
  if (name == "verify") {
    if (on && qemu_compat) return Status::InvalidArgument("capability 'verify' cannot be used with --qemu-compat");
    verify = on;
    return Status::Ok();
  }
  static constexpr std::string_view kQemuCaps[] = {
      "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events", "postcopy-ram",
      "x-colo", "release-ram", "return-path", "pause-before-switchover", "dirty-bitmaps",
      "postcopy-blocktime", "late-block-activate", "x-ignore-shared", "background-snapshot",
      "postcopy-preempt", "switchover-ack", "dirty-limit"};
  for (std::string_view c : kQemuCaps) {
    if (name == c) {
      if (!on) return Status::Ok();  // off is what ferry does anyway
      return Status::Unsupported("capability '" + std::string(name) + "' is not supported by this ferry yet");
    }
  }
  return Status::InvalidArgument("unknown capability '" + std::string(name) + "'");
}

Status MigrationParams::SetQemuCompat(std::string_view spec) {
  const size_t comma = spec.find(',');
  const std::string_view machine_name = spec.substr(0, comma);
  if (machine_name.empty()) {
    return Status::InvalidArgument("--qemu-compat needs the machine type QEMU runs (e.g. none, pc-i440fx-10.0), got '" +
                                   std::string(spec) + "'");
  }
  QemuVersion v = QemuVersion::k10_0;
  if (comma != std::string_view::npos) {
    const std::string_view opt = spec.substr(comma + 1);
    if (opt == "version=7.2") {
      v = QemuVersion::k7_2;
    } else if (opt == "version=10.0") {
      v = QemuVersion::k10_0;
    } else {
      return Status::InvalidArgument("--qemu-compat takes MACHINE[,version=7.2|10.0], got '" + std::string(spec) + "'");
    }
  }
  qemu_compat = true;
  verify = false;
  machine = std::string(machine_name);
  qemu_version = v;
  return Status::Ok();
}

}  // namespace ferry
