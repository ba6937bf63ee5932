// TLS through the library alone (core/setup.h + transports/transports.h):
// an embedder passes tls-creds as a parameter of the MigrationSpec and
// gets a TLS session on the main stream and on every multifd channel, both
// sides, with the sessions reported in tls::TlsStats
// (Connection::AddStats). No CLI code is involved. Memory compared byte for
// byte.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <cstring>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/dirty_tracker.h"
#include "core/migration.h"
#include "tests/support/process.h"
#include "tests/support/tls_creds.h"
#include "tls/stats.h"
#include "transports/transports.h"

namespace ferry::test {
namespace {

constexpr size_t kRam = 8 << 20;

struct Memory {
  explicit Memory(size_t n) : size(n) {
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    data = p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
  }
  ~Memory() {
    if (data) munmap(data, size);
  }
  uint8_t* data = nullptr;
  size_t size;
};

struct Outcome {
  Status src, dst;
  MigrationStats src_stats, dst_stats;
};

Outcome Migrate(const MigrationSpec& src_spec, const MigrationSpec& dst_spec, Memory& src_mem, Memory& dst_mem) {
  Outcome e;
  Result<MigrationPlan> sp = Plan(Side::kSource, src_spec);
  Result<MigrationPlan> dp = Plan(Side::kDestination, dst_spec);
  if (!sp.ok() || !dp.ok()) {
    e.src = sp.status();
    e.dst = dp.status();
    return e;
  }
  RamBlockList src_blocks, dst_blocks;
  EXPECT_TRUE(src_blocks.Add("ram", src_mem.data, src_mem.size).ok());
  EXPECT_TRUE(dst_blocks.Add("ram", dst_mem.data, dst_mem.size).ok());
  std::promise<void> listening;
  std::future<void> ready = listening.get_future();
  bool told = false;
  std::thread dst_thread([&] {
    auto conn = dp->OpenDestination({}, [&](std::string_view) {
      told = true;
      listening.set_value();
      return Status::Ok();
    });
    if (!conn.ok()) {
      e.dst = conn.status();
      if (!told) listening.set_value();
      return;
    }
    DestinationOptions opts = dp->destination_options();
    (*conn)->Apply(opts);
    MigrationDestination d(opts, dst_blocks, nullptr);
    e.dst = d.Run((*conn)->channel());
    e.dst_stats = d.Stats();
    (*conn)->AddStats(e.dst_stats);
  });
  ready.wait();
  {
    auto conn = sp->OpenSource({});
    if (!conn.ok()) {
      e.src = conn.status();
    } else {
      auto tracker = MakeDirtyTracker(DirtyTrackerKind::kAllOnce, [](std::string_view) {});
      EXPECT_TRUE(tracker.ok());
      MigrationSource s(sp->params(), src_blocks, **tracker, nullptr, {}, (*conn)->sink_factory());
      e.src = s.Run((*conn)->channel(), (*conn)->two_way());
      e.src_stats = s.Stats();
      (*conn)->AddStats(e.src_stats);
    }
  }
  dst_thread.join();
  return e;
}

MigrationSpec Spec(const std::string& uri, std::vector<std::string> caps, std::vector<std::string> params) {
  MigrationSpec s;
  s.uri = uri;
  s.capabilities = std::move(caps);
  s.parameters = std::move(params);
  s.connect_timeout = std::chrono::seconds(10);
  s.accept_timeout = std::chrono::seconds(30);
  return s;
}

void Fill(Memory& m) {
  std::mt19937_64 rng(0x7115);
  for (size_t off = 0; off < m.size; off += 4096) {
    if ((off / 4096) % 3 == 0) continue;  // zero pages too
    for (size_t i = 0; i < 4096; i += 8) {
      const uint64_t v = rng();
      std::memcpy(m.data + off + i, &v, 8);
    }
  }
}

void ExpectSessions(const MigrationStats& stats, const std::string& creds, size_t multifd, const std::string& peer) {
  const tls::TlsStats& st = tls::TlsStats::Of(stats);
  EXPECT_EQ(st.creds, creds);
  ASSERT_EQ(st.sessions.size(), multifd + 1);
  EXPECT_EQ(st.sessions[0].channel, "main");
  for (size_t i = 0; i < st.sessions.size(); ++i) {
    const tls::TlsSessionStats& t = st.sessions[i];
    if (i > 0) {
      EXPECT_EQ(t.channel, "multifd " + std::to_string(i - 1));
    }
    EXPECT_TRUE(t.version == "TLSv1.3" || t.version == "TLSv1.2") << t.version;
    EXPECT_FALSE(t.cipher.empty());
    EXPECT_EQ(t.peer, peer) << t.channel;
  }
}

class TlsPlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ca_ = std::make_unique<TestCa>("ferry plan CA");
    ASSERT_TRUE(ca_->status().ok()) << ca_->status().message();
    ASSERT_TRUE(WriteX509Dir(dir_.Path("x509"), *ca_).ok());
    ASSERT_TRUE(WritePskDir(dir_.Path("psk"), "qemu", RandomHexKey()).ok());
    ASSERT_TRUE(WritePskDir(dir_.Path("psk-other"), "qemu", RandomHexKey()).ok());
  }
  TempDir dir_{"ferry-tls-plan"};
  std::unique_ptr<TestCa> ca_;
};

TEST_F(TlsPlanTest, X509MultifdOverUnixEveryChannel) {
  Memory src(kRam), dst(kRam);
  ASSERT_TRUE(src.data && dst.data);
  Fill(src);
  const std::string uri = "unix:" + dir_.Path("sock");
  const std::string creds = "tls-creds=x509:" + dir_.Path("x509");
  // unix: has no host name to check: tls-hostname names the server.
  Outcome o = Migrate(Spec(uri, {"multifd=on"}, {"multifd-channels=3", creds, "tls-hostname=localhost"}),
                      Spec(uri, {"multifd=on"}, {"multifd-channels=3", creds}), src, dst);
  ASSERT_TRUE(o.src.ok()) << o.src.ToString();
  ASSERT_TRUE(o.dst.ok()) << o.dst.ToString();
  EXPECT_EQ(std::memcmp(src.data, dst.data, kRam), 0);
  ExpectSessions(o.src_stats, "x509", 3, "CN=localhost,O=ferry");
  ExpectSessions(o.dst_stats, "x509", 3, "CN=ferry-client,O=ferry");
}

TEST_F(TlsPlanTest, PskPrecopyOverUnix) {
  Memory src(kRam), dst(kRam);
  ASSERT_TRUE(src.data && dst.data);
  Fill(src);
  const std::string uri = "unix:" + dir_.Path("sock");
  const std::string creds = "tls-creds=psk:" + dir_.Path("psk");
  Outcome o = Migrate(Spec(uri, {}, {creds}), Spec(uri, {}, {creds}), src, dst);
  ASSERT_TRUE(o.src.ok()) << o.src.ToString();
  ASSERT_TRUE(o.dst.ok()) << o.dst.ToString();
  EXPECT_EQ(std::memcmp(src.data, dst.data, kRam), 0);
  ExpectSessions(o.src_stats, "psk", 0, "");
  ExpectSessions(o.dst_stats, "psk", 0, "");
}

TEST_F(TlsPlanTest, WrongPskRefusedOnBothSidesMemoryUntouched) {
  Memory src(kRam), dst(kRam);
  ASSERT_TRUE(src.data && dst.data);
  Fill(src);
  const std::string uri = "unix:" + dir_.Path("sock");
  Outcome o = Migrate(Spec(uri, {"multifd=on"}, {"tls-creds=psk:" + dir_.Path("psk")}),
                      Spec(uri, {"multifd=on"}, {"tls-creds=psk:" + dir_.Path("psk-other")}), src, dst);
  EXPECT_FALSE(o.src.ok());
  EXPECT_FALSE(o.dst.ok());
  EXPECT_NE(o.src.message().find("TLS handshake"), std::string::npos) << o.src.ToString();
  EXPECT_NE(o.dst.message().find("TLS handshake"), std::string::npos) << o.dst.ToString();
  std::vector<uint8_t> zero(kRam, 0);
  EXPECT_EQ(std::memcmp(dst.data, zero.data(), kRam), 0);
}

}  // namespace
}  // namespace ferry::test
