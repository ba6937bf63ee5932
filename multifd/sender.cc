// The source half of multifd: MultifdSinkFactory and MultifdSink.
//
// Layout of this file:
//   - Batch / Job: what the migration thread hands to a sender thread
//   - (MSG_ZEROCOPY sending and completion bookkeeping: multifd/zero_copy.cc)
//   - MultifdSink: page batching on the migration thread, the bounded
//     per-channel queues, the SYNC barrier, the sender threads
//   - MultifdSinkFactory
//
// Threads and locks. One mutex (mu_) guards every queue, the barrier
// generation and the first error; it is taken once per batch of up to 128
// pages, never per page. Each sender thread waits on its own condition
// variable for work; the migration thread waits on `producer_cv_` for queue
// room and for SYNC acknowledgements. Every wait also ends on failure or
// abort, and sockets blocked in the kernel are woken by Channel::Shutdown().
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
// After <time.h>: it uses struct timespec without including it.

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/endian.h"
#include "core/ram_saver.h"
#include "core/thread_name.h"
#include "core/wire.h"
#include "multifd/multifd.h"
#include "multifd/zero_detect.h"
#include "multifd/settings.h"
#include "multifd/zero_copy.h"
#include "multifd/zstd_codec.h"


namespace ferry::multifd {
namespace {

// Batches waiting per channel: enough to keep a sender busy while the
// migration thread fills the next one, small enough to bound memory.
constexpr size_t kQueueDepth = 4;
// Header + offset buffers per channel when the kernel may still be reading
// them (zero-copy); a buffer is reused only after its sends completed.
constexpr size_t kMetaRing = 16;
// A packet's header and its offset array, which is pages_alloc (128) slots
// long on the wire whatever the number of pages in it.
constexpr size_t kMetaBytes = kPacketHeaderSize + kPagesPerPacket * sizeof(uint64_t);

#ifdef IOV_MAX
constexpr size_t kMaxIov = IOV_MAX;
#else
constexpr size_t kMaxIov = 1024;
#endif

// Pages of one RAM block, in the order the saver gave them.
struct Batch {
  RamBlock* block = nullptr;
  uint32_t count = 0;
  uint64_t index[kPagesPerPacket];
  // Bit k: page k is known to be zero (never populated): the sender does not
  // read it. Set only for pages the saver flagged; see MultifdSink::Page.
  uint64_t known_zero[kPagesPerPacket / 64] = {};
};

// Page data for known-zero pages sent as normal pages
// (zero-page-detection=none): never written, so zero-copy may send it too.
alignas(4096) const uint8_t kZeroPageData[kPageSize] = {};

struct Job {
  enum class Kind : uint8_t { kPages, kSync };
  Kind kind = Kind::kPages;
  uint64_t sync_gen = 0;
  Batch batch;
};

class MultifdSink final : public PageSink {
 public:
  MultifdSink(const Settings& settings, std::vector<std::unique_ptr<Channel>> channels, StreamWriter& main);
  ~MultifdSink() override;

  // Turns on SO_ZEROCOPY if asked and starts the sender threads.
  Status Start();

  void BeginSection() override { last_zero_block_ = nullptr; }
  void Page(RamBlock& block, uint64_t page_index, bool zero) override;
  Status OnSetupEnd() override { return FlushOrBarrier(); }
  Status OnRoundEnd() override { return FlushOrBarrier(); }
  Status OnComplete() override {
    complete_ = true;
    return FlushOrBarrier();
  }
  Status OnSectionEnd() override;
  uint64_t accounted_bytes() const override;
  void Abort() override;
  void FillStats(MigrationStats& stats) const override;

 private:
  struct Sender {
    unsigned id = 0;
    std::unique_ptr<Channel> channel;
    std::thread thread;
    std::condition_variable cv;  // work arrived, or stop

    // Guarded by the sink's mu_.
    std::array<Job, kQueueDepth> queue;
    size_t head = 0;
    size_t size = 0;
    uint64_t synced_gen = 0;

    // Owned by the sender thread.
    std::vector<uint8_t> meta;           // kMetaRing (zero-copy) or 1 buffers
    std::vector<uint64_t> meta_id_end;   // zero-copy: ids to complete before reuse
    size_t meta_next = 0;
    std::unique_ptr<ZstdCompressor> zstd;
    std::vector<uint8_t> zbuf;
    std::vector<iovec> iov;
    ZeroCopyLedger zc;

    std::atomic<uint64_t> bytes{0}, pages{0}, packets{0};
  };

  // Migration thread.
  void WriteZeroRecord(RamBlock& block, uint64_t page_index);
  bool Dispatch();          // hands the open batch to a channel; false on failure
  Status FlushBatch();
  Status SyncChannels();    // every channel writes a SYNC after its queued work
  Status FlushOrBarrier();  // per the hook table in page_sink.h
  Status Barrier();         // SyncChannels + MULTIFD_FLUSH
  Status CloseChannels();   // after the final barrier: threads end, peers see EOF
  Status Failure();         // the first error, also put into the main stream
  void PropagateError();

  // Sender threads.
  void SenderLoop(Sender& s);
  Status SendPages(Sender& s, const Batch& b);
  Status SendSync(Sender& s);
  Status Send(Sender& s, std::span<iovec> iov);
  Status ZeroCopySend(Sender& s, std::span<iovec> iov);
  // Reads every pending completion without blocking.
  Status ReapCompletions(Sender& s);
  // Blocks until the sends numbered below `id_end` have completed.
  Status WaitCompletions(Sender& s, uint64_t id_end);
  void Fail(Status s);
  bool stopping() const { return failed_.load(std::memory_order_acquire); }
  void ShutdownChannels();
  void StopAndJoin(bool abandon);

  StreamWriter& main_;
  const bool flush_each_section_;
  const bool zero_copy_;
  const bool detect_zero_;        // sender threads test pages (zero-page-detection=multifd)
  const bool legacy_zero_;        // the saver tests pages; zeros go to the main stream
  const uint32_t compression_;    // wire flag bits for packets with pages
  const int zstd_level_;
  const ZeroCheck* zero_check_ = nullptr;

  std::vector<std::unique_ptr<Sender>> senders_;
  std::atomic<uint64_t> packet_num_{0};
  std::atomic<uint64_t> zero_pages_{0};
  // accounted_bytes(): what the senders put on the wire, plus an estimate
  // (header + raw pages) for jobs handed over but not sent yet.
  std::atomic<uint64_t> wire_bytes_{0};
  std::atomic<uint64_t> retired_estimate_{0};  // estimates of jobs that were sent

  mutable std::mutex mu_;
  std::condition_variable producer_cv_;  // queue room, SYNC written, failure
  uint64_t sync_gen_ = 0;                // guarded by mu_
  bool stop_ = false;                    // guarded by mu_: leave once the queue is empty
  bool abandon_ = false;                 // guarded by mu_: leave now
  Status error_;                         // guarded by mu_: first failure
  std::atomic<bool> failed_{false};      // error_ is set (or aborted)
  bool joined_ = false;                  // migration thread / destructor only

  // Migration-thread state.
  uint64_t dispatched_estimate_ = 0;
  mutable uint64_t accounted_ = 0;  // last value returned: never goes down
  Batch cur_;
  size_t next_channel_ = 0;
  const RamBlock* last_zero_block_ = nullptr;  // CONTINUE for main-stream ZERO records
  bool complete_ = false;
  bool error_published_ = false;
};

MultifdSink::MultifdSink(const Settings& settings, std::vector<std::unique_ptr<Channel>> channels,
                         StreamWriter& main)
    : main_(main),
      flush_each_section_(settings.flush_after_each_section),
      zero_copy_(settings.zero_copy_send),
      detect_zero_(settings.zero_page_detection == ZeroPageDetection::kMultifd),
      legacy_zero_(settings.zero_page_detection == ZeroPageDetection::kLegacy),
      compression_(settings.compression == Compression::kZstd ? kCompressionZstd
                                                                                     : kCompressionNone),
      zstd_level_(settings.zstd_level) {
  for (size_t i = 0; i < channels.size(); ++i) {
    auto s = std::make_unique<Sender>();
    s->id = static_cast<unsigned>(i);
    s->channel = std::move(channels[i]);
    senders_.push_back(std::move(s));
  }
}

MultifdSink::~MultifdSink() { StopAndJoin(/*abandon=*/true); }

Status MultifdSink::Start() {
  if (senders_.empty()) return Status::InvalidArgument("multifd needs at least one channel");
  FERRY_RETURN_IF_ERROR(CheckZeroCopy(zero_copy_, compression_ == kCompressionZstd
                                                     ? Compression::kZstd
                                                     : Compression::kNone));
  if (detect_zero_) zero_check_ = &BestZeroCheck();
  // Every channel's waits are bounded like the main stream's, on its clock
  // (MigrationSource::Run set it): a channel idle while the others carry
  // the pages is not a stall.
  const ProgressBound bound = main_.channel() ? main_.channel()->progress_bound() : ProgressBound{};
  for (auto& s : senders_) s->channel->SetProgressBound(bound);
  for (auto& s : senders_) {
    if (zero_copy_) {
      FERRY_RETURN_IF_ERROR(EnableZeroCopy(*s->channel, s->id));
      s->meta.resize(kMetaRing * kMetaBytes);
      s->meta_id_end.assign(kMetaRing, 0);
    } else {
      s->meta.resize(kMetaBytes);
    }
    if (compression_ == kCompressionZstd) {
      s->zstd = std::make_unique<ZstdCompressor>(zstd_level_);
      s->zbuf.resize(MaxCompressedSize(kPagesPerPacket));
    }
    s->iov.reserve(kPagesPerPacket + 1);
  }
  for (auto& s : senders_) {
    Sender* sp = s.get();
    s->thread = std::thread([this, sp] { SenderLoop(*sp); });
  }
  return Status::Ok();
}

// --- migration thread --------------------------------------------------------

void MultifdSink::Page(RamBlock& block, uint64_t page_index, bool zero) {
  if (failed_.load(std::memory_order_relaxed)) [[unlikely]] {
    PropagateError();
    return;
  }
  // `zero` from a saver that detects zeros (legacy): a ZERO record in the main
  // stream, as QEMU does. Otherwise the saver only flags pages known to be
  // zero without reading them: they go in the packet like any page (as a
  // zero page, or as data under zero-page-detection=none, as QEMU would put
  // them on the wire), but the sender does not read them.
  if (zero && legacy_zero_) {
    WriteZeroRecord(block, page_index);
    return;
  }
  if (cur_.count != 0 && cur_.block != &block) {
    if (!Dispatch()) return PropagateError();
  }
  cur_.block = &block;
  if (zero) cur_.known_zero[cur_.count >> 6] |= 1ull << (cur_.count & 63);
  cur_.index[cur_.count++] = page_index;
  if (cur_.count == kPagesPerPacket && !Dispatch()) PropagateError();
}

// Same record as StreamSink writes: be64 offset|ZERO[|CONTINUE], the block
// name unless CONTINUE, the fill byte 0.
void MultifdSink::WriteZeroRecord(RamBlock& block, uint64_t page_index) {
  PutPageRecord(main_, last_zero_block_, block, page_index, /*zero=*/true);
}

bool MultifdSink::Dispatch() {
  if (cur_.count == 0) return !failed_.load(std::memory_order_acquire);
  if (joined_) {
    Fail(Status::Internal("multifd: pages after the final barrier"));
    return false;
  }
  std::unique_lock<std::mutex> lock(mu_);
  const size_t n = senders_.size();
  while (true) {
    if (failed_.load(std::memory_order_relaxed)) return false;
    // First idle channel (empty queue) from the round-robin cursor, else the
    // first with room; none: wait for a sender to take a batch.
    Sender* pick = nullptr;
    for (size_t k = 0; k < n && !pick; ++k) {
      Sender& s = *senders_[(next_channel_ + k) % n];
      if (s.size == 0) pick = &s;
    }
    for (size_t k = 0; k < n && !pick; ++k) {
      Sender& s = *senders_[(next_channel_ + k) % n];
      if (s.size < kQueueDepth) pick = &s;
    }
    if (pick) {
      Job& j = pick->queue[(pick->head + pick->size) % kQueueDepth];
      j.kind = Job::Kind::kPages;
      j.batch.block = cur_.block;
      j.batch.count = cur_.count;
      std::memcpy(j.batch.index, cur_.index, cur_.count * sizeof(cur_.index[0]));
      std::memcpy(j.batch.known_zero, cur_.known_zero, sizeof(cur_.known_zero));
      std::memset(cur_.known_zero, 0, sizeof(cur_.known_zero));
      ++pick->size;
      dispatched_estimate_ += kMetaBytes + uint64_t{cur_.count} * kPageSize;
      next_channel_ = (pick->id + 1) % n;
      cur_.count = 0;
      pick->cv.notify_one();
      return true;
    }
    producer_cv_.wait(lock);
  }
}

Status MultifdSink::Failure() {
  Status s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    s = error_.ok() ? Status::Internal("multifd sink failed without an error") : error_;
  }
  main_.SetError(s);
  return s;
}

void MultifdSink::PropagateError() {
  if (error_published_) return;
  error_published_ = true;
  (void)Failure();
}

Status MultifdSink::FlushBatch() {
  if (!Dispatch()) return Failure();
  return Status::Ok();
}

Status MultifdSink::SyncChannels() {
  FERRY_RETURN_IF_ERROR(FlushBatch());
  if (joined_) return Status::Internal("multifd: barrier after the channels were closed");
  std::unique_lock<std::mutex> lock(mu_);
  const uint64_t gen = ++sync_gen_;
  for (auto& sp : senders_) {
    Sender& s = *sp;
    producer_cv_.wait(lock, [&] { return s.size < kQueueDepth || failed_.load(std::memory_order_relaxed); });
    if (failed_.load(std::memory_order_relaxed)) break;
    Job& j = s.queue[(s.head + s.size) % kQueueDepth];
    j.kind = Job::Kind::kSync;
    j.sync_gen = gen;
    j.batch.count = 0;
    ++s.size;
    dispatched_estimate_ += kMetaBytes;
    s.cv.notify_one();
  }
  producer_cv_.wait(lock, [&] {
    if (failed_.load(std::memory_order_relaxed)) return true;
    for (auto& s : senders_) {
      if (s->synced_gen != gen) return false;
    }
    return true;
  });
  if (failed_.load(std::memory_order_relaxed)) {
    lock.unlock();
    return Failure();
  }
  return Status::Ok();
}

Status MultifdSink::Barrier() {
  FERRY_RETURN_IF_ERROR(SyncChannels());
  main_.PutBe64(wire::kRamMultifdFlush);
  return main_.status();
}

Status MultifdSink::FlushOrBarrier() {
  if (failed_.load(std::memory_order_acquire)) return Failure();
  return flush_each_section_ ? FlushBatch() : Barrier();
}

Status MultifdSink::OnSectionEnd() {
  if (failed_.load(std::memory_order_acquire)) return Failure();
  Status s = flush_each_section_ ? SyncChannels() : FlushBatch();
  if (!s.ok()) return s;
  if (complete_ && !joined_) return CloseChannels();
  return Status::Ok();
}

Status MultifdSink::CloseChannels() {
  // The final barrier is behind us: every queue is empty, every SYNC (and,
  // with zero-copy, every completion) is in. The threads end; shutting the
  // sockets down sends the receivers a clean end of stream now, not only
  // once the sink is destroyed (the source may still wait for a verdict).
  StopAndJoin(/*abandon=*/false);
  ShutdownChannels();
  std::lock_guard<std::mutex> lock(mu_);
  if (!error_.ok()) {
    main_.SetError(error_);
    return error_;
  }
  return Status::Ok();
}

void MultifdSink::StopAndJoin(bool abandon) {
  if (joined_) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    if (abandon) {
      abandon_ = true;
      if (error_.ok()) error_ = Status::Cancelled("multifd: sink destroyed");
      failed_.store(true, std::memory_order_release);  // stopping(): leave blocking waits
    }
    for (auto& s : senders_) s->cv.notify_all();
    producer_cv_.notify_all();
  }
  // Abandoning: queued work no longer matters, and a sender may be blocked
  // writing to a peer that stopped reading.
  if (abandon) ShutdownChannels();
  for (auto& s : senders_) {
    if (s->thread.joinable()) s->thread.join();
  }
  joined_ = true;
}

void MultifdSink::Abort() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.ok()) error_ = Status::Cancelled("multifd: migration cancelled");
    failed_.store(true, std::memory_order_release);
    for (auto& s : senders_) s->cv.notify_all();
    producer_cv_.notify_all();
  }
  ShutdownChannels();
}

void MultifdSink::ShutdownChannels() {
  for (auto& s : senders_) s->channel->Shutdown();
}

void MultifdSink::Fail(Status st) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.ok()) error_ = std::move(st);
    failed_.store(true, std::memory_order_release);
    for (auto& s : senders_) s->cv.notify_all();
    producer_cv_.notify_all();
  }
  ShutdownChannels();
}

uint64_t MultifdSink::accounted_bytes() const {
  // Sent bytes are exact; queued jobs count as raw pages until sent, so a
  // slice or the rate limit sees them at once. Compression and zero pages
  // make the exact figure smaller than the estimate it replaces: the value
  // then holds still until the real bytes catch up (callers subtract).
  const uint64_t retired = retired_estimate_.load(std::memory_order_relaxed);
  const uint64_t pending = dispatched_estimate_ > retired ? dispatched_estimate_ - retired : 0;
  const uint64_t now = wire_bytes_.load(std::memory_order_relaxed) + pending;
  if (now > accounted_) accounted_ = now;
  return accounted_;
}

void MultifdSink::FillStats(MigrationStats& stats) const {
  uint64_t total = 0;
  auto mf = std::make_shared<MultifdStats>();
  mf->channels.assign(senders_.size(), ChannelStats{});
  for (size_t i = 0; i < senders_.size(); ++i) {
    const Sender& s = *senders_[i];
    ChannelStats& c = mf->channels[i];
    c.bytes = s.bytes.load(std::memory_order_relaxed);
    c.pages = s.pages.load(std::memory_order_relaxed);
    c.packets = s.packets.load(std::memory_order_relaxed);
    total += c.bytes;
  }
  mf->bytes = total;
  // The saver counted every page it handed over as normal; the senders found
  // some of them all zeros. The saver's published count may lag behind the
  // senders', so never let it go below zero.
  const uint64_t z = zero_pages_.load(std::memory_order_relaxed);
  mf->zero_pages = z;
  const uint64_t moved = std::min(z, stats.ram.normal);
  stats.ram.normal -= moved;
  stats.ram.duplicate += moved;
  stats.ram.normal_bytes = stats.ram.normal * kPageSize;
  mf->zero_copy.enabled = zero_copy_;
  for (const auto& sp : senders_) sp->zc.AddTo(mf->zero_copy);
  stats.Set(std::move(mf));
}

// --- sender threads ----------------------------------------------------------

void MultifdSink::SenderLoop(Sender& s) {
  SetThreadName("multifd-send-", s.id);
  Job job;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      s.cv.wait(lock, [&] { return s.size > 0 || stop_ || failed_.load(std::memory_order_relaxed); });
      if (failed_.load(std::memory_order_relaxed) || abandon_) return;
      if (s.size == 0) return;  // stop_ and nothing left
      const Job& front = s.queue[s.head];
      job.kind = front.kind;
      job.sync_gen = front.sync_gen;
      job.batch.block = front.batch.block;
      job.batch.count = front.batch.count;
      std::memcpy(job.batch.index, front.batch.index, front.batch.count * sizeof(front.batch.index[0]));
      std::memcpy(job.batch.known_zero, front.batch.known_zero, sizeof(front.batch.known_zero));
      s.head = (s.head + 1) % kQueueDepth;
      --s.size;
      producer_cv_.notify_all();
    }
    Status st = job.kind == Job::Kind::kSync ? SendSync(s) : SendPages(s, job.batch);
    if (!st.ok()) {
      if (!stopping()) {
        Fail(st.WithContext("multifd channel " + std::to_string(s.id) + " (" + s.channel->Describe() + ")"));
      }
      return;
    }
    retired_estimate_.fetch_add(kMetaBytes + uint64_t{job.batch.count} * kPageSize, std::memory_order_relaxed);
    if (job.kind == Job::Kind::kSync) {
      std::lock_guard<std::mutex> lock(mu_);
      s.synced_gen = job.sync_gen;
      producer_cv_.notify_all();
    }
  }
}

Status MultifdSink::SendPages(Sender& s, const Batch& b) {
  // Zero pages found here go after the normal ones, offsets in that order.
  uint64_t normal_off[kPagesPerPacket];
  uint64_t zero_off[kPagesPerPacket];
  const uint8_t* normal_host[kPagesPerPacket];
  uint32_t normal = 0, zeros = 0;
  for (uint32_t k = 0; k < b.count; ++k) {
    const uint64_t off = b.index[k] << kPageShift;
    const bool known_zero = (b.known_zero[k >> 6] >> (k & 63)) & 1;
    if (known_zero && detect_zero_) {
      zero_off[zeros++] = off;
      continue;
    }
    const uint8_t* host = known_zero ? kZeroPageData : b.block->page(b.index[k]);
    if (!known_zero && detect_zero_ && zero_check_->is_zero(host)) {
      zero_off[zeros++] = off;
    } else {
      normal_host[normal] = host;
      normal_off[normal++] = off;
    }
  }

  uint8_t* meta = s.meta.data();
  size_t slot = 0;
  if (zero_copy_) {
    // The kernel may still read this header from an earlier send.
    slot = s.meta_next;
    s.meta_next = (s.meta_next + 1) % kMetaRing;
    FERRY_RETURN_IF_ERROR(WaitCompletions(s, s.meta_id_end[slot]));
    meta += slot * kMetaBytes;
  }

  PacketHeader h;
  h.flags = compression_;
  h.pages_alloc = kPagesPerPacket;
  h.normal_pages = normal;
  h.zero_pages = zeros;
  h.ramblock = b.block->name;
  h.packet_num = packet_num_.fetch_add(1, std::memory_order_relaxed);
  // The offset array always has pages_alloc slots on the wire (QEMU reads a
  // fixed-size packet); the ones after normal + zero stay 0.
  uint8_t* p = meta + kPacketHeaderSize;
  for (uint32_t k = 0; k < normal; ++k, p += 8) StoreBe64(p, normal_off[k]);
  for (uint32_t k = 0; k < zeros; ++k, p += 8) StoreBe64(p, zero_off[k]);
  std::memset(p, 0, static_cast<size_t>(meta + kMetaBytes - p));
  const size_t meta_len = kMetaBytes;

  s.iov.clear();
  s.iov.push_back({meta, meta_len});
  size_t data_len = 0;
  if (compression_ == kCompressionZstd && normal > 0) {
    FERRY_ASSIGN_OR_RETURN(size_t n, s.zstd->CompressPages(normal_host, normal, s.zbuf.data(), s.zbuf.size()));
    data_len = n;
    s.iov.push_back({s.zbuf.data(), n});
  } else {
    // Straight from guest memory; neighbouring pages share one iovec.
    for (uint32_t k = 0; k < normal; ++k) {
      iovec& last = s.iov.back();
      if (s.iov.size() > 1 && static_cast<const uint8_t*>(last.iov_base) + last.iov_len == normal_host[k]) {
        last.iov_len += kPageSize;
      } else {
        s.iov.push_back({const_cast<uint8_t*>(normal_host[k]), kPageSize});
      }
    }
    data_len = static_cast<size_t>(normal) * kPageSize;
  }
  h.next_packet_size = static_cast<uint32_t>(data_len);
  EncodePacketHeader(h, meta);

  if (zero_copy_) {
    FERRY_RETURN_IF_ERROR(ZeroCopySend(s, s.iov));
    s.meta_id_end[slot] = s.zc.issued();
    FERRY_RETURN_IF_ERROR(ReapCompletions(s));
  } else {
    FERRY_RETURN_IF_ERROR(s.channel->WriteAll(s.iov));
  }
  s.bytes.fetch_add(meta_len + data_len, std::memory_order_relaxed);
  wire_bytes_.fetch_add(meta_len + data_len, std::memory_order_relaxed);
  s.pages.fetch_add(normal, std::memory_order_relaxed);
  s.packets.fetch_add(1, std::memory_order_relaxed);
  if (zeros) zero_pages_.fetch_add(zeros, std::memory_order_relaxed);
  return Status::Ok();
}

Status MultifdSink::SendSync(Sender& s) {
  PacketHeader h;
  h.flags = kFlagSync;
  h.pages_alloc = kPagesPerPacket;
  h.packet_num = packet_num_.fetch_add(1, std::memory_order_relaxed);
  uint8_t buf[kMetaBytes] = {};  // header + an unused offset array
  EncodePacketHeader(h, buf);
  // Copied by the kernel: no zero-copy for a packet without pages.
  FERRY_RETURN_IF_ERROR(s.channel->WriteAll(buf, sizeof(buf)));
  s.bytes.fetch_add(sizeof(buf), std::memory_order_relaxed);
  wire_bytes_.fetch_add(sizeof(buf), std::memory_order_relaxed);
  s.packets.fetch_add(1, std::memory_order_relaxed);
  // Nothing sent before the SYNC may still be in flight from guest memory.
  if (zero_copy_) FERRY_RETURN_IF_ERROR(WaitCompletions(s, s.zc.issued()));
  return Status::Ok();
}

Status MultifdSink::ZeroCopySend(Sender& s, std::span<iovec> iov) {
  return SendZeroCopy(*s.channel, s.zc, iov, [this] { return stopping(); });
}

Status MultifdSink::ReapCompletions(Sender& s) {
  return ReapZeroCopyCompletions(*s.channel, s.zc, [this] { return stopping(); });
}

Status MultifdSink::WaitCompletions(Sender& s, uint64_t id_end) {
  return WaitZeroCopyCompletions(*s.channel, s.zc, id_end, [this] { return stopping(); });
}

}  // namespace

// --- factory -----------------------------------------------------------------


MultifdSinkFactory::MultifdSinkFactory(const Settings& settings, std::vector<std::unique_ptr<Channel>> channels)
    : settings_(settings), channels_(std::move(channels)) {}

MultifdSinkFactory::~MultifdSinkFactory() = default;

Result<std::unique_ptr<PageSink>> MultifdSinkFactory::Make(StreamWriter& main) {
  if (channels_.empty()) {
    return Status::InvalidArgument("multifd: no channels (a MultifdSinkFactory makes one sink, for one migration)");
  }
  for (size_t i = 0; i < channels_.size(); ++i) {
    if (!channels_[i]) return Status::InvalidArgument("multifd: channel " + std::to_string(i) + " is missing");
  }
  auto sink = std::make_unique<MultifdSink>(settings_, std::move(channels_), main);
  channels_.clear();
  FERRY_RETURN_IF_ERROR(sink->Start());
  return std::unique_ptr<PageSink>(std::move(sink));
}

bool MultifdSinkFactory::saver_detects_zero() const {
  return settings_.zero_page_detection == ZeroPageDetection::kLegacy;
}

}  // namespace ferry::multifd
