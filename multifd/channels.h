// Helpers next to multifd's connection set-up (channels.cc) that callers
// outside multifd/ also need: the uuid's text form (for `--uuid` and for
// messages) and a Channel that replays bytes already read from another one.
//
//   Result<Uuid> u = ParseUuid("5b6ca0f4-6ad8-4f5c-9d6c-05a3c4b2c6f1");
//   std::string text = FormatUuid(*u);                     // the same 36 characters
//
//   uint8_t magic[4];                                      // read to classify a connection
//   auto main = MakePrefixChannel(std::move(ch), {magic, magic + 4});  // reads magic first
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/channel.h"
#include "core/status.h"
#include "multifd/packet.h"

namespace ferry::multifd {

// "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", lower-case hex (QEMU's -uuid form).
std::string FormatUuid(const Uuid& uuid);
// Accepts exactly that form (either case); kInvalidArgument otherwise.
Result<Uuid> ParseUuid(std::string_view text);

// Wraps `inner` so that reads return `prefix` first, then whatever `inner`
// delivers. Writes, Shutdown, Describe and fd() go straight to `inner`.
// (fd() is forwarded for callers that need the descriptor's identity, e.g.
// socket options; do not poll it for readability while prefix bytes remain.)
std::unique_ptr<Channel> MakePrefixChannel(std::unique_ptr<Channel> inner, std::vector<uint8_t> prefix);

}  // namespace ferry::multifd
