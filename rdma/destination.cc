#include "rdma/destination.h"

#include <cstring>
#include <memory>

#include "core/stream.h"
#include "core/thread_name.h"
#include "core/wire.h"

namespace ferry::rdma {

Status RdmaStreamChannel::WriteAll(std::span<iovec> iov) {
  if (side_ != Side::kSource) {
    return Status::Unsupported("rdma: the destination does not write to the source (no return path over rdma)");
  }
  std::vector<uint8_t> piece;
  piece.reserve(kMaxPayload);
  for (const iovec& v : iov) {
    const auto* p = static_cast<const uint8_t*>(v.iov_base);
    size_t left = v.iov_len;
    while (left > 0) {
      const size_t n = std::min(left, kMaxPayload - piece.size());
      piece.insert(piece.end(), p, p + n);
      p += n;
      left -= n;
      if (piece.size() == kMaxPayload) {
        FERRY_ASSIGN_OR_RETURN(std::vector<uint8_t> wire, EncodeQemuFile(piece));
        FERRY_RETURN_IF_ERROR(conn_.SendWhenReady(wire));
        piece.clear();
      }
    }
  }
  if (!piece.empty()) {
    FERRY_ASSIGN_OR_RETURN(std::vector<uint8_t> wire, EncodeQemuFile(piece));
    FERRY_RETURN_IF_ERROR(conn_.SendWhenReady(wire));
  }
  return Status();
}

void RdmaStreamChannel::SetProgressBound(const ProgressBound& bound) {
  conn_.SetTimeout(bound.limit);
}

Result<size_t> RdmaStreamChannel::ReadSome(void* buf, size_t len) {
  if (side_ != Side::kDestination) {
    return Status::Unsupported("rdma: the source reads nothing from the destination (no return path over rdma)");
  }
  while (pos_ == data_.size()) {
    FERRY_ASSIGN_OR_RETURN(Message m, conn_.ReceiveAfterReady());
    FERRY_RETURN_IF_ERROR(ExpectType(m, ControlType::kQemuFile));
    data_.assign(m.payload.begin(), m.payload.end());
    pos_ = 0;
  }
  size_t n = std::min(len, data_.size() - pos_);
  std::memcpy(buf, data_.data() + pos_, n);
  pos_ += n;
  return n;
}

RdmaPageReceiver::~RdmaPageReceiver() {
  Abort();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void RdmaPageReceiver::SetProgressBound(const ProgressBound& bound) {
  if (bound.limit.count() > 0) wait_limit_ = bound.limit;
}

Status RdmaPageReceiver::Start(std::function<void(const Status&)> on_error) {
  // Without channels everything runs on the migration thread.
  on_error_ = std::move(on_error);
  markers_.assign(channels_.size(), 0);
  channel_end_.assign(channels_.size(), Status());
  channel_done_.assign(channels_.size(), false);
  for (size_t i = 0; i < channels_.size(); ++i) {
    channels_[i]->SetTimeout(std::chrono::milliseconds(0));  // idle between rounds; Abort/Finish wake it
    threads_.emplace_back([this, i] { ChannelLoop(i); });
  }
  return Status();
}

void RdmaPageReceiver::Abort() {
  conn_.Shutdown();
  for (RdmaConnection* c : channels_) c->Shutdown();
  {
    std::lock_guard lock(mu_);
    finishing_ = true;
  }
  cv_.notify_all();
}

void RdmaPageReceiver::ChannelLoop(size_t i) {
  SetThreadName("rdma-mfd-recv", i);
  RdmaConnection& ch = *channels_[i];
  Status end;
  while (true) {
    Result<Message> m = ch.ReceiveAfterReady();
    if (!m.ok()) {
      end = m.status();
      break;
    }
    Status s;
    switch (m->type) {
      case ControlType::kRegisterRequest:
        s = AnswerRegister(ch, *m);
        break;
      case ControlType::kCompress:
        s = ApplyCompress(*m);
        break;
      case ControlType::kRegisterFinished: {
        written_pages_ += DecodeWrittenPages(*m);
        std::lock_guard lock(mu_);
        ++markers_[i];
        cv_.notify_all();
        break;
      }
      case ControlType::kError:
        s = Status::Protocol("rdma: the source reported an error (ERROR message)");
        break;
      default:
        s = Status::Protocol("rdma: unexpected " + ControlTypeName(m->type) + " on a multifd channel");
    }
    if (!s.ok()) {
      end = s;
      // A wrong message is this side's verdict at once; a peer gone (the
      // source's end, or its failure, which the main stream reports too)
      // matters only to a hook still waiting for this channel, and a wait
      // cut short by Abort (this side already failed or was cancelled, for
      // its own reason) is no verdict at all.
      if (on_error_ && s.code() != Code::kCancelled) {
        on_error_(s.WithContext("rdma multifd channel " + std::to_string(i)));
      }
      break;
    }
  }
  std::lock_guard lock(mu_);
  channel_end_[i] = end.WithContext("rdma multifd channel " + std::to_string(i));
  channel_done_[i] = true;
  cv_.notify_all();
}

Status RdmaPageReceiver::WaitForMarkers(uint64_t rounds) {
  std::unique_lock lock(mu_);
  const auto deadline = std::chrono::steady_clock::now() + wait_limit_;
  while (true) {
    bool all = true;
    for (size_t i = 0; i < channels_.size(); ++i) {
      if (markers_[i] >= rounds) continue;
      if (channel_done_[i]) return channel_end_[i];
      all = false;
    }
    if (all) return Status();
    if (finishing_) return Status::Cancelled("rdma: cancelled while waiting for the multifd channels");
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
      return Status::Timeout("rdma: the multifd channels did not end round " + std::to_string(rounds) + " within " +
                             std::to_string(wait_limit_.count() / 1000) + " s");
    }
  }
}

uint64_t RdmaPageReceiver::forbidden_flags() const {
  // QEMU refuses multifd with RDMA: no MULTIFD_FLUSH can be in this stream.
  return wire::kRamMultifdFlush;
}

Status RdmaPageReceiver::OnBlockListed(StreamReader& r, RamBlock& block) {
  (void)r;
  if (cache_) return Status::Protocol("rdma: a RAM block listed after the registration started");
  offsets_.push_back(order_.empty() ? 0 : offsets_.back() + order_.back()->used_length);
  order_.push_back(&block);
  // The source writes pages with RDMA WRITEs that no code on this side sees,
  // so no page of the block stays known to be zero (the loader marked fresh
  // memory so): the verification and ZERO records must read the pages.
  block.known_zero = DirtyBitmap();
  return Status();
}

RdmaDestinationStats RdmaPageReceiver::Stats() const {
  RdmaDestinationStats st;
  st.channels = static_cast<uint32_t>(channels_.size());
  st.pin_all = conn_.pin_all();
  st.pages_counted = (conn_.capabilities().flags & kCapFerryCounts) != 0;
  st.written_pages = written_pages_;
  st.compress_bytes = compress_bytes_;
  st.compress_entries = compress_requests_;
  st.register_requests = register_requests_;
  st.registrations = registrations();
  st.registered_bytes = registered_bytes_;
  st.hooks = hooks_;
  return st;
}

void RdmaPageReceiver::FillStats(MigrationStats& stats) const {
  // The loader saw no page (none is in the stream); these are the pages it
  // could not see. Without the source's count (QEMU) WRITEs stay uncounted:
  // the summary says so.
  const uint64_t zero = compress_bytes_ / 4096;
  stats.ram.duplicate += zero;
  if (conn_.capabilities().flags & kCapFerryCounts) {
    stats.ram.normal += written_pages_;
    stats.ram.normal_bytes += written_pages_ * 4096;
  }
  stats.Set(std::make_shared<RdmaDestinationStats>(Stats()));
}

std::string RdmaPageReceiver::Summary() const {
  const RdmaDestinationStats st = Stats();
  return "rdma: " + std::to_string(st.hooks) + " registration rounds, " +
         (conn_.pin_all() ? "pin-all, " : "dynamic registration, ") + std::to_string(st.registrations) +
         " memory registrations (" + std::to_string(st.registered_bytes >> 20) + " MiB), " +
         std::to_string(st.register_requests) + " REGISTER REQUESTs; pages written by RDMA WRITE: " +
         (st.pages_counted ? std::to_string(st.written_pages) + " (counted by the source)"
                           : std::string("not known to this side (the source does not count them)")) +
         ", zero pages by COMPRESS: " + std::to_string(st.compress_bytes / 4096) + " in " +
         std::to_string(st.compress_entries) + " entries" +
         (st.channels > 0 ? ", " + std::to_string(st.channels) + " multifd channels" : std::string());
}

Status RdmaPageReceiver::Finish() {
  {
    std::lock_guard lock(mu_);
    finishing_ = true;
  }
  for (RdmaConnection* c : channels_) c->Shutdown();
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
  std::lock_guard lock(mu_);
  cache_.reset();  // deregisters every chunk and block
  if (note_) note_(Summary());
  return Status();
}

Result<RamBlock*> RdmaPageReceiver::BlockAt(uint32_t index, uint64_t key, uint64_t* offset_in_block) {
  if (index >= order_.size()) {
    return Status::Protocol("rdma: RAM block index " + std::to_string(index) + " out of range (" +
                            std::to_string(order_.size()) + " blocks)");
  }
  RamBlock* b = order_[index];
  if (key < offsets_[index] || key - offsets_[index] >= b->used_length) {
    return Status::Protocol("rdma: address " + std::to_string(key) + " is outside RAM block '" + b->name + "'");
  }
  *offset_in_block = key - offsets_[index];
  return b;
}

Status RdmaPageReceiver::AnswerRamBlocks() {
  std::lock_guard lock(mu_);
  if (!cache_) {
    std::vector<LocalBlock> local;
    for (RamBlock* b : order_) local.push_back({b->host, b->used_length});
    cache_ = std::make_unique<RegistrationCache>(registrar_, std::move(local), conn_.pin_all());
    FERRY_RETURN_IF_ERROR(cache_->RegisterAll());
    if (conn_.pin_all()) {
      for (RamBlock* b : order_) registered_bytes_ += b->used_length;
    }
    registrations_ = cache_->total_registered();
  }
  std::vector<DestBlock> blocks;
  for (size_t i = 0; i < order_.size(); ++i) {
    DestBlock d{reinterpret_cast<uintptr_t>(order_[i]->host), offsets_[i], order_[i]->used_length, 0};
    if (conn_.pin_all()) {
      FERRY_ASSIGN_OR_RETURN(Keys k, cache_->BlockKeys(static_cast<uint32_t>(i)));
      d.rkey = k.rkey;
    }
    blocks.push_back(d);
  }
  FERRY_ASSIGN_OR_RETURN(std::vector<uint8_t> wire, EncodeRamBlocksResult(blocks));
  return conn_.Send(wire);
}

Status RdmaPageReceiver::AnswerRegister(RdmaConnection& conn, const Message& m) {
  FERRY_ASSIGN_OR_RETURN(std::vector<RegisterEntry> entries, DecodeRegisterRequest(m));
  std::vector<RegisterResult> results;
  std::unique_lock lock(mu_);
  if (!cache_) return Status::Protocol("rdma: REGISTER REQUEST before RAM BLOCKS REQUEST");
  for (const RegisterEntry& e : entries) {
    uint64_t off = 0;
    FERRY_ASSIGN_OR_RETURN(RamBlock * b, BlockAt(e.block_index, e.key, &off));
    // `chunks` counts the chunks after the one holding the address.
    if (e.chunks >= cache_->chunk_count(e.block_index)) {
      return Status::Protocol("rdma: REGISTER REQUEST for " + std::to_string(e.chunks + 1) + " chunks of RAM block '" +
                              b->name + "'");
    }
    const uint64_t first = off >> kChunkShift;
    const uint64_t last = std::min(first + e.chunks, cache_->chunk_count(e.block_index) - 1);
    const uint64_t before = cache_->total_registered();
    FERRY_ASSIGN_OR_RETURN(Keys k, cache_->Register(e.block_index, off, last - first + 1));
    registrations_ = cache_->total_registered();
    if (cache_->total_registered() != before) {
      registered_bytes_ += std::min<uint64_t>((last + 1) << kChunkShift, b->used_length) - (first << kChunkShift);
    }
    results.push_back({k.rkey, reinterpret_cast<uintptr_t>(b->host)});
    ++register_requests_;
  }
  lock.unlock();
  FERRY_ASSIGN_OR_RETURN(std::vector<uint8_t> wire, EncodeRegisterResults(results));
  return conn.Send(wire);
}

Status RdmaPageReceiver::AnswerUnregister(const Message& m) {
  std::lock_guard lock(mu_);
  if (!cache_) return Status::Protocol("rdma: UNREGISTER REQUEST before RAM BLOCKS REQUEST");
  FERRY_ASSIGN_OR_RETURN(std::vector<RegisterEntry> entries, DecodeUnregisterRequest(m));
  for (const RegisterEntry& e : entries) FERRY_RETURN_IF_ERROR(cache_->Unregister(e.block_index, e.key));
  std::vector<uint8_t> wire = EncodeEmpty(ControlType::kUnregisterFinished);
  return conn_.Send(wire);
}

Status RdmaPageReceiver::ApplyCompress(const Message& m) {
  FERRY_ASSIGN_OR_RETURN(std::vector<CompressEntry> entries, DecodeCompress(m));
  for (const CompressEntry& c : entries) {
    uint64_t off = 0;
    FERRY_ASSIGN_OR_RETURN(RamBlock * b, BlockAt(c.block_index, c.offset, &off));
    if (c.length > b->used_length - off) {
      return Status::Protocol("rdma: COMPRESS of " + std::to_string(c.length) + " bytes runs past RAM block '" +
                              b->name + "'");
    }
    // Memory starts zeroed: only write what differs.
    uint8_t* p = b->host + off;
    const auto fill = static_cast<uint8_t>(c.value);
    for (uint64_t i = 0; i < c.length; i += 4096) {
      const size_t n = std::min<uint64_t>(4096, c.length - i);
      bool same = true;
      for (size_t j = 0; j < n && same; ++j) same = p[i + j] == fill;
      if (!same) std::memset(p + i, fill, n);
    }
    ++compress_requests_;
    compress_bytes_ += c.length;
  }
  return Status();
}

Status RdmaPageReceiver::OnRamHook(StreamReader& r) {
  (void)r;
  ++hooks_;
  while (true) {
    FERRY_ASSIGN_OR_RETURN(Message m, conn_.ReceiveAfterReady());
    switch (m.type) {
      case ControlType::kRamBlocksRequest:
        FERRY_RETURN_IF_ERROR(AnswerRamBlocks());
        break;
      case ControlType::kRegisterRequest:
        FERRY_RETURN_IF_ERROR(AnswerRegister(conn_, m));
        break;
      case ControlType::kUnregisterRequest:
        FERRY_RETURN_IF_ERROR(AnswerUnregister(m));
        break;
      case ControlType::kCompress:
        FERRY_RETURN_IF_ERROR(ApplyCompress(m));
        break;
      case ControlType::kRegisterFinished:
        written_pages_ += DecodeWrittenPages(m);
        // multifd: the rounds' pages are in place once every channel's
        // markers for them arrived too (the source sent them first).
        if (channels_.empty()) return Status();
        return WaitForMarkers(DecodeRounds(m));
      case ControlType::kError:
        return Status::Protocol("rdma: the source reported an error (ERROR message) during registration");
      default:
        return Status::Protocol("rdma: unexpected " + ControlTypeName(m.type) + " during registration");
    }
  }
}

}  // namespace ferry::rdma
