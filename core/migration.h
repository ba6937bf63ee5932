// MigrationSource and MigrationDestination: the two state machines.
//
// Source:       none → setup → active → device → completed
//                         any of them → failed | cancelling → cancelled
// Destination:  none → setup → active → completed | failed | cancelled
//
// One object is one migration; it holds no global state. Run() blocks in
// the calling thread (the migration thread); Cancel() and Stats() may be
// called from any other thread.
//
//   MigrationSource src(params, blocks, *tracker, &guest, {});
//   std::thread t([&] { status = src.Run(*channel); });
//   ... src.Stats() for progress ... src.Cancel() to stop ...
//
// A failed or cancelled source resumes the guest (if it paused it) and
// leaves its memory untouched; tracking is stopped. Every wait on the
// channels is bounded by no-progress-timeout (both sides), so a silent peer
// ends in an error — at switchover too, where the guest is resumed before
// Run() returns the error.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <optional>
#include <string_view>
#include <mutex>
#include <vector>

#include "channel.h"
#include "dirty_tracker.h"
#include "page_sink.h"
#include "params.h"
#include "ram_block.h"
#include "ram_loader.h"
#include "section.h"
#include "stats.h"
#include "status.h"

namespace ferry {

// The embedder's guest: stop and restart its vCPUs (writers).
class GuestControl {
 public:
  virtual ~GuestControl() = default;
  // Returns once no guest thread writes memory any more.
  virtual void Pause() = 0;
  virtual void Resume() = 0;
};

class MigrationSource {
 public:
  // `sink_factory`: where pages go (multifd, ...); null = page records in the
  // main stream. Not owned; must outlive Run().
  MigrationSource(MigrationParams params, RamBlockList& blocks, DirtyTracker& tracker, GuestControl* guest,
                  std::vector<DeviceHandler*> devices = {}, PageSinkFactory* sink_factory = nullptr);
  ~MigrationSource();

  // Migrates over `channel`. `await_confirmation`: the channel is two-way;
  // after the stream, wait for the destination to confirm the load — a ferry
  // destination's verdict (with verify), or a QEMU destination's SHUT on the
  // return path that the source opens (with qemu_compat).
  Status Run(Channel& channel, bool await_confirmation);
  void Cancel();
  MigrationStats Stats() const;

 private:
  Status RunInner(Channel& channel, bool await_confirmation);
  // Reads a ferry destination's verdict: OK for code 0, kMismatch with its
  // message otherwise, kClosed/kProtocol when there is none.
  Status ReadVerdict(Channel& channel);
  // Reads QEMU's return-path messages until SHUT.
  // Reads QEMU's return-path messages until SHUT. `unconfirmed`: set when
  // the answer did not come (as opposed to QEMU reporting a failure).
  Status AwaitQemuShut(Channel& channel, bool* unconfirmed);
  Status Throttle(uint64_t* budget);
  void Publish(MigrationState state);
  bool cancelled() const { return cancel_.load(std::memory_order_acquire); }

  MigrationParams params_;
  RamBlockList& blocks_;
  DirtyTracker& tracker_;
  GuestControl* guest_;
  std::vector<DeviceHandler*> devices_;
  PageSinkFactory* sink_factory_;

  std::atomic<bool> cancel_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;  // wakes the rate limiter on cancel
  Channel* channel_ = nullptr;  // guarded by mu_
  PageSink* sink_ = nullptr;    // guarded by mu_
  MigrationStats stats_;        // guarded by mu_

  // Migration-thread state.
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point window_start_;
  uint64_t window_bytes_ = 0;
  uint64_t bytes_sent_ = 0;
  uint64_t normal_ = 0, zero_ = 0, remaining_ = 0;
};

struct DestinationOptions {
  std::string machine = "ferry";  // expected configuration machine name
  // Capabilities the stream's configuration section must list besides
  // those the receiver announces (PageReceiver::announced_capabilities); for
  // destinations built by hand.
  std::vector<std::string> capabilities;
  std::optional<Uuid> uuid;       // this VM's uuid: a uuid in the stream must match it
  // The QEMU generation on the other end (with qemu_devices): which
  // return-path messages it understands.
  MigrationParams::QemuVersion qemu_version = MigrationParams::QemuVersion::k10_0;
  // One-line notes for the user (things accepted but worth knowing); may be empty.
  std::function<void(std::string_view)> note;
  bool expect_verify = true;      // require ferry's verification section
  bool send_verdict = true;       // answer the source with a verdict (two-way channel; with verify off too)
  bool qemu_devices = false;      // accept QEMU 7.2's "timer" and "globalstate"
  bool fresh_memory = true;       // blocks start zeroed (fresh mappings)
  PageReceiver* receiver = nullptr;  // multifd receivers; not owned
  // The most RAM (the sum of the block sizes) the stream may announce; a
  // larger announcement is refused before anything is allocated. 0 = no
  // limit. `max_ram_source` says where the limit comes from, for the message.
  uint64_t max_ram = 0;
  std::string max_ram_source;
  // The input is one-way and ends where the stream ends (a file, a pipe):
  // bytes after the VM description are refused. Never on a two-way channel,
  // where the source waits for the verdict instead of closing.
  bool reject_trailing_bytes = false;
  // How long the channels (main stream and multifd, one shared clock) may
  // move no byte before the migration fails (MigrationParams'
  // no-progress-timeout); 0 = wait forever.
  std::chrono::milliseconds no_progress_timeout{30000};
};

class MigrationDestination {
 public:
  MigrationDestination(DestinationOptions options, RamBlockList& blocks, RamBlockAllocator* allocator,
                       std::vector<SectionLoader*> devices = {});
  ~MigrationDestination();

  Status Run(Channel& channel);
  void Cancel();
  MigrationStats Stats() const;

 private:
  Status RunInner(Channel& channel);
  // A command section (QEMU_VM_COMMAND) after its type byte.
  Status HandleCommand(StreamReader& r, Channel& channel, uint64_t at);
  // After a failure verdict on a socket: half-close and swallow the source's
  // remaining bytes for a while, so the verdict is read rather than reset.
  void DrainAfterFailure(Channel& channel);
  // Writes one return-path message (be16 type, be16 length, payload).
  Status SendReturnPath(Channel& channel, uint16_t type, const void* data, uint16_t len);
  void UpdateStats(uint64_t bytes);

  DestinationOptions options_;
  RamBlockList& blocks_;
  RamBlockAllocator* allocator_;
  std::vector<SectionLoader*> devices_;
  std::unique_ptr<RamLoader> ram_;

  std::atomic<bool> cancel_{false};
  mutable std::mutex mu_;
  Channel* channel_ = nullptr;
  MigrationStats stats_;
  Status receiver_error_;  // guarded by mu_: first multifd receiver failure
  bool return_path_ = false;  // the source opened QEMU's return path (migration thread only)
  std::chrono::steady_clock::time_point start_;
};

}  // namespace ferry
