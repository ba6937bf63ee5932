#include "rdma/source.h"

#include <cstring>
#include <string>

#include "core/wire.h"
#include "rdma/verbs.h"

namespace ferry::rdma {
namespace {

class RdmaSink final : public PageSink {
 public:
  RdmaSink(RdmaConnection& conn, StreamWriter& main) : conn_(conn), main_(main) {}

  Status OnBlockListed(RamBlock& block) override {
    Block b;
    b.block = &block;
    // Pages go through registered bounce buffers (one copy): registering
    // guest memory itself would pin it (populating it, and with a read-only
    // pin of anonymous memory racing the guest's copy-on-write) and fails on
    // a read-only file mapping (send --memory-file). Zero-copy is left to do.
    if (bounce_.empty()) {
      bounce_.resize(kBounceSlots * kChunkSize);
      FERRY_ASSIGN_OR_RETURN(bounce_mr_,
                             RegisterMemory(conn_.pd(), bounce_.data(), bounce_.size(), IBV_ACCESS_LOCAL_WRITE));
    }
    b.chunk_rkey.assign((block.used_length + kChunkSize - 1) >> kChunkShift, 0);
    blocks_.push_back(std::move(b));
    return Status();
  }

  Status OnSetupEnd() override {
    FERRY_RETURN_IF_ERROR(Hook());
    FERRY_ASSIGN_OR_RETURN(Message m, conn_.Request(EncodeEmpty(ControlType::kRamBlocksRequest),
                                                    ControlType::kRamBlocksResult));
    FERRY_ASSIGN_OR_RETURN(std::vector<DestBlock> dest, DecodeRamBlocksResult(m));
    if (dest.size() != blocks_.size()) {
      return Status::Mismatch("rdma: the destination has " + std::to_string(dest.size()) + " RAM blocks, the source " +
                              std::to_string(blocks_.size()));
    }
    for (size_t i = 0; i < dest.size(); ++i) {
      if (dest[i].length != blocks_[i].block->used_length) {
        return Status::Mismatch("rdma: RAM block '" + blocks_[i].block->name + "' is " +
                                std::to_string(dest[i].length) + " bytes on the destination, " +
                                std::to_string(blocks_[i].block->used_length) + " here");
      }
      blocks_[i].remote = dest[i];
    }
    FERRY_RETURN_IF_ERROR(conn_.SendWhenReady(EncodeEmpty(ControlType::kRegisterFinished)));
    setup_done_ = true;
    return Status();
  }

  void BeginSection() override {
    if (!setup_done_) return;  // the setup section's hook comes after the block list
    in_round_ = true;
    Status s = Hook();
    if (!s.ok()) main_.SetError(s);
  }

  void Page(RamBlock& block, uint64_t page_index, bool zero) override {
    (void)zero;
    if (!main_.status().ok()) return;
    const uint64_t off = page_index << kPageShift;
    if (run_len_ > 0 && &block == run_block_->block && off == run_off_ + run_len_ &&
        (off >> kChunkShift) == (run_off_ >> kChunkShift)) {
      run_len_ += kPageSize;
      return;
    }
    Status s = FlushRun();
    if (!s.ok()) return main_.SetError(s);
    run_block_ = BlockOf(block);
    run_off_ = off;
    run_len_ = kPageSize;
  }

  Status OnSectionEnd() override {
    if (!in_round_) return Status();
    in_round_ = false;
    FERRY_RETURN_IF_ERROR(FlushRun());
    FERRY_RETURN_IF_ERROR(conn_.DrainWrites());
    next_slot_ = 0;
    return conn_.SendWhenReady(EncodeEmpty(ControlType::kRegisterFinished));
  }

  uint64_t accounted_bytes() const override { return written_; }
  void Abort() override { conn_.Shutdown(); }

 private:
  struct Block {
    RamBlock* block = nullptr;
    DestBlock remote;
    std::vector<uint32_t> chunk_rkey;  // dynamic: 0 = not registered yet
  };

  Block* BlockOf(RamBlock& b) {
    for (Block& x : blocks_) {
      if (x.block == &b) return &x;
    }
    return nullptr;
  }

  // The HOOK record, flushed so that the destination reads it before the
  // registration messages.
  Status Hook() {
    main_.PutBe64(wire::kRamHook);
    return main_.Flush();
  }

  Status FlushRun() {
    if (run_len_ == 0) return Status();
    Block& b = *run_block_;
    if (!b.block) return Status::Internal("rdma: page of a block that was not listed");
    const size_t index = &b - blocks_.data();
    const uint64_t chunk = run_off_ >> kChunkShift;
    uint32_t rkey = b.remote.rkey;
    if (!conn_.pin_all()) {
      if (b.chunk_rkey[chunk] == 0) {
        RegisterEntry e{b.remote.offset + run_off_, static_cast<uint32_t>(index), 0};
        FERRY_ASSIGN_OR_RETURN(std::vector<uint8_t> req, EncodeRegisterRequest(std::span(&e, 1)));
        FERRY_ASSIGN_OR_RETURN(Message m, conn_.Request(req, ControlType::kRegisterResult));
        FERRY_ASSIGN_OR_RETURN(std::vector<RegisterResult> r, DecodeRegisterResults(m));
        if (r.size() != 1 || r[0].rkey == 0) return Status::Protocol("rdma: REGISTER RESULT without a key");
        b.chunk_rkey[chunk] = r[0].rkey;
      }
      rkey = b.chunk_rkey[chunk];
    }
    if (next_slot_ == kBounceSlots) {  // every slot may still be in flight
      FERRY_RETURN_IF_ERROR(conn_.DrainWrites());
      next_slot_ = 0;
    }
    uint8_t* slot = bounce_.data() + next_slot_++ * kChunkSize;
    std::memcpy(slot, b.block->host + run_off_, run_len_);
    FERRY_RETURN_IF_ERROR(conn_.Write(slot, static_cast<uint32_t>(run_len_), bounce_mr_->lkey,
                                      b.remote.host_addr + run_off_, rkey));
    written_ += run_len_;
    run_len_ = 0;
    return Status();
  }

  // 1 MiB each: a run never crosses a chunk. 8 keep the QP busy while the
  // next runs are copied; all are reused only after a drain.
  static constexpr size_t kBounceSlots = 8;

  RdmaConnection& conn_;
  StreamWriter& main_;
  std::vector<Block> blocks_;
  std::vector<uint8_t> bounce_;
  MemoryRegion bounce_mr_;  // declared after bounce_: deregistered first
  size_t next_slot_ = 0;
  bool setup_done_ = false;
  bool in_round_ = false;
  Block* run_block_ = nullptr;
  uint64_t run_off_ = 0, run_len_ = 0;
  uint64_t written_ = 0;
};

}  // namespace

Result<std::unique_ptr<PageSink>> RdmaSinkFactory::Make(StreamWriter& main) {
  return std::unique_ptr<PageSink>(std::make_unique<RdmaSink>(conn_, main));
}

}  // namespace ferry::rdma
