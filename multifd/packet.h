// multifd wire format (QEMU's, magic 0x11223344, version 1). All integers
// big-endian.
//
// Every multifd connection opens with a 64-byte init packet:
//
//   be32 magic | be32 version | uuid[16] | u8 channel id | 7 unused | 4 x be64 unused
//
// then carries packets: a 320-byte header, always 128 (kPagesPerPacket) be64
// offset slots — normal pages first, then zero pages, unused slots zero; QEMU
// reads a fixed-size header+offsets block — then the normal pages' data (raw,
// or one compressed chunk of next_packet_size bytes):
//
//   be32 magic | be32 version | be32 flags | be32 pages_alloc | be32 normal_pages
//   be32 next_packet_size | be64 packet_num | be32 zero_pages | be32 unused
//   3 x be64 unused | char ramblock[256] (NUL padded)
//
// QEMU 7.2 has no zero_pages field (those 4 bytes are unused and 0).
//
// The offset array is 128 slots on the wire in every QEMU version, whatever
// pages_alloc says: QEMU 7.2 puts 128 there in every packet, QEMU 10 puts 0
// in its SYNC packets (which carry no pages) and still sends the 128 slots.
// pages_alloc only bounds normal_pages + zero_pages.
//
//   uint8_t buf[kInitPacketSize];
//   EncodeInitPacket({uuid, 3}, buf);
//   Result<InitPacket> p = DecodeInitPacket(buf);   // checks magic, version
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "../core/ram_block.h"
#include "../core/status.h"
#include "../core/uuid.h"

namespace ferry::multifd {

inline constexpr uint32_t kMagic = 0x11223344;
inline constexpr uint32_t kVersion = 1;
inline constexpr size_t kInitPacketSize = 64;
inline constexpr size_t kPacketHeaderSize = 320;
inline constexpr size_t kRamblockNameSize = 256;
// QEMU's MULTIFD_PACKET_SIZE: 512 KiB of 4 KiB pages per packet.
inline constexpr uint32_t kPagesPerPacket = 128;

inline constexpr uint32_t kFlagSync = 1u << 0;
inline constexpr uint32_t kCompressionShift = 1;
inline constexpr uint32_t kCompressionMask = 0x1fu << kCompressionShift;  // bits 1-5
inline constexpr uint32_t kCompressionNone = 0;
inline constexpr uint32_t kCompressionZlib = 1u << kCompressionShift;  // not supported by ferry
inline constexpr uint32_t kCompressionZstd = 2u << kCompressionShift;
// QEMU >= 10: the packet carries device state (VFIO), not RAM, and has
// another layout. ferry does not take it; DecodePacketHeader names it.
inline constexpr uint32_t kFlagDeviceState = 1u << 6;
inline constexpr uint32_t kKnownFlags = kFlagSync | kCompressionMask;

using Uuid = ferry::Uuid;

struct InitPacket {
  Uuid uuid{};
  uint8_t id = 0;
};

void EncodeInitPacket(const InitPacket& p, uint8_t out[kInitPacketSize]);
// Checks magic and version; kProtocol naming the bad value otherwise.
Result<InitPacket> DecodeInitPacket(const uint8_t in[kInitPacketSize]);

struct PacketHeader {
  uint32_t flags = 0;
  uint32_t pages_alloc = kPagesPerPacket;
  uint32_t normal_pages = 0;
  uint32_t next_packet_size = 0;  // bytes of page data after the offsets
  uint64_t packet_num = 0;
  uint32_t zero_pages = 0;
  std::string ramblock;  // empty for a packet without pages
};

void EncodePacketHeader(const PacketHeader& h, uint8_t out[kPacketHeaderSize]);
// Checks magic, version, unknown flag bits (device-state packets by name),
// pages_alloc <= kPagesPerPacket, normal + zero <= pages_alloc, a
// NUL-terminated ramblock name.
Result<PacketHeader> DecodePacketHeader(const uint8_t in[kPacketHeaderSize]);

// Checks one decoded packet against the destination before any memory is
// touched: `expected_compression` (kCompressionNone / kCompressionZstd; a
// packet without pages may carry 0 instead, as QEMU 7.2 sends), the block
// exists (returned), every offset page-aligned and inside it, and
// next_packet_size consistent (== normal*4096 uncompressed, <=
// `max_compressed` compressed). Errors name channel, packet and the field.
Result<RamBlock*> ValidatePacket(const PacketHeader& h, const std::vector<uint64_t>& offsets,
                                 RamBlockList& blocks, uint32_t expected_compression, size_t max_compressed,
                                 unsigned channel);

}  // namespace ferry::multifd
