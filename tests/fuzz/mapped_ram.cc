// Fuzz target: mapped-ram files — each block's 28-byte header after its
// entry in the block list, its bitmap, the page region and where the main
// stream resumes — loaded by MigrationDestination with the mapped-ram
// receiver (pages read by the loader thread, or by two reader threads), and
// walked by `ferry inspect`.
//
// Input: the file in the "sparse" encoding of fuzz_util.h (literal chunks
// and holes), so that a file of several MiB that is mostly holes, as
// mapped-ram files are, takes a few KiB (seeds: QEMU 10.0's and ferry's
// mapped-ram saves, encoded by make_corpus.sh). At most 256 MiB of file
// and 64 MiB of guest memory.
#include <cstdint>
#include <memory>

#include "core/migration.h"
#include "file/file_channel.h"
#include "file/inspect.h"
#include "file/mapped_ram.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

constexpr uint64_t kMaxFile = 256ull << 20;
constexpr uint64_t kMemoryCap = 64ull << 20;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ferry;
  static fuzz::InputFile* file = new fuzz::InputFile();
  fuzz::WriteSparse(*file, data, size, kMaxFile);

  Result<InspectReport> report = InspectFile(file->path(), 0);
  if (report.ok()) fuzz::Report(("inspect: " + report->Verdict()).c_str(), Status::Ok());

  // The machine name and whether the file carries ferry's verification
  // section, read from the file itself.
  uint8_t head[13 + 255] = {};
  const ssize_t got = ::pread(file->fd(), head, sizeof(head), 0);
  const std::string machine = fuzz::AnnouncedMachine(head, got > 0 ? static_cast<size_t>(got) : 0);

  Result<std::unique_ptr<FileChannel>> channel = OpenFileForLoad(file->path(), 0);
  if (!channel.ok()) return 0;
  mapped_ram::FileOptions fo;
  fo.channels = size % 2 ? 2 : 0;
  fo.allow_uring = false;
  fo.fresh_memory = true;
  fo.note = [](std::string_view) {};
  std::unique_ptr<PageReceiver> receiver = mapped_ram::MakeMappedRamReceiver(**channel, std::move(fo));

  DestinationOptions options;
  options.machine = machine;
  options.send_verdict = false;
  options.expect_verify = fuzz::Contains(data, size, "ferry-verify");
  options.qemu_devices = !options.expect_verify;
  options.receiver = receiver.get();
  options.note = [](std::string_view) {};
  RamBlockList blocks;
  fuzz::CappedAllocator memory(kMemoryCap);
  MigrationDestination dest(options, blocks, &memory);
  fuzz::Report("mapped-ram load", dest.Run(**channel));
  (void)dest.Stats();
  return 0;
}
