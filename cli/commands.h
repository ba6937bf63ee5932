// ferry's subcommands: their options (and --help texts) and entry points.
//   send.cc: send / save    recv.cc: recv / load    tools.cc: demo / inspect
#pragma once

#include <cstdint>
#include <string>

#include "cli/common.h"

namespace CLI {
class App;
}

namespace ferry::cli {

struct SendOpts : CommonOpts {
  std::string fill = "random=50,zero=50";
  uint64_t seed = 1;
  std::string dirty_rate = "0";
  std::string hot_set = "64M";
  std::string hot_set_offset = "0";
  std::string layout = "pages";
  double connect_timeout = 30;
  std::string tracker = "best";
  bool force = false;  // --force: a synthetic guest larger than the available memory
};

struct RecvOpts : CommonOpts {
  std::string ready_file;
  bool prealloc = false;
  double timeout = 300;
  std::string max_ram;  // --max-ram
};

void AddSendOptions(CLI::App* s, SendOpts& send);
void AddRecvOptions(CLI::App* r, RecvOpts& recv);

int RunSend(const SendOpts& o);
int RunRecv(const RecvOpts& o);
int RunDemo(const std::string& self, const std::string& ram, const std::string& dirty_rate);
int RunInspect(const std::string& path, uint64_t offset, bool json);
std::string SelfPath(const char* argv0);

}  // namespace ferry::cli
