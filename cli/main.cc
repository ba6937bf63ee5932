// ferry: the command-line tool. See `ferry --help` and docs/cli-contract.md.
// A thin shell over the library: flags become a MigrationSpec, the library
// plans and opens the migration (core/setup.h), the subcommands run it and
// print the result.
//   common.*: exit codes, messages, results, cancel on signal
//   options.cc: send/recv options and help      send.cc, recv.cc, tools.cc: the subcommands
#include <CLI/CLI.hpp>

#include "cli/commands.h"
#include "ferry/version.h"

int main(int argc, char** argv) {
  using namespace ferry::cli;
  BlockTermSignals();
  CLI::App app{
      "ferry: live migration of virtual-machine memory in QEMU's migration stream format.\n"
      "Moves a guest's RAM between two processes (or hosts) over tcp, unix sockets or descriptors,\n"
      "live while it is being written, and verifies the result page by page."};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("ferry ") + ferry::Version());

  SendOpts send;
  auto* s = app.add_subcommand("send", "Migrate a guest's memory to a destination (the source side).");
  s->add_option("URI", send.uri,
                "Where to send: tcp:HOST:PORT, tcp:[V6]:PORT, unix:PATH, fd:N, rdma:HOST:PORT (QEMU's RDMA "
                "protocol) or file:PATH[,offset=N]")
      ->required();
  AddSendOptions(s, send);
  SendOpts save;
  std::string save_file;
  auto* sv = app.add_subcommand("save", "Save a guest's memory into FILE (ferry send file:FILE); exit 0 once it "
                                        "is on stable storage.");
  sv->add_option("FILE", save_file, "The file to write (created or truncated)")->required();
  AddSendOptions(sv, save);

  RecvOpts recv;
  auto* r = app.add_subcommand("recv", "Receive one migration (the destination side); exit 0 only if it completed "
                                       "and verified.");
  r->add_option("URI", recv.uri,
                "Where to listen: tcp:HOST:PORT (port 0 picks one), unix:PATH, fd:N, rdma:HOST:PORT (QEMU's RDMA "
                "protocol; needs an RDMA device), or read file:PATH[,offset=N]")
      ->required();
  AddRecvOptions(r, recv);
  RecvOpts load;
  std::string load_file;
  auto* ld = app.add_subcommand("load", "Load a guest's memory saved in FILE (ferry recv file:FILE); exit 0 only "
                                        "if it is complete and verified.");
  ld->add_option("FILE", load_file, "The saved file")->required();
  AddRecvOptions(ld, load);

  std::string inspect_file;
  uint64_t inspect_offset = 0;
  bool inspect_json = false;
  auto* in = app.add_subcommand("inspect", "Walk a saved migration stream without loading it: header, sections, "
                                           "blocks, record counts, mapped-ram layout; exit 0 only if complete.");
  in->add_option("FILE", inspect_file, "The saved file")->required();
  in->add_option("--offset", inspect_offset, "Where the stream starts in the file")->capture_default_str();
  in->add_flag("--json", inspect_json, "Print one JSON object instead of text");

  std::string demo_ram = "1G", demo_rate = "256M";
  auto* d = app.add_subcommand("demo", "A live migration between two ferry processes on this machine, with its "
                                       "summary.");
  d->add_option("--ram", demo_ram, "Guest RAM size")->capture_default_str();
  d->add_option("--dirty-rate", demo_rate, "Guest dirty rate (bytes/s)")->capture_default_str();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  }
  if (*s) return RunSend(send);
  if (*r) return RunRecv(recv);
  if (*sv) {
    save.uri = "file:" + save_file;
    return RunSend(save);
  }
  if (*ld) {
    load.uri = "file:" + load_file;
    return RunRecv(load);
  }
  if (*in) return RunInspect(inspect_file, inspect_offset, inspect_json);
  if (*d) return RunDemo(SelfPath(argv[0]), demo_ram, demo_rate);
  return kExitUsage;
}
