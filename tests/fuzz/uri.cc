// Fuzz target: migration URI parsing (tcp:HOST:PORT, tcp:[V6]:PORT,
// unix:PATH, fd:N, file:PATH[,offset=N]).
//
// Input: the URI text. A parsed URI must give back the text it came from and
// hold the fields its kind promises.
#include <cstdint>
#include <string_view>

#include "core/uri.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ferry;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  Result<Uri> u = ParseUri(text);
  if (!u.ok()) {
    if (u.status().message().empty()) __builtin_trap();
    return 0;
  }
  if (u->ToString() != text) __builtin_trap();
  switch (u->kind) {
    case Uri::Kind::kTcp:
      if (u->host.empty()) __builtin_trap();
      break;
    case Uri::Kind::kUnix:
    case Uri::Kind::kFile:
      if (u->path.empty()) __builtin_trap();
      break;
    case Uri::Kind::kFd:
      if (u->fd < 0) __builtin_trap();
      break;
  }
  return 0;
}
