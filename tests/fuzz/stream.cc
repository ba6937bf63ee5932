// Fuzz target: a whole migration stream into MigrationDestination over an
// in-memory channel — header, configuration section and its subsections,
// section framing and footers, command sections (return path, PING,
// postcopy and COLO refusals), RAM records, ferry's verification section,
// QEMU's timer and globalstate, EOF and the VM description.
//
// Input: the stream, as a source sends it (seeds: QEMU 7.2 and 10.0 streams
// of -M none, pc and q35 guests, ferry's own). Each input is loaded three
// ways: as a ferry destination (verification expected, verdict sent back),
// as a QEMU peer (--qemu-compat, QEMU 10.0 and 7.2 behaviour alternating
// with the input's length), and with the RAM block "ram" of 4 MiB given
// beforehand as `recv --ram 4M` does; the first two allocate the blocks the
// stream announces, at most 64 MiB in all. Reads come in pieces of a size
// that also depends on the length, to exercise the reader's buffering.
#include <cstdint>
#include <vector>

#include "core/migration.h"
#include "tests/fuzz/fuzz_util.h"
#include "tests/memory_channel.h"

namespace {

constexpr uint64_t kMemoryCap = 64ull << 20;

void Load(const std::vector<uint8_t>& in, ferry::DestinationOptions options, bool preset_block,
          size_t max_read) {
  using namespace ferry;
  RamBlockList blocks;
  fuzz::CappedAllocator memory(kMemoryCap);
  if (preset_block) {
    Result<uint8_t*> host = memory.Allocate("ram", 4ull << 20);
    if (!host.ok() || !blocks.Add("ram", *host, 4ull << 20).ok()) return;
  }
  MigrationDestination dest(std::move(options), blocks, preset_block ? nullptr : &memory);
  test::MemoryChannel channel(in, max_read);
  fuzz::Report(preset_block ? "with --ram" : options.qemu_devices ? "as a QEMU peer" : "as a ferry peer",
               dest.Run(channel));
  (void)dest.Stats();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ferry;
  const std::vector<uint8_t> in(data, data + size);
  const std::string machine = fuzz::AnnouncedMachine(data, size);
  const size_t piece = size % 3 == 0 ? SIZE_MAX : 1 + size % 4099;

  DestinationOptions ferry_peer;
  ferry_peer.machine = machine;
  ferry_peer.note = [](std::string_view) {};
  Load(in, ferry_peer, false, piece);

  DestinationOptions qemu_peer = ferry_peer;
  qemu_peer.expect_verify = false;
  qemu_peer.send_verdict = false;
  qemu_peer.qemu_devices = true;
  qemu_peer.qemu_version = size % 2 ? MigrationParams::QemuVersion::k7_2 : MigrationParams::QemuVersion::k10_0;
  Load(in, qemu_peer, false, piece);
  Load(in, qemu_peer, true, SIZE_MAX);
  return 0;
}
