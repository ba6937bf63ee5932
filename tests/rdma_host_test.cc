// rdma: on a host without any RDMA device (the CI machine), `ferry recv
// rdma:...` fails at once with one clear line, the URI is parsed like tcp:,
// and the built-in registry's checks (multifd, rdma-pin-all) hold.
#include <gtest/gtest.h>

#include <dirent.h>
#include <sys/wait.h>

#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "core/uri.h"
#include "rdma/transport.h"
#include "transports/transports.h"

namespace {

bool HostHasRdmaDevice() {
  DIR* d = opendir("/sys/class/infiniband");
  if (d == nullptr) return false;
  bool any = false;
  while (dirent* e = readdir(d)) any |= e->d_name[0] != '.';
  closedir(d);
  return any;
}

// Runs `cmd`, returning its exit status and everything it printed on stderr.
int RunCmd(const std::string& cmd, std::string* err) {
  FILE* p = popen((cmd + " 2>&1 >/dev/null").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) err->append(buf, n);
  int st = pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

TEST(RdmaHost, RecvWithoutDeviceFailsWithOneLine) {
  if (HostHasRdmaDevice()) GTEST_SKIP() << "this host has an RDMA device; the no-device error cannot be shown here";
  std::string err;
  int rc = RunCmd(std::string(FERRY_BIN) + " recv rdma:127.0.0.1:0 --timeout 5", &err);
  EXPECT_NE(rc, 0);
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_EQ(err.rfind("ferry: error: no RDMA device", 0), 0u) << err;
}

TEST(RdmaHost, SendWithoutDeviceFailsWithOneLine) {
  if (HostHasRdmaDevice()) GTEST_SKIP() << "this host has an RDMA device; the no-device error cannot be shown here";
  std::string err;
  int rc = RunCmd(std::string(FERRY_BIN) + " send rdma:127.0.0.1:4444 --ram 4M --connect-timeout 2", &err);
  EXPECT_EQ(rc, 1);
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
  EXPECT_EQ(err.rfind("ferry: error: no RDMA device", 0), 0u) << err;
}

// multifd over rdma is ferry's own (docs/rdma-multifd.md): the plan is
// accepted (here the missing device is the error), the multifd settings that
// mean nothing over RDMA WRITEs are refused with one line.
TEST(RdmaHost, MultifdOverRdmaIsPlannedAndItsMeaninglessSettingsRefused) {
  std::string err;
  int rc = RunCmd(std::string(FERRY_BIN) + " send rdma:127.0.0.1:4444 --ram 4M -c multifd=on -p multifd-channels=3",
                  &err);
  EXPECT_EQ(rc, 1) << err;
  EXPECT_NE(err.find("no RDMA device"), std::string::npos) << err;
  struct Case {
    const char* args;
    const char* message;
  } cases[] = {
      {"-p multifd-compression=zstd", "multifd-compression=zstd over rdma: is not supported"},
      {"-c zero-copy-send=on", "zero-copy-send over rdma: is not supported"},
      {"-p zero-page-detection=legacy", "zero-page-detection=legacy with multifd over rdma: is not supported"},
  };
  for (const Case& c : cases) {
    err.clear();
    rc = RunCmd(std::string(FERRY_BIN) + " send rdma:127.0.0.1:4444 --ram 4M -c multifd=on " + c.args, &err);
    EXPECT_EQ(rc, 2) << c.args << ": " << err;
    EXPECT_NE(err.find(c.message), std::string::npos) << err;
  }
}

TEST(RdmaHost, UriParsesLikeTcp) {
  auto u = ferry::rdma::ParseRdmaUri("rdma:[fe80::1]:4444");
  ASSERT_TRUE(u.ok()) << u.status().ToString();
  EXPECT_EQ(u->host, "fe80::1");
  EXPECT_EQ(u->port, 4444);
  EXPECT_EQ(u->text, "rdma:[fe80::1]:4444");
  auto v4 = ferry::rdma::ParseRdmaUri("rdma:192.0.2.1:0");
  ASSERT_TRUE(v4.ok());
  EXPECT_EQ(v4->host, "192.0.2.1");
  auto bad = ferry::rdma::ParseRdmaUri("rdma:foo");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "bad URI 'rdma:foo': missing ':PORT' (expected rdma:HOST:PORT, rdma:[V6]:PORT)");
}

// The built-in registry owns rdma: and rdma-pin-all through rdma/ (no CLI
// code): an embedder's Plan() sees the same checks as ferry send/recv.
TEST(RdmaHost, BuiltinRegistryOwnsTheSchemeAndCapability) {
  using ferry::MigrationSpec;
  using ferry::Side;
  for (Side side : {Side::kSource, Side::kDestination}) {
    MigrationSpec spec;
    spec.uri = "rdma:192.0.2.1:4444";
    spec.capabilities = {"rdma-pin-all=on"};
    auto plan = ferry::Plan(side, spec);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    EXPECT_TRUE(plan->capability("rdma-pin-all"));
    EXPECT_FALSE(plan->endpoint().two_way());
    EXPECT_FALSE(plan->endpoint().can_connect_more());

    spec.capabilities = {"multifd=on"};
    auto mf = ferry::Plan(side, spec);
    ASSERT_TRUE(mf.ok()) << mf.status().ToString();  // ferry's N queue pairs
    EXPECT_TRUE(mf->endpoint().own_multifd_channels());
    spec.parameters = {"multifd-compression=zstd"};
    auto zstd = ferry::Plan(side, spec);
    ASSERT_FALSE(zstd.ok());
    EXPECT_EQ(zstd.status().code(), ferry::Code::kUnsupported);
    spec.parameters.clear();

    MigrationSpec tcp;
    tcp.uri = "tcp:127.0.0.1:4444";
    tcp.capabilities = {"rdma-pin-all=on"};
    auto pin = ferry::Plan(side, tcp);
    ASSERT_FALSE(pin.ok());
    EXPECT_EQ(pin.status().message(), "capability rdma-pin-all needs an rdma: URI");

    MigrationSpec no_port;
    no_port.uri = "rdma:192.0.2.1";
    auto bad = ferry::Plan(side, no_port);
    ASSERT_FALSE(bad.ok());
    EXPECT_NE(bad.status().message().find("missing ':PORT'"), std::string::npos) << bad.status().ToString();
  }
}

// tls/'s settings (tls-creds) are refused over rdma:, whose connection no
// channel layer wraps (the built-in registry has the real tls transport).
TEST(RdmaHost, ChannelLayerSettingsAreRefusedOverRdma) {
  ferry::MigrationSpec spec;
  spec.uri = "rdma:192.0.2.1:4444";
  spec.parameters = {"tls-creds=psk:/nonexistent/ferry-psk"};
  for (ferry::Side side : {ferry::Side::kSource, ferry::Side::kDestination}) {
    auto p = ferry::Plan(side, spec);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().message(), "tls-creds over rdma: is not supported");
  }
  spec.parameters = {"tls-creds="};
  EXPECT_TRUE(ferry::Plan(ferry::Side::kDestination, spec).ok());
}

}  // namespace
