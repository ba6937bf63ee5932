// The source side of QEMU's RDMA migration (ferry active, QEMU or ferry
// passive): a PageSink that writes pages with RDMA WRITE into the
// destination's registered memory and writes the RAM_SAVE_FLAG_HOOK records
// around each round.
//
//   setup (START):  block list, then HOOK, RAM BLOCKS REQUEST -> RESULT
//                   (remote addresses; rkeys with pin-all), REGISTER FINISHED
//   every PART/END: HOOK; per run of contiguous pages inside one 1 MiB chunk
//                   one WRITE straight from guest memory (dynamic: REGISTER
//                   REQUEST first for a chunk not registered yet; a run all
//                   zeros in such a chunk is a COMPRESS instead); at the
//                   section end every WRITE completes, then REGISTER FINISHED
//
//   auto conn = RdmaConnection::Connect(uri, /*pin_all=*/false, timeout);
//   RdmaStreamChannel channel(**conn, RdmaStreamChannel::Side::kSource);
//   RdmaSinkFactory sinks(**conn);
//   MigrationSource(params, blocks, tracker, guest, {}, &sinks).Run(channel, false);
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string_view>
#include <vector>

#include "core/page_sink.h"
#include "core/ram_block.h"
#include "rdma/connection.h"
#include "rdma/writer.h"

namespace ferry::rdma {

// Contiguous pages of one block inside one 1 MiB chunk, gathered on the
// migration thread (`block` is the index in the setup list's order).
struct RunCoalescer {
  RamBlock* ram = nullptr;
  int64_t block = -1;
  uint64_t off = 0, len = 0;
  // Extends the run by the page if it continues it; false otherwise.
  bool Add(RamBlock& b, uint64_t page_index);
  // A new run of this page (the one before must be taken: len = 0).
  void Start(RamBlock& b, uint64_t page_index, const std::vector<RamBlock*>& order);
};

struct RdmaSourceStats;
struct WriterCounters;
void AddWriterStats(RdmaSourceStats& st, const WriterCounters& c);

// A sink's counters as of its last round end (its threads idle then), for
// PageSink::FillStats from any thread: puts them in as the "rdma" transport
// counters and moves the zero pages sent as COMPRESS from ram.normal (the
// saver counted every page it handed over) to ram.duplicate.
class PublishedSourceStats {
 public:
  void Publish(const RdmaSourceStats& st);
  void FillStats(MigrationStats& stats) const;

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const RdmaSourceStats> st_;
};

// Setup: RAM BLOCKS REQUEST -> RESULT, checked against the source's blocks.
Result<std::vector<DestBlock>> RequestRamBlocks(RdmaConnection& conn, const std::vector<RamBlock*>& blocks);

// What both RDMA source sinks (one connection, multifd) share: the block
// list (guest memory registered in place: chunks on first use, or whole
// blocks with pin-all; no bounce copy) and, on the migration thread, a HOOK
// record at each section's start, pages gathered into runs, every run handed
// to SendRun, and at the section's end the last run handed over before
// EndSection. Each sink keeps its writers, its setup's end and its round's end.
class RdmaSinkBase : public PageSink {
 public:
  RdmaSinkBase(RdmaConnection& conn, StreamWriter& main)
      : conn_(conn), main_(main), local_(conn.pd(), conn.pin_all()) {}

  void FillStats(MigrationStats& stats) const final { published_.FillStats(stats); }
  Status OnBlockListed(RamBlock& block) final;
  void BeginSection() final;
  void Page(RamBlock& block, uint64_t page_index, bool zero) final;
  Status OnSectionEnd() final;
  uint64_t accounted_bytes() const final { return taken_; }

 protected:
  // False until setup is over: the setup section's hook comes after the block list.
  virtual bool started() const = 0;
  // One run of contiguous pages (block: index in blocks_).
  virtual Status SendRun(uint32_t block, uint64_t off, uint64_t len) = 0;
  // A section that began with a hook ends, its last run handed over.
  virtual Status EndSection() = 0;

  // Setup's end, its common part: the HOOK record, RAM BLOCKS REQUEST ->
  // RESULT (the destination's blocks), with pin-all every block registered.
  Result<std::vector<DestBlock>> RequestBlocks();
  // Hands the run being gathered (if any) to SendRun.
  Status FlushRun();

  RdmaConnection& conn_;
  StreamWriter& main_;
  std::vector<RamBlock*> blocks_;
  LocalMemory local_;  // the sinks' writers (their members) use it: go first
  PublishedSourceStats published_;

 private:
  // The HOOK record, flushed so that the destination reads it before the
  // registration messages.
  Status Hook();

  bool in_round_ = false;
  RunCoalescer runs_;
  uint64_t taken_ = 0;
};

class RdmaSinkFactory final : public PageSinkFactory {
 public:
  // `note`: where the sink reports its counters once complete (may be empty).
  explicit RdmaSinkFactory(RdmaConnection& conn, std::function<void(std::string_view)> note = {})
      : conn_(conn), note_(std::move(note)) {}
  Result<std::unique_ptr<PageSink>> Make(StreamWriter& main) override;
  // Zero pages are found by the sink (a zero run in a chunk not registered
  // yet becomes a COMPRESS; others are written like any page: the
  // destination's memory may hold older data); the saver needs not look.
  bool saver_detects_zero() const override { return false; }

 private:
  RdmaConnection& conn_;
  std::function<void(std::string_view)> note_;
};

}  // namespace ferry::rdma
