// The source side of QEMU's RDMA migration (ferry active, QEMU or ferry
// passive): a PageSink that writes pages with RDMA WRITE into the
// destination's registered memory and writes the RAM_SAVE_FLAG_HOOK records
// around each round.
//
//   setup (START):  block list, then HOOK, RAM BLOCKS REQUEST -> RESULT
//                   (remote addresses; rkeys with pin-all), REGISTER FINISHED
//   every PART/END: HOOK; per run of contiguous pages inside one 1 MiB chunk
//                   one WRITE (dynamic: REGISTER REQUEST first for a chunk
//                   not registered yet); at the section end every WRITE
//                   completes, then REGISTER FINISHED
//
//   auto conn = RdmaConnection::Connect(uri, /*pin_all=*/false, timeout);
//   RdmaStreamChannel channel(**conn, RdmaStreamChannel::Side::kSource);
//   RdmaSinkFactory sinks(**conn);
//   MigrationSource(params, blocks, tracker, guest, {}, &sinks).Run(channel, false);
#pragma once

#include <memory>
#include <vector>

#include "core/page_sink.h"
#include "rdma/connection.h"

namespace ferry::rdma {

class RdmaSinkFactory final : public PageSinkFactory {
 public:
  explicit RdmaSinkFactory(RdmaConnection& conn) : conn_(conn) {}
  Result<std::unique_ptr<PageSink>> Make(StreamWriter& main) override;
  // Zero pages are written like any other (the destination's memory may hold
  // older data); the saver needs not look for them.
  bool saver_detects_zero() const override { return false; }

 private:
  RdmaConnection& conn_;
};

}  // namespace ferry::rdma
