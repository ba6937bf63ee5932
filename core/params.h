// Migration parameters and capabilities, named as QEMU names them
// (migrate-set-parameters / migrate-set-capabilities), validated once.
//
//   MigrationParams p;
//   FERRY_RETURN_IF_ERROR(p.SetParameter("downtime-limit", "500"));
//   FERRY_RETURN_IF_ERROR(p.SetCapability("verify", false));
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "status.h"
#include "uuid.h"

namespace ferry {

struct MigrationParams {
  // The parameter and capability names core owns (SetParameter /
  // SetCapability); the transports own the others (core/setup.h).
  static inline const std::vector<std::string_view> kParameters = {
      "downtime-limit", "max-bandwidth", "no-progress-timeout", "max-stalled-passes", "on-stall"};
  static inline const std::vector<std::string_view> kCapabilities = {"verify", "validate-uuid"};

  // Parameters.
  uint64_t downtime_limit_ms = 300;  // "downtime-limit": switch over when the rest fits in this
  uint64_t max_bandwidth = 0;        // "max-bandwidth": bytes/s, 0 = unlimited
  // "no-progress-timeout": seconds any channel may move no byte, both sides,
  // every phase, before the migration fails (0 = wait forever).
  uint32_t no_progress_timeout_s = 30;
  // "max-stalled-passes": passes in a row in which the remaining dirty memory
  // did not shrink before the source gives up (0 = never), and
  // "on-stall": what it then does.
  uint64_t max_stalled_passes = 30;
  enum class OnStall { kFail, kSwitchover };
  OnStall on_stall = OnStall::kFail;
  std::chrono::milliseconds no_progress_timeout() const {
    return std::chrono::milliseconds(uint64_t{no_progress_timeout_s} * 1000);
  }

  // The transports' settings are theirs: multifd's in multifd::Settings
  // (multifd/settings.h: multifd, multifd-channels, zero-page-detection,
  // multifd-compression, multifd-zstd-level, multifd-flush-after-each-section,
  // zero-copy-send), file's in file/file_transport.cc and
  // mapped_ram::FileOptions (mapped-ram, direct-io), tls's in tls/. What
  // core must know of them it asks through interfaces (PageSinkFactory /
  // PageReceiver: the capabilities to announce, EOS barriers).

  // Capabilities.
  bool verify = true;  // "verify": ferry's digest section + verdict (off for QEMU peers)
  bool validate_uuid = false;   // "validate-uuid": the configuration section carries the uuid; the
                                // destination refuses another one

  // The VM's uuid (QEMU's -uuid; ferry's --uuid): announced by multifd
  // channels and, with validate-uuid, in the configuration section.
  std::optional<Uuid> uuid;

  // Checks combinations of core settings that cannot work together (call
  // once, after all Set* calls). Plan (core/setup.h) calls it and then the
  // transports' checks.
  Status Validate() const;

  // Stream shape.
  std::string machine = "ferry";  // configuration section machine name
  bool qemu_compat = false;       // peer is QEMU: no ferry extensions
  // Which QEMU generation the peer is, where the wire differs (multifd
  // barriers and zero pages, return-path messages): 7.2 (Debian 12) or
  // 10.0 (current; the default).
  enum class QemuVersion { k7_2, k10_0 };
  QemuVersion qemu_version = QemuVersion::k10_0;

  // Parses "-p NAME=VALUE" style names.
  Status SetParameter(std::string_view name, std::string_view value);
  Status SetCapability(std::string_view name, bool on);
  // Makes the settings QEMU-compatible: "MACHINE[,version=7.2|10.0]". (For
  // 7.2 multifd's transport also sets that generation's multifd behaviour;
  // -p given afterwards still overrides.) Call before SetParameter/SetCapability.
  Status SetQemuCompat(std::string_view spec);
};

// A -p NAME=VALUE value that must be a non-negative integer (every owner of
// parameters parses its numbers with this, for one message).
Result<uint64_t> ParseParameterUint(std::string_view name, std::string_view value);

// Parses "4G", "256M", "4096", "1.5G" (powers of 1024).
Result<uint64_t> ParseSize(std::string_view text);

}  // namespace ferry
