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
  if (name == "no-progress-timeout") {
    FERRY_ASSIGN_OR_RETURN(uint64_t v, ParseUint(name, value));
    if (v > 7 * 24 * 3600) {
      return Status::InvalidArgument("no-progress-timeout must be at most 604800 s (a week; 0 waits forever), got " +
                                     std::string(value));
    }
    no_progress_timeout_s = static_cast<uint32_t>(v);
    return Status::Ok();
  }
  if (name == "max-stalled-passes") {
    FERRY_ASSIGN_OR_RETURN(uint64_t v, ParseUint(name, value));
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
  if (name == "multifd-channels") {
    FERRY_ASSIGN_OR_RETURN(uint64_t v, ParseUint(name, value));
    if (v < 1 || v > 255) return Status::InvalidArgument("multifd-channels must be 1-255, got " + std::string(value));
    multifd_channels = static_cast<uint32_t>(v);
    return Status::Ok();
  }
  if (name == "zero-page-detection") {
    if (value == "none") zero_page_detection = ZeroPageDetection::kNone;
    else if (value == "legacy") zero_page_detection = ZeroPageDetection::kLegacy;
    else if (value == "multifd") zero_page_detection = ZeroPageDetection::kMultifd;
    else return Status::InvalidArgument("zero-page-detection must be none, legacy or multifd, got '" + std::string(value) + "'");
    return Status::Ok();
  }
  if (name == "multifd-compression") {
    if (value == "none") multifd_compression = Compression::kNone;
    else if (value == "zstd") multifd_compression = Compression::kZstd;
    else return Status::InvalidArgument("multifd-compression must be none or zstd, got '" + std::string(value) + "'");
    return Status::Ok();
  }
  if (name == "multifd-zstd-level") {
    FERRY_ASSIGN_OR_RETURN(uint64_t v, ParseUint(name, value));
    if (v > 20) return Status::InvalidArgument("multifd-zstd-level must be 0-20, got " + std::string(value));
    multifd_zstd_level = static_cast<int>(v);
    return Status::Ok();
  }
  if (name == "multifd-flush-after-each-section") {
    if (value == "on") multifd_flush_after_each_section = true;
    else if (value == "off") multifd_flush_after_each_section = false;
    else return Status::InvalidArgument("multifd-flush-after-each-section must be on or off");
    return Status::Ok();
  }
  if (name == "direct-io") {
    if (value == "on") direct_io = true;
    else if (value == "off") direct_io = false;
    else return Status::InvalidArgument("direct-io must be on or off, got '" + std::string(value) + "'");
    return Status::Ok();
  }
  return Status::InvalidArgument("unknown parameter '" + std::string(name) +
                                 "' (ferry knows: downtime-limit, max-bandwidth, no-progress-timeout, max-stalled-passes, on-stall, "
                                 "multifd-channels, "
                                 "zero-page-detection, multifd-compression, multifd-zstd-level, "
                                 "multifd-flush-after-each-section, direct-io)");
}

Status MigrationParams::Validate() const {
  if (zero_copy_send && !multifd) return Status::InvalidArgument("zero-copy-send needs the multifd capability");
  if (zero_copy_send && multifd_compression != Compression::kNone) {
    return Status::InvalidArgument("zero-copy-send cannot be combined with multifd-compression (compressed "
                                   "buffers are copied anyway)");
  }
  if (multifd && zero_page_detection == ZeroPageDetection::kMultifd && qemu_compat &&
      qemu_version == QemuVersion::k7_2) {
    return Status::InvalidArgument("QEMU 7.2 cannot take zero pages in multifd packets (its packets have no "
                                   "zero_pages field): use -p zero-page-detection=legacy");
  }
  if (validate_uuid && !uuid) {
    return Status::InvalidArgument("validate-uuid needs the VM's uuid (--uuid UUID) to put in the stream");
  }
  if (mapped_ram && qemu_compat && qemu_version == QemuVersion::k7_2) {
    return Status::InvalidArgument("QEMU 7.2 has no mapped-ram (it arrived in QEMU 9.0): use --qemu-compat "
                                   "MACHINE,version=10.0 or a plain stream");
  }
  if (direct_io && !mapped_ram) return Status::InvalidArgument("direct-io needs the mapped-ram capability");
  if (mapped_ram && zero_copy_send) {
    return Status::InvalidArgument("zero-copy-send cannot be used with mapped-ram (files have no MSG_ZEROCOPY)");
  }
  return Status::Ok();
}

Status MigrationParams::SetCapability(std::string_view name, bool on) {
  if (name == "multifd") {
    multifd = on;
    return Status::Ok();
  }
  if (name == "zero-copy-send") {
    zero_copy_send = on;
    return Status::Ok();
  }
  if (name == "mapped-ram") {
    mapped_ram = on;
    return Status::Ok();
  }
  if (name == "rdma-pin-all") {
    rdma_pin_all = on;
    return Status::Ok();
  }
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
      "xbzrle", "auto-converge", "zero-blocks", "compress", "events", "postcopy-ram",
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
  if (v == QemuVersion::k7_2) {
    multifd_flush_after_each_section = true;
    zero_page_detection = ZeroPageDetection::kLegacy;
  }
  return Status::Ok();
}

}  // namespace ferry
