// Fuzz target: a multifd migration as the destination receives it — the main
// stream (with its MULTIFD_FLUSH records, or barriers at every section end
// as QEMU 7.2 places them) into MigrationDestination, and two multifd
// channels into the real receiver threads, the barrier tying them together.
// What a fuzzer looks for here besides crashes: a hang (libFuzzer's
// -timeout), the main stream and the channels waiting on each other.
//
// Input: be32 a, a bytes of main stream, be32 b, b bytes of channel 0, the
// rest channel 1; each channel from its first byte, the 64-byte init packet
// skipped as the listener consumes it (seeds: QEMU 7.2, QEMU 10.0 and ferry
// multifd migrations recorded by make_corpus.sh, raw and zstd). The
// destination expects zstd if a packet names it, ferry's
// verification if the stream names it, and the machine the stream names;
// barriers once per round, and if the destination says the source puts them
// at every section end, the whole migration again that way.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/migration.h"
#include "multifd/multifd.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

constexpr uint64_t kMemoryCap = 64ull << 20;

// Takes a be32 length and that many bytes (or what is left) off the front.
std::vector<uint8_t> Take(const uint8_t*& p, size_t& n) {
  if (n < 4) {
    n = 0;
    return {};
  }
  size_t len = (size_t{p[0]} << 24) | (size_t{p[1]} << 16) | (size_t{p[2]} << 8) | p[3];
  p += 4;
  n -= 4;
  len = std::min(len, n);
  std::vector<uint8_t> out(p, p + len);
  p += len;
  n -= len;
  return out;
}

std::vector<uint8_t> AfterInit(const std::vector<uint8_t>& c) {
  const size_t skip = std::min<size_t>(c.size(), ferry::multifd::kInitPacketSize);
  return std::vector<uint8_t>(c.begin() + static_cast<std::ptrdiff_t>(skip), c.end());
}

// One migration with barriers once per round (`per_round`) or at every
// section end.
ferry::Status Migrate(const std::vector<uint8_t>& main, const std::vector<uint8_t>& ch0,
                      const std::vector<uint8_t>& ch1, bool per_round) {
  using namespace ferry;
  multifd::Settings params;
  params.enabled = true;
  params.channels = 2;
  params.flush_after_each_section = !per_round;  // the receiver syncs on every EOS
  if (fuzz::AnyZstdPacket(ch0.data(), ch0.size()) || fuzz::AnyZstdPacket(ch1.data(), ch1.size())) {
    params.compression = multifd::Compression::kZstd;
  }
  std::vector<std::unique_ptr<Channel>> channels;
  channels.push_back(std::make_unique<fuzz::InputChannel>(ch0, 1 + ch0.size() % 5000));
  channels.push_back(std::make_unique<fuzz::InputChannel>(ch1));
  std::unique_ptr<PageReceiver> receiver = multifd::MakeMultifdReceiver(params, std::move(channels));

  DestinationOptions options;
  options.machine = fuzz::AnnouncedMachine(main.data(), main.size());
  options.expect_verify = fuzz::Contains(main.data(), main.size(), "ferry-verify");
  options.send_verdict = options.expect_verify;
  options.qemu_devices = !options.expect_verify;
  options.receiver = receiver.get();
  options.note = [](std::string_view) {};
  RamBlockList blocks;
  fuzz::CappedAllocator memory(kMemoryCap);
  MigrationDestination dest(options, blocks, &memory);
  fuzz::InputChannel channel(main, 1 + main.size() % 3000);
  Status s = dest.Run(channel);
  (void)dest.Stats();
  return s;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ferry;
  const uint8_t* p = data;
  size_t n = size;
  const std::vector<uint8_t> main = Take(p, n);
  const std::vector<uint8_t> ch0 = AfterInit(Take(p, n));
  const std::vector<uint8_t> ch1 = AfterInit(std::vector<uint8_t>(p, p + n));
  // Barriers once per round first (QEMU >= 8, ferry); if the destination
  // says the source places them at every section end (QEMU 7.2), again so.
  Status s = Migrate(main, ch0, ch1, true);
  fuzz::Report("multifd migration, barriers per round", s);
  if (s.message().find("multifd-flush-after-each-section=on") != std::string::npos) {
    fuzz::Report("multifd migration, barriers at section ends", Migrate(main, ch0, ch1, false));
  }
  return 0;
}
