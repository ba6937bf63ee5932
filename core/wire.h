// QEMU migration stream constants, in one place. All multi-byte values on the
// wire are big-endian. Layouts are drawn in docs/protocol.md.
#pragma once

#include <cstdint>

namespace ferry::wire {

// Stream header: be32 magic, be32 version.
inline constexpr uint32_t kMagic = 0x5145564d;  // "QEVM"
inline constexpr uint32_t kVersion = 3;
// The pre-2012 version 2 streams have the same magic; ferry refuses them.

// Section types: one byte in front of every section.
inline constexpr uint8_t kSectionEof = 0x00;
inline constexpr uint8_t kSectionStart = 0x01;  // be32 id, u8 len, idstr, be32 instance, be32 version
inline constexpr uint8_t kSectionPart = 0x02;   // be32 id
inline constexpr uint8_t kSectionEnd = 0x03;    // be32 id
inline constexpr uint8_t kSectionFull = 0x04;   // like START
inline constexpr uint8_t kSubsection = 0x05;    // inside device state: u8 len, name, be32 version
inline constexpr uint8_t kVmDescription = 0x06; // after EOF: be32 length, JSON
inline constexpr uint8_t kConfiguration = 0x07; // be32 length, machine name
inline constexpr uint8_t kCommand = 0x08;       // be16 command, be16 length, payload (below)
inline constexpr uint8_t kFooter = 0x7e;        // closes every section: be32 id

// Commands (QEMU_VM_COMMAND sections), QEMU 10's numbering. Length -1:
// variable.
enum class Command : uint16_t {
  kInvalid = 0,
  kOpenReturnPath = 1,      // len 0: the destination answers on the same connection
  kPing = 2,                // len 4: be32, answered by PONG on the return path
  kPostcopyAdvise = 3,      // postcopy (refused)
  kPostcopyListen = 4,
  kPostcopyRun = 5,
  kPostcopyRamDiscard = 6,
  kPackaged = 7,            // len 4: a postcopy package follows
  kEnableColo = 8,          // len 0: COLO (refused)
  kPostcopyResume = 9,
  kRecvBitmap = 10,
  kSwitchoverStart = 11,    // len 0: QEMU >= 10 has paused its guest (nothing to do)
};
inline constexpr uint16_t kCommandCount = 12;
struct CommandSpec {
  const char* name;  // nullptr: not a command (0 is INVALID)
  int length;        // payload bytes; -1: variable
};
inline constexpr CommandSpec kCommands[kCommandCount] = {
    {nullptr, -1},           {"OPEN_RETURN_PATH", 0}, {"PING", 4},        {"POSTCOPY_ADVISE", -1},
    {"POSTCOPY_LISTEN", 0},  {"POSTCOPY_RUN", 0},     {"POSTCOPY_RAM_DISCARD", -1}, {"PACKAGED", 4},
    {"ENABLE_COLO", 0},      {"POSTCOPY_RESUME", 0},  {"RECV_BITMAP", -1}, {"SWITCHOVER_START", 0},
};

// Return-path messages (destination -> source): be16 type, be16 length, data.
inline constexpr uint16_t kRpShut = 1;            // be32: 0 = loaded, 1 = failed
inline constexpr uint16_t kRpPong = 2;            // be32: the PING's value
inline constexpr uint16_t kRpSwitchoverAck = 7;   // len 0 (QEMU >= 8.1)

// "ram" section, version 4. A record is be64 (offset | flags); the offset is
// page aligned, so the flags live in the low 12 bits.
inline constexpr uint32_t kRamSectionVersion = 4;
inline constexpr uint64_t kRamFull = 0x01;         // obsolete since 2009: rejected
inline constexpr uint64_t kRamZero = 0x02;         // + u8 fill byte (always 0)
inline constexpr uint64_t kRamMemSize = 0x04;      // offset = total bytes; block list follows
inline constexpr uint64_t kRamPage = 0x08;         // + 4096 bytes of page
inline constexpr uint64_t kRamEos = 0x10;          // end of this section's RAM data
inline constexpr uint64_t kRamContinue = 0x20;     // same block as previous record: no name
inline constexpr uint64_t kRamXbzrle = 0x40;       // not supported by ferry
inline constexpr uint64_t kRamHook = 0x80;         // RDMA registration hook
inline constexpr uint64_t kRamCompressPage = 0x100;// removed from QEMU: rejected
inline constexpr uint64_t kRamMultifdFlush = 0x200;// multifd barrier (QEMU >= 8)
// ferry to ferry only (never sent with --qemu-compat; QEMU uses no flag above
// 0x200): + be64 page count n >= 1; the n pages from the offset on are zero.
// One record for a run of never-populated pages instead of n ZERO records.
inline constexpr uint64_t kRamZeroRun = 0x800;
// ferry to ferry only, likewise: + be64 page count n >= 1, then the n pages
// from the offset on, 4096 bytes each. One record for a run of data pages,
// so the destination reads it straight into guest memory in one go.
inline constexpr uint64_t kRamPageRun = 0x400;
inline constexpr uint64_t kRamFlagMask = 0xfff;

// ferry's own verification section (capability "verify"; never sent to QEMU).
inline constexpr const char* kVerifyIdstr = "ferry-verify";
inline constexpr uint32_t kVerifyVersion = 2;  // 1: every hash listed, still loaded

// Verdict the ferry destination sends back on the same connection after the
// stream when verification is on: be32 magic, be32 code (0 = verified), be32
// message length, message.
inline constexpr uint32_t kVerdictMagic = 0x46525944;  // "FRYD"
// The source's answer to a verdict of 0: be32 magic. Only after it does the
// destination call the migration completed — a source that gave up waiting
// (and resumed its guest) closes instead, so the guest never runs twice.
inline constexpr uint32_t kCommitMagic = 0x46525943;  // "FRYC"

}  // namespace ferry::wire
