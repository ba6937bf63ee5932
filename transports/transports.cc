// The registry: one line per transport. A new transport (tls/, rdma/)
// implements core/setup.h's Transport in its own folder and adds its line
// here (and its library to transports/CMakeLists.txt).
#include "transports/transports.h"

#include "file/file_transport.h"
#include "multifd/transport.h"
#include "rdma/transport.h"
#include "socket/socket_transport.h"
#include "tls/transport.h"

namespace ferry {

const TransportRegistry& BuiltinTransports() {
  static const TransportRegistry registry = TransportRegistry()
                                                .Add(MakeSocketTransport)
                                                .Add(multifd::MakeTransport)
                                                .Add(MakeFileTransport)
                                                .Add(rdma::MakeTransport)
                                                .Add(tls::MakeTransport);
  return registry;
}

Result<MigrationPlan> Plan(Side side, const MigrationSpec& spec) { return Plan(BuiltinTransports(), side, spec); }

}  // namespace ferry
