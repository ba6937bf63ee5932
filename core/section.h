// Section handlers: what the destination dispatches a section to by idstr,
// and what the source saves at switchover.
//
// A DeviceHandler is non-live device state, saved in one FULL section after
// the guest is paused (QEMU's vmstate devices). The RAM loader and ferry's
// verification section implement SectionLoader too.
#pragma once

#include <cstdint>
#include <string>

#include "status.h"
#include "stream.h"

namespace ferry {

class SectionLoader {
 public:
  virtual ~SectionLoader() = default;
  virtual std::string idstr() const = 0;
  virtual uint32_t instance_id() const { return 0; }
  // Highest section version this loader understands.
  virtual uint32_t version() const = 0;
  // Reads one section's payload (the footer is checked by the caller).
  virtual Status Load(StreamReader& r, uint32_t version) = 0;
};

class DeviceHandler : public SectionLoader {
 public:
  // Writes the device's state; the guest is paused.
  virtual Status Save(StreamWriter& w) = 0;
};

}  // namespace ferry
