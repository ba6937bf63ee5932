// rdma's registration (transports/transports.cc): the rdma:HOST:PORT
// endpoint (QEMU's RDMA protocol, docs/rdma.md) and the rdma-pin-all
// capability. The source connects and writes pages with RDMA WRITEs
// (RdmaSinkFactory); the destination listens, accepts one connection and
// serves registrations at the RAM stream's hook records (RdmaPageReceiver).
// One direction only: no verdict, no confirmation.
#pragma once

#include <memory>
#include <string_view>

#include "core/setup.h"
#include "core/uri.h"

namespace ferry::rdma {

std::unique_ptr<Transport> MakeTransport();

// "rdma:HOST:PORT" / "rdma:[V6]:PORT": host and port as for tcp: (the
// returned Uri's text is the rdma: one).
Result<Uri> ParseRdmaUri(std::string_view text);

}  // namespace ferry::rdma
