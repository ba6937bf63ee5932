// multifd over RDMA, ferry <-> ferry (docs/rdma-multifd.md): QEMU refuses
// multifd with rdma:, so this channel protocol is ferry's own. The main
// connection speaks QEMU's RDMA protocol as always (the stream, RAM BLOCKS,
// the HOOK records and REGISTER FINISHED); N more connections (QPs, all in
// the main connection's PD on each side, so one registration serves every
// QP) each carry a share of the pages, driven by one sender thread each:
//
//   source thread i, per batch of runs: zero pages -> COMPRESS entries (up to
//     4096 per message), other pages -> one RDMA WRITE per run (dynamic: a
//     REGISTER REQUEST on channel i for a destination chunk it did not use yet)
//   round end: every thread sends its COMPRESS entries left, waits until all
//     its WRITEs completed, sends REGISTER FINISHED on its channel (the round's
//     marker); then the migration thread sends REGISTER FINISHED on the main
//     one, carrying the number of rounds so far (kCapFerryCounts); a section
//     that does not end a round ends without the barrier
//   destination: one thread per channel answers REGISTER REQUESTs (the shared
//     registration cache) and applies COMPRESS; a hook ends once the main
//     REGISTER FINISHED arrived and every channel sent as many markers as it
//     says (all WRITEs and COMPRESS of those rounds are in place).
#pragma once

#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "core/page_sink.h"
#include "rdma/connection.h"
#include "rdma/writer.h"

namespace ferry::rdma {

class RdmaMultifdSinkFactory final : public PageSinkFactory {
 public:
  // `channels` share main's PD; all outlive the factory's sinks.
  RdmaMultifdSinkFactory(RdmaConnection& main, std::vector<RdmaConnection*> channels, ZeroPolicy zero,
                         std::function<void(std::string_view)> note = {})
      : main_(main), channels_(std::move(channels)), zero_(zero), note_(std::move(note)) {}
  Result<std::unique_ptr<PageSink>> Make(StreamWriter& main) override;
  bool saver_detects_zero() const override { return false; }

 private:
  RdmaConnection& main_;
  std::vector<RdmaConnection*> channels_;
  ZeroPolicy zero_;
  std::function<void(std::string_view)> note_;
};

}  // namespace ferry::rdma
