// rdma's settings: what it owns of -c, as QEMU names it (rdma/transport.cc
// applies them to a plan).
//
//   capability rdma-pin-all: the source asks the destination to register all
//   of its RAM at setup instead of 1 MiB chunks on demand (rdma: only)
#pragma once

#include <string_view>
#include <vector>

namespace ferry::rdma {

struct Settings {
  bool pin_all = false;  // capability "rdma-pin-all"

  static const std::vector<std::string_view>& CapabilityNames() {
    static const std::vector<std::string_view> names = {"rdma-pin-all"};
    return names;
  }
};

}  // namespace ferry::rdma
