#include "rdma/source.h"

#include <algorithm>
#include <optional>
#include <string>

#include "core/wire.h"
#include "rdma/verbs.h"
#include "rdma/stats.h"
#include "rdma/writer.h"

namespace ferry::rdma {

bool RunCoalescer::Add(RamBlock& b, uint64_t page_index) {
  const uint64_t o = page_index << kPageShift;
  if (len > 0 && &b == ram && o == off + len && (o >> kChunkShift) == (off >> kChunkShift)) {
    len += kPageSize;
    return true;
  }
  return false;
}

void RunCoalescer::Start(RamBlock& b, uint64_t page_index, const std::vector<RamBlock*>& order) {
  if (&b != ram) {
    ram = &b;
    block = -1;
    for (size_t i = 0; i < order.size(); ++i) {
      if (order[i] == &b) block = static_cast<int64_t>(i);
    }
  }
  off = page_index << kPageShift;
  len = kPageSize;
}

Status RdmaSinkBase::OnBlockListed(RamBlock& block) {
  blocks_.push_back(&block);
  local_.AddBlock(block.host, block.used_length);
  return Status();
}

Result<std::vector<DestBlock>> RdmaSinkBase::RequestBlocks() {
  FERRY_RETURN_IF_ERROR(Hook());
  FERRY_ASSIGN_OR_RETURN(std::vector<DestBlock> dest, RequestRamBlocks(conn_, blocks_));
  if (conn_.pin_all()) FERRY_RETURN_IF_ERROR(local_.PinAll());
  return dest;
}

void RdmaSinkBase::BeginSection() {
  if (!started()) return;
  in_round_ = true;
  Status s = Hook();
  if (!s.ok()) main_.SetError(s);
}

void RdmaSinkBase::Page(RamBlock& block, uint64_t page_index, bool zero) {
  (void)zero;
  if (!main_.status().ok()) return;
  if (runs_.Add(block, page_index)) return;
  Status s = FlushRun();
  if (!s.ok()) return main_.SetError(s);
  runs_.Start(block, page_index, blocks_);
}

Status RdmaSinkBase::OnSectionEnd() {
  if (!in_round_) return Status();
  in_round_ = false;
  FERRY_RETURN_IF_ERROR(FlushRun());
  return EndSection();
}

Status RdmaSinkBase::Hook() {
  main_.PutBe64(wire::kRamHook);
  return main_.Flush();
}

Status RdmaSinkBase::FlushRun() {
  if (runs_.len == 0) return Status();
  if (runs_.block < 0) return Status::Internal("rdma: page of a block that was not listed");
  const uint64_t len = runs_.len;
  taken_ += len;
  runs_.len = 0;
  return SendRun(static_cast<uint32_t>(runs_.block), runs_.off, len);
}

void AddWriterStats(RdmaSourceStats& st, const WriterCounters& c) {
  st.bytes_written += c.bytes_written;
  st.bytes_copied += c.bytes_copied;
  st.writes += c.writes;
  st.zero_bytes += c.zero_bytes;
  st.compress_messages += c.compress_messages;
  st.register_requests += c.register_requests;
}

void PublishedSourceStats::Publish(const RdmaSourceStats& st) {
  auto copy = std::make_shared<const RdmaSourceStats>(st);
  std::lock_guard lock(mu_);
  st_ = std::move(copy);
}

void PublishedSourceStats::FillStats(MigrationStats& stats) const {
  std::shared_ptr<const RdmaSourceStats> st;
  {
    std::lock_guard lock(mu_);
    st = st_;
  }
  if (!st) return;
  // As multifd's zero pages: never below zero if the saver's count lags.
  const uint64_t moved = std::min(st->zero_bytes / kPageSize, stats.ram.normal);
  stats.ram.normal -= moved;
  stats.ram.duplicate += moved;
  stats.ram.normal_bytes = stats.ram.normal * kPageSize;
  stats.Set(std::move(st));
}

std::string RdmaSourceStats::Summary() const {
  std::string s = "rdma: " + std::to_string(bytes_written / 4096) + " pages (" + std::to_string(bytes_written >> 20) +
                  " MiB) in " + std::to_string(writes) + " RDMA WRITEs (" + std::to_string(signalled) + " signalled)";
  if (bytes_copied > 0) s += ", " + std::to_string(bytes_copied >> 20) + " MiB of them copied (memory not registrable)";
  s += ", " + std::to_string(zero_bytes / 4096) + " zero pages in " + std::to_string(compress_messages) +
       " COMPRESS messages, " + std::to_string(register_requests) + " REGISTER REQUESTs, " +
       std::to_string(local_registrations) + " source memory registrations";
  if (channels > 0) s += ", " + std::to_string(channels) + " multifd channels";
  return s;
}

Result<std::vector<DestBlock>> RequestRamBlocks(RdmaConnection& conn, const std::vector<RamBlock*>& blocks) {
  FERRY_ASSIGN_OR_RETURN(Message m, conn.Request(EncodeEmpty(ControlType::kRamBlocksRequest),
                                                 ControlType::kRamBlocksResult));
  FERRY_ASSIGN_OR_RETURN(std::vector<DestBlock> dest, DecodeRamBlocksResult(m));
  if (dest.size() != blocks.size()) {
    return Status::Mismatch("rdma: the destination has " + std::to_string(dest.size()) + " RAM blocks, the source " +
                            std::to_string(blocks.size()));
  }
  for (size_t i = 0; i < dest.size(); ++i) {
    if (dest[i].length != blocks[i]->used_length) {
      return Status::Mismatch("rdma: RAM block '" + blocks[i]->name + "' is " + std::to_string(dest[i].length) +
                              " bytes on the destination, " + std::to_string(blocks[i]->used_length) + " here");
    }
  }
  return dest;
}

namespace {

class RdmaSink final : public RdmaSinkBase {
 public:
  RdmaSink(RdmaConnection& conn, StreamWriter& main, std::function<void(std::string_view)> note)
      : RdmaSinkBase(conn, main), note_(std::move(note)) {}
  ~RdmaSink() override {
    if (complete_ && note_ && writer_) note_(Stats().Summary());
  }

  Status OnComplete() override {
    complete_ = true;
    return Status();
  }

  RdmaSourceStats Stats() const {
    RdmaSourceStats st;
    AddWriterStats(st, writer_->counters());
    st.signalled = conn_.writes_signalled();
    st.local_registrations = local_.registrations();
    st.pin_all = conn_.pin_all();
    return st;
  }

  Status OnSetupEnd() override {
    FERRY_ASSIGN_OR_RETURN(std::vector<DestBlock> dest, RequestBlocks());
    writer_.emplace(conn_, local_, std::move(dest), ZeroPolicy::kQemu);
    FERRY_RETURN_IF_ERROR(conn_.SendWhenReady(EncodeEmpty(ControlType::kRegisterFinished)));
    return Status();
  }

  bool started() const override { return writer_.has_value(); }

  Status SendRun(uint32_t block, uint64_t off, uint64_t len) override { return writer_->Run(block, off, len); }

  // Every WRITE of the round completes before REGISTER FINISHED: the
  // destination reads the section's EOS only after that.
  Status EndSection() override {
    FERRY_RETURN_IF_ERROR(writer_->EndRound());
    published_.Publish(Stats());
    return conn_.SendWhenReady(writer_->FinishedMessage());
  }

  void Abort() override { conn_.Shutdown(); }

 private:
  std::function<void(std::string_view)> note_;
  std::optional<PageWriter> writer_;
  bool complete_ = false;
};

}  // namespace

Result<std::unique_ptr<PageSink>> RdmaSinkFactory::Make(StreamWriter& main) {
  return std::unique_ptr<PageSink>(std::make_unique<RdmaSink>(conn_, main, note_));
}

}  // namespace ferry::rdma
