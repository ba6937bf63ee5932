// FdChannel: the one Channel for every descriptor kind (sockets, pipes,
// files), and MakeFdChannel().
#include "core/channel.h"
#include "socket/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/progress.h"
#include "socket/internal.h"

namespace ferry::socket_internal {
namespace {

// ---------------------------------------------------------------------------
// SIGPIPE for pipes
//
// MSG_NOSIGNAL only exists for sockets. A write to a pipe whose reader went
// away raises SIGPIPE, which by default kills the process. While writing to
// a pipe we block SIGPIPE in this thread and swallow one that our own write
// raised, so the caller just sees EPIPE.
class ScopedSigpipeBlock {
 public:
  explicit ScopedSigpipeBlock(bool active) : active_(active) {
    if (!active_) return;
    sigemptyset(&pipe_set_);
    sigaddset(&pipe_set_, SIGPIPE);
    sigset_t pending;
    sigemptyset(&pending);
    ::sigpending(&pending);
    already_pending_ = sigismember(&pending, SIGPIPE) == 1;
    ::pthread_sigmask(SIG_BLOCK, &pipe_set_, &old_mask_);
  }
  ~ScopedSigpipeBlock() {
    if (!active_) return;
    if (saw_epipe_ && !already_pending_) {
      timespec zero{};
      while (::sigtimedwait(&pipe_set_, nullptr, &zero) < 0 && errno == EINTR) {
      }
    }
    ::pthread_sigmask(SIG_SETMASK, &old_mask_, nullptr);
  }
  ScopedSigpipeBlock(const ScopedSigpipeBlock&) = delete;
  ScopedSigpipeBlock& operator=(const ScopedSigpipeBlock&) = delete;
  void NoteEpipe() { saw_epipe_ = true; }

 private:
  bool active_;
  bool already_pending_ = false;
  bool saw_epipe_ = false;
  sigset_t pipe_set_{};
  sigset_t old_mask_{};
};

// ---------------------------------------------------------------------------
// FdChannel
//
// Every blocking wait is a poll() bounded by the channel's ProgressBound and
// woken by Shutdown(): sockets are driven with MSG_DONTWAIT (their descriptor
// flags are left alone, the descriptor may be shared), pipes are switched to
// O_NONBLOCK for the channel's lifetime (pipes have no per-call flag) and an
// eventfd wakes their waits, since shutdown() does not work on them. Other
// descriptors (regular files, devices) are used as they come.

class FdChannel final : public Channel {
 public:
  enum class Kind { kSocket, kPipe, kOther };

  FdChannel(UniqueFd fd, std::string description)
      : fd_(std::move(fd)), description_(std::move(description)) {
    struct stat st {};
    if (::fstat(fd_.get(), &st) == 0) {
      if (S_ISSOCK(st.st_mode)) {
        kind_ = Kind::kSocket;
      } else if (S_ISFIFO(st.st_mode)) {
        kind_ = Kind::kPipe;
      }
    }
    if (kind_ == Kind::kPipe) {
      const int flags = ::fcntl(fd_.get(), F_GETFL);
      if (flags >= 0 && !(flags & O_NONBLOCK) && ::fcntl(fd_.get(), F_SETFL, flags | O_NONBLOCK) == 0) {
        restore_flags_ = flags;
      }
      // Without an eventfd (out of descriptors) a Shutdown() is still seen
      // within kPipeWakeStep.
      Result<UniqueFd> wake = MakeEventFd(description_);
      if (wake.ok()) wake_ = std::move(wake).value();
    }
  }
  ~FdChannel() override {
    // The description may be shared with other processes (fd:0, fd:1).
    if (restore_flags_ >= 0) ::fcntl(fd_.get(), F_SETFL, restore_flags_);
  }

  Status WriteAll(std::span<iovec> iov) override;
  Result<size_t> ReadSome(void* buf, size_t len) override;
  void Shutdown() override;
  std::string Describe() const override { return description_; }
  int fd() const override { return fd_.get(); }
  void SetProgressBound(const ProgressBound& bound) override;
  ProgressBound progress_bound() const override { return bound_; }

 private:
  // Poll steps for pipes that have no eventfd to wake them.
  static constexpr int kPipeWakeStep = 100;

  Status ShutDownStatus() const { return Status::Cancelled(description_ + ": channel shut down"); }
  bool IsShut() const { return shut_.load(std::memory_order_acquire); }
  // Waits until the descriptor is ready for `events`, the channel is shut
  // down, or no byte moved for the bound's limit since `since`.
  Status WaitReady(short events, const char* what, ProgressBound::Clock::time_point since);
  // A read or write that cannot go on yet: its wait is bounded from the
  // first EAGAIN since the last byte moved.
  struct Stall {
    ProgressBound::Clock::time_point since{};
    bool waiting = false;
  };
  // After a read or write failed with `err`: Ok to try again (EINTR, or
  // EAGAIN and now ready for `events`), the wait's error, or nullopt when
  // `err` is another error.
  std::optional<Status> RetryAfter(int err, short events, const char* what, Stall& stall);
  // The error of a read or write that failed with `err` for good.
  Status IoError(int err, const char* what) const;

  UniqueFd fd_;
  const std::string description_;
  Kind kind_ = Kind::kOther;
  int restore_flags_ = -1;  // file status flags to put back (we set O_NONBLOCK)
  UniqueFd wake_;           // pipes: signalled by Shutdown()
  ProgressBound bound_;     // set before I/O starts
  std::atomic<bool> shut_{false};
};

void FdChannel::SetProgressBound(const ProgressBound& bound) {
  bound_ = bound;
  if (kind_ == Kind::kSocket) SetKeepalive(fd_.get(), bound.limit);
}

Status FdChannel::WaitReady(short events, const char* what, ProgressBound::Clock::time_point since) {
  const std::string where = std::string(what) + " " + description_;
  for (;;) {
    if (IsShut()) return ShutDownStatus();
    if (kind_ != Kind::kSocket && !wake_.valid()) {
      // Nothing can wake this poll: look at shut_ now and then.
      pollfd p{fd_.get(), events, 0};
      const int rc = ::poll(&p, 1, bound_.PollMs(since, kPipeWakeStep));
      if (rc < 0 && errno != EINTR) return ErrnoStatus(where);
      if (rc > 0) return Status::Ok();
      if (bound_.Expired(since)) return bound_.Error(where);
      continue;
    }
    Result<WaitResult> r = WaitForFd(fd_.get(), events, wake_.get(), bound_, since);
    if (!r.ok()) return r.status().WithContext(where);
    switch (*r) {
      case WaitResult::kReady: return Status::Ok();
      case WaitResult::kWoken: return ShutDownStatus();
      case WaitResult::kExpired: return bound_.Error(where);
    }
  }
}

std::optional<Status> FdChannel::RetryAfter(int err, short events, const char* what, Stall& stall) {
  if (err == EINTR) return Status::Ok();
  if (err != EAGAIN && err != EWOULDBLOCK) return std::nullopt;
  if (!stall.waiting) {
    stall.since = ProgressBound::Clock::now();
    stall.waiting = true;
  }
  return WaitReady(events, what, stall.since);
}

Status FdChannel::IoError(int err, const char* what) const {
  if (IsShut()) return ShutDownStatus();
  if (err == ETIMEDOUT && bound_.bounded()) {
    // TCP_USER_TIMEOUT or keepalive: the kernel gave up on the peer.
    return ErrnoStatus(std::string(what) + " " + description_ + ": no progress for " +
                           FormatDuration(bound_.limit) + " or more, the kernel gave up on the connection",
                       err);
  }
  return ErrnoStatus(std::string(what) + " " + description_, err);
}

Status FdChannel::WriteAll(std::span<iovec> iov) {
  ScopedSigpipeBlock sigpipe(kind_ == Kind::kPipe);
  size_t i = 0;
  Stall stall;
  for (;;) {
    while (i < iov.size() && iov[i].iov_len == 0) ++i;
    if (i == iov.size()) return Status::Ok();
    if (IsShut()) return ShutDownStatus();

    size_t count = std::min(iov.size() - i, kIovBatch);
    ssize_t n;
    if (kind_ == Kind::kSocket) {
      msghdr msg{};
      msg.msg_iov = &iov[i];
      msg.msg_iovlen = count;
      n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    } else {
      n = ::writev(fd_.get(), &iov[i], static_cast<int>(count));
    }
    if (n < 0) {
      const int err = errno;
      if (std::optional<Status> retry = RetryAfter(err, POLLOUT, "write to", stall)) {
        FERRY_RETURN_IF_ERROR(*retry);
        continue;
      }
      if (err == EPIPE) sigpipe.NoteEpipe();
      return IoError(err, "write to");
    }
    if (n == 0) {
      // Only possible for odd descriptors (a full device); never loop on it.
      return Status::Io("write to " + description_ + " made no progress", EIO);
    }
    bound_.Note();
    stall.waiting = false;  // progress: a later wait starts afresh
    i = AdvanceIovecs(iov, i, static_cast<size_t>(n));
  }
}

Result<size_t> FdChannel::ReadSome(void* buf, size_t len) {
  if (len == 0) return size_t{0};
  Stall stall;
  for (;;) {
    if (IsShut()) return ShutDownStatus();
    ssize_t n;
    if (kind_ == Kind::kSocket) {
      n = ::recv(fd_.get(), buf, len, MSG_DONTWAIT);
    } else {
      n = ::read(fd_.get(), buf, len);
    }
    if (n > 0) {
      bound_.Note();
      return static_cast<size_t>(n);
    }
    if (n == 0) {
      // A socket that was shut down under us reads as end of stream.
      if (IsShut()) return ShutDownStatus();
      return size_t{0};
    }
    const int err = errno;
    if (std::optional<Status> retry = RetryAfter(err, POLLIN, "read from", stall)) {
      FERRY_RETURN_IF_ERROR(*retry);
      continue;
    }
    return IoError(err, "read from");
  }
}

void FdChannel::Shutdown() {
  if (shut_.exchange(true, std::memory_order_acq_rel)) return;
  // The descriptor stays open until destruction, so this cannot race with a
  // reuse of the number. Blocked recv() returns 0, blocked send() EPIPE, and
  // poll() wakes. Pipes are woken through their eventfd.
  if (kind_ == Kind::kSocket) ::shutdown(fd_.get(), SHUT_RDWR);
  if (wake_.valid()) SignalEventFd(wake_.get());
}

}  // namespace

std::unique_ptr<Channel> MakeSocketChannel(UniqueFd fd, std::string description) {
  return std::make_unique<FdChannel>(std::move(fd), std::move(description));
}

}  // namespace ferry::socket_internal

namespace ferry {

std::unique_ptr<Channel> MakeFdChannel(UniqueFd fd, std::string description) {
  return socket_internal::MakeSocketChannel(std::move(fd), std::move(description));
}

}  // namespace ferry
