// multifd connection set-up.
//
// Source: the main stream is connected by the caller first; ConnectMultifd
// then opens n more connections and announces each with its 64-byte init
// packet (ids 0..n-1). Connecting the main stream first matters for QEMU 7.2
// as destination: it takes the first connection it accepts as the main
// stream.
//
// Destination: AcceptMigrationChannels accepts n+1 connections in any order
// and tells them apart by their first four bytes:
//
//   first bytes     the connection is                      then
//   51 45 56 4d     the main stream ("QEVM")               handed over with those 4 bytes replayed
//   11 22 33 44     a multifd channel                      60 more bytes of init packet, checked:
//                                                          version, uuid, id < n, id not seen yet
//   anything else   refused, naming the peer and the bytes
//
// With n == 0 (multifd off) exactly one connection is accepted and it must be
// a main stream too: a multifd channel or garbage is refused right there, with
// a message that says what arrived, rather than later as a bad stream magic.
// Once the expected connections are in, one more already waiting in the
// backlog is refused as well (a source with more channels than configured
// here, or with multifd while it is off here), instead of leaving the pages
// sent over it unread.
//
// With channel layers that shake hands on each connection (tls/: the
// acceptor's connections come out of their handshake), all n+1 connections
// are accepted first and then classified: a ferry source completes every
// handshake before it writes the main stream's first bytes.
//
// Without them, connections are classified one at a time, in accept order. That is enough:
// no peer (ferry, QEMU) waits for anything from this side before writing a
// connection's first bytes, and connections not accepted yet still complete
// in the kernel's backlog (a ferry source connects all its channels before it
// writes the stream header). One deadline covers all accepts and all reads,
// and `stop` ends every wait at once, so a silent peer costs at most the
// timeout and never a hang.
#include "core/endian.h"
#include "core/stop_fd.h"
#include "multifd/channels.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include "core/unique_fd.h"
#include "core/wire.h"
#include "multifd/multifd.h"

namespace ferry::multifd {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// Both magics are 4 bytes; the rest of an init packet follows the multifd one.
constexpr size_t kMagicSize = 4;

// `0x41424344 ("ABCD")`, non-printable bytes shown as '.'.
std::string DescribeBytes(const uint8_t* p, size_t n) {
  std::string hex = "0x";
  std::string text;
  char b[4];
  for (size_t i = 0; i < n; ++i) {
    std::snprintf(b, sizeof b, "%02x", p[i]);
    hex += b;
    text += (p[i] >= 0x20 && p[i] < 0x7f) ? static_cast<char>(p[i]) : '.';
  }
  return hex + " (\"" + text + "\")";
}

std::string FormatSeconds(milliseconds d) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g s", static_cast<double>(d.count()) / 1000.0);
  return buf;
}

// Timeouts beyond a century mean "no deadline" (and keep now()+timeout from
// overflowing for milliseconds::max()).
Clock::time_point DeadlineAfter(milliseconds timeout) {
  if (timeout > std::chrono::hours(24 * 365 * 100)) return Clock::time_point::max();
  return Clock::now() + std::max(timeout, milliseconds(0));
}

milliseconds Remaining(Clock::time_point deadline) {
  if (deadline == Clock::time_point::max()) return milliseconds::max();
  auto left = std::chrono::ceil<milliseconds>(deadline - Clock::now());
  return std::max(left, milliseconds(0));
}

// ---------------------------------------------------------------------------
// PrefixChannel

class PrefixChannel final : public Channel {
 public:
  PrefixChannel(std::unique_ptr<Channel> inner, std::vector<uint8_t> prefix)
      : inner_(std::move(inner)), prefix_(std::move(prefix)) {}

  Status WriteAll(std::span<iovec> iov) override { return inner_->WriteAll(iov); }

  // Only the reader thread touches prefix_/pos_ (one reader per channel).
  Result<size_t> ReadSome(void* buf, size_t len) override {
    if (len == 0) return size_t{0};
    if (pos_ < prefix_.size()) {
      const size_t n = std::min(len, prefix_.size() - pos_);
      std::memcpy(buf, prefix_.data() + pos_, n);
      pos_ += n;
      return n;
    }
    return inner_->ReadSome(buf, len);
  }

  void Shutdown() override { inner_->Shutdown(); }
  std::string Describe() const override { return inner_->Describe(); }
  int fd() const override { return inner_->fd(); }
  bool WaitReadable(int wait_ms) override { return pos_ < prefix_.size() || inner_->WaitReadable(wait_ms); }
  void SetProgressBound(const ProgressBound& bound) override { inner_->SetProgressBound(bound); }
  ProgressBound progress_bound() const override { return inner_->progress_bound(); }

 private:
  std::unique_ptr<Channel> inner_;
  std::vector<uint8_t> prefix_;
  size_t pos_ = 0;
};

// ---------------------------------------------------------------------------
// Reads bounded by a deadline and a stop_token

class BoundedReader {
 public:
  explicit BoundedReader(std::stop_token stop) : stop_(std::move(stop)), stop_fd_(stop_) {}

  const Status& status() const { return stop_fd_.status(); }

  // Reads exactly `len` bytes by `deadline`. `what` names the connection in
  // messages ("connection from tcp:1.2.3.4:5678").
  Status ReadExact(Channel& ch, uint8_t* buf, size_t len, Clock::time_point deadline, const std::string& what) {
    deadline_ = deadline;
    if (ch.fd() < 0) return ReadWithWatchdog(ch, buf, len, what);
    size_t got = 0;
    while (got < len) {
      FERRY_RETURN_IF_ERROR(WaitReadable(ch.fd(), what, got, len));
      Result<size_t> n = ch.ReadSome(buf + got, len - got);
      if (!n.ok()) return n.status().WithContext(what);
      if (*n == 0) return ClosedEarly(what, got, len);
      got += *n;
    }
    return Status::Ok();
  }

 private:
  Status TimedOut(const std::string& what, size_t got, size_t len) const {
    return Status::Timeout(what + ": only " + std::to_string(got) + " of the first " + std::to_string(len) +
                           " bytes arrived before the deadline");
  }
  static Status ClosedEarly(const std::string& what, size_t got, size_t len) {
    return Status::Closed(what + ": the peer closed the connection after " + std::to_string(got) + " of the first " +
                          std::to_string(len) + " bytes");
  }
  Status Cancelled(const std::string& what) const {
    return Status::Cancelled(what + ": cancelled while waiting for its first bytes");
  }

  Status WaitReadable(int fd, const std::string& what, size_t got, size_t len) {
    for (;;) {
      if (stop_.stop_requested()) return Cancelled(what);
      const milliseconds left = Remaining(deadline_);
      if (left.count() == 0) return TimedOut(what, got, len);
      pollfd p[2] = {{fd, POLLIN, 0}, {stop_fd_.fd(), POLLIN, 0}};
      const int ms = static_cast<int>(std::min<milliseconds>(left, std::chrono::hours(1)).count());
      const int rc = ::poll(p, stop_fd_.fd() >= 0 ? 2 : 1, ms);
      if (rc < 0) {
        if (errno == EINTR) continue;
        return ErrnoStatus("poll on " + what);
      }
      if (rc > 0 && p[1].revents != 0) return Cancelled(what);
      if (rc > 0 && p[0].revents != 0) return Status::Ok();  // data, end of stream or an error: ReadSome tells
    }
  }

  // For channels without a descriptor to poll: read normally while a helper
  // thread shuts the channel down when the deadline passes or stop is asked.
  Status ReadWithWatchdog(Channel& ch, uint8_t* buf, size_t len, const std::string& what) {
    std::mutex mu;
    std::condition_variable_any cv;
    bool done = false;
    bool fired = false;
    std::thread watchdog([&] {
      std::unique_lock<std::mutex> lock(mu);
      auto finished = [&] { return done; };
      if (deadline_ == Clock::time_point::max()) {
        cv.wait(lock, stop_, finished);
      } else {
        cv.wait_until(lock, stop_, deadline_, finished);
      }
      if (!done) {
        fired = true;
        ch.Shutdown();
      }
    });
    Status s = ch.ReadExact(buf, len);
    {
      std::lock_guard<std::mutex> lock(mu);
      done = true;
    }
    cv.notify_all();
    watchdog.join();
    if (fired) return stop_.stop_requested() ? Cancelled(what) : TimedOut(what, 0, len);
    return s.ok() ? s : s.WithContext(what);
  }

  Clock::time_point deadline_ = Clock::time_point::max();  // of the current ReadExact
  std::stop_token stop_;
  StopWatch stop_fd_;
};

// ---------------------------------------------------------------------------
// What the destination has collected so far, for messages.

struct Collected {
  uint32_t n = 0;
  std::string main_from;                // empty until the main stream arrived
  std::vector<std::string> multifd_from;  // per id; empty = not yet

  uint32_t multifd_count() const {
    return static_cast<uint32_t>(
        std::count_if(multifd_from.begin(), multifd_from.end(), [](const std::string& s) { return !s.empty(); }));
  }

  std::string Summary() const {
    std::string s = main_from.empty() ? "no main stream yet" : "main stream from " + main_from;
    if (n == 0) return s;
    s += ", " + std::to_string(multifd_count()) + " of " + std::to_string(n) + " multifd channels";
    std::string missing;
    for (uint32_t id = 0; id < n; ++id) {
      if (!multifd_from[id].empty()) continue;
      missing += (missing.empty() ? "" : ",") + std::to_string(id);
    }
    if (!missing.empty()) s += " (missing ids " + missing + ")";
    return s;
  }
};

std::string ConfiguredIds(uint32_t n) {
  if (n == 1) return "only 1 channel (0) is configured";
  return "only " + std::to_string(n) + " channels (0-" + std::to_string(n - 1) + ") are configured";
}

}  // namespace

std::unique_ptr<Channel> MakePrefixChannel(std::unique_ptr<Channel> inner, std::vector<uint8_t> prefix) {
  return std::make_unique<PrefixChannel>(std::move(inner), std::move(prefix));
}

// ---------------------------------------------------------------------------
// Source side

Result<std::vector<std::unique_ptr<Channel>>> ConnectMultifd(const ConnectFn& connect, uint32_t n, const Uuid& uuid,
                                                             std::chrono::milliseconds timeout,
                                                             std::stop_token stop) {
  if (n > 256) return Status::InvalidArgument("at most 256 multifd channels (the channel id is one byte)");
  const Clock::time_point deadline = DeadlineAfter(timeout);
  std::vector<std::unique_ptr<Channel>> channels;
  channels.reserve(n);
  for (uint32_t id = 0; id < n; ++id) {
    const std::string what = "multifd channel " + std::to_string(id);
    Result<std::unique_ptr<Channel>> ch = connect(Remaining(deadline), stop);
    if (!ch.ok()) return ch.status().WithContext(what);
    uint8_t init[kInitPacketSize];
    EncodeInitPacket(InitPacket{uuid, static_cast<uint8_t>(id)}, init);
    Status s = (*ch)->WriteAll(init, sizeof init);
    if (!s.ok()) return s.WithContext(what + ": sending its init packet");
    channels.push_back(std::move(*ch));
  }
  return channels;
}

// ---------------------------------------------------------------------------
// Destination side

Result<IncomingChannels> AcceptMigrationChannels(Acceptor& listener, uint32_t n, const Uuid& uuid,
                                                 std::chrono::milliseconds timeout, std::stop_token stop,
                                                 bool handshakes) {
  if (n > 256) return Status::InvalidArgument("at most 256 multifd channels (the channel id is one byte)");
  const Clock::time_point deadline = DeadlineAfter(timeout);
  BoundedReader reader(stop);
  FERRY_RETURN_IF_ERROR(reader.status());

  IncomingChannels out;
  out.multifd.resize(n);
  Collected got;
  got.n = n;
  got.multifd_from.resize(n);

  // Reads a connection's first bytes and files it as the main stream or as
  // multifd channel `id`, or says why it cannot be either.
  auto classify = [&](std::unique_ptr<Channel> ch, Clock::time_point read_by) -> Status {
    const std::string peer = ch->Describe();
    const std::string what = "connection from " + peer;
    uint8_t head[kInitPacketSize];
    FERRY_RETURN_IF_ERROR(reader.ReadExact(*ch, head, kMagicSize, read_by, what));
    const uint32_t magic = LoadBe32(head);

    if (magic == wire::kMagic) {
      if (!got.main_from.empty()) {
        return Status::Protocol("a second migration stream arrived, " + what + " (the first came from " +
                                got.main_from + ")");
      }
      out.main_connection = ch.get();
      out.main = MakePrefixChannel(std::move(ch), std::vector<uint8_t>(head, head + kMagicSize));
      got.main_from = peer;
      return Status::Ok();
    }

    if (magic == kMagic) {
      if (n == 0) {
        return Status::Protocol(what + " is a multifd channel, but multifd is off on this destination (turn on "
                                "the multifd capability with the same multifd-channels on both sides)");
      }
      FERRY_RETURN_IF_ERROR(reader.ReadExact(*ch, head + kMagicSize, kInitPacketSize - kMagicSize, read_by, what));
      Result<InitPacket> init = DecodeInitPacket(head);
      if (!init.ok()) return init.status().WithContext("multifd " + what);
      const uint32_t id = init->id;
      if (init->uuid != uuid) {
        return Status::Mismatch("multifd channel " + std::to_string(id) + " (from " + peer + "): uuid " +
                                FormatUuid(init->uuid) + " does not match this destination's " + FormatUuid(uuid));
      }
      if (id >= n) {
        return Status::Protocol("multifd channel id " + std::to_string(id) + " (from " + peer + ") but " +
                                ConfiguredIds(n));
      }
      if (!got.multifd_from[id].empty()) {
        return Status::Protocol("duplicate multifd channel id " + std::to_string(id) + ": first from " +
                                got.multifd_from[id] + ", again from " + peer);
      }
      out.multifd[id] = std::move(ch);
      got.multifd_from[id] = peer;
      return Status::Ok();
    }

    if (head[0] == 0x16 && head[1] == 0x03) {
      return Status::Protocol(what + " starts a TLS handshake (first bytes " + DescribeBytes(head, kMagicSize) +
                              "): the source uses TLS and this destination does not (give it --tls-creds too)");
    }
    return Status::Protocol(what + " is neither a migration stream nor a multifd channel: first bytes " +
                            DescribeBytes(head, kMagicSize) + ", expected the stream magic 0x5145564d (\"QEVM\")" +
                            (n > 0 ? " or the multifd magic 0x11223344" : ""));
  };

  // Accepts one connection (the acceptor runs its channel layers' handshakes).
  size_t unsorted = 0;  // accepted, not classified yet
  auto summary = [&] {
    std::string s = got.Summary();
    if (unsorted > 0) s += "; " + std::to_string(unsorted) + " connections accepted, not sorted yet";
    return s;
  };
  auto accept_one = [&]() -> Result<std::unique_ptr<Channel>> {
    Result<std::unique_ptr<Channel>> accepted = listener.Accept(Remaining(deadline), stop);
    if (!accepted.ok()) {
      const Status& st = accepted.status();
      if (st.code() == Code::kTimeout) {
        return Status::Timeout("gave up waiting for the migration connections after " + FormatSeconds(timeout) +
                               ": " + summary());
      }
      if (st.code() == Code::kCancelled || stop.stop_requested()) {
        return Status::Cancelled("cancelled while waiting for the migration connections (" + summary() + ")");
      }
      return st.WithContext("accepting migration connections (" + summary() + ")");
    }
    return accepted;
  };

  if (handshakes) {
    // A connection's first bytes come only after its handshake, and a ferry
    // source shakes hands on every connection before it writes the main
    // stream's first bytes: all n+1 are accepted (handshakes done) first,
    // then sorted (QEMU's channels send their first bytes on their own).
    // Sorting one at a time would wait for the main stream's bytes while
    // the source waits for the next handshake.
    std::vector<std::unique_ptr<Channel>> accepted;
    while (accepted.size() < static_cast<size_t>(n) + 1) {
      Result<std::unique_ptr<Channel>> ch = accept_one();
      if (!ch.ok()) return ch.status();
      accepted.push_back(std::move(*ch));
      unsorted = accepted.size();
    }
    for (auto& ch : accepted) {
      --unsorted;
      FERRY_RETURN_IF_ERROR(classify(std::move(ch), deadline));
    }
  }
  while (got.main_from.empty() || got.multifd_count() < n) {
    Result<std::unique_ptr<Channel>> accepted = accept_one();
    if (!accepted.ok()) return accepted.status();
    FERRY_RETURN_IF_ERROR(classify(std::move(*accepted), deadline));
  }

  // A connection already queued behind the expected ones means the source
  // wants something else: more channels than configured here, or multifd
  // while it is off here. A ferry source has connected everything before the
  // main stream's first bytes (read above), so its extra connections are
  // queued by now; left unaccepted, the pages sent over them would be lost
  // silently. Every slot is taken, so classifying one always fails, with a
  // message that says what it is.
  Result<std::unique_ptr<Channel>> extra = listener.Accept(milliseconds(0), stop);
  if (extra.ok()) {  // (an error means nothing is queued, or fd:, which has no second connection)
    const Clock::time_point read_by = std::min(deadline, Clock::now() + std::chrono::seconds(2));
    Status s = classify(std::move(*extra), read_by);
    if (s.ok()) s = Status::Internal("an extra connection was taken as a valid one");
    return s.WithContext("unexpected connection after " + got.Summary());
  }
  return out;
}

}  // namespace ferry::multifd
