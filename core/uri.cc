#include "core/uri.h"

#include <charconv>

namespace ferry {
namespace {

bool ParseUnsigned(std::string_view s, uint64_t max, uint64_t* out) {
  if (s.empty()) return false;
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v > max) return false;
  *out = v;
  return true;
}

}  // namespace

Result<Uri> ParseUri(std::string_view text) {
  Uri u;
  u.text = std::string(text);
  auto bad = [&](std::string_view why) {
    return Status::InvalidArgument("bad URI '" + std::string(text) + "': " + std::string(why) +
                                   " (expected tcp:HOST:PORT, tcp:[V6]:PORT, unix:PATH, fd:N, file:PATH[,offset=N] or rdma:HOST:PORT)");
  };
  if (text.starts_with("tcp:")) {
    std::string_view rest = text.substr(4);
    u.kind = Uri::Kind::kTcp;
    std::string_view host, port;
    if (rest.starts_with("[")) {
      size_t close = rest.find(']');
      if (close == std::string_view::npos) return bad("missing ']' after IPv6 address");
      host = rest.substr(1, close - 1);
      if (close + 1 >= rest.size() || rest[close + 1] != ':') return bad("missing ':PORT'");
      port = rest.substr(close + 2);
    } else {
      size_t colon = rest.rfind(':');
      if (colon == std::string_view::npos) return bad("missing ':PORT'");
      host = rest.substr(0, colon);
      port = rest.substr(colon + 1);
      if (host.find(':') != std::string_view::npos) return bad("IPv6 addresses need brackets");
    }
    if (host.empty()) return bad("empty host");
    uint64_t p = 0;
    if (!ParseUnsigned(port, 65535, &p)) return bad("port must be a number 0-65535");
    u.host = std::string(host);
    u.port = static_cast<uint16_t>(p);
    return u;
  }
  if (text.starts_with("rdma:")) {  // host and port exactly as tcp:
    Result<Uri> t = ParseUri("tcp:" + std::string(text.substr(5)));
    if (!t.ok()) {
      const std::string& m = t.status().message();
      const size_t from = m.find("': ") + 3, to = m.find(" (expected");
      return bad(m.substr(from, to - from));
    }
    u = std::move(t).value();
    u.kind = Uri::Kind::kRdma;
    u.text = std::string(text);
    return u;
  }
  if (text.starts_with("unix:")) {
    u.kind = Uri::Kind::kUnix;
    u.path = std::string(text.substr(5));
    if (u.path.empty()) return bad("empty path");
    if (u.path.size() >= 108) return bad("unix socket path longer than 107 bytes");
    return u;
  }
  if (text.starts_with("fd:")) {
    u.kind = Uri::Kind::kFd;
    uint64_t fd = 0;
    if (!ParseUnsigned(text.substr(3), 1 << 30, &fd)) return bad("fd must be a non-negative number");
    u.fd = static_cast<int>(fd);
    return u;
  }
  if (text.starts_with("file:")) {
    u.kind = Uri::Kind::kFile;
    std::string_view rest = text.substr(5);
    size_t comma = rest.rfind(",offset=");
    if (comma != std::string_view::npos) {
      uint64_t off = 0;
      if (!ParseUnsigned(rest.substr(comma + 8), UINT64_MAX / 2, &off)) return bad("offset must be a number");
      u.offset = off;
      rest = rest.substr(0, comma);
    }
    u.path = std::string(rest);
    if (u.path.empty()) return bad("empty path");
    return u;
  }
  return bad("unknown scheme");
}

}  // namespace ferry
