#include "multifd/settings.h"

#include <charconv>

namespace ferry::multifd {
const std::vector<std::string_view>& Settings::ParameterNames() {
  static const std::vector<std::string_view> names = {"multifd-channels", "zero-page-detection",
                                                      "multifd-compression", "multifd-zstd-level",
                                                      "multifd-flush-after-each-section"};
  return names;
}

const std::vector<std::string_view>& Settings::CapabilityNames() {
  static const std::vector<std::string_view> names = {"multifd", "zero-copy-send"};
  return names;
}

Status Settings::SetParameter(std::string_view name, std::string_view value) {
  using ZPD = ZeroPageDetection;
  using Compression = Compression;
  if (name == "multifd-channels") {
    FERRY_ASSIGN_OR_RETURN(uint64_t v, ParseParameterUint(name, value));
    if (v < 1 || v > 255) return Status::InvalidArgument("multifd-channels must be 1-255, got " + std::string(value));
    channels = static_cast<uint32_t>(v);
    return Status::Ok();
  }
  if (name == "zero-page-detection") {
    if (value == "none") zero_page_detection = ZPD::kNone;
    else if (value == "legacy") zero_page_detection = ZPD::kLegacy;
    else if (value == "multifd") zero_page_detection = ZPD::kMultifd;
    else return Status::InvalidArgument("zero-page-detection must be none, legacy or multifd, got '" + std::string(value) + "'");
    return Status::Ok();
  }
  if (name == "multifd-compression") {
    if (value == "none") compression = Compression::kNone;
    else if (value == "zstd") compression = Compression::kZstd;
    else return Status::InvalidArgument("multifd-compression must be none or zstd, got '" + std::string(value) + "'");
    return Status::Ok();
  }
  if (name == "multifd-zstd-level") {
    FERRY_ASSIGN_OR_RETURN(uint64_t v, ParseParameterUint(name, value));
    if (v > 20) return Status::InvalidArgument("multifd-zstd-level must be 0-20, got " + std::string(value));
    zstd_level = static_cast<int>(v);
    return Status::Ok();
  }
  if (name == "multifd-flush-after-each-section") {
    if (value == "on") flush_after_each_section = true;
    else if (value == "off") flush_after_each_section = false;
    else return Status::InvalidArgument("multifd-flush-after-each-section must be on or off");
    return Status::Ok();
  }
  return Status::InvalidArgument("unknown multifd parameter '" + std::string(name) + "'");
}

Status Settings::SetCapability(std::string_view name, bool on) {
  if (name == "multifd") enabled = on;
  else if (name == "zero-copy-send") zero_copy_send = on;
  else return Status::InvalidArgument("unknown multifd capability '" + std::string(name) + "'");
  return Status::Ok();
}

std::optional<std::string> Settings::Get(std::string_view name) const {
  using ZPD = ZeroPageDetection;
  if (name == "multifd-channels") return std::to_string(channels);
  if (name == "zero-page-detection") {
    return zero_page_detection == ZPD::kNone ? "none" : zero_page_detection == ZPD::kLegacy ? "legacy" : "multifd";
  }
  if (name == "multifd-compression") {
    return compression == Compression::kZstd ? "zstd" : "none";
  }
  if (name == "multifd-zstd-level") return std::to_string(zstd_level);
  if (name == "multifd-flush-after-each-section") return flush_after_each_section ? "on" : "off";
  return std::nullopt;
}

void Settings::ApplyQemu72() {
  flush_after_each_section = true;
  zero_page_detection = ZeroPageDetection::kLegacy;
}

Status CheckZeroCopy(bool zero_copy, Compression compression) {
  if (zero_copy && compression != Compression::kNone) {
    return Status::InvalidArgument("zero-copy-send cannot be combined with multifd-compression (compressed "
                                   "buffers are copied anyway)");
  }
  return Status::Ok();
}

Status Settings::Validate(const MigrationParams& core) const {
  if (zero_copy_send && !enabled) return Status::InvalidArgument("zero-copy-send needs the multifd capability");
  FERRY_RETURN_IF_ERROR(CheckZeroCopy(zero_copy_send, compression));
  if (enabled && zero_page_detection == ZeroPageDetection::kMultifd && core.qemu_compat &&
      core.qemu_version == MigrationParams::QemuVersion::k7_2) {
    return Status::InvalidArgument("QEMU 7.2 cannot take zero pages in multifd packets (its packets have no "
                                   "zero_pages field): use -p zero-page-detection=legacy");
  }
  return Status::Ok();
}


}  // namespace ferry::multifd
