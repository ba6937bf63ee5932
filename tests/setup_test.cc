// The library's setup (core/setup.h, transports/transports.h) without the
// CLI: every refused combination gives its message from Plan; a planned and
// opened source and destination migrate a buffer over a unix socket (plain,
// multifd) and through a mapped-ram file, checked byte for byte; a layer
// registered next to the built-in transports (as tls/ does) wraps every
// connection, and a transport for an unknown scheme (what rdma/ will be)
// plugs in without core or CLI changes.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <future>
#include <random>
#include <string>
#include <vector>

#include "core/dirty_tracker.h"
#include "core/migration.h"
#include "file/file_transport.h"
#include "multifd/stats.h"
#include "multifd/transport.h"
#include "socket/socket_transport.h"
#include "transports/transports.h"

namespace ferry {
namespace {

class TempDir {
 public:
  TempDir() {
    char t[] = "/tmp/ferry-setup-XXXXXX";
    path_ = mkdtemp(t) ? t : "";
  }
  ~TempDir() {
    if (!path_.empty()) (void)!system(("rm -rf '" + path_ + "'").c_str());
  }
  std::string P(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

MigrationSpec Spec(std::string uri, std::vector<std::string> caps = {}, std::vector<std::string> params = {},
                   std::string compat = "") {
  MigrationSpec s;
  s.uri = std::move(uri);
  s.capabilities = std::move(caps);
  s.parameters = std::move(params);
  s.qemu_compat = std::move(compat);
  return s;
}

// Plan must refuse `spec` on `side` with a message containing `expected`.
::testing::AssertionResult Refuses(Side side, const MigrationSpec& spec, const std::string& expected) {
  Result<MigrationPlan> plan = Plan(side, spec);
  if (plan.ok()) return ::testing::AssertionFailure() << "planned " << spec.uri << " without an error";
  if (plan.status().message().find(expected) == std::string::npos) {
    return ::testing::AssertionFailure() << "message '" << plan.status().message() << "' lacks '" << expected << "'";
  }
  return ::testing::AssertionSuccess();
}

TEST(Plan, RefusedCombinations) {
  TempDir dir;
  ASSERT_FALSE(dir.path().empty());
  const std::string fifo = dir.P("fifo");
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  const std::string file = "file:" + dir.P("vm.mig");
  const std::string tcp = "tcp:127.0.0.1:1";
  for (Side side : {Side::kSource, Side::kDestination}) {
    SCOPED_TRACE(side == Side::kSource ? "source" : "destination");
    EXPECT_TRUE(Refuses(side, Spec(tcp, {"mapped-ram=on"}), "the mapped-ram capability needs a file: URI"));
    EXPECT_TRUE(Refuses(side, Spec("fd:5", {"multifd=on"}),
                        "the multifd capability needs a tcp: or unix: URI (it opens 2 extra connections); fd:5 is "
                        "a single descriptor"));
    EXPECT_TRUE(Refuses(side, Spec(file, {"multifd=on"}), "multifd to a file needs -c mapped-ram=on"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {"multifd=on", "zero-copy-send=on"}, {"multifd-compression=zstd"}),
                        "zero-copy-send cannot be combined with multifd-compression"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {"zero-copy-send=on"}), "zero-copy-send needs the multifd capability"));
    EXPECT_TRUE(Refuses(side, Spec(file, {"multifd=on", "mapped-ram=on", "zero-copy-send=on"}),
                        "zero-copy-send cannot be used with mapped-ram"));
    EXPECT_TRUE(Refuses(side, Spec("file:" + fifo, {"multifd=on", "zero-copy-send=on"}),
                        "multifd to a file needs -c mapped-ram=on"));
    EXPECT_TRUE(Refuses(side, Spec(file, {}, {"direct-io=on"}), "direct-io needs the mapped-ram capability"));
    EXPECT_TRUE(Refuses(side, Spec("file:" + fifo, {"mapped-ram=on"}),
                        "mapped-ram needs a seekable file; " + fifo + " is a FIFO"));
    EXPECT_TRUE(Refuses(side, Spec("file:" + fifo + ",offset=4096"), fifo + " is a FIFO: it has no offsets"));
    EXPECT_TRUE(Refuses(side, Spec(file, {"mapped-ram=on"}, {}, "none,version=7.2"), "QEMU 7.2 has no mapped-ram"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {"multifd=on"}, {"zero-page-detection=multifd"}, "none,version=7.2"),
                        "QEMU 7.2 cannot take zero pages in multifd packets"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {}, {"multifd-chanels=4"}),
                        "unknown parameter 'multifd-chanels' (ferry knows: downtime-limit, max-bandwidth, "
                        "no-progress-timeout, max-stalled-passes, on-stall, multifd-channels, zero-page-detection, "
                        "multifd-compression, multifd-zstd-level, multifd-flush-after-each-section, direct-io, "
                        "tls-creds, tls-hostname, tls-authz)"));
    // tls/ (its credentials are loaded later: these fail before that).
    EXPECT_TRUE(Refuses(side, Spec(file, {}, {"tls-creds=psk:" + dir.P("none")}),
                        "is a file (save/load have no TLS, as in QEMU)"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {}, {"tls-authz=CN=a"}), "-p tls-authz needs --tls-creds"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {}, {"tls-creds=pem:/x"}), "--tls-creds needs x509:DIR"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {}, {"tls-creds=psk:" + dir.P("none")}), "keys.psk"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {"mapped_ram=on"}),
                        "unknown capability 'mapped_ram' (ferry knows: verify, validate-uuid, multifd, "
                        "zero-copy-send, mapped-ram, rdma-pin-all)"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {"xbzrle=on"}), "capability 'xbzrle' is not supported"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {}, {"multifd-channels=0"}), "multifd-channels must be 1-255, got 0"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {}, {"multifd-channels=x"}), "needs a non-negative integer, got 'x'"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {}, {"multifd-compression=zlib"}), "multifd-compression must be none or zstd"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {}, {"multifd-zstd-level=21"}), "multifd-zstd-level must be 0-20"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {}, {"zero-page-detection=some"}), "zero-page-detection must be none"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {}, {"direct-io=maybe"}), "direct-io must be on or off"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {}, {"downtime-limit=-1"}), "needs a non-negative integer"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {}, {"downtime-limit"}), "-p needs NAME=VALUE, got 'downtime-limit'"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {"verify=maybe"}), "-c needs CAPABILITY=on|off, got 'verify=maybe'"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {"validate-uuid=on"}), "validate-uuid needs the VM's uuid"));
    EXPECT_TRUE(Refuses(side, Spec(tcp, {}, {}, "none,version=9.1"), "--qemu-compat takes MACHINE[,version="));
    EXPECT_TRUE(Refuses(side, Spec("tcp:127.0.0.1"), "bad URI 'tcp:127.0.0.1': missing ':PORT'"));
    EXPECT_TRUE(Refuses(side, Spec("vsock:1:5"),
                        "bad URI 'vsock:1:5': unknown scheme (expected tcp:HOST:PORT, tcp:[V6]:PORT, unix:PATH, "
                        "fd:N, file:PATH[,offset=N] or rdma:HOST:PORT)"));
    MigrationSpec bad_uuid = Spec(tcp, {"multifd=on"});
    bad_uuid.uuid = "not-a-uuid";
    EXPECT_TRUE(Refuses(side, bad_uuid, "--uuid"));
  }
}

TEST(Plan, OwnersAndFacts) {
  // 7.2 sets multifd's barrier and zero-page defaults; -p still overrides.
  Result<MigrationPlan> p72 = Plan(Side::kSource, Spec("tcp:127.0.0.1:1", {"multifd=on"}, {}, "none,version=7.2"));
  ASSERT_TRUE(p72.ok()) << p72.status().ToString();
  EXPECT_EQ(p72->parameter("multifd-flush-after-each-section"), "on");
  EXPECT_EQ(p72->parameter("zero-page-detection"), "legacy");
  EXPECT_EQ(p72->params().machine, "none");
  MigrationStats none;
  p72->AddStats(none);
  EXPECT_NE(none.Get<multifd::MultifdStats>(), nullptr) << "--json has the multifd object before any channel counts";
  Result<MigrationPlan> p10 = Plan(Side::kSource, Spec("tcp:127.0.0.1:1", {"multifd=on"}, {}, "none"));
  ASSERT_TRUE(p10.ok()) << p10.status().ToString();
  EXPECT_EQ(p10->parameter("multifd-flush-after-each-section"), "off");
  EXPECT_EQ(p10->parameter("zero-page-detection"), "multifd");
  EXPECT_TRUE(p10->capability("multifd"));

  TempDir dir;
  // mapped-ram's threads are file threads: not reported as multifd channels.
  Result<MigrationPlan> mr = Plan(Side::kSource, Spec("file:" + dir.P("a.mig"), {"multifd=on", "mapped-ram=on"},
                                                       {"multifd-channels=4", "direct-io=on"}));
  ASSERT_TRUE(mr.ok()) << mr.status().ToString();
  MigrationStats mr_stats;
  mr->AddStats(mr_stats);
  EXPECT_TRUE(mr_stats.transports.empty());
  EXPECT_TRUE(mr->capability("mapped-ram"));
  EXPECT_EQ(mr->parameter("multifd-channels"), "4");
  EXPECT_EQ(mr->parameter("no-such-parameter"), std::nullopt);
  EXPECT_FALSE(mr->endpoint().two_way());

  Result<MigrationPlan> dst = Plan(Side::kDestination, Spec("unix:" + dir.P("s"), {"verify=off"},
                                                            {"downtime-limit=500", "no-progress-timeout=7"}));
  ASSERT_TRUE(dst.ok()) << dst.status().ToString();
  EXPECT_TRUE(dst->endpoint().two_way());
  EXPECT_TRUE(dst->endpoint().can_connect_more());
  DestinationOptions o = dst->destination_options();
  EXPECT_FALSE(o.expect_verify);
  EXPECT_EQ(o.no_progress_timeout, std::chrono::seconds(7));
  EXPECT_EQ(dst->params().downtime_limit_ms, 500u);
}

// Anonymous, page-aligned, zeroed memory.
struct Memory {
  explicit Memory(size_t n) : size(n) {
    void* p = mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    data = p == MAP_FAILED ? nullptr : static_cast<uint8_t*>(p);
  }
  ~Memory() {
    if (data) munmap(data, size);
  }
  uint8_t* data;
  size_t size;
};

constexpr size_t kRam = 8 << 20;

// Fills every other 64 KiB with random bytes and leaves the rest zero.
void Fill(Memory& m) {
  std::mt19937_64 rng(42);
  for (size_t off = 0; off < m.size; off += 8) {
    if ((off / 65536) % 2 == 0) {
      const uint64_t v = rng();
      std::memcpy(m.data + off, &v, 8);
    }
  }
}

struct Ends {
  Status src, dst;
  MigrationStats src_stats, dst_stats;
};

// Plans both sides of `uri` with `caps`/`params`, opens the destination in
// one thread and the source in another, and migrates `kRam` bytes.
Ends Migrate(const std::string& uri, std::vector<std::string> caps, std::vector<std::string> params,
             Memory& src_mem, Memory& dst_mem, bool source_first = false) {
  Ends e;
  Result<MigrationPlan> sp = Plan(Side::kSource, Spec(uri, caps, params));
  Result<MigrationPlan> dp = Plan(Side::kDestination, Spec(uri, caps, params));
  if (!sp.ok() || !dp.ok()) {
    e.src = sp.status();
    e.dst = dp.status();
    return e;
  }
  RamBlockList src_blocks, dst_blocks;
  EXPECT_TRUE(src_blocks.Add("ram", src_mem.data, src_mem.size).ok());
  EXPECT_TRUE(dst_blocks.Add("ram", dst_mem.data, dst_mem.size).ok());

  auto run_source = [&] {
    auto conn = sp->OpenSource({});
    if (!conn.ok()) {
      e.src = conn.status();
      return;
    }
    auto tracker = MakeDirtyTracker(DirtyTrackerKind::kAllOnce, [](std::string_view) {});
    if (!tracker.ok()) {
      e.src = tracker.status();
      return;
    }
    MigrationSource src(sp->params(), src_blocks, **tracker, nullptr, {}, (*conn)->sink_factory());
    e.src = src.Run((*conn)->channel(), (*conn)->two_way());
    e.src_stats = src.Stats();
    Status fin = (*conn)->Finish(e.src_stats);
    if (e.src.ok()) e.src = fin;
  };
  auto run_destination = [&](std::promise<void>* listening) {
    auto conn = dp->OpenDestination({}, [&](std::string_view) {
      listening->set_value();
      return Status::Ok();
    });
    if (!conn.ok()) {
      e.dst = conn.status();
      return;
    }
    DestinationOptions opts = dp->destination_options();
    (*conn)->Apply(opts);
    MigrationDestination dst(opts, dst_blocks, nullptr);
    e.dst = (*conn)->Explain(dst.Run((*conn)->channel()));
    e.dst_stats = dst.Stats();
  };
  if (source_first) {  // a file: saved, then loaded
    run_source();
    std::promise<void> unused;
    run_destination(&unused);
    return e;
  }
  std::promise<void> listening;
  std::future<void> ready = listening.get_future();
  std::thread dst_thread(run_destination, &listening);
  if (ready.wait_for(std::chrono::seconds(30)) == std::future_status::ready) {
    std::thread src_thread(run_source);
    src_thread.join();
  } else {
    e.src = Status::Timeout("the destination did not listen");
  }
  dst_thread.join();
  return e;
}

class PlanMigrates : public ::testing::TestWithParam<int> {};

TEST_P(PlanMigrates, UnixSocketAndFile) {
  TempDir dir;
  Memory src(kRam), dst(kRam);
  ASSERT_TRUE(src.data && dst.data);
  Fill(src);
  Ends e;
  switch (GetParam()) {
    case 0:
      e = Migrate("unix:" + dir.P("sock"), {}, {}, src, dst);
      break;
    case 1:
      e = Migrate("unix:" + dir.P("sock"), {"multifd=on"}, {"multifd-channels=3"}, src, dst);
      EXPECT_EQ(multifd::MultifdStats::Of(e.src_stats).channels.size(), 3u);
      EXPECT_GT(multifd::MultifdStats::Of(e.src_stats).bytes, 0u);
      break;
    case 2:
      e = Migrate("file:" + dir.P("vm.mig"), {"multifd=on", "mapped-ram=on"}, {"multifd-channels=2"}, src, dst,
                  /*source_first=*/true);
      break;
  }
  ASSERT_TRUE(e.src.ok()) << e.src.ToString();
  ASSERT_TRUE(e.dst.ok()) << e.dst.ToString();
  EXPECT_EQ(e.src_stats.state, MigrationState::kCompleted);
  EXPECT_EQ(e.dst_stats.state, MigrationState::kCompleted);
  EXPECT_TRUE(e.dst_stats.verified);
  EXPECT_EQ(std::memcmp(src.data, dst.data, kRam), 0) << "destination memory differs from the source";
}

INSTANTIATE_TEST_SUITE_P(Transports, PlanMigrates, ::testing::Values(0, 1, 2), [](const auto& info) {
  return std::string(info.param == 0 ? "UnixPlain" : info.param == 1 ? "UnixMultifd" : "MappedRamFile");
});

// A planned destination whose source never comes: the accept ends at the
// plan's timeout with one message; a stop request ends it at once.
TEST(Plan, OpenDestinationTimesOutAndStops) {
  TempDir dir;
  MigrationSpec spec = Spec("unix:" + dir.P("sock"));
  spec.accept_timeout = std::chrono::milliseconds(300);
  Result<MigrationPlan> plan = Plan(Side::kDestination, spec);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  auto conn = plan->OpenDestination({});
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), Code::kTimeout) << conn.status().ToString();

  spec.accept_timeout = std::chrono::hours(1);
  Result<MigrationPlan> plan2 = Plan(Side::kDestination, spec);
  ASSERT_TRUE(plan2.ok());
  std::stop_source stop;
  auto stopper = std::async(std::launch::async, [&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    stop.request_stop();
  });
  auto conn2 = plan2->OpenDestination(stop.get_token());
  ASSERT_FALSE(conn2.ok());
  EXPECT_EQ(conn2.status().code(), Code::kCancelled) << conn2.status().ToString();
}

}  // namespace
}  // namespace ferry

namespace ferry {
namespace {

// A pass-through layer over every connection, counting them (what tls/ will
// be: WrapChannel on every connection socket/ makes or accepts).
class CountingChannel final : public Channel {
 public:
  CountingChannel(std::unique_ptr<Channel> inner, std::atomic<int>* bytes_seen)
      : inner_(std::move(inner)), reads_(bytes_seen) {}
  Status WriteAll(std::span<iovec> iov) override { return inner_->WriteAll(iov); }
  Result<size_t> ReadSome(void* buf, size_t len) override {
    Result<size_t> n = inner_->ReadSome(buf, len);
    if (n.ok()) reads_->fetch_add(1);
    return n;
  }
  void Shutdown() override { inner_->Shutdown(); }
  std::string Describe() const override { return "counted " + inner_->Describe(); }
  int fd() const override { return inner_->fd(); }
  void SetProgressBound(const ProgressBound& bound) override { inner_->SetProgressBound(bound); }
  ProgressBound progress_bound() const override { return inner_->progress_bound(); }

 private:
  std::unique_ptr<Channel> inner_;
  std::atomic<int>* reads_;
};

struct LayerCounts {
  std::atomic<int> source{0}, destination{0}, reads{0};
};

class CountingLayer final : public Transport {
 public:
  explicit CountingLayer(LayerCounts* counts) : counts_(counts) {}
  std::string_view name() const override { return "counting"; }
  std::vector<std::string_view> parameters() const override { return {"x-layer-tag"}; }
  Status SetParameter(std::string_view name, std::string_view value) override {
    (void)name;
    tag_ = std::string(value);
    return Status::Ok();
  }
  std::optional<std::string> parameter(std::string_view name) const override {
    if (name == "x-layer-tag") return tag_;
    return std::nullopt;
  }
  Result<std::unique_ptr<Channel>> WrapChannel(std::unique_ptr<Channel> ch, Side side, std::stop_token) override {
    (side == Side::kSource ? counts_->source : counts_->destination).fetch_add(1);
    return std::unique_ptr<Channel>(std::make_unique<CountingChannel>(std::move(ch), &counts_->reads));
  }

 private:
  LayerCounts* counts_;
  std::string tag_;
};

// An endpoint transport for a scheme core knows nothing about.
class FakeRdmaEndpoint final : public Endpoint {
 public:
  explicit FakeRdmaEndpoint(std::string text) : Endpoint(std::move(text)) {}
  bool two_way() const override { return true; }
};

class FakeRdma final : public Transport {
 public:
  std::string_view name() const override { return "rdma"; }
  std::vector<std::string_view> schemes() const override { return {"rdma"}; }
  std::string_view uri_syntax() const override { return "rdma:HOST:PORT"; }
  std::vector<std::string_view> capabilities() const override { return {"rdma-pin-all"}; }
  Status SetCapability(std::string_view name, bool on) override {
    (void)name;
    pin_all_ = on;
    return Status::Ok();
  }
  std::optional<bool> capability(std::string_view name) const override {
    if (name == "rdma-pin-all") return pin_all_;
    return std::nullopt;
  }
  Result<std::unique_ptr<Endpoint>> ParseEndpoint(std::string_view uri, Side side) override {
    (void)side;
    if (uri.find(':', 5) == std::string_view::npos) {
      return Status::InvalidArgument("bad URI '" + std::string(uri) + "': missing ':PORT'");
    }
    return std::unique_ptr<Endpoint>(std::make_unique<FakeRdmaEndpoint>(std::string(uri)));
  }
  Status OpenEndpoint(OpenContext& ctx) override {
    (void)ctx;
    return Status::Unsupported("rdma: not in this test");
  }

 private:
  bool pin_all_ = false;
};

TEST(Registry, ALayerWrapsEveryConnectionMainAndMultifd) {
  LayerCounts counts;
  TransportRegistry registry = BuiltinTransports();
  registry.Add([&counts] { return std::make_unique<CountingLayer>(&counts); });
  TempDir dir;
  const std::string uri = "unix:" + dir.P("sock");
  MigrationSpec spec = Spec(uri, {"multifd=on"}, {"multifd-channels=3", "x-layer-tag=t1"});
  Result<MigrationPlan> sp = Plan(registry, Side::kSource, spec);
  Result<MigrationPlan> dp = Plan(registry, Side::kDestination, spec);
  ASSERT_TRUE(sp.ok()) << sp.status().ToString();
  ASSERT_TRUE(dp.ok()) << dp.status().ToString();
  EXPECT_EQ(sp->parameter("x-layer-tag"), "t1");

  Memory src(2 << 20), dst(2 << 20);
  ASSERT_TRUE(src.data && dst.data);
  Fill(src);
  RamBlockList src_blocks, dst_blocks;
  ASSERT_TRUE(src_blocks.Add("ram", src.data, src.size).ok());
  ASSERT_TRUE(dst_blocks.Add("ram", dst.data, dst.size).ok());
  std::promise<void> listening;
  std::future<void> ready = listening.get_future();
  Status dst_status, src_status;
  std::thread dst_thread([&] {
    auto conn = dp->OpenDestination({}, [&](std::string_view) {
      listening.set_value();
      return Status::Ok();
    });
    if (!conn.ok()) {
      dst_status = conn.status();
      return;
    }
    DestinationOptions opts = dp->destination_options();
    (*conn)->Apply(opts);
    MigrationDestination d(opts, dst_blocks, nullptr);
    dst_status = d.Run((*conn)->channel());
  });
  ASSERT_EQ(ready.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  {
    auto conn = sp->OpenSource({});
    ASSERT_TRUE(conn.ok()) << conn.status().ToString();
    EXPECT_EQ((*conn)->channel().Describe().rfind("counted ", 0), 0u) << (*conn)->channel().Describe();
    auto tracker = MakeDirtyTracker(DirtyTrackerKind::kAllOnce, [](std::string_view) {});
    ASSERT_TRUE(tracker.ok());
    MigrationSource s(sp->params(), src_blocks, **tracker, nullptr, {}, (*conn)->sink_factory());
    src_status = s.Run((*conn)->channel(), (*conn)->two_way());
  }
  dst_thread.join();
  ASSERT_TRUE(src_status.ok()) << src_status.ToString();
  ASSERT_TRUE(dst_status.ok()) << dst_status.ToString();
  EXPECT_EQ(std::memcmp(src.data, dst.data, src.size), 0);
  // Main stream + 3 multifd channels on each side, all through the layer.
  EXPECT_EQ(counts.source.load(), 4);
  EXPECT_EQ(counts.destination.load(), 4);
  EXPECT_GT(counts.reads.load(), 0);
}

TEST(Registry, ATransportOwnsItsSchemeAndCapability) {
  // The built-in transports but rdma/, then a fake in its place.
  TransportRegistry base =
      TransportRegistry().Add(MakeSocketTransport).Add(multifd::MakeTransport).Add(MakeFileTransport);
  TransportRegistry registry = base;
  registry.Add([] { return std::make_unique<FakeRdma>(); });
  Result<MigrationPlan> p = Plan(registry, Side::kSource, Spec("rdma:10.0.0.1:4444", {"rdma-pin-all=on"}));
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_TRUE(p->capability("rdma-pin-all"));
  EXPECT_TRUE(p->endpoint().two_way());
  auto conn = p->OpenSource({});
  ASSERT_FALSE(conn.ok());
  EXPECT_EQ(conn.status().code(), Code::kUnsupported);
  // Its own URI messages, its syntax in the unknown-scheme one; multifd's
  // and file's checks apply to it like to any endpoint.
  Result<MigrationPlan> bad = Plan(registry, Side::kSource, Spec("rdma:10.0.0.1"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("missing ':PORT'"), std::string::npos) << bad.status().ToString();
  Result<MigrationPlan> unknown = Plan(registry, Side::kSource, Spec("vsock:3:4"));
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("fd:N, file:PATH[,offset=N] or rdma:HOST:PORT"), std::string::npos)
      << unknown.status().ToString();
  Result<MigrationPlan> mf = Plan(registry, Side::kSource, Spec("rdma:10.0.0.1:4444", {"multifd=on"}));
  ASSERT_FALSE(mf.ok());
  EXPECT_NE(mf.status().message().find("the multifd capability needs a tcp: or unix: URI"), std::string::npos)
      << mf.status().ToString();
  // Without the registration the capability is QEMU's, not supported here.
  Result<MigrationPlan> builtin = Plan(base, Side::kSource, Spec("tcp:127.0.0.1:1", {"rdma-pin-all=on"}));
  ASSERT_FALSE(builtin.ok());
  EXPECT_EQ(builtin.status().code(), Code::kUnsupported) << builtin.status().ToString();
}

}  // namespace
}  // namespace ferry
