// The --help texts and options of send/save and recv/load.
#include <CLI/CLI.hpp>

#include "cli/commands.h"

namespace ferry::cli {
namespace {

constexpr const char* kParamHelp =
    "QEMU migration parameter NAME=VALUE: downtime-limit (ms, default 300), max-bandwidth (bytes/s, 0 = "
    "unlimited), multifd-channels (1-255, default 2), zero-page-detection (none|legacy|multifd, default "
    "multifd), multifd-compression (none|zstd), multifd-zstd-level (0-20, default 1), "
    "multifd-flush-after-each-section (on|off, default off; on for QEMU 7.2), direct-io (on|off: page data through "
    "O_DIRECT; save reserves the file's page regions up front and frees long zero runs at the end; needs mapped-ram), "
    "no-progress-timeout (seconds any channel may move no byte before the migration fails, both sides, default 30, "
    "0 = forever), max-stalled-passes (passes without the remaining dirty memory shrinking before the source gives "
    "up, default 30, 0 = never), on-stall (fail|switchover: what it then does, default fail); with --tls-creds: "
    "tls-hostname (source: the name the destination's certificate must carry; default the URI's host) and tls-authz "
    "(destination: DN[;DN...], the client certificate subjects allowed, RFC 2253 as in 'CN=client,O=Org')";

constexpr const char* kTlsHelp =
    "TLS on the main stream and every multifd channel (the tls-creds parameter), credentials in QEMU's layout: "
    "x509:DIR[,verify-peer=on|off] (DIR holds ca-cert.pem, server-cert.pem + server-key.pem for recv, "
    "client-cert.pem + client-key.pem for send; verify-peer=on, the default, makes recv require a client "
    "certificate and send check the server's) or psk:DIR[,username=NAME] (DIR/keys.psk has username:hexkey lines; "
    "default username qemu). Not for file: URIs (save/load)";

}  // namespace

void AddSendOptions(CLI::App* s, SendOpts& send) {
  s->add_option("--ram", send.ram, "Size of the synthetic guest's RAM, e.g. 4G (default 1G)");
  s->add_option("--fill", send.fill, "Page mix of the synthetic guest: random=P,zero=P,text=P (percent)")
      ->capture_default_str();
  s->add_option("--seed", send.seed, "Seed of the fill and of the writer")->capture_default_str();
  s->add_option("--dirty-rate", send.dirty_rate,
                "Bytes of pages the guest dirties per second while migrating, e.g. 200M (0 = idle)")
      ->capture_default_str();
  s->add_option("--hot-set", send.hot_set, "Size of the region the guest writes to")->capture_default_str();
  s->add_option("--hot-set-offset", send.hot_set_offset,
                "Where in guest RAM the hot set starts, e.g. 256M (to write into memory the fill left "
                "untouched: first writes to never-populated pages must arrive)")
      ->capture_default_str();
  s->add_option("--layout", send.layout,
                "pages: each 4 KiB page picks its --fill kind; runs: each 2 MiB run does (zero runs stay "
                "unpopulated)")
      ->capture_default_str();
  s->add_option("--thp", send.thp,
                "on: transparent huge pages on the synthetic guest's RAM (MADV_HUGEPAGE, as QEMU does; with "
                "--layout pages they populate the zero pages too); off (default: cheaper to fill here)")
      ->capture_default_str();
  s->add_option("--memory-file", send.memory_file,
                "Migrate this file's contents (mmap MAP_SHARED, e.g. /dev/shm/vm.mem) instead of a synthetic guest");
  s->add_option("-p,--parameter", send.params, kParamHelp);
  s->add_option("-c,--capability", send.caps,
                "Capability NAME=on|off: verify (ferry's digest check, default on), multifd (pages over "
                "multifd-channels extra connections; over rdma: that many more queue pairs, ferry to ferry only; with "
                "mapped-ram: file threads), zero-copy-send (MSG_ZEROCOPY on the "
                "multifd channels; not with compression), mapped-ram (fixed page places in a file; file targets only), "
                "validate-uuid (put --uuid in the stream; the destination refuses another uuid), rdma-pin-all (rdma: "
                "only: ask the destination to register all its RAM at setup instead of 1 MiB chunks on demand)");
  s->add_option("--uuid", send.uuid,
                "The VM's uuid (QEMU's -uuid): put in every multifd channel's init packet and, with validate-uuid, "
                "in the stream (default all zeros)");
  s->add_option("--qemu-compat", send.qemu_compat,
                "MACHINE[,version=7.2|10.0]: the destination is QEMU (default: a current one, 10.0) with machine "
                "type MACHINE (e.g. none): one block 'ram', no ferry extensions; version=7.2 also sets that "
                "generation's multifd behaviour (flush after each section, zero pages in the main stream)");
  s->add_option("--connect-timeout", send.connect_timeout, "Seconds to keep retrying the connection")
      ->capture_default_str();
  s->add_option("--dirty-tracker", send.tracker, "best (default), uffd-wp, bitmap or all-once (guest must be idle)");
  s->add_flag("--force", send.force,
              "Allow a synthetic guest (--ram) larger than the available memory less a margin for ferry itself");
  s->add_flag("--json", send.json, "Print one JSON object (query-migrate fields) instead of the summary");
  s->add_option("--tls-creds", send.tls_creds, kTlsHelp);

}

void AddRecvOptions(CLI::App* r, RecvOpts& recv) {
  r->add_option("--ram", recv.ram, "Expected RAM size (default: as the stream announces)");
  r->add_option("--memory-file", recv.memory_file, "Write the received RAM into this file (created or truncated)");
  r->add_option("--qemu-compat", recv.qemu_compat,
                "MACHINE[,version=7.2|10.0]: the source is QEMU (default: a current one, 10.0) with machine type "
                "MACHINE (e.g. none): no verification section expected, QEMU's own device sections and commands "
                "accepted; version=7.2 also sets that generation's multifd behaviour");
  r->add_option("-p,--parameter", recv.params,
                std::string(kParamHelp) + ". The multifd ones must match the source's.");
  r->add_option("-c,--capability", recv.caps,
                "Capability NAME=on|off: verify (require the source's verification section; default on, off with "
                "--qemu-compat), multifd (accept multifd-channels extra connections, over rdma: queue pairs; must "
                "match the source), mapped-ram (the file has QEMU's mapped-ram layout; must match the source, which "
                "says so in the stream), validate-uuid (accepted; a uuid in the stream is always checked against "
                "--uuid)");
  r->add_option("--uuid", recv.uuid,
                "This destination's uuid (QEMU's -uuid): multifd channels announcing another one are refused, and so "
                "is a stream whose configuration carries another one (default all zeros, like QEMU without -uuid)");
  r->add_option("--thp", recv.thp,
                "on: transparent huge pages on the destination's RAM (MADV_HUGEPAGE, as QEMU does: one fault per "
                "2 MiB); off (default: 4 KiB faults cost less per byte on the VMs measured, see "
                "docs/design-notes.md); no effect with --memory-file")
      ->capture_default_str();
  r->add_flag("--prealloc", recv.prealloc,
              "Fault in the destination memory before the migration starts (with --ram: before listening)");
  r->add_option("--ready-file", recv.ready_file, "Once listening, write the bound URI (with the real port) here");
  r->add_option("--timeout", recv.timeout,
                "Seconds to wait for the source's connections (with multifd: all of them) and their first bytes")
      ->capture_default_str();
  r->add_flag("--json", recv.json, "Print one JSON object (query-migrate fields + verified) instead of the summary");
  r->add_option("--tls-creds", recv.tls_creds, kTlsHelp);
  r->add_option("--max-ram", recv.max_ram,
                "The most RAM the stream may make this side allocate, e.g. 64G; a stream announcing more is refused "
                "before anything is allocated (default: the available memory; with --memory-file the free space "
                "where the file goes, and the available memory too when that is tmpfs)");

}


}  // namespace ferry::cli
