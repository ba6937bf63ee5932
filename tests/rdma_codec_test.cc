// Unit tests of rdma/: the control-message codec (every message QEMU sends
// or accepts, encoded, decoded, and refused when malformed), the connection
// capabilities, and the registration cache over a fake verbs layer.
#include <gtest/gtest.h>

#include <map>
#include <vector>

#include "rdma/protocol.h"
#include "rdma/registration.h"
#include "rdma/verbs.h"

namespace ferry::rdma {
namespace {

std::vector<uint8_t> Bytes(std::initializer_list<int> v) { return std::vector<uint8_t>(v.begin(), v.end()); }

TEST(RdmaCodec, HeaderIsBigEndianLenTypeRepeatPadding) {
  auto m = EncodeQemuFile(Bytes({0xAA, 0xBB, 0xCC})).value();
  EXPECT_EQ(m, Bytes({0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 0, 0xAA, 0xBB, 0xCC}));
  auto d = DecodeMessage(m);
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(d->type, ControlType::kQemuFile);
  EXPECT_EQ(d->repeat, 1u);
  ASSERT_EQ(d->payload.size(), 3u);
  EXPECT_EQ(d->payload[2], 0xCC);
}

TEST(RdmaCodec, EmptyMessagesRoundTrip) {
  for (ControlType t : {ControlType::kReady, ControlType::kRamBlocksRequest, ControlType::kRegisterFinished,
                        ControlType::kUnregisterFinished, ControlType::kError}) {
    auto wire = EncodeEmpty(t);
    ASSERT_EQ(wire.size(), kHeaderSize);
    auto d = DecodeMessage(wire);
    ASSERT_TRUE(d.ok()) << ControlTypeName(t);
    EXPECT_EQ(d->type, t);
    EXPECT_TRUE(d->payload.empty());
    EXPECT_TRUE(ExpectType(*d, t).ok());
  }
  EXPECT_EQ(EncodeEmpty(ControlType::kReady)[7], 2);  // READY is type 2 on the wire
  EXPECT_EQ(EncodeEmpty(ControlType::kRegisterFinished)[7], 9);
}

TEST(RdmaCodec, TypeNumbersMatchQemu) {
  EXPECT_EQ(static_cast<uint32_t>(ControlType::kError), 1u);
  EXPECT_EQ(static_cast<uint32_t>(ControlType::kQemuFile), 3u);
  EXPECT_EQ(static_cast<uint32_t>(ControlType::kRamBlocksResult), 5u);
  EXPECT_EQ(static_cast<uint32_t>(ControlType::kCompress), 6u);
  EXPECT_EQ(static_cast<uint32_t>(ControlType::kRegisterResult), 8u);
  EXPECT_EQ(static_cast<uint32_t>(ControlType::kUnregisterFinished), 11u);
  EXPECT_EQ(ControlTypeName(ControlType::kRegisterRequest), "REGISTER REQUEST");
  EXPECT_EQ(ControlTypeName(static_cast<ControlType>(77)), "type 77");
}

TEST(RdmaCodec, RamBlocksResultRoundTrip) {
  std::vector<DestBlock> blocks = {{0x7f0000000000, 0, 64 << 20, 0x1234}, {0x7f1000000000, 1ull << 32, 4096, 0}};
  auto wire = EncodeRamBlocksResult(blocks).value();
  ASSERT_EQ(wire.size(), kHeaderSize + 2 * kDestBlockSize);
  EXPECT_EQ(wire[3], 64);   // len
  EXPECT_EQ(wire[11], 1);   // repeat 1, as QEMU sends it
  EXPECT_EQ(wire[16 + 2], 0x7f);  // be64 host address
  EXPECT_EQ(wire[16 + 27], 0x34);  // be32 rkey
  auto d = DecodeRamBlocksResult(DecodeMessage(wire).value());
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(*d, blocks);
}

TEST(RdmaCodec, RegisterRequestAndResultRoundTrip) {
  std::vector<RegisterEntry> req = {{(5ull << 20) + 4096, 2, 1}, {0, 0, 3}};
  auto wire = EncodeRegisterRequest(req).value();
  ASSERT_EQ(wire.size(), kHeaderSize + 2 * kRegisterEntrySize);
  EXPECT_EQ(wire[11], 2);  // repeat = count
  auto d = DecodeRegisterRequest(DecodeMessage(wire).value());
  ASSERT_TRUE(d.ok()) << d.status().ToString();
  EXPECT_EQ(*d, req);

  auto un = EncodeUnregisterRequest(std::span(req).first(1)).value();
  auto du = DecodeUnregisterRequest(DecodeMessage(un).value());
  ASSERT_TRUE(du.ok());
  EXPECT_EQ(du->at(0), req[0]);

  std::vector<RegisterResult> res = {{0xdeadbeef, 0x7f00deadb000}};
  auto rw = EncodeRegisterResults(res).value();
  ASSERT_EQ(rw.size(), kHeaderSize + kRegisterResultSize);
  EXPECT_EQ(rw[16], 0xde);
  auto dr = DecodeRegisterResults(DecodeMessage(rw).value());
  ASSERT_TRUE(dr.ok());
  EXPECT_EQ(*dr, res);
}

TEST(RdmaCodec, CompressRoundTrip) {
  std::vector<CompressEntry> c = {{0, 1, 0x200000, 4096}};
  auto wire = EncodeCompress(c).value();
  ASSERT_EQ(wire.size(), kHeaderSize + kCompressEntrySize);
  auto d = DecodeCompress(DecodeMessage(wire).value());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, c);
}

TEST(RdmaCodec, RefusesMalformedHeaders) {
  auto short_msg = DecodeMessage(Bytes({0, 0, 0, 0, 0, 0, 0, 2}));
  ASSERT_FALSE(short_msg.ok());
  EXPECT_NE(short_msg.status().message().find("shorter than its 16-byte header"), std::string::npos);

  auto none = DecodeMessage(std::vector<uint8_t>(16, 0));
  ASSERT_FALSE(none.ok());
  EXPECT_NE(none.status().message().find("unknown control message type 0"), std::string::npos);

  auto unknown = EncodeEmpty(ControlType::kReady);
  unknown[7] = 12;
  EXPECT_FALSE(DecodeMessage(unknown).ok());

  auto truncated = EncodeQemuFile(Bytes({1, 2, 3, 4})).value();
  truncated.resize(truncated.size() - 1);
  auto t = DecodeMessage(truncated);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.status().message().find("announces 4 bytes but only 3 arrived"), std::string::npos);

  std::vector<uint8_t> huge(kControlMaxBuffer + 64);
  EncodeHeader({static_cast<uint32_t>(kControlMaxBuffer), ControlType::kQemuFile, 1}, huge.data());
  auto h = DecodeMessage(huge);
  ASSERT_FALSE(h.ok());
  EXPECT_EQ(h.status().code(), Code::kProtocol);
}

TEST(RdmaCodec, RefusesBadEntryCounts) {
  std::vector<RegisterEntry> one = {{0, 0, 1}};
  auto wire = EncodeRegisterRequest(one).value();
  wire[11] = 2;  // announces two entries, carries one
  auto d = DecodeRegisterRequest(DecodeMessage(wire).value());
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("announces 2 entries"), std::string::npos);

  wire[11] = 0;
  EXPECT_FALSE(DecodeRegisterRequest(DecodeMessage(wire).value()).ok());

  auto blocks = EncodeRamBlocksResult(std::vector<DestBlock>(1)).value();
  blocks.push_back(0);
  blocks[3] = 33;  // len no longer a multiple of 32
  EXPECT_FALSE(DecodeRamBlocksResult(DecodeMessage(blocks).value()).ok());

  // The wrong type, and ERROR from the peer, name what was expected.
  auto ready = DecodeMessage(EncodeEmpty(ControlType::kReady)).value();
  auto wrong = DecodeCompress(ready);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().message(), "rdma: expected COMPRESS, received READY");
  auto err = DecodeMessage(EncodeEmpty(ControlType::kError)).value();
  EXPECT_NE(ExpectType(err, ControlType::kQemuFile).message().find("peer reported an error"), std::string::npos);

  std::vector<CompressEntry> too_many(kMaxCommandsPerMessage + 1);
  EXPECT_FALSE(EncodeCompress(too_many).ok());
  std::vector<uint8_t> big(kMaxPayload + 1);
  EXPECT_FALSE(EncodeQemuFile(big).ok());
  EXPECT_TRUE(EncodeQemuFile(std::span(big).first(kMaxPayload)).ok());
  EXPECT_FALSE(EncodeMessage(ControlType::kNone, 1, {}).ok());
}

TEST(RdmaCodec, Capabilities) {
  auto wire = EncodeCapabilities({kProtocolVersion, kCapPinAll});
  EXPECT_EQ(std::vector<uint8_t>(wire.begin(), wire.end()), Bytes({0, 0, 0, 1, 0, 0, 0, 1}));
  auto c = DecodeCapabilities(wire);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->flags, kCapPinAll);

  auto unknown_flag = DecodeCapabilities(Bytes({0, 0, 0, 1, 0, 0, 0, 3}));
  ASSERT_TRUE(unknown_flag.ok());
  EXPECT_EQ(AcceptCapabilities(*unknown_flag).flags, kCapPinAll);  // the unknown 0x02 is dropped
  EXPECT_EQ(AcceptCapabilities({1, 0}).flags, 0u);

  auto v2 = DecodeCapabilities(Bytes({0, 0, 0, 2, 0, 0, 0, 0}));
  ASSERT_FALSE(v2.ok());
  EXPECT_EQ(v2.status().code(), Code::kUnsupported);
  EXPECT_NE(v2.status().message().find("version 2"), std::string::npos);
  EXPECT_FALSE(DecodeCapabilities(Bytes({0, 0, 0, 1})).ok());
}

// ferry's own flags (docs/rdma-multifd.md): 16 bytes of private data with
// the channel number and count; QEMU's answer (AcceptCapabilities) drops them.
TEST(RdmaCodec, FerryMultifdCapabilities) {
  std::vector<uint8_t> plain = EncodeConnectData({kProtocolVersion, kCapPinAll});
  EXPECT_EQ(plain, Bytes({0, 0, 0, 1, 0, 0, 0, 1}));  // QEMU's 8 bytes without ferry flags
  std::vector<uint8_t> wire = EncodeConnectData({kProtocolVersion, kCapFerryChannel | kCapFerryCounts, 3, 4});
  EXPECT_EQ(wire, Bytes({0, 0, 0, 1, 0, 0x06, 0, 0, 0, 0, 0, 3, 0, 0, 0, 4}));
  auto c = DecodeCapabilities(wire);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->flags, kCapFerryChannel | kCapFerryCounts);
  EXPECT_EQ(c->channel, 3u);
  EXPECT_EQ(c->channels, 4u);
  EXPECT_EQ(AcceptCapabilities(*c).flags, 0u);  // what QEMU (or ferry without multifd) answers
  auto short_data = DecodeCapabilities(Bytes({0, 0, 0, 1, 0, 1, 0, 0}));
  ASSERT_FALSE(short_data.ok());
  EXPECT_EQ(short_data.status().code(), Code::kProtocol);

  // REGISTER FINISHED with the pages written since the previous one.
  std::vector<uint8_t> fin = EncodeRegisterFinished(0x0102030405, 7);
  EXPECT_EQ(fin.size(), kHeaderSize + 16);
  auto m = DecodeMessage(fin);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->type, ControlType::kRegisterFinished);
  EXPECT_EQ(DecodeWrittenPages(*m), 0x0102030405u);
  EXPECT_EQ(DecodeRounds(*m), 7u);
  auto empty = DecodeMessage(EncodeEmpty(ControlType::kRegisterFinished));
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(DecodeWrittenPages(*empty), 0u);  // QEMU's: no count
  EXPECT_EQ(DecodeRounds(*empty), 0u);
}

// A verbs layer that hands out fake keys and counts live registrations.
class FakeRegistrar : public Registrar {
 public:
  struct Range {
    uint8_t* addr;
    size_t len;
  };
  class Reg : public Registration {
   public:
    Reg(FakeRegistrar* owner, uint32_t key) : owner_(owner), key_(key) {}
    ~Reg() override { owner_->live.erase(key_); }
    uint32_t lkey() const override { return key_; }
    uint32_t rkey() const override { return key_ | 0x80000000u; }

   private:
    FakeRegistrar* owner_;
    uint32_t key_;
  };
  Result<std::unique_ptr<Registration>> Register(uint8_t* addr, size_t len) override {
    if (fail_next) {
      fail_next = false;
      return Status::Io("fake ibv_reg_mr refused", ENOMEM);
    }
    uint32_t key = ++next;
    live[key] = {addr, len};
    return std::unique_ptr<Registration>(std::make_unique<Reg>(this, key));
  }
  std::map<uint32_t, Range> live;
  uint32_t next = 0;
  bool fail_next = false;
};

TEST(RdmaRegistration, DynamicRegistersChunksOnFirstUseAndCaches) {
  std::vector<uint8_t> a(3 * kChunkSize + 8192), b(4096);
  FakeRegistrar fake;
  {
    RegistrationCache cache(fake, {{a.data(), a.size()}, {b.data(), b.size()}}, false);
    EXPECT_EQ(cache.chunk_count(0), 4u);
    EXPECT_EQ(cache.chunk_count(1), 1u);
    ASSERT_TRUE(cache.RegisterAll().ok());
    EXPECT_EQ(fake.live.size(), 0u);  // dynamic: nothing up front

    auto k1 = cache.Register(0, kChunkSize + 4096, 1);
    ASSERT_TRUE(k1.ok()) << k1.status().ToString();
    ASSERT_EQ(fake.live.size(), 1u);
    auto r = fake.live.begin()->second;
    EXPECT_EQ(r.addr, a.data() + kChunkSize);  // the whole chunk, from its start
    EXPECT_EQ(r.len, kChunkSize);

    auto again = cache.Register(0, kChunkSize + 8 * 4096, 1);  // same chunk: cached
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(again->rkey, k1->rkey);
    EXPECT_EQ(fake.live.size(), 1u);
    EXPECT_EQ(cache.total_registered(), 1u);

    ASSERT_TRUE(cache.Register(0, 3 * kChunkSize, 1).ok());  // the short last chunk
    bool found_tail = false;
    for (auto& [k, rg] : fake.live) found_tail |= rg.addr == a.data() + 3 * kChunkSize && rg.len == 8192;
    EXPECT_TRUE(found_tail);

    ASSERT_TRUE(cache.Register(1, 0, 1).ok());
    EXPECT_EQ(cache.live(), 3u);

    ASSERT_TRUE(cache.Unregister(0, 1).ok());
    EXPECT_EQ(fake.live.size(), 2u);
    ASSERT_TRUE(cache.Unregister(0, 1).ok());  // twice: nothing more
    EXPECT_EQ(cache.live(), 2u);
  }
  EXPECT_TRUE(fake.live.empty());  // released at the end
}

TEST(RdmaRegistration, MultiChunkRequestsAreOneRegistration) {
  std::vector<uint8_t> a(4 * kChunkSize);
  FakeRegistrar fake;
  RegistrationCache cache(fake, {{a.data(), a.size()}}, false);
  ASSERT_TRUE(cache.Register(0, 0, 3).ok());
  ASSERT_EQ(fake.live.size(), 1u);
  EXPECT_EQ(fake.live.begin()->second.len, 3 * kChunkSize);
  cache.ReleaseAll();
  EXPECT_TRUE(fake.live.empty());
  EXPECT_EQ(cache.live(), 0u);
}

TEST(RdmaRegistration, PinAllRegistersWholeBlocksOnce) {
  std::vector<uint8_t> a(2 * kChunkSize + 4096), b(kChunkSize);
  FakeRegistrar fake;
  RegistrationCache cache(fake, {{a.data(), a.size()}, {b.data(), b.size()}}, true);
  ASSERT_TRUE(cache.RegisterAll().ok());
  ASSERT_EQ(fake.live.size(), 2u);
  EXPECT_EQ(fake.live.begin()->second.len, a.size());
  auto k = cache.Register(0, 2 * kChunkSize, 1);
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(k->rkey, cache.BlockKeys(0)->rkey);
  ASSERT_TRUE(cache.RegisterAll().ok());  // idempotent
  EXPECT_EQ(cache.total_registered(), 2u);
  ASSERT_TRUE(cache.Unregister(0, 0).ok());  // no-op with pin-all
  EXPECT_EQ(fake.live.size(), 2u);
  cache.ReleaseAll();
  EXPECT_TRUE(fake.live.empty());
}

TEST(RdmaRegistration, RefusesOutOfRangeAndReportsFailures) {
  std::vector<uint8_t> a(2 * kChunkSize);
  FakeRegistrar fake;
  RegistrationCache cache(fake, {{a.data(), a.size()}}, false);
  auto bad_block = cache.Register(1, 0, 1);
  ASSERT_FALSE(bad_block.ok());
  EXPECT_NE(bad_block.status().message().find("RAM block index 1 out of range (1 blocks)"), std::string::npos);
  EXPECT_FALSE(cache.Register(0, a.size(), 1).ok());
  EXPECT_FALSE(cache.Register(0, kChunkSize, 2).ok());  // past the end
  EXPECT_FALSE(cache.Register(0, 0, 0).ok());
  EXPECT_FALSE(cache.Unregister(0, 2).ok());
  fake.fail_next = true;
  auto failed = cache.Register(0, 0, 1);
  ASSERT_FALSE(failed.ok());
  EXPECT_NE(failed.status().message().find("chunk 0 of RAM block 0"), std::string::npos);
  EXPECT_EQ(cache.live(), 0u);
  EXPECT_TRUE(cache.Register(0, 0, 1).ok());  // a later attempt may succeed
}

TEST(RdmaVerbs, OwnersAreMoveOnlyAndEmptyByDefault) {
  static_assert(!std::is_copy_constructible_v<MemoryRegion>);
  static_assert(std::is_nothrow_move_constructible_v<ProtectionDomain>);
  MemoryRegion mr;
  EXPECT_FALSE(mr);
  MemoryRegion moved(std::move(mr));
  EXPECT_EQ(moved.get(), nullptr);
}

}  // namespace
}  // namespace ferry::rdma
