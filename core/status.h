// Status and Result<T>: ferry's one error type.
//
// A Status is OK (cheap, no allocation) or carries a code and a message that
// names what failed, in words a user can act on. Every errno-based failure is
// turned into a Status by ErrnoStatus(), so messages look alike everywhere.
//
//   Result<size_t> n = channel.ReadSome(buf, len);
//   if (!n.ok()) return n.status();
//
//   FERRY_RETURN_IF_ERROR(stream.Flush());
//   FERRY_ASSIGN_OR_RETURN(auto chan, ConnectUri(uri, timeout));
#pragma once

#include <cerrno>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace ferry {

enum class Code {
  kOk = 0,
  kInvalidArgument,  // bad user input: a URI, a size, a parameter
  kIo,               // the OS refused: carries errno
  kProtocol,         // the peer sent something that is not a valid stream
  kMismatch,         // valid stream, but not for this guest (names, sizes, digests)
  kCancelled,        // someone asked us to stop
  kTimeout,          // a deadline passed
  kUnsupported,      // kernel or peer lacks a feature
  kClosed,           // the peer closed the connection
  kInternal,         // a bug in ferry
};

std::string_view CodeName(Code code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string msg) { return Status(Code::kInvalidArgument, std::move(msg)); }
  static Status Protocol(std::string msg) { return Status(Code::kProtocol, std::move(msg)); }
  static Status Mismatch(std::string msg) { return Status(Code::kMismatch, std::move(msg)); }
  static Status Cancelled(std::string msg) { return Status(Code::kCancelled, std::move(msg)); }
  static Status Timeout(std::string msg) { return Status(Code::kTimeout, std::move(msg)); }
  static Status Unsupported(std::string msg) { return Status(Code::kUnsupported, std::move(msg)); }
  static Status Closed(std::string msg) { return Status(Code::kClosed, std::move(msg)); }
  static Status Internal(std::string msg) { return Status(Code::kInternal, std::move(msg)); }
  // Prefer ErrnoStatus(); this exists for callers that already hold errno.
  static Status Io(std::string msg, int err) { return Status(Code::kIo, std::move(msg), err); }

  bool ok() const { return rep_ == nullptr; }
  Code code() const { return rep_ ? rep_->code : Code::kOk; }
  int sys_errno() const { return rep_ ? rep_->err : 0; }
  const std::string& message() const;
  // "code: message" for logs; just the message is usually what a user wants.
  std::string ToString() const;

  // Returns a copy with "context: " put in front of the message.
  Status WithContext(std::string_view context) const;

 private:
  struct Rep {
    Code code;
    std::string msg;
    int err;
  };
  Status(Code code, std::string msg, int err = 0)
      : rep_(std::make_shared<const Rep>(Rep{code, std::move(msg), err})) {}
  std::shared_ptr<const Rep> rep_;
};

// The single errno helper: "context: strerror(err)". EPIPE/ECONNRESET become
// kClosed so callers can tell a vanished peer from a local failure.
Status ErrnoStatus(std::string_view context, int err = errno);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    if (std::get<Status>(v_).ok()) v_ = Status::Internal("Result built from an OK status");
  }
  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? Status() : std::get<Status>(v_); }
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace ferry

#define FERRY_CONCAT_INNER(a, b) a##b
#define FERRY_CONCAT(a, b) FERRY_CONCAT_INNER(a, b)

#define FERRY_RETURN_IF_ERROR(expr)            \
  do {                                         \
    ::ferry::Status _ferry_st = (expr);        \
    if (!_ferry_st.ok()) return _ferry_st;     \
  } while (0)

#define FERRY_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()

#define FERRY_ASSIGN_OR_RETURN(lhs, expr) \
  FERRY_ASSIGN_OR_RETURN_IMPL(FERRY_CONCAT(_ferry_res_, __LINE__), lhs, expr)
