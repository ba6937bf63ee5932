// multifd init packet and packet header codec, plus the destination-side
// check of a decoded packet against the registered RAM blocks.
#include "core/endian.h"
#include "core/format.h"
#include "multifd/packet.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

namespace ferry::multifd {
namespace {

// Byte positions inside the init packet.
constexpr size_t kInitMagicAt = 0;
constexpr size_t kInitVersionAt = 4;
constexpr size_t kInitUuidAt = 8;
constexpr size_t kInitIdAt = 24;

// Byte positions inside the packet header.
constexpr size_t kHdrMagicAt = 0;
constexpr size_t kHdrVersionAt = 4;
constexpr size_t kHdrFlagsAt = 8;
constexpr size_t kHdrPagesAllocAt = 12;
constexpr size_t kHdrNormalPagesAt = 16;
constexpr size_t kHdrNextPacketSizeAt = 20;
constexpr size_t kHdrPacketNumAt = 24;
constexpr size_t kHdrZeroPagesAt = 32;
constexpr size_t kHdrRamblockAt = 64;
static_assert(kHdrRamblockAt + kRamblockNameSize == kPacketHeaderSize);
static_assert(kInitIdAt + 1 + 7 + 4 * 8 == kInitPacketSize);

// Checks the be32 magic and version shared by both packet kinds.
Status CheckMagicVersion(const uint8_t* in, size_t magic_at, size_t version_at, const char* what) {
  const uint32_t magic = LoadBe32(in + magic_at);
  if (magic != kMagic) {
    return Status::Protocol(std::string(what) + ": bad magic " + Hex(magic) + " (expected " + Hex(kMagic) + ")");
  }
  const uint32_t version = LoadBe32(in + version_at);
  if (version != kVersion) {
    return Status::Protocol(std::string(what) + ": version " + std::to_string(version) +
                            " is not supported (expected " + std::to_string(kVersion) + ")");
  }
  return Status::Ok();
}

// Compression ids as QEMU numbers them (the value in bits 1-5 of flags).
std::string CompressionName(uint32_t compression_bits) {
  struct Known {
    uint32_t id;
    const char* name;
  };
  static constexpr Known kKnown[] = {{0, "none"}, {1, "zlib"}, {2, "zstd"}, {4, "qpl"}, {8, "uadk"}, {16, "qatzip"}};
  const uint32_t id = compression_bits >> kCompressionShift;
  const char* name = "unknown";
  for (const Known& k : kKnown) {
    if (k.id == id) name = k.name;
  }
  return std::to_string(id) + " (" + name + ")";
}

}  // namespace

void EncodeInitPacket(const InitPacket& p, uint8_t out[kInitPacketSize]) {
  std::memset(out, 0, kInitPacketSize);
  StoreBe32(out + kInitMagicAt, kMagic);
  StoreBe32(out + kInitVersionAt, kVersion);
  std::memcpy(out + kInitUuidAt, p.uuid.data(), p.uuid.size());
  out[kInitIdAt] = p.id;
}

Result<InitPacket> DecodeInitPacket(const uint8_t in[kInitPacketSize]) {
  FERRY_RETURN_IF_ERROR(CheckMagicVersion(in, kInitMagicAt, kInitVersionAt, "multifd init packet"));
  InitPacket p;
  std::memcpy(p.uuid.data(), in + kInitUuidAt, p.uuid.size());
  p.id = in[kInitIdAt];
  return p;
}

void EncodePacketHeader(const PacketHeader& h, uint8_t out[kPacketHeaderSize]) {
  std::memset(out, 0, kPacketHeaderSize);
  StoreBe32(out + kHdrMagicAt, kMagic);
  StoreBe32(out + kHdrVersionAt, kVersion);
  StoreBe32(out + kHdrFlagsAt, h.flags);
  StoreBe32(out + kHdrPagesAllocAt, h.pages_alloc);
  StoreBe32(out + kHdrNormalPagesAt, h.normal_pages);
  StoreBe32(out + kHdrNextPacketSizeAt, h.next_packet_size);
  StoreBe64(out + kHdrPacketNumAt, h.packet_num);
  StoreBe32(out + kHdrZeroPagesAt, h.zero_pages);
  // At most 255 bytes of name, so the field always keeps a terminating NUL.
  const size_t n = std::min(h.ramblock.size(), kRamblockNameSize - 1);
  std::memcpy(out + kHdrRamblockAt, h.ramblock.data(), n);
}

Result<PacketHeader> DecodePacketHeader(const uint8_t in[kPacketHeaderSize]) {
  FERRY_RETURN_IF_ERROR(CheckMagicVersion(in, kHdrMagicAt, kHdrVersionAt, "multifd packet"));
  PacketHeader h;
  h.flags = LoadBe32(in + kHdrFlagsAt);
  h.pages_alloc = LoadBe32(in + kHdrPagesAllocAt);
  h.normal_pages = LoadBe32(in + kHdrNormalPagesAt);
  h.next_packet_size = LoadBe32(in + kHdrNextPacketSizeAt);
  h.packet_num = LoadBe64(in + kHdrPacketNumAt);
  h.zero_pages = LoadBe32(in + kHdrZeroPagesAt);

  if (h.flags & kFlagDeviceState) {
    return Status::Unsupported("multifd packet: device state packet (flag " + Hex(kFlagDeviceState) +
                               ", QEMU's multifd device state transfer, e.g. VFIO) is not supported");
  }
  if (h.flags & ~kKnownFlags) {
    return Status::Protocol("multifd packet: unknown flags " + Hex(h.flags & ~kKnownFlags));
  }
  if (h.pages_alloc > kPagesPerPacket) {
    return Status::Protocol("multifd packet: pages_alloc " + std::to_string(h.pages_alloc) + " exceeds " +
                            std::to_string(kPagesPerPacket));
  }
  // Sum in 64 bits: two huge be32 counts must not wrap into a small one.
  if (uint64_t{h.normal_pages} + h.zero_pages > h.pages_alloc) {
    return Status::Protocol("multifd packet: normal_pages " + std::to_string(h.normal_pages) + " + zero_pages " +
                            std::to_string(h.zero_pages) + " exceed pages_alloc " + std::to_string(h.pages_alloc));
  }
  const char* name = reinterpret_cast<const char*>(in + kHdrRamblockAt);
  const size_t len = strnlen(name, kRamblockNameSize);
  if (len == kRamblockNameSize) return Status::Protocol("multifd packet: ramblock name is not NUL-terminated");
  h.ramblock.assign(name, len);
  return h;
}

Result<RamBlock*> ValidatePacket(const PacketHeader& h, const std::vector<uint64_t>& offsets, RamBlockList& blocks,
                                 uint32_t expected_compression, size_t max_compressed, unsigned channel) {
  const std::string where =
      "multifd channel " + std::to_string(channel) + " packet " + std::to_string(h.packet_num) + ": ";
  const uint32_t normal = h.normal_pages;
  const uint64_t pages = uint64_t{h.normal_pages} + h.zero_pages;

  // Compression: the method must be one ferry decodes and the negotiated
  // one; a packet without normal pages may instead carry 0 (QEMU 7.2 does).
  const uint32_t compression = h.flags & kCompressionMask;
  if (compression != kCompressionNone && compression != kCompressionZstd) {
    return Status::Protocol(where + "compression method " + CompressionName(compression) + " is not supported");
  }
  if (compression != expected_compression && !(normal == 0 && compression == kCompressionNone)) {
    return Status::Protocol(where + "compression method " + CompressionName(compression) +
                            " does not match the negotiated " + CompressionName(expected_compression));
  }

  // Size of the page data that follows the offsets.
  if (normal == 0 || compression == kCompressionNone) {
    const uint64_t want = uint64_t{normal} * kPageSize;
    if (h.next_packet_size != want) {
      return Status::Protocol(where + "next_packet_size " + std::to_string(h.next_packet_size) + " does not match " +
                              std::to_string(normal) + " normal pages (expected " + std::to_string(want) + ")");
    }
  } else if (h.next_packet_size == 0 || h.next_packet_size > max_compressed) {
    return Status::Protocol(where + "compressed next_packet_size " + std::to_string(h.next_packet_size) + " for " +
                            std::to_string(normal) + " pages is outside 1.." + std::to_string(max_compressed));
  }

  if (pages == 0) return static_cast<RamBlock*>(nullptr);

  if (offsets.size() < pages) {
    return Status::Internal(where + "only " + std::to_string(offsets.size()) + " offsets given for " +
                            std::to_string(pages) + " pages");
  }
  RamBlock* block = blocks.Find(h.ramblock);
  if (block == nullptr) return Status::Protocol(where + "unknown RAM block '" + h.ramblock + "'");

  for (uint64_t i = 0; i < pages; ++i) {
    const uint64_t off = offsets[i];
    const bool is_normal = i < normal;
    const uint64_t index = is_normal ? i : i - normal;
    if (off & (kPageSize - 1)) {
      return Status::Protocol(where + (is_normal ? "normal" : "zero") + " page " + std::to_string(index) + ": offset " +
                              Hex(off) + " is not page-aligned");
    }
    // used_length >= kPageSize for every registered block; written so that a
    // huge offset cannot wrap around.
    if (block->used_length < kPageSize || off > block->used_length - kPageSize) {
      return Status::Protocol(where + (is_normal ? "normal" : "zero") + " page " + std::to_string(index) + ": offset " +
                              Hex(off) + " is outside RAM block '" + block->name + "' (" + Hex(block->used_length) +
                              " bytes)");
    }
  }
  return block;
}

}  // namespace ferry::multifd
