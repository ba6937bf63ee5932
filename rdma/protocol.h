// QEMU's RDMA migration protocol (migration/rdma.c, unchanged in substance
// from QEMU 7.2 to 10.0): the control messages exchanged over IB SEND/RECV,
// the capabilities in the connection's private data, and the structures the
// messages carry. Encoding and decoding only; no verbs here.
//
// Every integer on the wire is big-endian. A control message is a 16-byte
// header followed by `len` bytes of payload:
//
//   header  be32 len | be32 type | be32 repeat | u32 padding (ignored)
//
// and the payloads, by type:
//
//   READY, RAM BLOCKS REQUEST, REGISTER FINISHED, UNREGISTER FINISHED, ERROR: none
//   QEMU FILE           bytes of the main migration stream
//   RAM BLOCKS RESULT   DestBlock[]       (32 bytes each; repeat is 1)
//   COMPRESS            CompressEntry[]   (24 bytes each; repeat = count, 0 read as 1)
//   REGISTER REQUEST    RegisterEntry[]   (24 bytes each; repeat = count)
//   REGISTER RESULT     RegisterResult[]  (16 bytes each; repeat = count)
//   UNREGISTER REQUEST  RegisterEntry[]   (key is a chunk number)
//
//   Result<Message> m = DecodeMessage(received);          // checks the header
//   Result<std::vector<RegisterEntry>> r = DecodeRegisterEntries(*m);
//   std::vector<uint8_t> wire = EncodeRegisterResults(results).value();
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace ferry::rdma {

// The only protocol version QEMU has ever used.
inline constexpr uint32_t kProtocolVersion = 1;
// Capability flags in the private data; the destination answers with the
// subset it accepts.
inline constexpr uint32_t kCapPinAll = 0x01;  // register all guest RAM at setup
inline constexpr uint32_t kKnownCapabilities = kCapPinAll;
// ferry's own flags (ferry <-> ferry only, docs/rdma-multifd.md): QEMU drops
// flags it does not know from its answer, so a source asking for them learns
// that the peer does not take them.
//   kCapFerryMultifd: the main connection; `channels` multifd channels follow.
//   kCapFerryChannel: multifd channel number `channel` of `channels`.
inline constexpr uint32_t kCapFerryMultifd = 0x00010000;
inline constexpr uint32_t kCapFerryChannel = 0x00020000;
//   kCapFerryCounts: every REGISTER FINISHED carries be64 pages the sender
//   wrote by RDMA WRITE on this connection since its previous one (the
//   destination's page counts; it sees no WRITE), then be64 rounds: on the
//   main connection with multifd, the number of round markers every channel
//   has sent before it (the destination waits for them).
inline constexpr uint32_t kCapFerryCounts = 0x00040000;
inline constexpr uint32_t kFerryCapabilities = kCapFerryMultifd | kCapFerryChannel | kCapFerryCounts;
// With a ferry flag the private data goes on: be32 channel, be32 channels.
inline constexpr size_t kFerryCapabilitiesSize = 16;

// Dynamic registration works in 1 MiB chunks of each RAM block.
inline constexpr unsigned kChunkShift = 20;
inline constexpr uint64_t kChunkSize = uint64_t{1} << kChunkShift;

// A control message (header included) is never larger than this: it is the
// size of every receive buffer, on both sides.
inline constexpr size_t kControlMaxBuffer = 512 * 1024;
inline constexpr size_t kHeaderSize = 16;
inline constexpr size_t kMaxPayload = kControlMaxBuffer - kHeaderSize;
// A message carries at most this many entries of one type.
inline constexpr uint32_t kMaxCommandsPerMessage = 4096;

inline constexpr size_t kCapabilitiesSize = 8;
inline constexpr size_t kDestBlockSize = 32;
inline constexpr size_t kRegisterEntrySize = 24;
inline constexpr size_t kRegisterResultSize = 16;
inline constexpr size_t kCompressEntrySize = 24;

// Control message types, numbered as on the wire.
enum class ControlType : uint32_t {
  kNone = 0,  // never valid on the wire; "any type" when waiting
  kError = 1,
  kReady = 2,
  kQemuFile = 3,
  kRamBlocksRequest = 4,
  kRamBlocksResult = 5,
  kCompress = 6,
  kRegisterRequest = 7,
  kRegisterResult = 8,
  kRegisterFinished = 9,
  kUnregisterRequest = 10,
  kUnregisterFinished = 11,
};
inline constexpr uint32_t kMaxControlType = 11;

// "REGISTER REQUEST", as QEMU's messages name them; "type N" when unknown.
std::string ControlTypeName(ControlType type);

// Connection private data (rdma_connect from the source, rdma_accept's
// answer from the destination): be32 version, be32 flags.
struct Capabilities {
  uint32_t version = kProtocolVersion;
  uint32_t flags = 0;
  uint32_t channel = 0;   // with kCapFerryChannel
  uint32_t channels = 0;  // with kCapFerryMultifd or kCapFerryChannel
};
// 8 bytes, or 16 with a ferry flag (then channel and channels follow).
std::vector<uint8_t> EncodeConnectData(const Capabilities& caps);
std::array<uint8_t, kCapabilitiesSize> EncodeCapabilities(const Capabilities& caps);
// Refuses short private data and versions other than kProtocolVersion; with
// a ferry flag, private data shorter than 16 bytes.
// Unknown flags are kept; AcceptCapabilities drops them.
Result<Capabilities> DecodeCapabilities(std::span<const uint8_t> data);
// The destination's answer to a source's request: same version, only the
// flags both know about.
Capabilities AcceptCapabilities(const Capabilities& requested);

// The destination's description of one RAM block, sent in RAM BLOCKS RESULT
// in the order the source listed its blocks in the main stream.
struct DestBlock {
  uint64_t host_addr = 0;  // where the block is in the destination's memory
  uint64_t offset = 0;     // the block's offset in the destination's ram_addr_t space
  uint64_t length = 0;
  uint32_t rkey = 0;       // pin-all: the block's rkey; dynamic: 0
  friend bool operator==(const DestBlock&, const DestBlock&) = default;
};

// REGISTER REQUEST: register the chunk holding `key`, an address in the
// destination's ram_addr_t space (block offset + offset in block), and the
// `chunks` chunks after it (QEMU sends 0 for one chunk). UNREGISTER REQUEST:
// `key` is a chunk number.
struct RegisterEntry {
  uint64_t key = 0;
  uint32_t block_index = 0;
  uint64_t chunks = 0;
  friend bool operator==(const RegisterEntry&, const RegisterEntry&) = default;
};

// REGISTER RESULT: the rkey to WRITE with, and the registered memory's host address.
struct RegisterResult {
  uint32_t rkey = 0;
  uint64_t host_addr = 0;
  friend bool operator==(const RegisterResult&, const RegisterResult&) = default;
};

// COMPRESS: fill [offset, offset+length) of block `block_index` (offset in
// the destination's ram_addr_t space) with the byte `value`; QEMU only sends 0.
struct CompressEntry {
  uint32_t value = 0;
  uint32_t block_index = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  friend bool operator==(const CompressEntry&, const CompressEntry&) = default;
};

struct ControlHeader {
  uint32_t len = 0;
  ControlType type = ControlType::kNone;
  uint32_t repeat = 0;
};

// A decoded control message; payload points into the buffer given to DecodeMessage.
struct Message {
  ControlType type = ControlType::kNone;
  uint32_t repeat = 0;
  std::span<const uint8_t> payload;
};

// Writes a header into out[0..16).
void EncodeHeader(const ControlHeader& h, uint8_t* out);

// A whole message: header and payload. Refuses payloads over kMaxPayload and
// the type kNone.
Result<std::vector<uint8_t>> EncodeMessage(ControlType type, uint32_t repeat, std::span<const uint8_t> payload);
// Messages without payload: READY, RAM BLOCKS REQUEST, REGISTER FINISHED,
// UNREGISTER FINISHED, ERROR.
std::vector<uint8_t> EncodeEmpty(ControlType type);
Result<std::vector<uint8_t>> EncodeQemuFile(std::span<const uint8_t> data);
Result<std::vector<uint8_t>> EncodeRamBlocksResult(std::span<const DestBlock> blocks);
Result<std::vector<uint8_t>> EncodeRegisterRequest(std::span<const RegisterEntry> entries);
Result<std::vector<uint8_t>> EncodeUnregisterRequest(std::span<const RegisterEntry> entries);
Result<std::vector<uint8_t>> EncodeRegisterResults(std::span<const RegisterResult> results);
Result<std::vector<uint8_t>> EncodeCompress(std::span<const CompressEntry> entries);

// REGISTER FINISHED, with kCapFerryCounts: be64 pages written, be64 rounds.
std::vector<uint8_t> EncodeRegisterFinished(uint64_t written_pages, uint64_t rounds = 0);
// The fields of a REGISTER FINISHED (0 when it has none: QEMU's).
uint64_t DecodeWrittenPages(const Message& m);
uint64_t DecodeRounds(const Message& m);

// Checks the header of `received` (the bytes a RECV completion delivered):
// at least 16 bytes, a known type other than kNone, len within what arrived
// and within kMaxPayload. Bytes after len are ignored.
Result<Message> DecodeMessage(std::span<const uint8_t> received);
// Fails (kProtocol, naming both) unless m.type == want.
Status ExpectType(const Message& m, ControlType want);

// Typed payloads. Each checks the type, the entry count (1..4096 where QEMU
// sends `repeat` entries) and that the payload holds that many entries.
Result<std::vector<DestBlock>> DecodeRamBlocksResult(const Message& m);
Result<std::vector<RegisterEntry>> DecodeRegisterRequest(const Message& m);
Result<std::vector<RegisterEntry>> DecodeUnregisterRequest(const Message& m);
Result<std::vector<RegisterResult>> DecodeRegisterResults(const Message& m);
Result<std::vector<CompressEntry>> DecodeCompress(const Message& m);

}  // namespace ferry::rdma
