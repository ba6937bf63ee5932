// Migration URIs, parsed once into a tagged value. Parsing only: socket/
// (and later file/, rdma/) turn a Uri into a Channel.
//
//   tcp:HOST:PORT     IPv4 address or name, or [IPv6]
//   unix:PATH         a unix stream socket path
//   fd:N              an already open descriptor (socket, pipe or file)
//   file:PATH[,offset=N]  a file; the stream starts N bytes in (file/)
//   rdma:HOST:PORT    QEMU's RDMA protocol (rdma/); host and port as for tcp:
//
//   Result<Uri> u = ParseUri("tcp:[::1]:4444");  // u->host == "::1", u->port == 4444
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/status.h"

namespace ferry {

struct Uri {
  enum class Kind { kTcp, kUnix, kFd, kFile, kRdma };
  Kind kind = Kind::kTcp;
  std::string host;  // kTcp, kRdma: without brackets
  uint16_t port = 0; // kTcp, kRdma
  std::string path;  // kUnix, kFile
  uint64_t offset = 0;  // kFile: where the stream starts in the file
  int fd = -1;       // kFd
  std::string text;  // as the user wrote it

  std::string ToString() const { return text; }
};

Result<Uri> ParseUri(std::string_view text);

}  // namespace ferry
