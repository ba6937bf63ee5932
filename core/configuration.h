// The configuration section: the machine name a stream is for, and the
// vmstate subsections QEMU hangs off it —
//
//   0x07 | be32 len | machine name
//   [0x05 | u8 len | "configuration/target-page-bits" | be32 version 1 | be32 bits]
//   [0x05 | u8 len | "configuration/capabilities" | be32 version 1 | be32 count |
//          count x (u8 len | capability name)]
//   [0x05 | u8 len | "configuration/uuid" | be32 version 1 | 16 bytes]
//
// A source lists the capabilities both ends must agree on (mapped-ram,
// x-ignore-shared) that it has on; a destination compares that list with
// its own and refuses a difference before it loads anything, in QEMU's
// words ("Capability mapped-ram is on, but received capability is off").
//
//   WriteConfiguration(w, ConfigurationFor(params));
//   ...
//   FERRY_ASSIGN_OR_RETURN(Configuration c, ReadConfiguration(r));   // after the 0x07 byte
//   FERRY_RETURN_IF_ERROR(CheckConfiguration(c, expected, note));
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/params.h"
#include "core/status.h"
#include "core/stream.h"
#include "core/uuid.h"

namespace ferry {

// The capabilities a configuration section carries: those QEMU checks for
// equality on both ends. ferry can turn on only mapped-ram of them.
inline constexpr std::string_view kValidatedCapabilities[] = {"x-ignore-shared", "mapped-ram"};

struct Configuration {
  std::string machine;
  // Validated capabilities that are on, in stream order.
  std::vector<std::string> capabilities;
  // Present with the validate-uuid capability (and a uuid set).
  std::optional<Uuid> uuid;
  // Present only where the target's page size is not its minimum (never on x86).
  std::optional<uint32_t> target_page_bits;
};

// What this end sends from core's settings: machine, the uuid when
// validate-uuid is on and a uuid is set. (Capabilities come from the sink:
// PageSinkFactory::announced_capabilities.)
Configuration ConfigurationFor(const MigrationParams& params);

// Writes the whole section, type byte included.
void WriteConfiguration(StreamWriter& w, const Configuration& c);

// Reads the section after its type byte. Refuses an unknown subsection, a
// second copy of one, an unknown capability name, or a count or length that
// cannot be right.
Result<Configuration> ReadConfiguration(StreamReader& r);

// Checks a received configuration against `local` (what this destination
// would have sent itself): the machine name, every validated capability's
// state, and the uuid. A uuid received where none is set locally is accepted
// with a note, as QEMU does.
Status CheckConfiguration(const Configuration& received, const Configuration& local,
                          const std::function<void(std::string_view)>& note = {});

}  // namespace ferry
