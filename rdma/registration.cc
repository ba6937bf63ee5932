#include "rdma/registration.h"

#include <string>

#include "rdma/verbs.h"

namespace ferry::rdma {
namespace {

class MrRegistration : public Registration {
 public:
  explicit MrRegistration(MemoryRegion mr) : mr_(std::move(mr)) {}
  uint32_t lkey() const override { return mr_->lkey; }
  uint32_t rkey() const override { return mr_->rkey; }

 private:
  MemoryRegion mr_;
};

}  // namespace

Result<std::unique_ptr<Registration>> PdRegistrar::Register(uint8_t* addr, size_t len) {
  FERRY_ASSIGN_OR_RETURN(MemoryRegion mr, RegisterMemory(pd_, addr, len, kRemoteWriteAccess));
  return std::unique_ptr<Registration>(std::make_unique<MrRegistration>(std::move(mr)));
}

RegistrationCache::RegistrationCache(Registrar& registrar, std::vector<LocalBlock> blocks, bool pin_all)
    : registrar_(registrar), pin_all_(pin_all) {
  blocks_.resize(blocks.size());
  for (size_t i = 0; i < blocks.size(); ++i) {
    blocks_[i].local = blocks[i];
    if (!pin_all_) blocks_[i].chunk.resize(chunk_count(static_cast<uint32_t>(i)));
  }
}

uint64_t RegistrationCache::chunk_count(uint32_t b) const {
  uint64_t len = blocks_[b].local.length;
  return (len + kChunkSize - 1) >> kChunkShift;
}

Status RegistrationCache::CheckBlock(uint32_t b) const {
  if (b >= blocks_.size()) {
    return Status::Protocol("rdma: RAM block index " + std::to_string(b) + " out of range (" +
                            std::to_string(blocks_.size()) + " blocks)");
  }
  return Status();
}

Status RegistrationCache::RegisterAll() {
  if (!pin_all_) return Status();
  for (size_t i = 0; i < blocks_.size(); ++i) {
    Block& blk = blocks_[i];
    if (blk.whole || blk.local.length == 0) continue;
    auto r = registrar_.Register(blk.local.host, blk.local.length);
    if (!r.ok()) return r.status().WithContext("rdma: pin-all of RAM block " + std::to_string(i));
    blk.whole = std::move(r).value();
    ++live_;
    ++total_;
  }
  return Status();
}

Result<Keys> RegistrationCache::BlockKeys(uint32_t b) const {
  FERRY_RETURN_IF_ERROR(CheckBlock(b));
  const Block& blk = blocks_[b];
  if (!blk.whole) return Status::Internal("rdma: RAM block " + std::to_string(b) + " is not pinned");
  return Keys{blk.whole->lkey(), blk.whole->rkey()};
}

Result<Keys> RegistrationCache::Register(uint32_t b, uint64_t offset, uint64_t chunks) {
  FERRY_RETURN_IF_ERROR(CheckBlock(b));
  Block& blk = blocks_[b];
  if (offset >= blk.local.length) {
    return Status::Protocol("rdma: registration at offset " + std::to_string(offset) + " of RAM block " +
                            std::to_string(b) + " which is " + std::to_string(blk.local.length) + " bytes");
  }
  if (pin_all_) {
    FERRY_RETURN_IF_ERROR(RegisterAll());
    return BlockKeys(b);
  }
  const uint64_t first = offset >> kChunkShift;
  const uint64_t n = chunk_count(b);
  if (chunks == 0 || chunks > n - first) {
    return Status::Protocol("rdma: registration of " + std::to_string(chunks) + " chunks from chunk " +
                            std::to_string(first) + " of RAM block " + std::to_string(b) + " (" +
                            std::to_string(n) + " chunks)");
  }
  std::unique_ptr<Registration>& slot = blk.chunk[first];
  if (!slot) {
    const uint64_t start = first << kChunkShift;
    const uint64_t end = std::min(blk.local.length, (first + chunks) << kChunkShift);
    auto r = registrar_.Register(blk.local.host + start, end - start);
    if (!r.ok()) {
      return r.status().WithContext("rdma: chunk " + std::to_string(first) + " of RAM block " + std::to_string(b));
    }
    slot = std::move(r).value();
    ++live_;
    ++total_;
  }
  return Keys{slot->lkey(), slot->rkey()};
}

Status RegistrationCache::Unregister(uint32_t b, uint64_t chunk) {
  FERRY_RETURN_IF_ERROR(CheckBlock(b));
  if (pin_all_) return Status();
  Block& blk = blocks_[b];
  if (chunk >= blk.chunk.size()) {
    return Status::Protocol("rdma: unregistration of chunk " + std::to_string(chunk) + " of RAM block " +
                            std::to_string(b) + " (" + std::to_string(blk.chunk.size()) + " chunks)");
  }
  if (blk.chunk[chunk]) {
    blk.chunk[chunk].reset();
    --live_;
  }
  return Status();
}

void RegistrationCache::ReleaseAll() {
  for (Block& blk : blocks_) {
    if (blk.whole) {
      blk.whole.reset();
      --live_;
    }
    for (auto& c : blk.chunk) {
      if (c) {
        c.reset();
        --live_;
      }
    }
  }
}

}  // namespace ferry::rdma
