// mapped-ram: QEMU 9's file layout in which every guest page has a fixed
// place, so a live save rewrites dirty pages in place and the file never
// grows past the guest's RAM plus metadata.
//
// In the setup list of the "ram" section, right after each block's entry
// {u8 len, name, be64 used_length}, the stream holds a 28-byte packed header:
//
//   be32 version (1) | be64 page_size (4096) | be64 bitmap_offset | be64 pages_offset
//
// bitmap_offset = the header's own file offset + 28: room for the block's
// bitmap (one bit per page, stored as the host's little-endian 64-bit words,
// written at completion; a set bit = the page's data is in the file).
// pages_offset = bitmap end rounded up to 1 MiB; page i lives at
// pages_offset + i * 4096. The main stream resumes at pages_offset +
// used_length. Zero pages are never written (holes read as zero, the bit
// stays clear). Offsets are absolute file offsets.
//
//        header  bitmap (written last)   pad to 1 MiB   pages ........... | stream goes on
//   ... [28 B ][ceil(pages/64)*8 B    ][..............][page 0][page 1]...|...
//
// Page records (PAGE, ZERO, MULTIFD_FLUSH) never appear in a mapped-ram main
// stream.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>

#include "../core/page_sink.h"
#include "../core/params.h"
#include "../core/ram_loader.h"
#include "../core/status.h"
#include "file_channel.h"

namespace ferry::mapped_ram {

inline constexpr uint32_t kVersion = 1;
inline constexpr size_t kHeaderSize = 28;
inline constexpr uint64_t kFileOffsetAlignment = 1 << 20;
// A preallocated save (FileOptions::preallocate) gives back the space of
// runs of at least this many absent pages at completion; shorter gaps keep
// their (zero-reading) blocks: one syscall per gap would cost more than the
// space is worth.
inline constexpr uint64_t kMinPunchPages = 16;

struct Header {
  uint32_t version = kVersion;
  uint64_t page_size = 4096;
  uint64_t bitmap_offset = 0;
  uint64_t pages_offset = 0;
};

void EncodeHeader(const Header& h, uint8_t out[kHeaderSize]);
// Checks the version (1) and page size (4096); kProtocol naming the field.
Result<Header> DecodeHeader(const uint8_t in[kHeaderSize]);
// Bytes of a block's bitmap: whole 64-bit words.
uint64_t BitmapBytes(uint64_t pages);
// The layout of a block whose header starts at file offset `header_offset`.
Header LayoutFor(uint64_t header_offset, uint64_t used_length);

struct FileOptions {
  bool direct_io = false;      // page data through an O_DIRECT descriptor
  uint32_t channels = 0;       // 0: pages written by the migration thread; N: N writer/reader threads
  unsigned queue_depth = 16;   // io_uring requests in flight per thread
  bool allow_uring = true;
  // Register the guest's memory with io_uring as fixed buffers. Off by
  // default: registering pins (and so faults in) every page of every block,
  // including the never-touched zero pages of a sparse guest, which costs
  // more than the per-request pinning it saves (docs/design-notes.md has the
  // numbers), doubles the destination's RSS, and on a source tracked with
  // userfaultfd write-protection makes the whole guest look dirtied once.
  bool register_buffers = false;
  // Source only: reserve each block's page region with fallocate() before
  // writing pages, then give the space of long runs of absent pages back
  // (FALLOC_FL_PUNCH_HOLE) at completion. Writes into reserved space are
  // overwrites, which the filesystem (ext4, xfs) serves under a shared lock
  // without punting them to kernel workers; into holes they are
  // allocating writes, serialised and several times more CPU per GiB.
  // While the save runs the file takes the guest's whole RAM size on disk.
  // kAuto: with direct_io. A filesystem that refuses (no space, not
  // supported) is noted and the save goes on into holes.
  enum class Preallocate { kAuto, kOn, kOff };
  Preallocate preallocate = Preallocate::kAuto;
  std::function<void(std::string_view)> note;  // one-line notices (io_uring fallback, preallocation refused)
  // Destination only: the guest memory starts all zeros (a new mapping), so
  // pages whose bit is clear need no write. false: such pages are zeroed
  // where they are not already.
  bool fresh_memory = true;
};

// The source side: pages to their fixed places. `main` is the file the main
// stream goes to (the sink moves it past each block's page region).
class MappedRamSinkFactory final : public PageSinkFactory {
 public:
  MappedRamSinkFactory(FileChannel& main, FileOptions options);
  ~MappedRamSinkFactory() override;
  Result<std::unique_ptr<PageSink>> Make(StreamWriter& main) override;
  bool saver_detects_zero() const override { return true; }
  std::vector<std::string> announced_capabilities() const override { return {"mapped-ram"}; }

 private:
  FileChannel& main_;
  FileOptions options_;
};

// The destination side: reads each block's header and bitmap and loads the
// pages present (in parallel with options.channels threads), checking that
// bitmap and page region lie inside the file.
std::unique_ptr<PageReceiver> MakeMappedRamReceiver(FileChannel& main, FileOptions options);

}  // namespace ferry::mapped_ram
