// A VM's uuid (QEMU's -uuid): 16 bytes, shown as
// "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx". multifd channels announce it in
// their init packets; with the validate-uuid capability the configuration
// section carries it too.
//
//   Result<Uuid> u = ParseUuid("5b6ca0f4-6ad8-4f5c-9d6c-05a3c4b2c6f1");
//   std::string text = FormatUuid(*u);   // the same 36 characters
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "status.h"

namespace ferry {

using Uuid = std::array<uint8_t, 16>;

// Lower-case hex in the 8-4-4-4-12 form.
std::string FormatUuid(const Uuid& uuid);
// Accepts exactly that form (either case); kInvalidArgument otherwise.
Result<Uuid> ParseUuid(std::string_view text);

}  // namespace ferry
