#include "tests/support/qmp.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

namespace ferry::test {
namespace {

using nlohmann::json;

long long MillisLeft(Clock::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return std::max<long long>(0, left);
}

std::string OwnerReport(Process* owner) {
  if (owner == nullptr) return "";
  // Give a dying QEMU a moment so its exit status and last words are known.
  if (owner->Running()) (void)owner->Wait(std::chrono::seconds(2));
  return "\n" + owner->Report();
}

}  // namespace

Result<std::unique_ptr<QmpClient>> QmpClient::Connect(const std::string& path,
                                                      Clock::duration timeout, Process* owner) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) {
    return Status::InvalidArgument("QMP socket path too long for sockaddr_un: " + path);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);

  std::unique_ptr<QmpClient> c(new QmpClient());
  c->path_ = path;
  c->owner_ = owner;
  const auto deadline = Clock::now() + timeout;
  int last_errno = 0;
  for (;;) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!fd.valid()) return ErrnoStatus("socket(AF_UNIX)");
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      c->fd_ = std::move(fd);
      break;
    }
    last_errno = errno;
    if (owner != nullptr && !owner->Running()) {
      return Status::Closed("QEMU ended before its QMP socket " + path + " accepted a connection" +
                            OwnerReport(owner));
    }
    if (Clock::now() >= deadline) {
      return ErrnoStatus("QMP: gave up connecting to " + path, last_errno);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  FERRY_ASSIGN_OR_RETURN(json greeting, c->ReadMessage(deadline + std::chrono::seconds(10)));
  if (!greeting.is_object() || !greeting.contains("QMP")) {
    return Status::Protocol("QMP greeting expected on " + path + ", got " + greeting.dump());
  }
  c->greeting_ = greeting["QMP"];
  Result<json> caps = c->Execute("qmp_capabilities");
  if (!caps.ok()) return caps.status();
  return c;
}

Status QmpClient::Send(const json& message) {
  std::string text = message.dump() + "\n";
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::send(fd_.get(), text.data() + done, text.size() - done, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      Status st = ErrnoStatus("QMP send on " + path_);
      return Status::Closed(st.message() + OwnerReport(owner_));
    }
    done += static_cast<size_t>(n);
  }
  return Status::Ok();
}

Result<json> QmpClient::ReadMessage(Clock::time_point deadline) {
  for (;;) {
    size_t nl;
    while ((nl = buffer_.find('\n')) != std::string::npos) {
      std::string line = buffer_.substr(0, nl);
      buffer_.erase(0, nl + 1);
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded()) return Status::Protocol("QMP sent something that is not JSON: " + line);
      return j;
    }
    const long long left = MillisLeft(deadline);
    if (left == 0) return Status::Timeout("no QMP message from " + path_ + " in time");
    pollfd p{fd_.get(), POLLIN, 0};
    int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 200)));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("poll on QMP socket");
    }
    if (r == 0) continue;  // re-check the deadline
    char buf[65536];
    ssize_t n = ::recv(fd_.get(), buf, sizeof(buf), 0);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      Status st = ErrnoStatus("QMP recv on " + path_);
      return Status::Closed(st.message() + OwnerReport(owner_));
    }
    if (n == 0) {
      return Status::Closed("QEMU closed the QMP connection " + path_ + " (did it exit?)" +
                            OwnerReport(owner_));
    }
    buffer_.append(buf, static_cast<size_t>(n));
  }
}

Result<json> QmpClient::Execute(std::string_view command, json arguments, Clock::duration timeout) {
  const auto deadline = Clock::now() + timeout;
  const std::string id = "ferry-test-" + std::to_string(next_id_++);
  json msg = {{"execute", std::string(command)}, {"id", id}};
  if (!arguments.is_null() && !(arguments.is_object() && arguments.empty())) {
    msg["arguments"] = std::move(arguments);
  }
  FERRY_RETURN_IF_ERROR(Send(msg));
  for (;;) {
    Result<json> m = ReadMessage(deadline);
    if (!m.ok()) return m.status().WithContext("QMP " + std::string(command));
    json& j = *m;
    if (j.contains("event")) {
      if (events_.size() >= 1000) events_.erase(events_.begin());
      events_.push_back(std::move(j));
      continue;
    }
    if (j.contains("id") && j["id"] != id) continue;  // an answer to an older, abandoned command
    if (j.contains("error")) {
      const json& e = j["error"];
      std::string cls = e.value("class", std::string("?"));
      std::string desc = e.value("desc", e.dump());
      return Status::InvalidArgument("QMP " + std::string(command) + ": " + cls + ": " + desc);
    }
    if (j.contains("return")) return j["return"];
    return Status::Protocol("unexpected QMP message for " + std::string(command) + ": " + j.dump());
  }
}

Result<json> QmpClient::WaitForMigration(Clock::duration timeout, Clock::duration poll) {
  const auto deadline = Clock::now() + timeout;
  std::string last = "(none yet)";
  json last_info;
  for (;;) {
    const auto left = std::max<Clock::duration>(deadline - Clock::now(), std::chrono::seconds(5));
    Result<json> info = Execute("query-migrate", json::object(), left);
    if (!info.ok()) return info.status().WithContext("waiting for migration (last status " + last + ")");
    if (info->is_object() && info->contains("status")) {
      last = (*info)["status"].get<std::string>();
      if (last == "completed" || last == "failed" || last == "cancelled") return info;
    }
    last_info = *info;
    if (Clock::now() >= deadline) {
      return Status::Timeout("migration still '" + last + "' after " +
                             std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count()) +
                             " ms; last query-migrate: " + last_info.dump());
    }
    std::this_thread::sleep_for(poll);
  }
}

}  // namespace ferry::test
