#include "rdma/writer.h"

#include <cerrno>
#include <cstring>
#include <string>

#include "core/zero_page.h"

namespace ferry::rdma {
namespace {
constexpr uint64_t kPage = 4096;
}  // namespace

void LocalMemory::AddBlock(uint8_t* host, uint64_t length) {
  std::lock_guard lock(mu_);
  Block b;
  b.host = host;
  b.length = length;
  if (!pin_all_) b.chunk.resize((length + kChunkSize - 1) >> kChunkShift);
  blocks_.push_back(std::move(b));
}

Result<MemoryRegion> LocalMemory::Register(uint8_t* addr, uint64_t len) {
  ibv_mr* mr = ibv_reg_mr(pd_, addr, len, IBV_ACCESS_LOCAL_WRITE);
  if (mr == nullptr && (errno == EFAULT || errno == EACCES || errno == EPERM)) mr = ibv_reg_mr(pd_, addr, len, 0);
  if (mr == nullptr && errno == EFAULT) return MemoryRegion();
  if (mr == nullptr) {
    return ErrnoStatus("rdma: cannot register " + std::to_string(len) + " bytes of guest memory on the source");
  }
  ++registrations_;
  registered_bytes_ += len;
  return MemoryRegion(mr);
}

Status LocalMemory::PinAll() {
  std::lock_guard lock(mu_);
  for (Block& b : blocks_) {
    if (b.whole || b.copy || b.length == 0) continue;
    FERRY_ASSIGN_OR_RETURN(b.whole, Register(b.host, b.length));
    if (!b.whole) b.copy = true;
  }
  return Status();
}

Result<std::optional<uint32_t>> LocalMemory::Lkey(uint32_t b, uint64_t offset) {
  std::lock_guard lock(mu_);
  if (b >= blocks_.size() || offset >= blocks_[b].length) return Status::Internal("rdma: page outside the blocks");
  Block& blk = blocks_[b];
  if (blk.copy) return std::optional<uint32_t>();
  if (blk.whole) return std::optional<uint32_t>(blk.whole->lkey);
  if (pin_all_) {
    FERRY_ASSIGN_OR_RETURN(blk.whole, Register(blk.host, blk.length));
    if (!blk.whole) {
      blk.copy = true;
      return std::optional<uint32_t>();
    }
    return std::optional<uint32_t>(blk.whole->lkey);
  }
  MemoryRegion& slot = blk.chunk[offset >> kChunkShift];
  if (!slot) {
    const uint64_t start = offset & ~(kChunkSize - 1);
    FERRY_ASSIGN_OR_RETURN(slot, Register(blk.host + start, std::min(kChunkSize, blk.length - start)));
    if (!slot) {
      blk.copy = true;
      return std::optional<uint32_t>();
    }
  }
  return std::optional<uint32_t>(slot->lkey);
}

uint64_t LocalMemory::copied_blocks() const {
  std::lock_guard lock(mu_);
  uint64_t n = 0;
  for (const Block& b : blocks_) n += b.copy ? 1 : 0;
  return n;
}

uint64_t LocalMemory::registrations() const {
  std::lock_guard lock(mu_);
  return registrations_;
}

uint64_t LocalMemory::registered_bytes() const {
  std::lock_guard lock(mu_);
  return registered_bytes_;
}

PageWriter::PageWriter(RdmaConnection& conn, LocalMemory& local, std::vector<DestBlock> remote, ZeroPolicy zero)
    : conn_(conn), local_(local), remote_(std::move(remote)), zero_(zero) {
  if (!conn_.pin_all()) {
    rkey_.resize(remote_.size());
    for (size_t i = 0; i < remote_.size(); ++i) rkey_[i].assign((remote_[i].length + kChunkSize - 1) >> kChunkShift, 0);
  }
}

Result<uint32_t> PageWriter::RemoteKey(uint32_t b, uint64_t offset) {
  if (conn_.pin_all()) return remote_[b].rkey;
  uint32_t& key = rkey_[b][offset >> kChunkShift];
  if (key == 0) {
    RegisterEntry e{remote_[b].offset + offset, b, 0};
    FERRY_ASSIGN_OR_RETURN(std::vector<uint8_t> req, EncodeRegisterRequest(std::span(&e, 1)));
    FERRY_ASSIGN_OR_RETURN(Message m, conn_.Request(req, ControlType::kRegisterResult));
    FERRY_ASSIGN_OR_RETURN(std::vector<RegisterResult> r, DecodeRegisterResults(m));
    if (r.size() != 1 || r[0].rkey == 0) return Status::Protocol("rdma: REGISTER RESULT without a key");
    key = r[0].rkey;
    ++counters_.register_requests;
  }
  return key;
}

Status PageWriter::Write(uint32_t b, uint64_t offset, uint64_t len) {
  FERRY_ASSIGN_OR_RETURN(uint32_t rkey, RemoteKey(b, offset));
  FERRY_ASSIGN_OR_RETURN(std::optional<uint32_t> lkey, local_.Lkey(b, offset));
  if (!lkey) return WriteCopy(b, offset, len, rkey);
  FERRY_RETURN_IF_ERROR(
      conn_.Write(local_.host(b) + offset, static_cast<uint32_t>(len), *lkey, remote_[b].host_addr + offset, rkey));
  counters_.bytes_written += len;
  ++counters_.writes;
  return Status();
}

Status PageWriter::WriteCopy(uint32_t b, uint64_t offset, uint64_t len, uint32_t rkey) {
  if (bounce_.empty()) {
    bounce_.resize(kBounceSlots * kChunkSize);
    FERRY_ASSIGN_OR_RETURN(bounce_mr_,
                           RegisterMemory(conn_.pd(), bounce_.data(), bounce_.size(), IBV_ACCESS_LOCAL_WRITE));
  }
  if (next_slot_ == kBounceSlots) {  // every slot may still be in flight
    FERRY_RETURN_IF_ERROR(conn_.DrainWrites());
    next_slot_ = 0;
  }
  uint8_t* slot = bounce_.data() + next_slot_++ * kChunkSize;
  std::memcpy(slot, local_.host(b) + offset, len);
  FERRY_RETURN_IF_ERROR(
      conn_.Write(slot, static_cast<uint32_t>(len), bounce_mr_->lkey, remote_[b].host_addr + offset, rkey));
  counters_.bytes_written += len;
  counters_.bytes_copied += len;
  ++counters_.writes;
  return Status();
}

Status PageWriter::SendCompress() {
  if (compress_.empty()) return Status();
  FERRY_ASSIGN_OR_RETURN(std::vector<uint8_t> wire, EncodeCompress(compress_));
  compress_.clear();
  ++counters_.compress_messages;
  return conn_.SendWhenReady(wire);
}

Status PageWriter::AddZero(uint32_t b, uint64_t offset, uint64_t len) {
  const uint64_t at = remote_[b].offset + offset;
  counters_.zero_bytes += len;
  if (!compress_.empty() && compress_.back().block_index == b &&
      compress_.back().offset + compress_.back().length == at) {
    compress_.back().length += len;
    return Status();
  }
  if (compress_.size() == kMaxCommandsPerMessage) FERRY_RETURN_IF_ERROR(SendCompress());
  compress_.push_back({0, b, at, len});
  return Status();
}

Status PageWriter::Run(uint32_t b, uint64_t offset, uint64_t len) {
  if (b >= remote_.size()) return Status::Internal("rdma: page of a block that was not listed");
  const uint8_t* host = local_.host(b) + offset;
  switch (zero_) {
    case ZeroPolicy::kNone:
      return Write(b, offset, len);
    case ZeroPolicy::kQemu: {
      const bool unregistered = !conn_.pin_all() && rkey_[b][offset >> kChunkShift] == 0;
      bool zero = unregistered;
      for (uint64_t i = 0; zero && i < len; i += kPage) zero = IsZeroPage(host + i);
      if (!zero) return Write(b, offset, len);
      // One entry per message: QEMU's destination applies one.
      FERRY_RETURN_IF_ERROR(AddZero(b, offset, len));
      return SendCompress();
    }
    case ZeroPolicy::kPages: {
      uint64_t seg = 0;
      bool seg_zero = false;
      for (uint64_t i = 0; i <= len; i += kPage) {
        const bool end = i == len;
        const bool z = !end && IsZeroPage(host + i);
        if (i > seg && (end || z != seg_zero)) {
          FERRY_RETURN_IF_ERROR(seg_zero ? AddZero(b, offset + seg, i - seg) : Write(b, offset + seg, i - seg));
          seg = i;
        }
        if (i == seg) seg_zero = z;
      }
      return Status();
    }
  }
  return Status();
}

std::vector<uint8_t> PageWriter::FinishedMessage() {
  if (!(conn_.capabilities().flags & kCapFerryCounts)) return EncodeEmpty(ControlType::kRegisterFinished);
  const uint64_t pages = (counters_.bytes_written - reported_bytes_) / kPage;
  reported_bytes_ = counters_.bytes_written;
  return EncodeRegisterFinished(pages);
}

Status PageWriter::EndRound() {
  FERRY_RETURN_IF_ERROR(SendCompress());
  FERRY_RETURN_IF_ERROR(conn_.DrainWrites());
  next_slot_ = 0;
  return Status();
}

}  // namespace ferry::rdma
