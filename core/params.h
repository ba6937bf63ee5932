// Migration parameters and capabilities, named as QEMU names them
// (migrate-set-parameters / migrate-set-capabilities), validated once.
//
//   MigrationParams p;
//   FERRY_RETURN_IF_ERROR(p.SetParameter("downtime-limit", "500"));
//   FERRY_RETURN_IF_ERROR(p.SetCapability("verify", false));
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace ferry {

struct MigrationParams {
  // Parameters.
  uint64_t downtime_limit_ms = 300;  // "downtime-limit": switch over when the rest fits in this
  uint64_t max_bandwidth = 0;        // "max-bandwidth": bytes/s, 0 = unlimited

  // multifd parameters (used when the capability is on).
  enum class ZeroPageDetection { kNone, kLegacy, kMultifd };
  enum class Compression { kNone, kZstd };
  uint32_t multifd_channels = 2;                              // "multifd-channels"
  ZeroPageDetection zero_page_detection = ZeroPageDetection::kMultifd;  // "zero-page-detection"
  Compression multifd_compression = Compression::kNone;     // "multifd-compression"
  int multifd_zstd_level = 1;                                 // "multifd-zstd-level"
  bool multifd_flush_after_each_section = false;  // "multifd-flush-after-each-section": QEMU <= 7.2 barriers

  // Capabilities.
  bool verify = true;  // "verify": ferry's digest section + verdict (off for QEMU peers)
  bool multifd = false;         // "multifd": pages over multifd-channels extra connections
  bool zero_copy_send = false;  // "zero-copy-send": MSG_ZEROCOPY on multifd channels
  bool mapped_ram = false;      // "mapped-ram": fixed page places in a file (file: targets only); with
                                // multifd, multifd-channels file threads and no multifd sockets
  // File parameter.
  bool direct_io = false;       // "direct-io": page data through O_DIRECT (needs mapped-ram)

  // Checks combinations that cannot work together (call once, after all
  // Set* calls).
  Status Validate() const;

  // Stream shape.
  std::string machine = "ferry";  // configuration section machine name
  bool qemu_compat = false;       // peer is QEMU: no ferry extensions

  // Parses "-p NAME=VALUE" style names.
  Status SetParameter(std::string_view name, std::string_view value);
  Status SetCapability(std::string_view name, bool on);
  // Makes the settings QEMU-compatible for machine `machine`.
  void SetQemuCompat(std::string machine_name);
};

// Parses "4G", "256M", "4096", "1.5G" (powers of 1024).
Result<uint64_t> ParseSize(std::string_view text);

}  // namespace ferry
