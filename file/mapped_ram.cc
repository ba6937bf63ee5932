#include "core/endian.h"
#include "core/format.h"
#include "core/thread_name.h"
#include "core/worker_pool.h"
#include "file/mapped_ram.h"

#include <fcntl.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cinttypes>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <endian.h>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/thp.h"
#include "core/wire.h"
#include "core/zero_page.h"
#include "file/io_engine.h"
#include "file/stats.h"

namespace ferry::mapped_ram {
namespace {

// Longest run of pages handed to the I/O engine as one request (1 MiB).
constexpr uint32_t kMaxRunPages = 256;
// Runs waiting for the writer threads (each at most 1 MiB of guest memory,
// queued by reference). Deep on purpose: while the writers work through
// the queue, the migration thread scans ahead, so a long stretch of zero
// pages (nothing to write) is scanned while earlier data is still being
// written instead of after it.
constexpr size_t kMaxQueuedRuns = 512;
// Reader threads take the pages of a block in chunks of at least this many.
constexpr uint64_t kMinChunkPages = 1024;

uint64_t RoundUp(uint64_t v, uint64_t align) { return (v + align - 1) / align * align; }

// The bitmap's words in file order: little-endian 64-bit words (the host's
// own layout on x86; converted elsewhere).
void WordsToFile(std::vector<uint64_t>& words) {
  if constexpr (std::endian::native != std::endian::little) {
    for (uint64_t& w : words) w = htole64(w);
  }
}
void WordsFromFile(std::vector<uint64_t>& words) {
  if constexpr (std::endian::native != std::endian::little) {
    for (uint64_t& w : words) w = le64toh(w);
  }
}

// Passes each distinct notice on once, whichever thread says it first.
class NoteOnce {
 public:
  explicit NoteOnce(std::function<void(std::string_view)> note) : note_(std::move(note)) {}
  void operator()(std::string_view line) {
    if (!note_) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!seen_.emplace(line).second) return;
    }
    note_(line);
  }

 private:
  std::function<void(std::string_view)> note_;
  std::mutex mu_;
  std::set<std::string, std::less<>> seen_;
};

// Direct I/O needs memory, length and file offset aligned; ferry's requests
// are whole pages at page-aligned offsets, which must be enough.
Status CheckDirectIo(const std::string& path) {
  FERRY_ASSIGN_OR_RETURN(DirectIoAlignment a, ProbeDirectIo(path));
  auto fits = [](uint32_t align) { return align == 0 || (kPageSize % align == 0); };
  if (!fits(a.memory) || !fits(a.offset)) {
    return Status::Unsupported("direct I/O on " + path + " needs " + std::to_string(a.memory) + "-byte memory and " +
                               std::to_string(a.offset) + "-byte offset alignment; mapped-ram pages are 4096 bytes");
  }
  return Status::Ok();
}

// A descriptor for page data: O_DIRECT on request, else a duplicate of the
// main descriptor (positioned I/O only, so sharing the file offset is fine).
Result<UniqueFd> DataFd(FileChannel& file, bool write, bool direct) {
  if (direct) {
    auto fd = OpenDirect(file.path(), write);
    if (!fd.ok()) return fd.status().WithContext("mapped-ram direct I/O");
    return std::move(*fd);
  }
  if (file.fd() >= 0) {
    int fd = ::fcntl(file.fd(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return ErrnoStatus("duplicating the descriptor of " + file.path());
    return UniqueFd(fd);
  }
  int fd = ::open(file.path().c_str(), (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("opening " + file.path());
  return UniqueFd(fd);
}

// What a plain (not mapped-ram) stream has where the mapped-ram header
// should be: the next block's entry {u8 len, name, be64 length} or the EOS
// record that closes the block list. "" if the bytes look like neither.
std::string PlainStreamHint(const uint8_t raw[kHeaderSize]) {
  if (LoadBe64(raw) == wire::kRamEos) return "the end of the block list";
  const size_t len = raw[0];
  if (len == 0) return "";
  const size_t shown = std::min(len, kHeaderSize - 1);
  for (size_t i = 1; i <= shown; ++i) {
    if (raw[i] < 0x20 || raw[i] > 0x7e) return "";
  }
  if (1 + len + 8 <= kHeaderSize) {
    const uint64_t length = LoadBe64(raw + 1 + len);
    if (length == 0 || length % kPageSize) return "";
  }
  return "what looks like the entry of block '" + std::string(reinterpret_cast<const char*>(raw + 1), shown) +
         (shown < len ? "...'" : "'");
}

IoEngineOptions EngineOptions(int fd, const FileOptions& o, std::vector<iovec> regions) {
  IoEngineOptions e;
  e.fd = fd;
  e.queue_depth = o.queue_depth;
  e.max_request = size_t{kMaxRunPages} * kPageSize;
  if (o.register_buffers) e.regions = std::move(regions);
  e.allow_uring = o.allow_uring;
  return e;
}

// ---------------------------------------------------------------------------
// Source: MappedRamSink.

class MappedRamSink final : public PageSink {
 public:
  MappedRamSink(FileChannel& file, StreamWriter& w, const FileOptions& options, std::vector<UniqueFd> fds)
      : file_(file), w_(w), options_(options), note_(options.note) {
    const size_t threads = options.channels;
    for (size_t i = 0; i < fds.size(); ++i) {
      auto wr = std::make_unique<Writer>();
      wr->fd = std::move(fds[i]);
      writers_.push_back(std::move(wr));
    }
    threaded_ = threads > 0;
  }

  ~MappedRamSink() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (auto& wr : writers_) {
      if (wr->thread.joinable()) wr->thread.join();
    }
    // The migration thread's own engine: nothing may stay in flight once the
    // sink is gone.
    if (!threaded_ && !writers_.empty() && writers_[0]->engine) (void)writers_[0]->engine->Drain();
    // Space of absent pages goes back only now, once the guest runs again:
    // it takes a syscall per run and is not needed to make the file valid.
    if (completed_) {
      for (const BlockState& b : blocks_) {
        if (b.reserved) GiveBackAbsent(b);
      }
    }
  }

  Status OnBlockListed(RamBlock& block) override {
    if (block.page_size != kPageSize) {
      return Status::Unsupported("mapped-ram: block '" + block.name + "' has page size " +
                                 std::to_string(block.page_size) + ", only 4096 is supported");
    }
    // The block's entry is buffered; its header goes right behind it.
    FERRY_RETURN_IF_ERROR(w_.Flush());
    const uint64_t at = file_.position();
    const Header h = LayoutFor(at, block.used_length);
    uint8_t raw[kHeaderSize];
    EncodeHeader(h, raw);
    w_.PutBytes(raw, sizeof(raw));
    FERRY_RETURN_IF_ERROR(w_.Flush());
    if (file_.position() != h.bitmap_offset) {
      return Status::Internal("mapped-ram: the header of block '" + block.name + "' ended at " +
                              Hex(file_.position()) + ", expected " + Hex(h.bitmap_offset));
    }
    const bool reserved = Reserve(block, h);
    // The main stream goes on after the block's page region.
    FERRY_RETURN_IF_ERROR(file_.Seek(h.pages_offset + block.used_length)
                              .WithContext("mapped-ram: moving past the pages of block '" + block.name + "'"));
    blocks_.push_back(BlockState{&block, h, DirtyBitmap(block.pages()), reserved});
    return Status::Ok();
  }

  Status OnSetupEnd() override {
    if (writers_.empty()) return Status::Internal("mapped-ram: no data descriptor");
    regions_.clear();
    for (const BlockState& b : blocks_) regions_.push_back(iovec{b.block->host, b.block->used_length});
    if (!threaded_) {
      auto e = MakeIoEngine(EngineOptions(writers_[0]->fd.get(), options_, regions_),
                            [this](std::string_view line) { note_(line); });
      if (!e.ok()) return e.status().WithContext("mapped-ram: page I/O on " + file_.path());
      writers_[0]->engine = std::move(*e);
      return Status::Ok();
    }
    for (size_t i = 0; i < writers_.size(); ++i) {
      writers_[i]->thread = std::thread([this, i] { WriterMain(i); });
    }
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return started_ == writers_.size() || !error_.ok() || aborted(); });
    return ErrorLocked();
  }

  void Page(RamBlock& block, uint64_t page_index, bool zero) override {
    BlockState& b = StateFor(block);
    uint8_t* mem = block.page(page_index);
    const uint64_t offset = b.header.pages_offset + page_index * kPageSize;
    // Does this page continue the open run (after its pending gap), in
    // memory and in the file?
    const uint64_t span = uint64_t{run_.pages} + run_.gap;
    const bool continues = run_.pages > 0 && span < kMaxRunPages && run_.mem + span * kPageSize == mem &&
                           run_.offset + span * kPageSize == offset;
    if (zero) {
      // Whatever an earlier round wrote to its place is ignored from now on.
      b.present.Clear(page_index);
      // In a reserved region a short gap of zero pages keeps its blocks
      // anyway (shorter than kMinPunchPages), so writing it along with the
      // data around it costs no space and turns many small requests into
      // one. Its bit stays clear: a loader never reads it.
      if (continues && b.reserved && run_.gap + 1 < kMinPunchPages) {
        ++run_.gap;
      } else {
        FlushRun();
      }
      return;
    }
    b.present.Set(page_index);
    accounted_ += kPageSize;
    if (continues) {
      run_.pages += run_.gap + 1;
      run_.gap = 0;
      return;
    }
    FlushRun();
    run_ = Run{mem, offset, 1, 0};
  }

  Status OnRoundEnd() override { return Barrier(); }

  Status OnComplete() override {
    FERRY_RETURN_IF_ERROR(Barrier());
    for (BlockState& b : blocks_) {
      std::vector<uint64_t> words = b.present.words();
      WordsToFile(words);
      iovec iov{words.data(), BitmapBytes(b.block->pages())};
      FERRY_RETURN_IF_ERROR(file_.PwriteAll(std::span<iovec>(&iov, 1), b.header.bitmap_offset)
                                .WithContext("mapped-ram: writing the bitmap of block '" + b.block->name + "'"));
    }
    completed_ = true;
    return w_.status();
  }

  Status OnSectionEnd() override {
    FlushRun();
    if (!threaded_) return w_.status();
    std::lock_guard<std::mutex> lock(mu_);
    FERRY_RETURN_IF_ERROR(ErrorLocked());
    return w_.status();
  }

  uint64_t accounted_bytes() const override { return accounted_; }

  void Abort() override {
    aborted_.store(true, std::memory_order_release);
    {
      std::lock_guard<std::mutex> lock(mu_);  // orders the flag with the waits below
    }
    work_cv_.notify_all();
    done_cv_.notify_all();
  }

  void FillStats(MigrationStats& stats) const override {
    if (!threaded_) return;
    auto t = std::make_shared<FileThreadStats>();
    t->threads.resize(writers_.size());
    for (size_t i = 0; i < writers_.size(); ++i) {
      FileThread& c = t->threads[i];
      c.bytes = writers_[i]->bytes.load(std::memory_order_relaxed);
      c.pages = c.bytes / kPageSize;
      c.requests = writers_[i]->requests.load(std::memory_order_relaxed);
    }
    stats.Set(std::move(t));
  }

 private:
  struct BlockState {
    RamBlock* block;
    Header header;
    DirtyBitmap present;  // set: the page's data is in the file
    bool reserved = false;  // the page region was fallocate()d
  };
  // Pages contiguous in guest memory and in the file.
  struct Run {
    uint8_t* mem = nullptr;
    uint64_t offset = 0;
    uint32_t pages = 0;  // to write: data pages and the short zero gaps between them
    uint32_t gap = 0;    // zero pages after them, written only if more data follows
  };
  struct Writer {
    UniqueFd fd;
    std::unique_ptr<IoEngine> engine;
    std::thread thread;
    bool pending = false;  // guarded by mu_: writes queued in the engine, not drained
    std::atomic<uint64_t> bytes{0};
    std::atomic<uint64_t> requests{0};
  };

  bool aborted() const { return aborted_.load(std::memory_order_acquire); }

  BlockState& StateFor(const RamBlock& block) {
    if (last_ < blocks_.size() && blocks_[last_].block == &block) return blocks_[last_];
    for (size_t i = 0; i < blocks_.size(); ++i) {
      if (blocks_[i].block == &block) {
        last_ = i;
        return blocks_[i];
      }
    }
    // The saver only sends pages of listed blocks.
    std::abort();
  }

  // mu_ held (or no threads).
  Status ErrorLocked() const {
    if (!error_.ok()) return error_;
    if (aborted()) return Status::Cancelled("mapped-ram: migration cancelled");
    return Status::Ok();
  }

  void FailLocked(Status s) {
    if (error_.ok()) error_ = std::move(s);
    work_cv_.notify_all();
    done_cv_.notify_all();
  }

  bool WantReserve() const {
    switch (options_.preallocate) {
      case FileOptions::Preallocate::kOn: return true;
      case FileOptions::Preallocate::kOff: return false;
      case FileOptions::Preallocate::kAuto: break;
    }
    return options_.direct_io;
  }

  // fallocate()s the page region of a block (extending the file over it, so
  // page writes never extend it either). false, with a note, where the
  // filesystem refuses; the pages then go into holes.
  bool Reserve(const RamBlock& block, const Header& h) {
    if (!WantReserve() || block.used_length == 0) return false;
    const int fd = writers_[0]->fd.get();
    const auto off = static_cast<off_t>(h.pages_offset);
    const auto len = static_cast<off_t>(block.used_length);
    if (::fallocate(fd, 0, off, len) == 0) return true;
    const int err = errno;
    // A refused reservation may have kept part of the space: give it back,
    // so a nearly full disk still takes the pages that do need space.
    if (err == ENOSPC || err == EDQUOT) (void)::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
    note_("mapped-ram: could not reserve " + std::to_string(block.used_length >> 20) + " MiB for the pages of '" +
          block.name + "' in " + file_.path() + " (" + std::strerror(err) + "); writing them into holes");
    return false;
  }

  // Returns the space of long runs of absent pages (never written, or
  // written in an earlier round and zero since) to the filesystem. Only
  // once the writers are gone: no write is in flight. Failing only costs
  // disk space, so it is a note, not an error.
  void GiveBackAbsent(const BlockState& b) {
    const int fd = writers_[0]->fd.get();
    const uint64_t pages = b.block->pages();
    uint64_t i = b.present.FindNextClear(0);
    while (i < pages) {
      uint64_t j = b.present.FindNextSet(i);
      if (j > pages) j = pages;
      if (j - i >= kMinPunchPages) {
        const auto off = static_cast<off_t>(b.header.pages_offset + i * kPageSize);
        const auto len = static_cast<off_t>((j - i) * kPageSize);
        if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len) != 0) {
          note_(std::string("mapped-ram: could not release the space of absent pages in ") + file_.path() + " (" +
                std::strerror(errno) + "); the file keeps it");
          return;
        }
      }
      i = j < pages ? b.present.FindNextClear(j) : pages;
    }
  }

  // Hands the current run to the engine or the writer threads.
  void FlushRun() {
    if (run_.pages == 0) return;
    const Run r = run_;
    run_.pages = 0;
    run_.gap = 0;
    if (!w_.status().ok()) return;
    if (!threaded_) {
      if (aborted()) {
        w_.SetError(Status::Cancelled("mapped-ram: migration cancelled"));
        return;
      }
      Writer& wr = *writers_[0];
      const uint64_t len = uint64_t{r.pages} * kPageSize;
      Status s = wr.engine->Write(r.mem, len, r.offset);
      if (!s.ok()) {
        w_.SetError(s.WithContext("mapped-ram: writing pages to " + file_.path()));
        return;
      }
      wr.bytes.fetch_add(len, std::memory_order_relaxed);
      wr.requests.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    std::unique_lock<std::mutex> lock(mu_);
    const size_t cap = kMaxQueuedRuns;
    done_cv_.wait(lock, [&] { return queue_.size() < cap || !error_.ok() || aborted(); });
    Status s = ErrorLocked();
    if (!s.ok()) {
      lock.unlock();
      w_.SetError(std::move(s));
      return;
    }
    queue_.push_back(r);
    lock.unlock();
    work_cv_.notify_one();
  }

  // Every page handed over so far is in the file: no write of this round can
  // still be in flight when the next round rewrites the same page.
  Status Barrier() {
    FlushRun();
    FERRY_RETURN_IF_ERROR(w_.status());
    if (!threaded_) {
      if (!writers_[0]->engine) return Status::Internal("mapped-ram: pages before setup ended");
      Status s = writers_[0]->engine->Drain();
      if (!s.ok()) {
        s = s.WithContext("mapped-ram: writing pages to " + file_.path());
        w_.SetError(s);
        return s;
      }
      return aborted() ? Status::Cancelled("mapped-ram: migration cancelled") : Status::Ok();
    }
    std::unique_lock<std::mutex> lock(mu_);
    work_cv_.notify_all();
    done_cv_.wait(lock, [&] {
      return (queue_.empty() && busy_ == 0 && pending_writers_ == 0) || !error_.ok() || aborted();
    });
    Status s = ErrorLocked();
    lock.unlock();
    if (!s.ok()) w_.SetError(s);
    return s;
  }

  void WriterMain(size_t id) {
    SetThreadName("mapped-ram-w-", id);
    Writer& me = *writers_[id];
    auto e = MakeIoEngine(EngineOptions(me.fd.get(), options_, regions_),
                          [this](std::string_view line) { note_(line); });
    std::unique_lock<std::mutex> lock(mu_);
    if (!e.ok()) {
      FailLocked(e.status().WithContext("mapped-ram writer " + std::to_string(id) + ": page I/O on " + file_.path()));
      return;
    }
    me.engine = std::move(*e);
    ++started_;
    done_cv_.notify_all();
    while (!stop_ && !aborted() && error_.ok()) {
      if (!queue_.empty()) {
        const Run r = queue_.front();
        queue_.pop_front();
        ++busy_;
        if (!me.pending) {
          me.pending = true;
          ++pending_writers_;
        }
        lock.unlock();
        done_cv_.notify_all();  // room in the queue
        const uint64_t len = uint64_t{r.pages} * kPageSize;
        Status s = me.engine->Write(r.mem, len, r.offset);
        if (s.ok()) {
          me.bytes.fetch_add(len, std::memory_order_relaxed);
          me.requests.fetch_add(1, std::memory_order_relaxed);
        }
        lock.lock();
        --busy_;
        if (!s.ok()) FailLocked(s.WithContext("mapped-ram writer " + std::to_string(id) + ": writing pages to " +
                                              file_.path()));
        continue;
      }
      if (me.pending) {
        // Nothing queued: finish what this engine has in flight, so a
        // barrier can complete.
        lock.unlock();
        Status s = me.engine->Drain();
        lock.lock();
        me.pending = false;
        --pending_writers_;
        if (!s.ok()) FailLocked(s.WithContext("mapped-ram writer " + std::to_string(id) + ": writing pages to " +
                                              file_.path()));
        done_cv_.notify_all();
        continue;
      }
      work_cv_.wait(lock);
    }
    const bool pending = me.pending;
    lock.unlock();
    // Stopping: the engine must not hold requests on guest memory any more.
    if (pending) (void)me.engine->Drain();
  }

  FileChannel& file_;
  StreamWriter& w_;
  const FileOptions options_;
  NoteOnce note_;
  bool threaded_ = false;
  std::vector<BlockState> blocks_;  // migration thread
  size_t last_ = 0;
  std::vector<iovec> regions_;      // fixed once the writers start
  Run run_;                         // migration thread
  uint64_t accounted_ = 0;          // migration thread
  bool completed_ = false;          // migration thread: every bitmap is written
  // One per writer thread, or the migration thread's own (channels == 0).
  // Fixed size from construction, so FillStats may read the counters from
  // any thread.
  std::vector<std::unique_ptr<Writer>> writers_;

  std::atomic<bool> aborted_{false};
  mutable std::mutex mu_;
  std::condition_variable work_cv_;  // writers: runs queued, stop, abort
  std::condition_variable done_cv_;  // migration thread: room, barrier, start, errors
  std::deque<Run> queue_;            // guarded by mu_
  size_t busy_ = 0;                  // guarded by mu_: runs taken, not yet queued in an engine
  size_t pending_writers_ = 0;       // guarded by mu_
  size_t started_ = 0;               // guarded by mu_
  bool stop_ = false;                // guarded by mu_
  Status error_;                     // guarded by mu_: first writer failure
};

// ---------------------------------------------------------------------------
// Destination: MappedRamReceiver.

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
    return wire::kRamZero | wire::kRamPage | wire::kRamMultifdFlush | wire::kRamXbzrle;
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

void EncodeHeader(const Header& h, uint8_t out[kHeaderSize]) {
  StoreBe32(out, h.version);
  StoreBe64(out + 4, h.page_size);
  StoreBe64(out + 12, h.bitmap_offset);
  StoreBe64(out + 20, h.pages_offset);
}

Result<Header> DecodeHeader(const uint8_t in[kHeaderSize]) {
  Header h;
  h.version = LoadBe32(in);
  h.page_size = LoadBe64(in + 4);
  h.bitmap_offset = LoadBe64(in + 12);
  h.pages_offset = LoadBe64(in + 20);
  if (h.version != kVersion) {
    std::string msg = "mapped-ram header version " + std::to_string(h.version) + " is not supported (expected " +
                      std::to_string(kVersion) + ")";
    if (h.version == 0) msg += ": is this a plain stream? load without -c mapped-ram=on";
    return Status::Protocol(std::move(msg));
  }
  if (h.page_size != kPageSize) {
    return Status::Protocol("mapped-ram header: page size " + std::to_string(h.page_size) + " is not 4096");
  }
  return h;
}

uint64_t BitmapBytes(uint64_t pages) { return (pages + 63) / 64 * 8; }

Header LayoutFor(uint64_t header_offset, uint64_t used_length) {
  Header h;
  h.version = kVersion;
  h.page_size = kPageSize;
  h.bitmap_offset = header_offset + kHeaderSize;
  h.pages_offset = RoundUp(h.bitmap_offset + BitmapBytes(used_length / kPageSize), kFileOffsetAlignment);
  return h;
}

MappedRamSinkFactory::MappedRamSinkFactory(FileChannel& main, FileOptions options)
    : main_(main), options_(std::move(options)) {}

MappedRamSinkFactory::~MappedRamSinkFactory() = default;

Result<std::unique_ptr<PageSink>> MappedRamSinkFactory::Make(StreamWriter& main) {
  if (options_.direct_io) FERRY_RETURN_IF_ERROR(CheckDirectIo(main_.path()));
  std::vector<UniqueFd> fds;
  const size_t n = std::max<size_t>(1, options_.channels);
  for (size_t i = 0; i < n; ++i) {
    FERRY_ASSIGN_OR_RETURN(UniqueFd fd, DataFd(main_, true, options_.direct_io));
    fds.push_back(std::move(fd));
  }
  return std::unique_ptr<PageSink>(new MappedRamSink(main_, main, options_, std::move(fds)));
}

std::unique_ptr<PageReceiver> MakeMappedRamReceiver(FileChannel& main, FileOptions options) {
  return std::make_unique<MappedRamReceiver>(main, std::move(options));
}

}  // namespace ferry::mapped_ram
