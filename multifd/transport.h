// multifd's registration (transports/transports.cc): the multifd capability
// and its parameters (multifd/settings.h). Over a socket endpoint it opens
// multifd-channels extra connections (source) or sorts the incoming ones
// into the main stream and the channels (destination; with multifd off it
// still takes the main stream and refuses a stray multifd channel). Over a
// file (mapped-ram) the channels are file threads: file/ uses them.
#pragma once

#include <memory>

#include "core/setup.h"

namespace ferry::multifd {

std::unique_ptr<Transport> MakeTransport();

}  // namespace ferry::multifd
