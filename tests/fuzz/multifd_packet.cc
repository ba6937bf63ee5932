// Fuzz target: what a multifd channel carries, decoded the way a
// destination's receiver does it, without threads — the 64-byte init
// packet, then packets: the 320-byte header, the 128 offset slots, the
// check of the packet against the destination's RAM blocks, and the page
// data (raw, or one zstd chunk per packet from a stream that lives across
// the channel's packets).
//
// Input: one multifd connection's bytes from its first byte (seeds: channels
// recorded from QEMU 7.2, QEMU 10.0 and ferry, raw and zstd). The
// destination has the blocks "ram" (QEMU -M none and ferry) and "pc.ram",
// 4 MiB each, and expects zstd if a packet names it, as a correctly
// configured destination would.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/ram_block.h"
#include "multifd/packet.h"
#include "multifd/zstd_codec.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ferry;
  using namespace ferry::multifd;
  if (size < kInitPacketSize) return 0;
  (void)DecodeInitPacket(data);
  size_t pos = kInitPacketSize;

  constexpr uint64_t kBlockBytes = 4ull << 20;
  fuzz::CappedAllocator memory(2 * kBlockBytes);
  RamBlockList blocks;
  for (const char* name : {"ram", "pc.ram"}) {
    Result<uint8_t*> host = memory.Allocate(name, kBlockBytes);
    if (!host.ok() || !blocks.Add(name, *host, kBlockBytes).ok()) return 0;
  }
  const uint32_t expected = fuzz::AnyZstdPacket(data + pos, size - pos) ? kCompressionZstd : kCompressionNone;
  ZstdDecompressor zstd;
  const size_t max_compressed = MaxCompressedSize(kPagesPerPacket);
  constexpr size_t kOffsetsBytes = kPagesPerPacket * 8;

  while (size - pos >= kPacketHeaderSize + kOffsetsBytes) {
    Result<PacketHeader> h = DecodePacketHeader(data + pos);
    if (!h.ok()) return 0;
    pos += kPacketHeaderSize;
    const uint64_t count = uint64_t{h->normal_pages} + h->zero_pages;
    std::vector<uint64_t> offsets;
    for (uint64_t k = 0; k < count && k < kPagesPerPacket; ++k) {
      uint64_t v = 0;
      for (int b = 0; b < 8; ++b) v = (v << 8) | data[pos + k * 8 + b];
      offsets.push_back(v);
    }
    pos += kOffsetsBytes;
    PacketHeader checked = *h;
    if (h->normal_pages == 0) checked.next_packet_size = 0;
    Result<RamBlock*> block = ValidatePacket(checked, offsets, blocks, expected, max_compressed, 0);
    if (!block.ok()) return 0;
    if (count == 0) continue;
    RamBlock* b = *block;
    const uint32_t normal = h->normal_pages;
    if (normal > 0 && (h->flags & kCompressionMask)) {
      if (h->next_packet_size > size - pos) return 0;
      std::vector<uint8_t*> dst;
      for (uint32_t k = 0; k < normal; ++k) dst.push_back(b->host + offsets[k]);
      if (!zstd.DecompressPages(data + pos, h->next_packet_size, dst.data(), normal).ok()) return 0;
      pos += h->next_packet_size;
    } else if (normal > 0) {
      if (uint64_t{normal} * kPageSize > size - pos) return 0;
      for (uint32_t k = 0; k < normal; ++k) std::memcpy(b->host + offsets[k], data + pos + k * kPageSize, kPageSize);
      pos += size_t{normal} * kPageSize;
    }
    for (uint64_t k = normal; k < count; ++k) std::memset(b->host + offsets[k], 0, kPageSize);
  }
  return 0;
}
