// MSG_ZEROCOPY on a multifd channel's socket (zero-copy-send): turning it
// on, sending, and the completion bookkeeping that decides when a buffer the
// kernel may still read can be reused. The multifd sender (sender.cc) owns
// one ledger per channel and calls these from that channel's thread.
#pragma once

#include <sys/uio.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <span>

#include "core/channel.h"
#include "multifd/stats.h"
#include "core/status.h"

namespace ferry::multifd {

// Completion tracking for MSG_ZEROCOPY on one socket. The kernel numbers
// every sendmsg(MSG_ZEROCOPY) that queued data (0, 1, 2, ... as u32) and
// reports finished ones as inclusive ranges on the error queue, possibly
// merged and, in principle, out of order. Owned by the channel's sender
// thread; the counters are atomics for FillStats.
class ZeroCopyLedger {
 public:
  uint64_t issued() const { return issued_; }
  uint64_t done_below() const { return done_below_; }
  bool AllDone() const { return done_below_ == issued_; }
  // Every send numbered below `id_end` has completed.
  bool DoneBelow(uint64_t id_end) const { return done_below_ >= id_end; }
  void NoteIssued() { ++issued_; sends_.fetch_add(1, std::memory_order_relaxed); }

  void NoteCompleted(uint32_t lo32, uint32_t hi32, bool copied) {
    // Unwrap the u32 ids relative to the lowest id still outstanding.
    const uint64_t lo = done_below_ + static_cast<uint32_t>(lo32 - static_cast<uint32_t>(done_below_));
    const uint64_t n = static_cast<uint32_t>(hi32 - lo32) + 1ull;
    completed_.fetch_add(n, std::memory_order_relaxed);
    if (copied) copied_.fetch_add(n, std::memory_order_relaxed);
    if (lo != done_below_) {
      early_[lo] = lo + n;
      return;
    }
    done_below_ = lo + n;
    for (auto it = early_.begin(); it != early_.end() && it->first <= done_below_;) {
      done_below_ = std::max(done_below_, it->second);
      it = early_.erase(it);
    }
  }

  void NoteFallback() { fallbacks_.fetch_add(1, std::memory_order_relaxed); }

  void AddTo(ZeroCopyStats& r) const {
    r.sends += sends_.load(std::memory_order_relaxed);
    r.completed += completed_.load(std::memory_order_relaxed);
    r.copied += copied_.load(std::memory_order_relaxed);
    r.fallbacks += fallbacks_.load(std::memory_order_relaxed);
  }

 private:
  uint64_t issued_ = 0;
  uint64_t done_below_ = 0;
  std::map<uint64_t, uint64_t> early_;  // completed [lo, hi) above done_below_
  std::atomic<uint64_t> sends_{0}, completed_{0}, copied_{0}, fallbacks_{0};
};

// SO_ZEROCOPY on channel `id`'s socket; kUnsupported where there is no
// plain socket or the kernel refuses.
Status EnableZeroCopy(Channel& channel, unsigned id);
// Writes all of `iov` with sendmsg(MSG_ZEROCOPY) (a plain copy after
// ENOBUFS with nothing outstanding), bounded by the channel's progress
// bound; kCancelled once `stopping()`.
Status SendZeroCopy(Channel& channel, ZeroCopyLedger& zc, std::span<iovec> iov, const std::function<bool()>& stopping);
// Reads every pending completion without blocking.
Status ReapZeroCopyCompletions(Channel& channel, ZeroCopyLedger& zc, const std::function<bool()>& stopping);
// Blocks until the sends numbered below `id_end` have completed.
Status WaitZeroCopyCompletions(Channel& channel, ZeroCopyLedger& zc, uint64_t id_end,
                               const std::function<bool()>& stopping);

}  // namespace ferry::multifd
