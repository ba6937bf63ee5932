// Embedding libferry: migrate a buffer between two threads over a unix socket
// and check the copy byte for byte. Built against an installed libferry by
// tests/consumer/run.cmake (CMake find_package and pkg-config); README's
// embedding example is this file.
#include <ferry/core/migration.h>
#include <ferry/socket/socket.h>
#include <ferry/version.h>

#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
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
  FERRY_ASSIGN_OR_RETURN(ferry::Uri uri,
                         ferry::ParseUri("unix:/tmp/ferry-example-" + std::to_string(getpid()) + ".sock"));
  FERRY_ASSIGN_OR_RETURN(auto listener, ferry::Listener::Listen(uri));

  // Destination thread: accept, receive into `copy`, verify (the default).
  ferry::Status received;
  std::thread destination([&] {
    ferry::RamBlockList blocks;
    received = blocks.Add("ram", copy, size);
    if (!received.ok()) return;
    auto channel = listener->Accept(std::chrono::seconds(30));
    if (!channel.ok()) {
      received = channel.status();
      return;
    }
    ferry::MigrationDestination dst(ferry::DestinationOptions{}, blocks, /*allocator=*/nullptr);
    received = dst.Run(**channel);
  });

  // Source: connect and send `guest`, waiting for the destination's verdict.
  ferry::Status sent = [&]() -> ferry::Status {
    ferry::RamBlockList blocks;
    FERRY_RETURN_IF_ERROR(blocks.Add("ram", guest, size));  // you own the memory
    FERRY_ASSIGN_OR_RETURN(auto tracker, ferry::MakeDirtyTracker(ferry::DirtyTrackerKind::kAllOnce));
    NoVcpus vcpus;
    ferry::MigrationSource source(ferry::MigrationParams{}, blocks, *tracker, &vcpus);
    FERRY_ASSIGN_OR_RETURN(auto channel, ferry::Connect(uri, std::chrono::seconds(30)));
    return source.Run(*channel, /*await_confirmation=*/true);
  }();
  if (!sent.ok()) listener->Shutdown();
  destination.join();
  unlink(uri.path.c_str());
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
