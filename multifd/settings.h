// multifd's settings: the parameters and capabilities it owns, as QEMU names
// them, their parsing and the checks of their combinations (one copy each;
// the sink repeats none of them). multifd/transport.cc applies them to a plan.
//
//   multifd-channels (1-255)          zero-page-detection (none|legacy|multifd)
//   multifd-compression (none|zstd)   multifd-zstd-level (0-20)
//   multifd-flush-after-each-section (on|off)
//   capabilities: multifd, zero-copy-send
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "../core/params.h"
#include "../core/status.h"

namespace ferry::multifd {

// Who finds zero pages: nobody (sent in full), the migration thread (ZERO
// records in the main stream, QEMU 7.2), or the channel threads (listed in
// packets).
enum class ZeroPageDetection { kNone, kLegacy, kMultifd };
enum class Compression { kNone, kZstd };

struct Settings {
  bool enabled = false;  // capability "multifd": pages over `channels` extra connections
  uint32_t channels = 2;                                                // "multifd-channels"
  ZeroPageDetection zero_page_detection = ZeroPageDetection::kMultifd;  // "zero-page-detection"
  Compression compression = Compression::kNone;                         // "multifd-compression"
  int zstd_level = 1;                                                   // "multifd-zstd-level"
  bool flush_after_each_section = false;  // "multifd-flush-after-each-section": QEMU <= 7.2 barriers
  bool zero_copy_send = false;            // capability "zero-copy-send": MSG_ZEROCOPY on the channels

  static const std::vector<std::string_view>& ParameterNames();
  static const std::vector<std::string_view>& CapabilityNames();
  Status SetParameter(std::string_view name, std::string_view value);
  Status SetCapability(std::string_view name, bool on);
  // A parameter's value as text ("4", "legacy", "on"); nullopt for other names.
  std::optional<std::string> Get(std::string_view name) const;
  // QEMU 7.2's multifd: a barrier at every section end, zero pages in the
  // main stream.
  void ApplyQemu72();
  // Combinations refused whatever the URI.
  Status Validate(const MigrationParams& core) const;
};

// zero-copy-send with compression: the one copy of that check and message.
Status CheckZeroCopy(bool zero_copy, Compression compression);

}  // namespace ferry::multifd
