// Unit tests of the multifd codecs: init packet and packet header byte
// layouts and every rejected field, ValidatePacket against real RAM blocks,
// each zero-page variant against the scalar one, and the per-channel zstd
// stream across many packets plus damaged input.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/endian.h"
#include "core/ram_block.h"
#include "multifd/packet.h"
#include "multifd/zero_detect.h"
#include "multifd/zstd_codec.h"

namespace ferry::multifd {
namespace {

// ---------------------------------------------------------------- helpers

bool AllZero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i]) return false;
  }
  return true;
}

// Expects a failed status with this code and a message containing `text`.
void ExpectError(const Status& st, Code code, const std::string& text) {
  ASSERT_FALSE(st.ok()) << "expected an error containing: " << text;
  EXPECT_EQ(st.code(), code) << st.ToString();
  EXPECT_NE(st.message().find(text), std::string::npos) << "message: " << st.message() << "\nwanted: " << text;
}
template <typename T>
void ExpectError(const Result<T>& r, Code code, const std::string& text) {
  ASSERT_FALSE(r.ok()) << "expected an error containing: " << text;
  ExpectError(r.status(), code, text);
}

// Page-aligned anonymous memory.
struct TestRam {
  explicit TestRam(uint64_t size) : size(size) {
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(p, MAP_FAILED);
    mem = static_cast<uint8_t*>(p);
  }
  ~TestRam() { munmap(mem, size); }
  TestRam(const TestRam&) = delete;
  TestRam& operator=(const TestRam&) = delete;
  uint64_t size;
  uint8_t* mem;
};

void FillRandom(uint8_t* p, size_t n, std::mt19937_64& rng) {
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    std::memcpy(p + i, &v, std::min<size_t>(8, n - i));
  }
}

// Compressible, text-like content: words drawn from a small vocabulary.
void FillText(uint8_t* p, size_t n, std::mt19937_64& rng) {
  static const char* const kWords[] = {"guest", "memory", "page",   "dirty", "migration", "channel", "packet",
                                       "the",   "of",     "and",    "to",    "zstd",      "offset",  "block",
                                       "sync",  "round",  "source", "dest",  "bandwidth", "downtime"};
  size_t i = 0;
  while (i < n) {
    const char* w = kWords[rng() % std::size(kWords)];
    for (const char* c = w; *c && i < n; ++c) p[i++] = static_cast<uint8_t>(*c);
    if (i < n) p[i++] = (rng() % 12 == 0) ? '\n' : ' ';
  }
}

// ------------------------------------------------------------ init packet

TEST(InitPacket, RoundTripAndLayout) {
  InitPacket p;
  for (size_t i = 0; i < p.uuid.size(); ++i) p.uuid[i] = static_cast<uint8_t>(0xa0 + i);
  p.id = 7;
  uint8_t buf[kInitPacketSize];
  std::memset(buf, 0xee, sizeof buf);
  EncodeInitPacket(p, buf);

  EXPECT_EQ(LoadBe32(buf + 0), 0x11223344u);
  EXPECT_EQ(buf[0], 0x11);
  EXPECT_EQ(buf[3], 0x44);
  EXPECT_EQ(LoadBe32(buf + 4), 1u);
  EXPECT_EQ(std::memcmp(buf + 8, p.uuid.data(), 16), 0);
  EXPECT_EQ(buf[24], 7);
  EXPECT_TRUE(AllZero(buf + 25, kInitPacketSize - 25));

  Result<InitPacket> d = DecodeInitPacket(buf);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->uuid, p.uuid);
  EXPECT_EQ(d->id, 7);
}

TEST(InitPacket, MaxChannelId) {
  InitPacket p;
  p.id = 255;
  uint8_t buf[kInitPacketSize];
  EncodeInitPacket(p, buf);
  Result<InitPacket> d = DecodeInitPacket(buf);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->id, 255);
}

TEST(InitPacket, BadMagic) {
  uint8_t buf[kInitPacketSize];
  EncodeInitPacket({}, buf);
  StoreBe32(buf, 0x12345678);
  ExpectError(DecodeInitPacket(buf), Code::kProtocol,
              "multifd init packet: bad magic 0x12345678 (expected 0x11223344)");
}

TEST(InitPacket, BadVersion) {
  uint8_t buf[kInitPacketSize];
  EncodeInitPacket({}, buf);
  StoreBe32(buf + 4, 2);
  ExpectError(DecodeInitPacket(buf), Code::kProtocol, "multifd init packet: version 2 is not supported (expected 1)");
}

// ---------------------------------------------------------- packet header

PacketHeader SampleHeader() {
  PacketHeader h;
  h.flags = kFlagSync | kCompressionZstd;
  h.pages_alloc = 128;
  h.normal_pages = 100;
  h.next_packet_size = 0x01020304;
  h.packet_num = 0x0a0b0c0d0e0f1011ull;
  h.zero_pages = 28;
  h.ramblock = "pc.ram";
  return h;
}

TEST(PacketHeader, RoundTripAndLayout) {
  const PacketHeader h = SampleHeader();
  uint8_t buf[kPacketHeaderSize];
  std::memset(buf, 0xee, sizeof buf);
  EncodePacketHeader(h, buf);

  EXPECT_EQ(LoadBe32(buf + 0), kMagic);
  EXPECT_EQ(LoadBe32(buf + 4), kVersion);
  EXPECT_EQ(LoadBe32(buf + 8), kFlagSync | kCompressionZstd);
  EXPECT_EQ(buf[11], 0x05);  // SYNC | zstd (2 << 1)
  EXPECT_EQ(LoadBe32(buf + 12), 128u);
  EXPECT_EQ(LoadBe32(buf + 16), 100u);
  EXPECT_EQ(LoadBe32(buf + 20), 0x01020304u);
  EXPECT_EQ(buf[20], 0x01);
  EXPECT_EQ(buf[23], 0x04);
  EXPECT_EQ(LoadBe64(buf + 24), 0x0a0b0c0d0e0f1011ull);
  EXPECT_EQ(buf[24], 0x0a);
  EXPECT_EQ(buf[31], 0x11);
  EXPECT_EQ(LoadBe32(buf + 32), 28u);
  EXPECT_TRUE(AllZero(buf + 36, 64 - 36));  // be32 unused + 3 x be64 unused
  EXPECT_EQ(std::memcmp(buf + 64, "pc.ram", 6), 0);
  EXPECT_TRUE(AllZero(buf + 70, kPacketHeaderSize - 70));  // NUL padding

  Result<PacketHeader> d = DecodePacketHeader(buf);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->flags, h.flags);
  EXPECT_EQ(d->pages_alloc, h.pages_alloc);
  EXPECT_EQ(d->normal_pages, h.normal_pages);
  EXPECT_EQ(d->next_packet_size, h.next_packet_size);
  EXPECT_EQ(d->packet_num, h.packet_num);
  EXPECT_EQ(d->zero_pages, h.zero_pages);
  EXPECT_EQ(d->ramblock, "pc.ram");
}

TEST(PacketHeader, PagelessSyncWithEmptyName) {
  PacketHeader h;
  h.flags = kFlagSync;
  h.packet_num = 3;
  uint8_t buf[kPacketHeaderSize];
  EncodePacketHeader(h, buf);
  EXPECT_TRUE(AllZero(buf + 64, kRamblockNameSize));
  Result<PacketHeader> d = DecodePacketHeader(buf);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->flags, kFlagSync);
  EXPECT_EQ(d->pages_alloc, kPagesPerPacket);
  EXPECT_EQ(d->normal_pages, 0u);
  EXPECT_EQ(d->zero_pages, 0u);
  EXPECT_EQ(d->ramblock, "");
}

// QEMU 10's SYNC packet, byte for byte as captured from a QEMU 10.0.2
// source (3 channels, zstd): flags SYNC only (no compression bits),
// pages_alloc 0, no pages, no block name. It decodes as a pageless SYNC.
TEST(PacketHeader, Qemu10SyncPacketWithPagesAllocZero) {
  uint8_t buf[kPacketHeaderSize] = {};
  const uint8_t head[] = {0x11, 0x22, 0x33, 0x44,  // magic
                          0x00, 0x00, 0x00, 0x01,  // version
                          0x00, 0x00, 0x00, 0x01,  // flags: SYNC
                          0x00, 0x00, 0x00, 0x00,  // pages_alloc 0
                          0x00, 0x00, 0x00, 0x00,  // normal_pages
                          0x00, 0x00, 0x00, 0x00,  // next_packet_size
                          0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x04};  // packet_num 260
  std::memcpy(buf, head, sizeof head);
  Result<PacketHeader> d = DecodePacketHeader(buf);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->flags, kFlagSync);
  EXPECT_EQ(d->pages_alloc, 0u);
  EXPECT_EQ(d->normal_pages, 0u);
  EXPECT_EQ(d->zero_pages, 0u);
  EXPECT_EQ(d->next_packet_size, 0u);
  EXPECT_EQ(d->packet_num, 260u);
  EXPECT_EQ(d->ramblock, "");

  // pages_alloc 0 still bounds the page counts.
  StoreBe32(buf + 16, 1);
  ExpectError(DecodePacketHeader(buf), Code::kProtocol, "normal_pages 1 + zero_pages 0 exceed pages_alloc 0");
  StoreBe32(buf + 16, 0);
  StoreBe32(buf + 32, 1);
  ExpectError(DecodePacketHeader(buf), Code::kProtocol, "normal_pages 0 + zero_pages 1 exceed pages_alloc 0");
}

TEST(PacketHeader, LongestNameAndTruncation) {
  PacketHeader h = SampleHeader();
  h.ramblock = std::string(255, 'n');
  uint8_t buf[kPacketHeaderSize];
  EncodePacketHeader(h, buf);
  EXPECT_EQ(buf[64 + 254], 'n');
  EXPECT_EQ(buf[64 + 255], 0);
  Result<PacketHeader> d = DecodePacketHeader(buf);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->ramblock, h.ramblock);

  // A longer name is cut to 255 bytes so the field stays terminated.
  h.ramblock = std::string(300, 'm');
  EncodePacketHeader(h, buf);
  d = DecodePacketHeader(buf);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->ramblock, std::string(255, 'm'));
}

TEST(PacketHeader, FullPacketAccepted) {
  PacketHeader h = SampleHeader();
  h.normal_pages = 64;
  h.zero_pages = 64;
  uint8_t buf[kPacketHeaderSize];
  EncodePacketHeader(h, buf);
  EXPECT_TRUE(DecodePacketHeader(buf).ok());
}

class PacketHeaderError : public ::testing::Test {
 protected:
  void SetUp() override { EncodePacketHeader(SampleHeader(), buf); }
  uint8_t buf[kPacketHeaderSize];
};

TEST_F(PacketHeaderError, BadMagic) {
  StoreBe32(buf, 0x12345678);
  ExpectError(DecodePacketHeader(buf), Code::kProtocol, "multifd packet: bad magic 0x12345678 (expected 0x11223344)");
}

TEST_F(PacketHeaderError, BadVersion) {
  StoreBe32(buf + 4, 2);
  ExpectError(DecodePacketHeader(buf), Code::kProtocol, "multifd packet: version 2 is not supported (expected 1)");
}

TEST_F(PacketHeaderError, UnknownFlags) {
  StoreBe32(buf + 8, 0x400 | kFlagSync);
  ExpectError(DecodePacketHeader(buf), Code::kProtocol, "multifd packet: unknown flags 0x400");
  StoreBe32(buf + 8, 0x80000000u);
  ExpectError(DecodePacketHeader(buf), Code::kProtocol, "unknown flags 0x80000000");
}

// QEMU >= 10 can send device state (VFIO) over multifd: a packet of
// another kind, named in the error rather than reported as unknown bits.
TEST_F(PacketHeaderError, DeviceStatePacket) {
  EXPECT_EQ(kFlagDeviceState, 0x40u);
  StoreBe32(buf + 8, kFlagDeviceState);
  ExpectError(DecodePacketHeader(buf), Code::kUnsupported, "multifd packet: device state packet (flag 0x40");
  StoreBe32(buf + 8, kFlagDeviceState | kFlagSync);
  ExpectError(DecodePacketHeader(buf), Code::kUnsupported, "device state packet");
}

TEST_F(PacketHeaderError, PagesAllocTooLarge) {
  StoreBe32(buf + 12, 4096);
  ExpectError(DecodePacketHeader(buf), Code::kProtocol, "multifd packet: pages_alloc 4096 exceeds 128");
  StoreBe32(buf + 12, 129);
  ExpectError(DecodePacketHeader(buf), Code::kProtocol, "pages_alloc 129 exceeds 128");
}

TEST_F(PacketHeaderError, TooManyPages) {
  StoreBe32(buf + 16, 100);
  StoreBe32(buf + 32, 100);
  ExpectError(DecodePacketHeader(buf), Code::kProtocol,
              "multifd packet: normal_pages 100 + zero_pages 100 exceed pages_alloc 128");
}

TEST_F(PacketHeaderError, PageCountsDoNotWrap) {
  StoreBe32(buf + 16, 0xffffffffu);
  StoreBe32(buf + 32, 1);
  ExpectError(DecodePacketHeader(buf), Code::kProtocol, "normal_pages 4294967295 + zero_pages 1 exceed pages_alloc");
  StoreBe32(buf + 16, 1);
  StoreBe32(buf + 32, 0xffffffffu);
  ExpectError(DecodePacketHeader(buf), Code::kProtocol, "exceed pages_alloc 128");
}

TEST_F(PacketHeaderError, NameNotTerminated) {
  std::memset(buf + 64, 'a', kRamblockNameSize);
  ExpectError(DecodePacketHeader(buf), Code::kProtocol, "multifd packet: ramblock name is not NUL-terminated");
}

// --------------------------------------------------------- ValidatePacket

class Validate : public ::testing::Test {
 protected:
  static constexpr uint64_t kRamPages = 16;
  Validate() : ram(kRamPages * kPageSize), vga(4 * kPageSize) {
    EXPECT_TRUE(blocks.Add("pc.ram", ram.mem, ram.size).ok());
    EXPECT_TRUE(blocks.Add("vga.vram", vga.mem, vga.size).ok());
  }

  // An uncompressed packet of `normal` + `zero` pages on pc.ram, offsets
  // pages 0, 1, 2, ...
  PacketHeader Packet(uint32_t normal, uint32_t zero, uint32_t compression = kCompressionNone) {
    PacketHeader h;
    h.flags = compression;
    h.normal_pages = normal;
    h.zero_pages = zero;
    h.next_packet_size = compression == kCompressionNone ? normal * 4096 : 1000;
    h.packet_num = 17;
    h.ramblock = "pc.ram";
    offsets.clear();
    for (uint32_t i = 0; i < normal + zero; ++i) offsets.push_back(i * kPageSize);
    return h;
  }

  Result<RamBlock*> Check(const PacketHeader& h, uint32_t expected = kCompressionNone, unsigned channel = 2) {
    return ValidatePacket(h, offsets, blocks, expected, MaxCompressedSize(kPagesPerPacket), channel);
  }

  TestRam ram, vga;
  RamBlockList blocks;
  std::vector<uint64_t> offsets;
};

TEST_F(Validate, GoodPacketReturnsItsBlock) {
  PacketHeader h = Packet(3, 2);
  Result<RamBlock*> r = Check(h);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, blocks.Find("pc.ram"));

  h.ramblock = "vga.vram";
  offsets = {3 * kPageSize, 0, 1 * kPageSize, 2 * kPageSize, 3 * kPageSize};
  r = Check(h);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, blocks.Find("vga.vram"));
}

TEST_F(Validate, OffsetsBeyondPageCountAreIgnored) {
  // A receiver may pass all pages_alloc offsets as read off the wire.
  PacketHeader h = Packet(1, 1);
  offsets.resize(kPagesPerPacket, ~0ull);
  EXPECT_TRUE(Check(h).ok());
}

TEST_F(Validate, LastPageOfBlockIsInside) {
  PacketHeader h = Packet(1, 1);
  offsets = {(kRamPages - 1) * kPageSize, (kRamPages - 1) * kPageSize};
  EXPECT_TRUE(Check(h).ok());
}

TEST_F(Validate, UnknownBlock) {
  PacketHeader h = Packet(1, 0);
  h.ramblock = "x";
  ExpectError(Check(h), Code::kProtocol, "multifd channel 2 packet 17: unknown RAM block 'x'");
  h.ramblock = "";
  ExpectError(Check(h), Code::kProtocol, "unknown RAM block ''");
}

TEST_F(Validate, ZeroOnlyPacketNeedsABlock) {
  PacketHeader h = Packet(0, 4);
  h.ramblock = "nope";
  ExpectError(Check(h), Code::kProtocol, "unknown RAM block 'nope'");
}

TEST_F(Validate, OffsetOutOfRange) {
  PacketHeader h = Packet(2, 0);
  offsets[1] = kRamPages * kPageSize;  // one past the end
  ExpectError(
      Check(h), Code::kProtocol,
      "multifd channel 2 packet 17: normal page 1: offset 0x10000 is outside RAM block 'pc.ram' (0x10000 bytes)");
  h = Packet(1, 2);
  offsets[2] = 0x7fffffff000ull;
  ExpectError(Check(h), Code::kProtocol, "zero page 1: offset 0x7fffffff000 is outside RAM block 'pc.ram'");
}

TEST_F(Validate, HugeOffsetDoesNotWrap) {
  PacketHeader h = Packet(1, 0);
  offsets[0] = 0xfffffffffffff000ull;  // + 4096 wraps to 0
  ExpectError(Check(h), Code::kProtocol, "offset 0xfffffffffffff000 is outside RAM block 'pc.ram'");
}

TEST_F(Validate, MisalignedOffset) {
  PacketHeader h = Packet(2, 1);
  offsets[1] = kPageSize + 8;
  ExpectError(Check(h), Code::kProtocol,
              "multifd channel 2 packet 17: normal page 1: offset 0x1008 is not page-aligned");
  h = Packet(2, 1);
  offsets[2] = 1;
  ExpectError(Check(h), Code::kProtocol, "zero page 0: offset 0x1 is not page-aligned");
}

TEST_F(Validate, CompressionMustMatch) {
  // Negotiated zstd, packet uncompressed.
  ExpectError(Check(Packet(1, 0, kCompressionNone), kCompressionZstd), Code::kProtocol,
              "compression method 0 (none) does not match the negotiated 2 (zstd)");
  // Negotiated none, packet zstd.
  ExpectError(Check(Packet(1, 0, kCompressionZstd), kCompressionNone), Code::kProtocol,
              "compression method 2 (zstd) does not match the negotiated 0 (none)");
  // Matching zstd.
  EXPECT_TRUE(Check(Packet(1, 0, kCompressionZstd), kCompressionZstd).ok());
}

TEST_F(Validate, UnsupportedCompression) {
  ExpectError(Check(Packet(1, 0, kCompressionZlib), kCompressionZstd), Code::kProtocol,
              "multifd channel 2 packet 17: compression method 1 (zlib) is not supported");
  ExpectError(Check(Packet(0, 0, kCompressionZlib), kCompressionNone), Code::kProtocol,
              "compression method 1 (zlib) is not supported");
  ExpectError(Check(Packet(1, 0, 4u << kCompressionShift), kCompressionNone), Code::kProtocol,
              "compression method 4 (qpl) is not supported");
}

TEST_F(Validate, PagelessPackets) {
  // A SYNC without pages: no block needed; compression may be 0 (QEMU 7.2)
  // or the negotiated method, never another one.
  PacketHeader h = Packet(0, 0);
  h.flags = kFlagSync;
  h.ramblock = "";
  h.next_packet_size = 0;
  Result<RamBlock*> r = Check(h, kCompressionZstd);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, nullptr);
  r = Check(h, kCompressionNone);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, nullptr);

  h.flags = kFlagSync | kCompressionZstd;
  r = Check(h, kCompressionZstd);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, nullptr);
  ExpectError(Check(h, kCompressionNone), Code::kProtocol, "does not match the negotiated 0 (none)");

  // Even a bogus name is fine when there are no pages.
  h.ramblock = "whatever";
  EXPECT_TRUE(Check(h, kCompressionZstd).ok());

  // But it still carries no data.
  h.next_packet_size = 4096;
  ExpectError(Check(h, kCompressionZstd), Code::kProtocol, "next_packet_size 4096 does not match 0 normal pages");
}

TEST_F(Validate, ZeroOnlyPacketWithoutCompressionBits) {
  PacketHeader h = Packet(0, 3, kCompressionNone);
  Result<RamBlock*> r = Check(h, kCompressionZstd);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, blocks.Find("pc.ram"));
}

TEST_F(Validate, UncompressedSizeMustMatch) {
  PacketHeader h = Packet(3, 1);
  h.next_packet_size = 3 * 4096 - 1;
  ExpectError(Check(h), Code::kProtocol,
              "multifd channel 2 packet 17: next_packet_size 12287 does not match 3 normal pages (expected 12288)");
  h.next_packet_size = 4 * 4096;
  ExpectError(Check(h), Code::kProtocol, "next_packet_size 16384 does not match 3 normal pages");
}

TEST_F(Validate, CompressedSizeBounds) {
  PacketHeader h = Packet(2, 0, kCompressionZstd);
  h.next_packet_size = 0;
  ExpectError(Check(h, kCompressionZstd), Code::kProtocol, "compressed next_packet_size 0 for 2 pages is outside 1..");
  h.next_packet_size = static_cast<uint32_t>(MaxCompressedSize(kPagesPerPacket) + 1);
  ExpectError(Check(h, kCompressionZstd), Code::kProtocol, "compressed next_packet_size 1048577");
  h.next_packet_size = static_cast<uint32_t>(MaxCompressedSize(kPagesPerPacket));
  EXPECT_TRUE(Check(h, kCompressionZstd).ok());
  h.next_packet_size = 1;
  EXPECT_TRUE(Check(h, kCompressionZstd).ok());
}

TEST_F(Validate, ErrorsNameTheChannel) {
  PacketHeader h = Packet(1, 0);
  h.ramblock = "x";
  h.packet_num = 123456789012ull;
  ExpectError(ValidatePacket(h, offsets, blocks, kCompressionNone, MaxCompressedSize(128), 7), Code::kProtocol,
              "multifd channel 7 packet 123456789012: unknown RAM block 'x'");
}

TEST_F(Validate, TooFewOffsetsIsACallerBug) {
  PacketHeader h = Packet(3, 0);
  offsets.pop_back();
  ExpectError(Check(h), Code::kInternal, "only 2 offsets given for 3 pages");
}

// ----------------------------------------------------------- zero checks

TEST(ZeroCheck, VariantsListed) {
  std::vector<ZeroCheck> all = AvailableZeroChecks();
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.back().name, "scalar");
  EXPECT_EQ(BestZeroCheck().name, all.front().name);
  EXPECT_EQ(BestZeroCheck().is_zero, all.front().is_zero);
  for (const ZeroCheck& z : all) {
    EXPECT_TRUE(z.name == "avx512bw" || z.name == "avx2" || z.name == "sse2" || z.name == "scalar") << z.name;
    ASSERT_NE(z.is_zero, nullptr);
  }
  std::string names;
  for (const ZeroCheck& z : all) names += std::string(z.name) + " ";
  std::printf("zero-check variants on this CPU: %s(best: %s)\n", names.c_str(),
              std::string(BestZeroCheck().name).c_str());
}

const ZeroCheck& Scalar() {
  static const ZeroCheck s = AvailableZeroChecks().back();
  return s;
}

class ZeroCheckVariant : public ::testing::TestWithParam<ZeroCheck> {};

TEST_P(ZeroCheckVariant, ZeroPage) {
  // Exactly 4096 bytes on the heap: a read past the page trips ASan.
  std::vector<uint8_t> page(kPageSize, 0);
  EXPECT_TRUE(GetParam().is_zero(page.data()));
  EXPECT_TRUE(Scalar().is_zero(page.data()));
}

TEST_P(ZeroCheckVariant, SingleByteAtChosenPositions) {
  std::vector<uint8_t> page(kPageSize, 0);
  for (size_t pos : {0, 1, 63, 64, 255, 256, 257, 511, 1000, 2048, 4031, 4032, 4095}) {
    for (uint8_t v : {uint8_t{1}, uint8_t{0x80}, uint8_t{0xff}}) {
      page[pos] = v;
      EXPECT_FALSE(GetParam().is_zero(page.data())) << "byte " << pos << " = " << int(v);
      EXPECT_EQ(GetParam().is_zero(page.data()), Scalar().is_zero(page.data()));
      page[pos] = 0;
    }
  }
  EXPECT_TRUE(GetParam().is_zero(page.data()));
}

TEST_P(ZeroCheckVariant, SingleByteAtEveryPosition) {
  std::vector<uint8_t> page(kPageSize, 0);
  for (size_t pos = 0; pos < kPageSize; ++pos) {
    page[pos] = 0x10;
    ASSERT_FALSE(GetParam().is_zero(page.data())) << "byte " << pos;
    page[pos] = 0;
  }
}

TEST_P(ZeroCheckVariant, RandomPagesAgreeWithScalar) {
  std::mt19937_64 rng(42);
  std::vector<uint8_t> page(kPageSize);
  for (int i = 0; i < 200; ++i) {
    FillRandom(page.data(), page.size(), rng);
    // Sparse pages: zero most of it, keep a random tail or a few bytes.
    if (i % 3 == 1) std::memset(page.data(), 0, rng() % kPageSize);
    if (i % 3 == 2) {
      std::vector<uint8_t> sparse(kPageSize, 0);
      const int nset = static_cast<int>(rng() % 3);
      for (int k = 0; k < nset; ++k) sparse[rng() % kPageSize] = page[k];
      page = sparse;
    }
    EXPECT_EQ(GetParam().is_zero(page.data()), Scalar().is_zero(page.data())) << "page " << i;
  }
}

TEST_P(ZeroCheckVariant, UnalignedPointers) {
  for (size_t shift : {1, 3, 7, 8, 15, 16, 31, 33, 63}) {
    // The page is the last 4096 bytes of the buffer: over-reads trip ASan.
    std::vector<uint8_t> buf(shift + kPageSize, 0);
    uint8_t* page = buf.data() + shift;
    buf[shift - 1] = 0xff;  // just before the page: must not be looked at
    EXPECT_TRUE(GetParam().is_zero(page)) << "shift " << shift;
    for (size_t pos : {0, 1, 63, 64, 255, 256, 4095}) {
      page[pos] = 2;
      EXPECT_FALSE(GetParam().is_zero(page)) << "shift " << shift << " byte " << pos;
      EXPECT_FALSE(Scalar().is_zero(page));
      page[pos] = 0;
    }
  }
  // Bytes right after the page don't count either.
  std::vector<uint8_t> buf(kPageSize + 64, 0);
  buf[kPageSize + 1] = 1;
  EXPECT_TRUE(GetParam().is_zero(buf.data() + 1));
}

INSTANTIATE_TEST_SUITE_P(All, ZeroCheckVariant, ::testing::ValuesIn(AvailableZeroChecks()),
                         [](const ::testing::TestParamInfo<ZeroCheck>& info) { return std::string(info.param.name); });

// ------------------------------------------------------------------ zstd

// Pages of mixed content; views onto them as the codec takes them.
struct Pages {
  explicit Pages(uint32_t n) : data(size_t{n} * kPageSize), ptrs(n) {
    for (uint32_t i = 0; i < n; ++i) ptrs[i] = data.data() + size_t{i} * kPageSize;
  }
  uint32_t count() const { return static_cast<uint32_t>(ptrs.size()); }
  std::vector<uint8_t> data;
  std::vector<uint8_t*> ptrs;
};

enum class Fill { kText, kRandom, kZero, kMixed };

Pages MakePages(uint32_t n, Fill fill, std::mt19937_64& rng) {
  Pages p(n);
  for (uint32_t i = 0; i < n; ++i) {
    Fill f = fill;
    if (f == Fill::kMixed) f = static_cast<Fill>(rng() % 3);
    switch (f) {
      case Fill::kText:
        FillText(p.ptrs[i], kPageSize, rng);
        break;
      case Fill::kRandom:
        FillRandom(p.ptrs[i], kPageSize, rng);
        break;
      default:
        break;  // zero
    }
  }
  return p;
}

struct Compressed {
  std::vector<uint8_t> bytes;
};

Compressed Compress(ZstdCompressor& c, const Pages& p) {
  Compressed out;
  out.bytes.resize(MaxCompressedSize(p.count()));
  Result<size_t> n = c.CompressPages(p.ptrs.data(), p.count(), out.bytes.data(), out.bytes.size());
  EXPECT_TRUE(n.ok()) << n.status().ToString();
  out.bytes.resize(n.ok() ? *n : 0);
  return out;
}

TEST(Zstd, MaxCompressedSize) {
  EXPECT_EQ(MaxCompressedSize(128), 2u * 128 * 4096);
  EXPECT_EQ(MaxCompressedSize(1), 8192u);
  EXPECT_EQ(MaxCompressedSize(0), 0u);
}

TEST(Zstd, ManyPacketsOnOnePersistentStream) {
  std::mt19937_64 rng(7);
  ZstdCompressor comp(1);
  ZstdDecompressor decomp;
  std::vector<uint32_t> sizes = {1, 128, 2, 127, 3, 64, 128, 1};
  for (int i = 0; i < 40; ++i) sizes.push_back(1 + rng() % 128);
  size_t raw = 0, wire = 0;
  for (size_t k = 0; k < sizes.size(); ++k) {
    const Pages in = MakePages(sizes[k], Fill::kMixed, rng);
    const Compressed c = Compress(comp, in);
    ASSERT_GT(c.bytes.size(), 0u);
    ASSERT_LE(c.bytes.size(), MaxCompressedSize(in.count()));
    raw += in.data.size();
    wire += c.bytes.size();

    Pages out(in.count());
    std::memset(out.data.data(), 0xa5, out.data.size());
    Status st = decomp.DecompressPages(c.bytes.data(), c.bytes.size(), out.ptrs.data(), out.count());
    ASSERT_TRUE(st.ok()) << "packet " << k << ": " << st.ToString();
    ASSERT_EQ(in.data, out.data) << "packet " << k;
  }
  EXPECT_LT(wire, raw);
}

TEST(Zstd, StreamStateCarriesAcrossPackets) {
  std::mt19937_64 rng(11);
  ZstdCompressor comp(1);
  ZstdDecompressor decomp;
  // Random pages do not compress on their own; sent again in the next
  // packet they are matches into the stream's history.
  const Pages first = MakePages(32, Fill::kRandom, rng);
  const Compressed a = Compress(comp, first);
  const Compressed b = Compress(comp, first);
  EXPECT_GT(a.bytes.size(), first.data.size() * 99 / 100);
  EXPECT_LT(b.bytes.size(), a.bytes.size() / 20);

  Pages out(32);
  ASSERT_TRUE(decomp.DecompressPages(a.bytes.data(), a.bytes.size(), out.ptrs.data(), 32).ok());
  EXPECT_EQ(out.data, first.data);
  std::memset(out.data.data(), 0, out.data.size());
  Status st = decomp.DecompressPages(b.bytes.data(), b.bytes.size(), out.ptrs.data(), 32);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(out.data, first.data);

  // The second packet alone is not a stream a fresh decompressor can start on.
  ZstdDecompressor fresh;
  ExpectError(fresh.DecompressPages(b.bytes.data(), b.bytes.size(), out.ptrs.data(), 32), Code::kProtocol,
              "multifd zstd: corrupt data: ");
}

TEST(Zstd, TextCompresses) {
  std::mt19937_64 rng(3);
  ZstdCompressor comp(1);
  const Pages text = MakePages(128, Fill::kText, rng);
  const Compressed c = Compress(comp, text);
  EXPECT_LT(c.bytes.size(), text.data.size() / 2);
  const Pages zero = MakePages(128, Fill::kZero, rng);
  const Compressed z = Compress(comp, zero);
  EXPECT_LT(z.bytes.size(), 1024u);
  std::printf("128 text pages: %zu -> %zu bytes; 128 zero pages: -> %zu bytes\n", text.data.size(), c.bytes.size(),
              z.bytes.size());
}

TEST(Zstd, EmptyPacket) {
  ZstdCompressor comp(1);
  ZstdDecompressor decomp;
  uint8_t out[16];
  Result<size_t> n = comp.CompressPages(nullptr, 0, out, sizeof out);
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 0u);
  EXPECT_TRUE(decomp.DecompressPages(nullptr, 0, nullptr, 0).ok());
}

TEST(Zstd, OutputTooSmall) {
  std::mt19937_64 rng(5);
  ZstdCompressor comp(1);
  const Pages in = MakePages(4, Fill::kRandom, rng);
  std::vector<uint8_t> out(1000);
  ExpectError(comp.CompressPages(in.ptrs.data(), 4, out.data(), out.size()), Code::kInternal,
              "output buffer of 1000 bytes is too small for 4 pages");
}

TEST(Zstd, GarbageInput) {
  ZstdDecompressor decomp;
  std::vector<uint8_t> junk(500);
  std::mt19937_64 rng(9);
  FillRandom(junk.data(), junk.size(), rng);
  Pages out(1);
  ExpectError(decomp.DecompressPages(junk.data(), junk.size(), out.ptrs.data(), 1), Code::kProtocol,
              "multifd zstd: corrupt data: ");
}

TEST(Zstd, CorruptBlockInLaterPacket) {
  std::mt19937_64 rng(13);
  ZstdCompressor comp(1);
  ZstdDecompressor decomp;
  const Pages p1 = MakePages(8, Fill::kText, rng);
  const Pages p2 = MakePages(8, Fill::kText, rng);
  const Compressed a = Compress(comp, p1);
  Compressed b = Compress(comp, p2);
  Pages out(8);
  ASSERT_TRUE(decomp.DecompressPages(a.bytes.data(), a.bytes.size(), out.ptrs.data(), 8).ok());
  // Packet 2 starts with a block header; block type 3 is reserved.
  b.bytes[0] |= 0x06;
  ExpectError(decomp.DecompressPages(b.bytes.data(), b.bytes.size(), out.ptrs.data(), 8), Code::kProtocol,
              "multifd zstd: corrupt data: ");
}

TEST(Zstd, TruncatedInput) {
  std::mt19937_64 rng(17);
  ZstdCompressor comp(1);
  const Pages in = MakePages(4, Fill::kText, rng);
  Compressed c = Compress(comp, in);
  ASSERT_GT(c.bytes.size(), 20u);
  c.bytes.resize(c.bytes.size() - 10);
  ZstdDecompressor decomp;
  Pages out(4);
  ExpectError(decomp.DecompressPages(c.bytes.data(), c.bytes.size(), out.ptrs.data(), 4), Code::kProtocol,
              "multifd zstd: input ends early: decompressed only ");
}

TEST(Zstd, FewerPagesThanExpected) {
  std::mt19937_64 rng(19);
  ZstdCompressor comp(1);
  const Pages in = MakePages(3, Fill::kMixed, rng);
  const Compressed c = Compress(comp, in);
  ZstdDecompressor decomp;
  Pages out(4);
  ExpectError(decomp.DecompressPages(c.bytes.data(), c.bytes.size(), out.ptrs.data(), 4), Code::kProtocol,
              "decompressed only 0 of 4096 bytes of page 3");
}

TEST(Zstd, ExtraInput) {
  std::mt19937_64 rng(23);
  ZstdCompressor comp(1);
  const Pages p1 = MakePages(3, Fill::kText, rng);
  const Pages p2 = MakePages(1, Fill::kText, rng);
  const Compressed a = Compress(comp, p1);
  const Compressed b = Compress(comp, p2);
  std::vector<uint8_t> both = a.bytes;
  both.insert(both.end(), b.bytes.begin(), b.bytes.end());
  ZstdDecompressor decomp;
  Pages out(3);
  Status st = decomp.DecompressPages(both.data(), both.size(), out.ptrs.data(), 3);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Code::kProtocol);
  // zstd reads ahead, so the surplus is either still input or already decoded.
  const std::string& m = st.message();
  EXPECT_TRUE(m.find("multifd zstd: input decodes to more than 3 pages") != std::string::npos ||
              m.find("bytes of input left over after 3 pages") != std::string::npos)
      << m;
}

TEST(Zstd, ExtraInputWithinOnePacket) {
  // The sender's packet holds 5 pages, the header claimed 4.
  std::mt19937_64 rng(37);
  ZstdCompressor comp(1);
  const Pages in = MakePages(5, Fill::kText, rng);
  const Compressed c = Compress(comp, in);
  ZstdDecompressor decomp;
  Pages out(4);
  Status st = decomp.DecompressPages(c.bytes.data(), c.bytes.size(), out.ptrs.data(), 4);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Code::kProtocol);
  EXPECT_TRUE(st.message().find("more than 4 pages") != std::string::npos ||
              st.message().find("left over after 4 pages") != std::string::npos)
      << st.message();
}

TEST(Zstd, TrailingGarbage) {
  std::mt19937_64 rng(29);
  ZstdCompressor comp(1);
  const Pages p1 = MakePages(2, Fill::kText, rng);
  Compressed a = Compress(comp, p1);
  a.bytes.push_back(0xff);
  a.bytes.push_back(0xff);
  a.bytes.push_back(0xff);
  a.bytes.push_back(0xff);
  ZstdDecompressor decomp;
  Pages out(2);
  Status st = decomp.DecompressPages(a.bytes.data(), a.bytes.size(), out.ptrs.data(), 2);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.code(), Code::kProtocol) << st.ToString();
}

TEST(Zstd, EveryLevelRoundTrips) {
  std::mt19937_64 rng(31);
  for (int level : {-5, 1, 3, 9, 19}) {
    ZstdCompressor comp(level);
    ZstdDecompressor decomp;
    for (int k = 0; k < 3; ++k) {
      const Pages in = MakePages(16, Fill::kMixed, rng);
      const Compressed c = Compress(comp, in);
      Pages out(16);
      Status st = decomp.DecompressPages(c.bytes.data(), c.bytes.size(), out.ptrs.data(), 16);
      ASSERT_TRUE(st.ok()) << "level " << level << ": " << st.ToString();
      ASSERT_EQ(in.data, out.data) << "level " << level;
    }
  }
}

}  // namespace
}  // namespace ferry::multifd
