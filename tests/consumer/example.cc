// Embedding libferry: migrate a buffer between two threads over a unix socket
// (with multifd) and check the copy byte for byte. Built against an installed libferry by
// tests/consumer/run.cmake (CMake find_package and pkg-config); README's
// embedding example is this file.
#include <ferry/core/migration.h>
#include <ferry/transports/transports.h>
#include <ferry/version.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <stop_token>
#include <string>
#include <thread>

namespace {

// The guest's vCPUs: this program writes nothing while it migrates.
class NoVcpus : public ferry::GuestControl {
 public:
  void Pause() override {}
  void Resume() override {}
};

ferry::Status Migrate(uint8_t* guest, uint8_t* copy, size_t size) {
  // One description of the migration, as `ferry send/recv` takes it: a URI,
  // -c capabilities and -p parameters. Plan() checks every combination once.
  ferry::MigrationSpec spec;
  spec.uri = "unix:/tmp/ferry-example-" + std::to_string(getpid()) + ".sock";
  spec.capabilities = {"multifd=on"};       // pages over extra connections
  spec.parameters = {"multifd-channels=2"};
  FERRY_ASSIGN_OR_RETURN(ferry::MigrationPlan incoming, ferry::Plan(ferry::Side::kDestination, spec));
  FERRY_ASSIGN_OR_RETURN(ferry::MigrationPlan outgoing, ferry::Plan(ferry::Side::kSource, spec));

  // Destination thread: listen, accept every connection, receive into
  // `copy`, verify (the default) and tell the source.
  ferry::Status received;
  std::stop_source stop;  // ends the destination's wait if the source fails early
  std::thread destination([&] {
    ferry::RamBlockList blocks;
    received = blocks.Add("ram", copy, size);
    if (!received.ok()) return;
    auto conn = incoming.OpenDestination(stop.get_token());
    if (!conn.ok()) {
      received = conn.status();
      return;
    }
    ferry::DestinationOptions options = incoming.destination_options();
    (*conn)->Apply(options);
    ferry::MigrationDestination dst(options, blocks, /*allocator=*/nullptr);
    received = dst.Run((*conn)->channel());
  });

  // Source: connect (retrying until the destination listens) and send
  // `guest`, waiting for the destination's verdict.
  ferry::Status sent = [&]() -> ferry::Status {
    ferry::RamBlockList blocks;
    FERRY_RETURN_IF_ERROR(blocks.Add("ram", guest, size));  // you own the memory
    FERRY_ASSIGN_OR_RETURN(auto tracker, ferry::MakeDirtyTracker(ferry::DirtyTrackerKind::kAllOnce));
    FERRY_ASSIGN_OR_RETURN(auto conn, outgoing.OpenSource({}));
    NoVcpus vcpus;
    ferry::MigrationSource source(outgoing.params(), blocks, *tracker, &vcpus, {}, conn->sink_factory());
    return source.Run(conn->channel(), conn->two_way());
  }();
  if (!sent.ok()) stop.request_stop();
  destination.join();
  unlink(spec.uri.substr(5).c_str());
  FERRY_RETURN_IF_ERROR(sent);
  return received;
}

}  // namespace

int main() {
  // Guest RAM is page-aligned (mmap): 4 MiB, the first half random pages,
  // the second half zero pages.
  const size_t size = 4 << 20;
  auto* guest = static_cast<uint8_t*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  auto* copy = static_cast<uint8_t*>(mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (guest == MAP_FAILED || copy == MAP_FAILED) return 1;
  std::mt19937_64 rng(42);
  for (size_t i = 0; i < size / 2; i += 8) {
    uint64_t v = rng();
    std::memcpy(guest + i, &v, 8);
  }
  ferry::Status s = Migrate(guest, copy, size);
  if (!s.ok()) {
    std::printf("ferry %s: migration failed: %s\n", ferry::Version(), s.ToString().c_str());
    return 1;
  }
  bool same = std::memcmp(guest, copy, size) == 0;
  std::printf("ferry %s: migrated %zu bytes over a unix socket, copy %s\n", ferry::Version(), size,
              same ? "identical" : "DIFFERS");
  return same ? 0 : 1;
}
