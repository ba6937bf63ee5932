// The socket transport's registration (transports/transports.cc): tcp:,
// unix: and fd: endpoints. A source connects (and can connect again, for
// multifd); a destination listens and leaves the sorting of incoming
// connections to multifd (or takes the first as the stream). Every
// connection made or accepted goes through the plan's channel layers (tls).
#pragma once

#include <memory>

#include "core/setup.h"

namespace ferry {

std::unique_ptr<Transport> MakeSocketTransport();

}  // namespace ferry
