// A helper next to multifd's connection set-up (channels.cc) that callers
// outside multifd/ also need: a Channel that replays bytes already read from
// another one.
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

// Wraps `inner` so that reads return `prefix` first, then whatever `inner`
// delivers. Writes, Shutdown, Describe and fd() go straight to `inner`.
// (fd() is forwarded for callers that need the descriptor's identity, e.g.
// socket options; do not poll it for readability while prefix bytes remain.)
std::unique_ptr<Channel> MakePrefixChannel(std::unique_ptr<Channel> inner, std::vector<uint8_t> prefix);

}  // namespace ferry::multifd
