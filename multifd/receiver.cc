// The destination half of multifd: N receiver threads and the SYNC barrier.
//
// Each receiver thread owns one channel and loops: header, offsets, wait for
// the block list, validate, pages straight into guest memory (or through
// the channel's zstd stream), zero pages. A SYNC packet parks the thread at
// the barrier until the loader thread's Sync() has seen every channel parked
// there; then all of them go on together.
//
// One mutex guards the barrier, the block list pointer and the first error.
// Receiver threads wait on `chan_cv_` (block list, barrier release, stop);
// the loader thread waits on `main_cv_` (a channel parked or ended, failure).
// Blocked reads are woken by Channel::Shutdown().
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/endian.h"
#include "core/thread_name.h"
#include "core/verify.h"
#include "core/zero_page.h"
#include "multifd/multifd.h"
#include "multifd/settings.h"
#include "multifd/packet.h"
#include "multifd/zstd_codec.h"

namespace ferry::multifd {
namespace {

class MultifdReceiver final : public PageReceiver {
 public:
  MultifdReceiver(const Settings& settings, std::vector<std::unique_ptr<Channel>> channels);
  ~MultifdReceiver() override;

  Status Start(std::function<void(const Status&)> on_error) override;
  void BlocksReady(RamBlockList& blocks) override;
  Status Sync() override;
  void Abort() override;
  Status Finish() override;
  bool sync_on_eos() const override { return sync_on_eos_; }
  bool records_page_hashes() const override { return true; }
  void FillStats(MigrationStats& stats) const override;
  void SetProgressBound(const ProgressBound& bound) override {
    for (auto& r : receivers_) {
      if (r->channel) r->channel->SetProgressBound(bound);
    }
  }

 private:
  struct Receiver {
    unsigned id = 0;
    std::unique_ptr<Channel> channel;
    std::thread thread;
    std::unique_ptr<ZstdDecompressor> zstd;
    std::vector<uint8_t> zbuf;
    bool ended = false;  // guarded by mu_: the thread left its loop
    std::atomic<uint64_t> bytes{0}, pages{0}, zero_pages{0}, packets{0};
  };

  // How a header read ended.
  enum class HeaderRead { kPacket, kEnd };

  void ReceiverMain(Receiver& r);
  Status ReceiveLoop(Receiver& r);
  Result<HeaderRead> ReadHeader(Receiver& r, uint8_t* buf, uint64_t packets_seen);
  Status ReadPages(Receiver& r, const PacketHeader& h, RamBlock* block, const std::vector<uint64_t>& offsets);
  // A read inside packet `packet_num` failed: an abort, the end of the
  // migration, or a real error (given context).
  Status ReadError(Receiver& r, uint64_t packet_num, const Status& s);
  Result<RamBlockList*> WaitForBlocks(Receiver& r);
  Status ParkAtBarrier(Receiver& r, uint64_t packet_num);
  // Records the first failure; returns true if this was it.
  bool Fail(const Status& s);
  void ShutdownChannels();
  bool stopped() const;  // under mu_

  const uint32_t expected_compression_;
  const bool sync_on_eos_;  // multifd-flush-after-each-section: every EOS is a barrier
  std::vector<std::unique_ptr<Receiver>> receivers_;
  std::function<void(const Status&)> on_error_;

  mutable std::mutex mu_;
  std::condition_variable chan_cv_;  // receivers: blocks ready, barrier released, stop
  std::condition_variable main_cv_;  // loader: a receiver parked or ended, failure
  RamBlockList* blocks_ = nullptr;   // set once by BlocksReady
  uint64_t barrier_gen_ = 0;         // bumped by every completed Sync()
  size_t parked_ = 0;                // receivers at the barrier of this generation
  size_t ended_ = 0;                 // receivers that left their loop
  bool started_ = false;
  bool joined_ = false;
  bool aborted_ = false;
  bool finishing_ = false;           // Finish(): no more packets are expected
  Status error_;                     // first failure of a receiver
};

MultifdReceiver::MultifdReceiver(const Settings& settings, std::vector<std::unique_ptr<Channel>> channels)
    : expected_compression_(settings.compression == Compression::kZstd ? kCompressionZstd
                                                                                      : kCompressionNone),
      sync_on_eos_(settings.flush_after_each_section) {
  for (size_t i = 0; i < channels.size(); ++i) {
    auto r = std::make_unique<Receiver>();
    r->id = static_cast<unsigned>(i);
    r->channel = std::move(channels[i]);
    receivers_.push_back(std::move(r));
  }
}

MultifdReceiver::~MultifdReceiver() {
  bool running;
  {
    std::lock_guard<std::mutex> lock(mu_);
    running = started_ && !joined_;
  }
  if (!running) return;
  Abort();
  for (auto& r : receivers_) {
    if (r->thread.joinable()) r->thread.join();
  }
}

Status MultifdReceiver::Start(std::function<void(const Status&)> on_error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (started_) return Status::Internal("multifd receiver started twice");
    if (receivers_.empty()) return Status::InvalidArgument("multifd needs at least one channel");
    for (auto& r : receivers_) {
      if (!r->channel) return Status::InvalidArgument("multifd: channel " + std::to_string(r->id) + " is missing");
    }
    started_ = true;
    on_error_ = std::move(on_error);
  }
  for (auto& r : receivers_) {
    if (expected_compression_ == kCompressionZstd) {
      r->zstd = std::make_unique<ZstdDecompressor>();
      r->zbuf.resize(MaxCompressedSize(kPagesPerPacket));
    }
  }
  for (auto& r : receivers_) {
    Receiver* rp = r.get();
    r->thread = std::thread([this, rp] { ReceiverMain(*rp); });
  }
  return Status::Ok();
}

void MultifdReceiver::BlocksReady(RamBlockList& blocks) {
  std::lock_guard<std::mutex> lock(mu_);
  blocks_ = &blocks;
  chan_cv_.notify_all();
}

bool MultifdReceiver::stopped() const { return aborted_ || !error_.ok(); }

Status MultifdReceiver::Sync() {
  std::unique_lock<std::mutex> lock(mu_);
  if (!started_) return Status::Internal("multifd: Sync() before Start()");
  if (!blocks_) return Status::Protocol("MULTIFD_FLUSH before the RAM block list");
  const size_t n = receivers_.size();
  main_cv_.wait(lock, [&] { return parked_ == n || stopped() || ended_ > 0 || finishing_; });
  if (!error_.ok()) return error_;
  if (aborted_ || finishing_) return Status::Cancelled("multifd receive stopped");
  if (parked_ < n) {
    for (auto& r : receivers_) {
      if (r->ended) {
        return Status::Protocol("multifd channel " + std::to_string(r->id) + " (" + r->channel->Describe() +
                                ") ended before its SYNC packet: the source closed it mid-migration");
      }
    }
    return Status::Internal("multifd barrier woke with " + std::to_string(parked_) + " of " + std::to_string(n) +
                            " channels");
  }
  parked_ = 0;
  ++barrier_gen_;
  chan_cv_.notify_all();
  return Status::Ok();
}

void MultifdReceiver::Abort() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    aborted_ = true;
    chan_cv_.notify_all();
    main_cv_.notify_all();
  }
  ShutdownChannels();
}

Status MultifdReceiver::Finish() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!started_) return Status::Ok();
    if (!joined_) {
      // After the main stream's last barrier nothing more is due: a thread
      // waiting for the next header is done even if the source keeps the
      // connection open (it may be waiting for our verdict).
      finishing_ = true;
      chan_cv_.notify_all();
      main_cv_.notify_all();
    }
  }
  ShutdownChannels();
  for (auto& r : receivers_) {
    if (r->thread.joinable()) r->thread.join();
  }
  std::lock_guard<std::mutex> lock(mu_);
  joined_ = true;
  if (!error_.ok()) return error_;
  if (aborted_) return Status::Cancelled("multifd receive aborted");
  return Status::Ok();
}

void MultifdReceiver::FillStats(MigrationStats& stats) const {
  uint64_t total = 0, pages = 0, zeros = 0;
  auto mf = std::make_shared<MultifdStats>();
  mf->channels.assign(receivers_.size(), ChannelStats{});
  for (size_t i = 0; i < receivers_.size(); ++i) {
    const Receiver& r = *receivers_[i];
    ChannelStats& c = mf->channels[i];
    c.bytes = r.bytes.load(std::memory_order_relaxed);
    c.pages = r.pages.load(std::memory_order_acquire);
    c.packets = r.packets.load(std::memory_order_acquire);
    total += c.bytes;
    pages += c.pages;
    zeros += r.zero_pages.load(std::memory_order_relaxed);
  }
  mf->bytes = total;
  mf->zero_pages = zeros;
  stats.Set(std::move(mf));
  // Pages placed by the receivers count like the loader's own.
  stats.ram.normal += pages;
  stats.ram.duplicate += zeros;
  stats.ram.normal_bytes = stats.ram.normal * kPageSize;
}

void MultifdReceiver::ShutdownChannels() {
  for (auto& r : receivers_) r->channel->Shutdown();
}

bool MultifdReceiver::Fail(const Status& s) {
  bool first = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.ok() && !aborted_) {
      error_ = s;
      first = true;
    }
    chan_cv_.notify_all();
    main_cv_.notify_all();
  }
  if (first) ShutdownChannels();
  return first;
}

// --- receiver threads --------------------------------------------------------

void MultifdReceiver::ReceiverMain(Receiver& r) {
  SetThreadName("multifd-recv-", r.id);
  Status s = ReceiveLoop(r);
  if (!s.ok() && Fail(s) && on_error_) on_error_(s);
  std::lock_guard<std::mutex> lock(mu_);
  r.ended = true;
  ++ended_;
  main_cv_.notify_all();
}

Result<MultifdReceiver::HeaderRead> MultifdReceiver::ReadHeader(Receiver& r, uint8_t* buf, uint64_t packets_seen) {
  size_t got = 0;
  while (got < kPacketHeaderSize) {
    Result<size_t> n = r.channel->ReadSome(buf + got, kPacketHeaderSize - got);
    if (!n.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      if (got == 0 && finishing_) return HeaderRead::kEnd;
      if (aborted_ || !error_.ok()) return Status::Cancelled("multifd receive stopped");
      return n.status().WithContext("multifd channel " + std::to_string(r.id) + ": reading the header of packet " +
                                    std::to_string(packets_seen + 1));
    }
    if (*n == 0) {
      if (got == 0) return HeaderRead::kEnd;  // the source closed between packets
      return Status::Protocol("multifd channel " + std::to_string(r.id) + " (" + r.channel->Describe() +
                              "): the stream ended inside a packet header (" + std::to_string(got) + " of " +
                              std::to_string(kPacketHeaderSize) + " bytes)");
    }
    got += *n;
  }
  return HeaderRead::kPacket;
}

Result<RamBlockList*> MultifdReceiver::WaitForBlocks(Receiver& r) {
  std::unique_lock<std::mutex> lock(mu_);
  chan_cv_.wait(lock, [&] { return blocks_ != nullptr || stopped() || finishing_; });
  if (blocks_) return blocks_;
  if (finishing_ && !stopped()) {
    return Status::Protocol("multifd channel " + std::to_string(r.id) +
                            ": a packet arrived but the main stream never sent the RAM block list");
  }
  return Status::Cancelled("multifd receive stopped");
}

Status MultifdReceiver::ParkAtBarrier(Receiver& r, uint64_t packet_num) {
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t gen = barrier_gen_;
  ++parked_;
  main_cv_.notify_all();
  chan_cv_.wait(lock, [&] { return barrier_gen_ != gen || stopped() || finishing_; });
  if (barrier_gen_ != gen) return Status::Ok();
  if (finishing_ && !stopped()) {
    return Status::Protocol("multifd channel " + std::to_string(r.id) + ": SYNC packet " +
                            std::to_string(packet_num) +
                            " has no MULTIFD_FLUSH in the main stream (do both sides use the same "
                            "multifd-flush-after-each-section?)");
  }
  return Status::Cancelled("multifd receive stopped");
}

Status MultifdReceiver::ReadPages(Receiver& r, const PacketHeader& h, RamBlock* block,
                                  const std::vector<uint64_t>& offsets) {
  const uint32_t normal = h.normal_pages;
  if (normal == 0) return Status::Ok();
  if (h.flags & kCompressionMask) {
    if (h.next_packet_size > r.zbuf.size()) {
      return Status::Protocol("multifd channel " + std::to_string(r.id) + ": packet " +
                              std::to_string(h.packet_num) + " has next_packet_size " +
                              std::to_string(h.next_packet_size) + ", more than the " +
                              std::to_string(r.zbuf.size()) + " bytes a compressed packet may take");
    }
    Status rs = r.channel->ReadExact(r.zbuf.data(), h.next_packet_size);
    if (!rs.ok()) return ReadError(r, h.packet_num, rs);
    uint8_t* dst[kPagesPerPacket];
    for (uint32_t k = 0; k < normal; ++k) dst[k] = block->host + offsets[k];
    Status s = r.zstd->DecompressPages(r.zbuf.data(), h.next_packet_size, dst, normal);
    if (!s.ok()) {
      return s.WithContext("multifd channel " + std::to_string(r.id) + ": packet " + std::to_string(h.packet_num) +
                           " (block '" + block->name + "')");
    }
    return Status::Ok();
  }
  // Raw pages land in guest memory directly; adjacent pages in one read.
  uint32_t k = 0;
  while (k < normal) {
    uint32_t run = 1;
    while (k + run < normal && offsets[k + run] == offsets[k] + run * kPageSize) ++run;
    Status rs = r.channel->ReadExact(block->host + offsets[k], static_cast<size_t>(run) * kPageSize);
    if (!rs.ok()) return ReadError(r, h.packet_num, rs);
    k += run;
  }
  return Status::Ok();
}

Status MultifdReceiver::ReadError(Receiver& r, uint64_t packet_num, const Status& s) {
  const std::string who = "multifd channel " + std::to_string(r.id);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (aborted_ || !error_.ok()) return Status::Cancelled("multifd receive stopped");
    if (finishing_) {
      return Status::Protocol(who + ": the migration ended in the middle of packet " + std::to_string(packet_num));
    }
  }
  return s.WithContext(who + ", packet " + std::to_string(packet_num));
}

Status MultifdReceiver::ReceiveLoop(Receiver& r) {
  const std::string who = "multifd channel " + std::to_string(r.id);
  uint8_t hdr[kPacketHeaderSize];
  uint8_t raw_offsets[kPagesPerPacket * sizeof(uint64_t)];
  std::vector<uint64_t> offsets;
  offsets.reserve(kPagesPerPacket);
  bool have_last = false;
  uint64_t last_num = 0;
  uint64_t seen = 0;
  const size_t max_compressed = MaxCompressedSize(kPagesPerPacket);

  while (true) {
    FERRY_ASSIGN_OR_RETURN(HeaderRead hr, ReadHeader(r, hdr, seen));
    if (hr == HeaderRead::kEnd) return Status::Ok();
    ++seen;
    Result<PacketHeader> decoded = DecodePacketHeader(hdr);
    if (!decoded.ok()) return decoded.status().WithContext(who + ", packet " + std::to_string(seen));
    const PacketHeader& h = *decoded;
    const uint64_t count = static_cast<uint64_t>(h.normal_pages) + h.zero_pages;
    if (count > h.pages_alloc || h.pages_alloc > kPagesPerPacket) {
      return Status::Protocol(who + ": packet " + std::to_string(h.packet_num) + " lists " + std::to_string(count) +
                              " pages, more than pages_alloc " + std::to_string(h.pages_alloc) + " (at most " +
                              std::to_string(kPagesPerPacket) + ")");
    }
    // Strictly increasing, with one exception QEMU 7.2 needs: when a SYNC
    // joins a job still pending on the channel, it sends that SYNC packet
    // and then an empty packet with the same number.
    const bool empty = count == 0 && !(h.flags & kFlagSync);
    if (have_last && (h.packet_num < last_num || (h.packet_num == last_num && !empty))) {
      return Status::Protocol(who + ": packet_num " + std::to_string(h.packet_num) + " after " +
                              std::to_string(last_num));
    }
    have_last = true;
    last_num = h.packet_num;

    // The offset array is always kPagesPerPacket slots on the wire, whatever
    // pages_alloc says: QEMU writes and reads a fixed-size packet, and
    // QEMU 10 (seen with 10.0.2) puts pages_alloc 0 in its SYNC packets while
    // still sending all 128 (zero) slots. The first normal + zero are used.
    constexpr size_t offsets_len = kPagesPerPacket * sizeof(uint64_t);
    {
      Status s = r.channel->ReadExact(raw_offsets, offsets_len);
      if (!s.ok()) return ReadError(r, h.packet_num, s);
    }
    offsets.clear();
    for (uint64_t k = 0; k < count; ++k) offsets.push_back(LoadBe64(raw_offsets + k * 8));

    // Nothing touches guest memory before the block list is known and the
    // packet is checked against it.
    FERRY_ASSIGN_OR_RETURN(RamBlockList* blocks, WaitForBlocks(r));
    // Without normal pages no data follows, whatever next_packet_size says:
    // QEMU 7.2 leaves the previous packet's value there, and QEMU's own
    // receivers ignore it.
    PacketHeader checked_header = h;
    if (h.normal_pages == 0) checked_header.next_packet_size = 0;
    Result<RamBlock*> checked =
        ValidatePacket(checked_header, offsets, *blocks, expected_compression_, max_compressed, r.id);
    if (!checked.ok()) return checked.status();
    RamBlock* block = *checked;
    if (count > 0 && block == nullptr) {
      return Status::Internal(who + ": packet " + std::to_string(h.packet_num) + " validated without a block");
    }
    for (uint64_t off : offsets) {  // cheap second line of defence for guest memory
      if ((off & ~kPageMask) != 0 || off >= block->used_length) {
        return Status::Internal(who + ": packet " + std::to_string(h.packet_num) + " validated with offset " +
                                std::to_string(off) + " outside block '" + block->name + "'");
      }
    }
    if ((h.flags & kCompressionMask) && h.normal_pages > 0 && !r.zstd) {
      return Status::Internal(who + ": compressed packet " + std::to_string(h.packet_num) + " validated without zstd");
    }

    // Pages this thread writes are no longer known to be zero (atomic: other
    // receivers and the loader update the same words); a zero page still
    // known to be zero is left alone, without a read or a fault.
    const bool tracked = block != nullptr && block->known_zero.size() != 0;
    if (tracked) {
      // Runs of consecutive pages populated in one call each.
      for (uint32_t k = 0; k < h.normal_pages;) {
        uint32_t e = k + 1;
        while (e < h.normal_pages && offsets[e] == offsets[e - 1] + kPageSize) ++e;
        if (e - k > 1) block->PopulateForWrite(offsets[k] >> kPageShift, e - k, /*atomic=*/true);
        k = e;
      }
      for (uint32_t k = 0; k < h.normal_pages; ++k) block->known_zero.ClearAtomic(offsets[k] >> kPageShift);
    }
    FERRY_RETURN_IF_ERROR(ReadPages(r, h, block, offsets));
    // Hashes for verification while the pages are still in this core's cache.
    const bool hashes = block != nullptr && block->page_hashes.enabled();
    if (hashes) {
      for (uint32_t k = 0; k < h.normal_pages; ++k) {
        block->page_hashes.Set(offsets[k] >> kPageShift, PageHash(block->host + offsets[k]));
      }
    }
    for (uint32_t k = h.normal_pages; k < count; ++k) {
      if (tracked && block->known_zero.TestAtomic(offsets[k] >> kPageShift)) continue;
      uint8_t* page = block->host + offsets[k];
      if (!IsZeroPage(page)) std::memset(page, 0, kPageSize);
      if (hashes) block->page_hashes.Set(offsets[k] >> kPageShift, ZeroPageHash());
    }
    const uint64_t data = (h.flags & kCompressionMask) ? checked_header.next_packet_size
                                                       : static_cast<uint64_t>(h.normal_pages) * kPageSize;
    // Release: whoever sees these counts also sees the pages they count.
    r.bytes.fetch_add(kPacketHeaderSize + offsets_len + (h.normal_pages ? data : 0), std::memory_order_relaxed);
    r.zero_pages.fetch_add(h.zero_pages, std::memory_order_relaxed);
    r.pages.fetch_add(h.normal_pages, std::memory_order_release);
    r.packets.fetch_add(1, std::memory_order_release);

    if (h.flags & kFlagSync) FERRY_RETURN_IF_ERROR(ParkAtBarrier(r, h.packet_num));
  }
}

}  // namespace

std::unique_ptr<PageReceiver> MakeMultifdReceiver(const Settings& settings,
                                                  std::vector<std::unique_ptr<Channel>> channels) {
  return std::make_unique<MultifdReceiver>(settings, std::move(channels));
}


}  // namespace ferry::multifd
