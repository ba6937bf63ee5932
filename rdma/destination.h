// The destination side of QEMU's RDMA migration (ferry passive, the source
// QEMU or ferry active):
//
//   RdmaStreamChannel  the main migration stream, carried in QEMU FILE
//                      control messages (one READY per message).
//   RdmaPageReceiver   the PageReceiver the RAM loader calls: it learns the
//                      source's block order from the setup list and, at every
//                      RAM_SAVE_FLAG_HOOK record, serves the source's control
//                      messages (RAM BLOCKS REQUEST, REGISTER REQUEST,
//                      COMPRESS, UNREGISTER REQUEST) until REGISTER FINISHED.
//                      The pages themselves arrive as RDMA WRITEs into the
//                      registered RAM blocks; no page record is in the stream.
//
//   FERRY_ASSIGN_OR_RETURN(auto conn, listener->Accept(timeout));
//   RdmaStreamChannel channel(*conn);
//   RdmaPageReceiver receiver(*conn);
//   opts.receiver = &receiver;
//   MigrationDestination(opts, blocks, allocator).Run(channel);
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <string>
#include <string_view>
#include <vector>

#include "core/channel.h"
#include "core/ram_loader.h"
#include "rdma/connection.h"
#include "rdma/registration.h"
#include "rdma/stats.h"

namespace ferry::rdma {

// The main stream over a connection: the destination reads it, the source
// writes it (QEMU's RDMA return path is not supported: one direction only).
class RdmaStreamChannel final : public Channel {
 public:
  enum class Side { kDestination, kSource };
  explicit RdmaStreamChannel(RdmaConnection& conn, Side side = Side::kDestination) : conn_(conn), side_(side) {}
  // Source: QEMU FILE messages of up to kMaxPayload bytes, each after a READY.
  Status WriteAll(std::span<iovec> iov) override;
  // Destination: bytes left from the current QEMU FILE message, or the next message.
  Result<size_t> ReadSome(void* buf, size_t len) override;
  void Shutdown() override { conn_.Shutdown(); }
  std::string Describe() const override { return "rdma:" + conn_.peer(); }
  void SetProgressBound(const ProgressBound& bound) override;

 private:
  RdmaConnection& conn_;
  Side side_;
  std::vector<uint8_t> data_;
  size_t pos_ = 0;
};

class RdmaPageReceiver final : public PageReceiver {
 public:
  explicit RdmaPageReceiver(RdmaConnection& conn) : conn_(conn), registrar_(conn.pd()) {}
  ~RdmaPageReceiver() override;
  // ferry's multifd channels (docs/rdma-multifd.md), in the main
  // connection's PD: one thread each serves its REGISTER REQUESTs and
  // COMPRESS; a hook ends when every channel sent as many REGISTER FINISHED
  // (round markers) as the main one's round count says. Before Start.
  void AddChannels(std::vector<RdmaConnection*> channels) { channels_ = std::move(channels); }

  Status Start(std::function<void(const Status&)> on_error) override;
  Status OnBlockListed(StreamReader& r, RamBlock& block) override;
  uint64_t forbidden_flags() const override;
  void BlocksReady(RamBlockList& blocks) override { (void)blocks; }
  Status Sync() override { return Status(); }
  void Abort() override;
  Status Finish() override;
  // Where Finish reports Summary() (a one-line notice); may stay empty.
  void set_note(std::function<void(std::string_view)> note) { note_ = std::move(note); }
  Status OnRamHook(StreamReader& r) override;
  // Page counts the RAM loader cannot see: zero pages from COMPRESS entries,
  // and pages written by RDMA WRITE when the source counts them (ferry).
  void FillStats(MigrationStats& stats) const override;
  RdmaDestinationStats Stats() const;
  void SetProgressBound(const ProgressBound& bound) override;

  // Counters for tests and the report.
  uint64_t register_requests() const { return register_requests_; }
  uint64_t compress_requests() const { return compress_requests_; }
  // Bytes of guest memory the source declared zero (COMPRESS entries).
  uint64_t compress_bytes() const { return compress_bytes_; }
  // Bytes of guest memory registered for the source's WRITEs (pin-all: the
  // blocks; dynamic: the chunk ranges asked for; 1 MiB chunks, so an upper
  // bound of what was written, not a count of it).
  uint64_t registered_bytes() const { return registered_bytes_; }
  uint64_t hooks() const { return hooks_; }
  // Memory registrations made (pin-all: one per block; dynamic: per chunk range).
  uint64_t registrations() const { return registrations_; }
  // "rdma: 3 registration rounds, pin-all, 1 registration, 0 REGISTER REQUESTs, 0 COMPRESS"
  std::string Summary() const;

 private:
  Status AnswerRamBlocks();
  Status AnswerRegister(RdmaConnection& conn, const Message& m);
  Status AnswerUnregister(const Message& m);
  Status ApplyCompress(const Message& m);
  void ChannelLoop(size_t i);
  // Until every channel sent `rounds` markers (REGISTER FINISHED).
  Status WaitForMarkers(uint64_t rounds);
  Result<RamBlock*> BlockAt(uint32_t index, uint64_t key, uint64_t* offset_in_block);

  RdmaConnection& conn_;
  PdRegistrar registrar_;
  std::vector<RamBlock*> order_;     // the source's block order (its setup list)
  std::vector<uint64_t> offsets_;    // each block's offset in the ram_addr_t space we announce
  std::unique_ptr<RegistrationCache> cache_;  // mu_ (channel threads register too)
  std::function<void(std::string_view)> note_;
  std::atomic<uint64_t> register_requests_ = 0, compress_requests_ = 0, compress_bytes_ = 0, registered_bytes_ = 0,
                        written_pages_ = 0, registrations_ = 0;
  uint64_t hooks_ = 0;

  // multifd channels
  std::vector<RdmaConnection*> channels_;
  std::vector<std::thread> threads_;
  std::function<void(const Status&)> on_error_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<uint64_t> markers_;       // mu_: REGISTER FINISHED per channel
  std::vector<Status> channel_end_;     // mu_: why a channel's thread ended
  std::vector<bool> channel_done_;      // mu_
  bool finishing_ = false;              // mu_
  std::chrono::milliseconds wait_limit_{30000};
};

}  // namespace ferry::rdma
