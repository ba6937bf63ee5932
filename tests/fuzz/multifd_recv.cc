// Fuzz target: the destination's multifd receiver itself (its thread, the
// packet-number and offset checks, raw page runs and zstd straight into
// guest memory, zero pages, and the SYNC barrier against the loader's
// Sync()), on one channel.
//
// Input: one multifd connection's bytes from its first byte, as
// multifd_packet takes them; the init packet is skipped (the listener
// consumes it before the receiver starts). The receiver expects zstd if a
// packet names it. The loader side announces the blocks
// "ram" and "pc.ram" (4 MiB each) at once, then calls Sync() until it fails
// or the channel has ended, then Finish().
#include <cstdint>
#include <memory>
#include <vector>

#include "core/params.h"
#include "core/ram_block.h"
#include "multifd/multifd.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ferry;
  using namespace ferry::multifd;
  if (size < kInitPacketSize) return 0;
  const std::vector<uint8_t> in(data + kInitPacketSize, data + size);

  Settings params;
  params.enabled = true;
  params.channels = 1;
  if (fuzz::AnyZstdPacket(in.data(), in.size())) params.compression = Compression::kZstd;
  constexpr uint64_t kBlockBytes = 4ull << 20;
  fuzz::CappedAllocator memory(2 * kBlockBytes);
  RamBlockList blocks;
  for (const char* name : {"ram", "pc.ram"}) {
    Result<uint8_t*> host = memory.Allocate(name, kBlockBytes);
    if (!host.ok() || !blocks.Add(name, *host, kBlockBytes).ok()) return 0;
  }
  std::vector<std::unique_ptr<Channel>> channels;
  channels.push_back(std::make_unique<fuzz::InputChannel>(in, 1 + size % 8192));
  std::unique_ptr<PageReceiver> receiver = MakeMultifdReceiver(params, std::move(channels));
  if (!receiver->Start([](const Status&) {}).ok()) return 0;
  receiver->BlocksReady(blocks);
  // At most one barrier per packet the input can hold, and then some.
  const size_t max_syncs = in.size() / (kPacketHeaderSize + kPagesPerPacket * 8) + 2;
  for (size_t i = 0; i < max_syncs; ++i) {
    if (!receiver->Sync().ok()) break;
  }
  (void)receiver->Finish();
  MigrationStats stats;
  receiver->FillStats(stats);
  return 0;
}
