// Fuzz target: the configuration section after its type byte (be32 length,
// machine name, then the subsections QEMU hangs off it: capabilities, uuid,
// target page bits), and the destination's check of what it read against
// its own settings.
//
// Input: the section's bytes after the 0x07 (seeds: the configuration
// sections of QEMU 7.2, QEMU 10.0 — with and without mapped-ram — and
// ferry streams, with what followed them). The check runs against a local
// configuration with the same machine, with and without mapped-ram, and
// with and without a uuid.
#include <cstdint>
#include <vector>

#include "core/configuration.h"
#include "tests/memory_channel.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ferry;
  test::MemoryChannel channel(std::vector<uint8_t>(data, data + size), 1 + size % 7);
  StreamReader r(&channel);
  Result<Configuration> c = ReadConfiguration(r);
  if (!c.ok()) return 0;
  for (int variant = 0; variant < 4; ++variant) {
    Configuration local;
    local.machine = c->machine;
    if (variant & 1) local.capabilities.push_back("mapped-ram");
    if (variant & 2) local.uuid = Uuid{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    (void)CheckConfiguration(*c, local, [](std::string_view) {});
  }
  // What this end would send for the same settings must read back the same.
  MigrationParams p;
  p.machine = c->machine;
  Configuration mine = ConfigurationFor(p);
  test::MemoryChannel out;
  StreamWriter w(&out);
  WriteConfiguration(w, mine);
  if (!w.Flush().ok()) __builtin_trap();
  test::MemoryChannel back(std::vector<uint8_t>(out.out().begin() + 1, out.out().end()));
  StreamReader rb(&back);
  Result<Configuration> again = ReadConfiguration(rb);
  if (!again.ok() || again->machine != c->machine) __builtin_trap();
  return 0;
}
