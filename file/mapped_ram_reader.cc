// mapped-ram, destination side: MappedRamReceiver checks each block's header
// and bitmap against the file before the first read, then loads the pages
// present through a pool of reader threads (FileOptions::channels; 0: the
// loader's own thread), each with its own descriptor and I/O engine, taking
// word-aligned chunks of the block from a shared cursor.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/format.h"
#include "core/thp.h"
#include "core/wire.h"
#include "core/worker_pool.h"
#include "core/zero_page.h"
#include "file/mapped_ram_internal.h"
#include "file/stats.h"

namespace ferry::mapped_ram {
namespace {

// Reader threads take the pages of a block in chunks of at least this many.
constexpr uint64_t kMinChunkPages = 1024;

class MappedRamReceiver final : public PageReceiver {
 public:
  std::vector<std::string> announced_capabilities() const override { return {"mapped-ram"}; }
  MappedRamReceiver(FileChannel& file, FileOptions options)
      : file_(file), options_(std::move(options)), note_(options_.note) {
    const size_t n = std::max<size_t>(1, options_.channels);
    for (size_t i = 0; i < n; ++i) readers_.push_back(std::make_unique<Reader>());
  }

  Status Start(std::function<void(const Status&)> on_error) override {
    (void)on_error;  // pages load in OnBlockListed, on the loader's thread
    return OpenFds();
  }

  Status OnBlockListed(StreamReader& r, RamBlock& b) override {
    const std::string where = "block '" + b.name + "'";
    if (aborted()) return Status::Cancelled("mapped-ram: load cancelled");
    FERRY_RETURN_IF_ERROR(OpenFds());
    uint8_t raw[kHeaderSize];
    r.GetBytes(raw, sizeof(raw));
    if (!r.status().ok()) return r.status().WithContext(where + ": reading its mapped-ram header");
    auto decoded = DecodeHeader(raw);
    if (!decoded.ok()) {
      const std::string plain = PlainStreamHint(raw);
      if (!plain.empty()) {
        return Status::Protocol(where + ": no mapped-ram header after the block's entry; found " + plain +
                                " instead: is this a plain stream? load without -c mapped-ram=on");
      }
      return decoded.status().WithContext(where);
    }
    const Header h = *decoded;
    FERRY_ASSIGN_OR_RETURN(const uint64_t size, file_.Size());
    // Where the main stream stands: right behind the header.
    const uint64_t here = file_.position() - r.buffered();
    const uint64_t pages = b.pages();
    const uint64_t bitmap_bytes = BitmapBytes(pages);

    // Everything is checked before the first read.
    if (h.bitmap_offset < here) {
      return Status::Protocol(where + ": bitmap at " + Hex(h.bitmap_offset) + " lies before the end of its header (" +
                              Hex(here) + ")");
    }
    if (h.bitmap_offset > size || bitmap_bytes > size - h.bitmap_offset) {
      return Status::Protocol(where + ": bitmap at " + Hex(h.bitmap_offset) + " (" + std::to_string(bitmap_bytes) +
                              " bytes) runs past the end of the file (size " + Hex(size) + ")");
    }
    if (h.pages_offset % kPageSize) {
      return Status::Protocol(where + ": page region offset " + Hex(h.pages_offset) + " is not page-aligned");
    }
    if (h.pages_offset < h.bitmap_offset + bitmap_bytes) {
      return Status::Protocol(where + ": page region at " + Hex(h.pages_offset) + " overlaps its bitmap (" +
                              Hex(h.bitmap_offset) + ".." + Hex(h.bitmap_offset + bitmap_bytes) + ")");
    }
    if (h.pages_offset > size || b.used_length > size - h.pages_offset) {
      const uint64_t end = h.pages_offset + b.used_length;
      return Status::Protocol(where + ": page region " + Hex(h.pages_offset) + ".." +
                              (end < h.pages_offset ? std::string("(overflow)") : Hex(end)) +
                              " runs past the end of the file (size " + Hex(size) +
                              ") -- the save did not finish?");
    }

    DirtyBitmap present(pages);
    FERRY_RETURN_IF_ERROR(file_.PreadExact(present.words().data(), bitmap_bytes, h.bitmap_offset)
                              .WithContext(where + ": reading its bitmap"));
    WordsFromFile(present.words());
    if (pages % 64) {
      const uint64_t spare = present.words().back() & ~((1ull << (pages % 64)) - 1);
      if (spare) {
        const uint64_t bit = (present.words().size() - 1) * 64 + std::countr_zero(spare);
        return Status::Protocol(where + ": bitmap has bit " + std::to_string(bit) + " set, beyond the block's " +
                                std::to_string(pages) + " pages");
      }
    }

    huge_ = ThpEligible(b.host);
    FERRY_RETURN_IF_ERROR(LoadPages(b, h, present).WithContext(where));
    // The pages loaded are no longer known to be zero; holes (and gaps read
    // along, zeroed again) still are.
    if (b.known_zero.size() == pages) {
      for (size_t w = 0; w < present.words().size(); ++w) b.known_zero.words()[w] &= ~present.words()[w];
    }

    // The main stream goes on after the page region.
    const uint64_t resume = h.pages_offset + b.used_length;
    const uint64_t now = file_.position() - r.buffered();
    FERRY_RETURN_IF_ERROR(file_.Seek(resume).WithContext(where + ": moving past its pages"));
    r.DiscardBuffer(resume - now);
    return Status::Ok();
  }

  uint64_t forbidden_flags() const override {
    return wire::kRamZero | wire::kRamPage | wire::kRamMultifdFlush | wire::kRamXbzrle | wire::kRamZeroRun |
           wire::kRamPageRun;
  }
  void BlocksReady(RamBlockList& blocks) override { (void)blocks; }
  Status Sync() override { return Status::Ok(); }
  void Abort() override { aborted_.store(true, std::memory_order_release); }
  Status Finish() override { return Status::Ok(); }

  void FillStats(MigrationStats& stats) const override {
    uint64_t pages = 0;
    for (const auto& rd : readers_) pages += rd->pages.load(std::memory_order_relaxed);
    // The pages came from the file, not as records of the main stream.
    stats.ram.normal += pages;
    stats.ram.normal_bytes += pages * kPageSize;
    if (options_.channels == 0) return;
    auto t = std::make_shared<FileThreadStats>();
    t->threads.resize(readers_.size());
    for (size_t i = 0; i < readers_.size(); ++i) {
      FileThread& c = t->threads[i];
      c.pages = readers_[i]->pages.load(std::memory_order_relaxed);
      c.bytes = c.pages * kPageSize;
      c.requests = readers_[i]->requests.load(std::memory_order_relaxed);
    }
    stats.Set(std::move(t));
  }

 private:
  struct Reader {
    UniqueFd fd;
    std::atomic<uint64_t> pages{0};
    std::atomic<uint64_t> requests{0};
  };

  bool aborted() const { return aborted_.load(std::memory_order_acquire); }

  Status OpenFds() {
    if (opened_) return Status::Ok();
    if (options_.direct_io) FERRY_RETURN_IF_ERROR(CheckDirectIo(file_.path()));
    for (auto& rd : readers_) {
      FERRY_ASSIGN_OR_RETURN(rd->fd, DataFd(file_, false, options_.direct_io));
    }
    opened_ = true;
    return Status::Ok();
  }

  // Reads the pages whose bit is set in [first, end) of block b. Short gaps
  // of clear bits between them (as a reserved save writes them) are read
  // along, so that a finely mixed guest takes few large requests instead of
  // many small ones, and zeroed afterwards: whatever the file holds there
  // is not the guest's.
  Status LoadRange(IoEngine& io, Reader& rd, const RamBlock& b, const Header& h, const DirtyBitmap& present,
                   uint64_t first, uint64_t end) {
    std::vector<std::pair<uint64_t, uint64_t>> gaps;  // [from, to): read along, zeroed after the reads
    uint64_t i = present.FindNextSet(first);
    while (i < end) {
      if (aborted()) return Status::Cancelled("mapped-ram: load cancelled");
      uint64_t j = i + 1;
      uint64_t gap_pages = 0;
      while (j < end && j - i < kMaxRunPages) {
        if (present.Test(j)) {
          ++j;
          continue;
        }
        const uint64_t next = present.FindNextSet(j);
        if (next >= end || next - j >= kMinPunchPages || next + 1 - i > kMaxRunPages) break;
        // A fresh destination reads along only gaps inside one 2 MiB region
        // that receives data anyway and is one huge page (one fault either
        // way): holes elsewhere stay unread and unpopulated.
        if (b.known_zero.size() != 0 && (!huge_ || ((j - 1) >> 9) != (next >> 9))) break;
        gaps.emplace_back(j, next);
        gap_pages += next - j;
        j = next;
      }
      FERRY_RETURN_IF_ERROR(io.Read(b.page(i), (j - i) * kPageSize, h.pages_offset + i * kPageSize));
      rd.pages.fetch_add(j - i - gap_pages, std::memory_order_relaxed);
      rd.requests.fetch_add(1, std::memory_order_relaxed);
      i = j < end ? present.FindNextSet(j) : end;
    }
    FERRY_RETURN_IF_ERROR(io.Drain());
    for (const auto& [from, to] : gaps) {
      for (uint64_t p = from; p < to; ++p) {
        if (!IsZeroPage(b.page(p))) std::memset(b.page(p), 0, kPageSize);
      }
    }
    if (!options_.fresh_memory) {
      for (uint64_t p = first; p < end; ++p) {
        if (!present.Test(p) && !IsZeroPage(b.page(p))) std::memset(b.page(p), 0, kPageSize);
      }
    }
    return Status::Ok();
  }

  Status LoadWith(Reader& rd, const RamBlock& b, const Header& h, const DirtyBitmap& present,
                  std::atomic<uint64_t>& next_chunk, uint64_t chunk_pages, uint64_t chunks) {
    std::vector<iovec> regions{iovec{b.host, b.used_length}};
    auto io = MakeIoEngine(EngineOptions(rd.fd.get(), options_, std::move(regions)),
                           [this](std::string_view line) { note_(line); });
    if (!io.ok()) return io.status().WithContext("page I/O on " + file_.path());
    const uint64_t pages = b.pages();
    while (true) {
      const uint64_t c = next_chunk.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) break;
      const uint64_t first = c * chunk_pages;
      const uint64_t end = std::min(pages, first + chunk_pages);
      Status s = LoadRange(**io, rd, b, h, present, first, end);
      if (!s.ok()) {
        (void)(*io)->Drain();
        return s.WithContext("loading pages from " + file_.path());
      }
    }
    return Status::Ok();
  }

  Status LoadPages(const RamBlock& b, const Header& h, const DirtyBitmap& present) {
    const uint64_t pages = b.pages();
    std::atomic<uint64_t> next_chunk{0};
    if (options_.channels == 0) return LoadWith(*readers_[0], b, h, present, next_chunk, pages, 1);
    const uint64_t n = readers_.size();
    // Several chunks per thread so a thread that finds more set bits does
    // not hold the others up; word-aligned chunks.
    const uint64_t chunk = RoundUp(std::max(kMinChunkPages, (pages + n * 4 - 1) / (n * 4)), 64);
    const uint64_t chunks = (pages + chunk - 1) / chunk;
    const uint64_t threads = std::min<uint64_t>(n, chunks);
    std::vector<Status> results(threads);
    ParallelFor(static_cast<unsigned>(threads), "mapped-ram-r-", [&](unsigned t) {
      results[t] = LoadWith(*readers_[t], b, h, present, next_chunk, chunk, chunks);
      // First failure: the others take no new chunk.
      if (!results[t].ok()) next_chunk.store(chunks, std::memory_order_relaxed);
    });
    for (Status& s : results) {
      if (!s.ok()) return s;
    }
    return Status::Ok();
  }

  FileChannel& file_;
  const FileOptions options_;
  NoteOnce note_;
  bool opened_ = false;  // loader thread
  bool huge_ = false;    // the block being loaded can take transparent huge pages
  std::vector<std::unique_ptr<Reader>> readers_;
  std::atomic<bool> aborted_{false};
};

}  // namespace

std::unique_ptr<PageReceiver> MakeMappedRamReceiver(FileChannel& main, FileOptions options) {
  return std::make_unique<MappedRamReceiver>(main, std::move(options));
}

}  // namespace ferry::mapped_ram
