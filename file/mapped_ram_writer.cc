// mapped-ram, source side. Two jobs, two parts:
//
//   MappedRamSink   the policy: each block's header in the stream, its page
//                   region reserved (fallocate) or not, pages gathered into
//                   runs contiguous in memory and in the file (short zero gaps
//                   written along in reserved space), the bitmap at
//                   completion, long absent runs given back afterwards.
//   RunWriter       where the runs go, chosen once by FileOptions::channels:
//                   InlineRunWriter  0: the migration thread writes them
//                                    through its own I/O engine;
//                   PoolRunWriter    N: a bounded queue feeding N named
//                                    writer threads, each with its own
//                                    descriptor and engine.
//
// (Why two writers and not a pool of one: with channels=0 the migration
// thread queues each run in its own engine and goes on scanning, with no
// lock, queue or thread hand-off per run; that is QEMU's mapped-ram without
// multifd. A one-thread pool would add a hand-off per 1 MiB run for nothing.)
#include <fcntl.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "core/format.h"
#include "core/thread_name.h"
#include "file/mapped_ram_internal.h"
#include "file/stats.h"

namespace ferry::mapped_ram {
namespace {

// Runs waiting for the writer threads (each at most 1 MiB of guest memory,
// queued by reference). Deep on purpose: while the writers work through
// the queue, the migration thread scans ahead, so a long stretch of zero
// pages (nothing to write) is scanned while earlier data is still being
// written instead of after it.
constexpr size_t kMaxQueuedRuns = 512;

// Pages contiguous in guest memory and in the file.
struct Run {
  uint8_t* mem = nullptr;
  uint64_t offset = 0;
  uint32_t pages = 0;  // to write: data pages and the short zero gaps between them
  uint32_t gap = 0;    // zero pages after them, written only if more data follows
};

// Where the sink's runs go. The migration thread calls everything but
// Abort (any thread) and FillStats (any thread).
class RunWriter {
 public:
  virtual ~RunWriter() = default;
  // Once the guest memory regions are known (setup end): engines, threads.
  virtual Status Start(const std::vector<iovec>& regions) = 0;
  // Hands over one run; an error is the first failure, with its context.
  virtual Status Write(const Run& r) = 0;
  // Every run handed over so far is in the file.
  virtual Status Drain() = 0;
  // The first failure of a writer thread so far, if any.
  virtual Status status() = 0;
  // Ends every thread; nothing is in flight afterwards.
  virtual void Stop() = 0;
  virtual void Abort() = 0;
  virtual void FillStats(MigrationStats& stats) const = 0;
  // The first data descriptor (the sink's fallocate calls).
  virtual int fd() const = 0;
};

Status Cancelled() { return Status::Cancelled("mapped-ram: migration cancelled"); }

// channels = 0: the migration thread writes.
class InlineRunWriter final : public RunWriter {
 public:
  InlineRunWriter(UniqueFd fd, const FileOptions& options, NoteOnce& note, std::string path)
      : fd_(std::move(fd)), options_(options), note_(note), path_(std::move(path)) {}
  ~InlineRunWriter() override { Stop(); }

  Status Start(const std::vector<iovec>& regions) override {
    auto e = MakeIoEngine(EngineOptions(fd_.get(), options_, regions), [this](std::string_view line) { note_(line); });
    if (!e.ok()) return e.status().WithContext("mapped-ram: page I/O on " + path_);
    engine_ = std::move(*e);
    return Status::Ok();
  }

  Status Write(const Run& r) override {
    if (aborted_.load(std::memory_order_acquire)) return Cancelled();
    const uint64_t len = uint64_t{r.pages} * kPageSize;
    Status s = engine_->Write(r.mem, len, r.offset);
    if (!s.ok()) return s.WithContext("mapped-ram: writing pages to " + path_);
    return Status::Ok();
  }

  Status Drain() override {
    if (!engine_) return Status::Internal("mapped-ram: pages before setup ended");
    Status s = engine_->Drain();
    if (!s.ok()) return s.WithContext("mapped-ram: writing pages to " + path_);
    return aborted_.load(std::memory_order_acquire) ? Cancelled() : Status::Ok();
  }

  Status status() override { return Status::Ok(); }
  // Nothing may stay in flight once the sink is gone.
  void Stop() override {
    if (engine_) (void)engine_->Drain();
  }
  void Abort() override { aborted_.store(true, std::memory_order_release); }
  // No threads to report.
  void FillStats(MigrationStats& stats) const override { (void)stats; }
  int fd() const override { return fd_.get(); }

 private:
  UniqueFd fd_;
  const FileOptions& options_;
  NoteOnce& note_;
  const std::string path_;
  std::unique_ptr<IoEngine> engine_;
  std::atomic<bool> aborted_{false};
};

// channels = N: a bounded queue of runs and N writer threads.
class PoolRunWriter final : public RunWriter {
 public:
  PoolRunWriter(std::vector<UniqueFd> fds, const FileOptions& options, NoteOnce& note, std::string path)
      : options_(options), note_(note), path_(std::move(path)) {
    for (UniqueFd& fd : fds) {
      auto wr = std::make_unique<Writer>();
      wr->fd = std::move(fd);
      writers_.push_back(std::move(wr));
    }
  }
  ~PoolRunWriter() override { Stop(); }

  Status Start(const std::vector<iovec>& regions) override {
    regions_ = regions;
    for (size_t i = 0; i < writers_.size(); ++i) {
      writers_[i]->thread = std::thread([this, i] { WriterMain(i); });
    }
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return started_ == writers_.size() || !error_.ok() || aborted(); });
    return ErrorLocked();
  }

  Status Write(const Run& r) override {
    std::unique_lock<std::mutex> lock(mu_);
    done_cv_.wait(lock, [&] { return queue_.size() < kMaxQueuedRuns || !error_.ok() || aborted(); });
    FERRY_RETURN_IF_ERROR(ErrorLocked());
    queue_.push_back(r);
    lock.unlock();
    work_cv_.notify_one();
    return Status::Ok();
  }

  Status Drain() override {
    std::unique_lock<std::mutex> lock(mu_);
    work_cv_.notify_all();
    done_cv_.wait(lock, [&] {
      return (queue_.empty() && busy_ == 0 && pending_writers_ == 0) || !error_.ok() || aborted();
    });
    return ErrorLocked();
  }

  Status status() override {
    std::lock_guard<std::mutex> lock(mu_);
    return ErrorLocked();
  }

  void Stop() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (auto& wr : writers_) {
      if (wr->thread.joinable()) wr->thread.join();
    }
  }

  void Abort() override {
    aborted_.store(true, std::memory_order_release);
    {
      std::lock_guard<std::mutex> lock(mu_);  // orders the flag with the waits below
    }
    work_cv_.notify_all();
    done_cv_.notify_all();
  }

  void FillStats(MigrationStats& stats) const override {
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

  int fd() const override { return writers_[0]->fd.get(); }

 private:
  struct Writer {
    UniqueFd fd;
    std::unique_ptr<IoEngine> engine;
    std::thread thread;
    bool pending = false;  // guarded by mu_: writes queued in the engine, not drained
    std::atomic<uint64_t> bytes{0};
    std::atomic<uint64_t> requests{0};
  };

  bool aborted() const { return aborted_.load(std::memory_order_acquire); }

  // mu_ held.
  Status ErrorLocked() const {
    if (!error_.ok()) return error_;
    if (aborted()) return Cancelled();
    return Status::Ok();
  }

  void FailLocked(Status s) {
    if (error_.ok()) error_ = std::move(s);
    work_cv_.notify_all();
    done_cv_.notify_all();
  }

  void WriterMain(size_t id) {
    SetThreadName("mapped-ram-w-", id);
    Writer& me = *writers_[id];
    auto e = MakeIoEngine(EngineOptions(me.fd.get(), options_, regions_),
                          [this](std::string_view line) { note_(line); });
    std::unique_lock<std::mutex> lock(mu_);
    if (!e.ok()) {
      FailLocked(e.status().WithContext("mapped-ram writer " + std::to_string(id) + ": page I/O on " + path_));
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
        if (!s.ok()) FailLocked(s.WithContext("mapped-ram writer " + std::to_string(id) + ": writing pages to " + path_));
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
        if (!s.ok()) FailLocked(s.WithContext("mapped-ram writer " + std::to_string(id) + ": writing pages to " + path_));
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

  const FileOptions& options_;
  NoteOnce& note_;
  const std::string path_;
  std::vector<iovec> regions_;  // fixed once the writers start
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

class MappedRamSink final : public PageSink {
 public:
  MappedRamSink(FileChannel& file, StreamWriter& w, const FileOptions& options, std::vector<UniqueFd> fds)
      : file_(file), w_(w), options_(options), note_(options.note) {
    if (options.channels > 0) {
      writer_ = std::make_unique<PoolRunWriter>(std::move(fds), options_, note_, file.path());
    } else {
      writer_ = std::make_unique<InlineRunWriter>(std::move(fds[0]), options_, note_, file.path());
    }
  }

  ~MappedRamSink() override {
    writer_->Stop();
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
    std::vector<iovec> regions;
    for (const BlockState& b : blocks_) regions.push_back(iovec{b.block->host, b.block->used_length});
    return writer_->Start(regions);
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
    FERRY_RETURN_IF_ERROR(writer_->status());
    return w_.status();
  }

  uint64_t accounted_bytes() const override { return accounted_; }
  void Abort() override { writer_->Abort(); }
  void FillStats(MigrationStats& stats) const override { writer_->FillStats(stats); }

 private:
  struct BlockState {
    RamBlock* block;
    Header header;
    DirtyBitmap present;  // set: the page's data is in the file
    bool reserved = false;  // the page region was fallocate()d
  };

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
    const int fd = writer_->fd();
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
  // once the writers are stopped: no write is in flight. Failing only costs
  // disk space, so it is a note, not an error.
  void GiveBackAbsent(const BlockState& b) {
    const int fd = writer_->fd();
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

  // Hands the current run to the writer.
  void FlushRun() {
    if (run_.pages == 0) return;
    const Run r = run_;
    run_.pages = 0;
    run_.gap = 0;
    if (!w_.status().ok()) return;
    Status s = writer_->Write(r);
    if (!s.ok()) w_.SetError(std::move(s));
  }

  // Every page handed over so far is in the file: no write of this round can
  // still be in flight when the next round rewrites the same page.
  Status Barrier() {
    FlushRun();
    FERRY_RETURN_IF_ERROR(w_.status());
    Status s = writer_->Drain();
    if (!s.ok()) w_.SetError(s);
    return s;
  }

  FileChannel& file_;
  StreamWriter& w_;
  const FileOptions options_;
  NoteOnce note_;
  std::unique_ptr<RunWriter> writer_;  // after options_ and note_, which it refers to
  std::vector<BlockState> blocks_;     // migration thread
  size_t last_ = 0;
  Run run_;                            // migration thread
  uint64_t accounted_ = 0;             // migration thread
  bool completed_ = false;             // migration thread: every bitmap is written
};

}  // namespace

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

}  // namespace ferry::mapped_ram
