#include "core/status.h"

#include <cstring>

namespace ferry {

std::string_view CodeName(Code code) {
  switch (code) {
    case Code::kOk: return "ok";
    case Code::kInvalidArgument: return "invalid argument";
    case Code::kIo: return "I/O error";
    case Code::kProtocol: return "protocol error";
    case Code::kMismatch: return "mismatch";
    case Code::kCancelled: return "cancelled";
    case Code::kTimeout: return "timeout";
    case Code::kUnsupported: return "unsupported";
    case Code::kClosed: return "connection closed";
    case Code::kInternal: return "internal error";
  }
  return "unknown";
}

const std::string& Status::message() const {
  static const std::string kEmpty;
  return rep_ ? rep_->msg : kEmpty;
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(CodeName(rep_->code)) + ": " + rep_->msg;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  std::string msg(context);
  msg += ": ";
  msg += rep_->msg;
  return Status(rep_->code, std::move(msg), rep_->err);
}

Status ErrnoStatus(std::string_view context, int err) {
  char buf[128];
  const char* text = strerror_r(err, buf, sizeof(buf));
  std::string msg(context);
  msg += ": ";
  msg += text;
  if (err == EPIPE || err == ECONNRESET || err == ENOTCONN) {
    return Status::Closed(std::move(msg));
  }
  if (err == ETIMEDOUT) return Status::Timeout(std::move(msg));
  return Status::Io(std::move(msg), err);
}

}  // namespace ferry
