// tls/'s registration (transports/transports.cc): the parameters tls-creds,
// tls-hostname and tls-authz (QEMU's names; the CLI's --tls-creds is
// tls-creds), and a TLS session on every connection the socket transport
// makes or accepts — the main stream and every multifd channel, the source
// as client, the destination as server. The session of each channel goes
// into the stats as tls/stats.h's TlsStats (Connection::AddStats). Files (save/load) and
// endpoints that are not sockets are refused.
#pragma once

#include <memory>

#include "core/setup.h"

namespace ferry::tls {

std::unique_ptr<Transport> MakeTransport();

}  // namespace ferry::tls
