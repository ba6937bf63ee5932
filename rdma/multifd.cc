#include "rdma/multifd.h"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "core/thread_name.h"
#include "core/wire.h"
#include "rdma/source.h"
#include "rdma/stats.h"

namespace ferry::rdma {
namespace {

struct Run {
  uint32_t block;
  uint64_t off, len;
};

struct Item {
  std::vector<Run> runs;
  bool sync = false;
};

// A batch goes to a thread when it holds this many runs or bytes.
constexpr size_t kBatchRuns = 64;
constexpr uint64_t kBatchBytes = 4 * kChunkSize;
// Batches queued per thread before the migration thread waits.
constexpr size_t kQueueDepth = 4;

class RdmaMultifdSink final : public PageSink {
 public:
  RdmaMultifdSink(RdmaConnection& conn, std::vector<RdmaConnection*> channels, ZeroPolicy zero, StreamWriter& main,
                  std::function<void(std::string_view)> note)
      : conn_(conn), main_(main), zero_(zero), note_(std::move(note)), local_(conn.pd(), conn.pin_all()) {
    workers_.resize(channels.size());
    for (size_t i = 0; i < channels.size(); ++i) workers_[i].conn = channels[i];
  }

  ~RdmaMultifdSink() override {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    work_cv_.notify_all();
    for (Worker& w : workers_) {
      if (w.thread.joinable()) w.thread.join();
    }
    if (complete_ && note_ && started_) note_(Stats().Summary());
  }

  Status OnComplete() override {
    complete_ = true;
    round_end_ = true;
    return Status();
  }
  Status OnRoundEnd() override {
    round_end_ = true;
    return Status();
  }

  // After the threads ended (or between rounds).
  RdmaSourceStats Stats() const {
    RdmaSourceStats st;
    st.channels = static_cast<uint32_t>(workers_.size());
    for (const Worker& w : workers_) {
      if (w.writer) AddWriterStats(st, w.writer->counters());
      st.signalled += w.conn->writes_signalled();
    }
    st.local_registrations = local_.registrations();
    st.pin_all = conn_.pin_all();
    return st;
  }

  void FillStats(MigrationStats& stats) const override { published_.FillStats(stats); }

  Status OnBlockListed(RamBlock& block) override {
    blocks_.push_back(&block);
    local_.AddBlock(block.host, block.used_length);
    return Status();
  }

  Status OnSetupEnd() override {
    FERRY_RETURN_IF_ERROR(Hook());
    FERRY_ASSIGN_OR_RETURN(std::vector<DestBlock> dest, RequestRamBlocks(conn_, blocks_));
    if (conn_.pin_all()) FERRY_RETURN_IF_ERROR(local_.PinAll());
    for (size_t i = 0; i < workers_.size(); ++i) {
      Worker& w = workers_[i];
      w.writer.emplace(*w.conn, local_, dest, zero_);
      w.thread = std::thread([this, i] { Loop(i); });
    }
    started_ = true;
    return conn_.SendWhenReady(EncodeEmpty(ControlType::kRegisterFinished));
  }

  void BeginSection() override {
    if (!started_) return;
    in_round_ = true;
    Status s = Hook();
    if (!s.ok()) main_.SetError(s);
  }

  void Page(RamBlock& block, uint64_t page_index, bool zero) override {
    (void)zero;
    if (!main_.status().ok()) return;
    if (runs_.Add(block, page_index)) return;
    Status s = TakeRun();
    if (!s.ok()) return main_.SetError(s);
    runs_.Start(block, page_index, blocks_);
  }

  Status OnSectionEnd() override {
    if (!in_round_) return Status();
    in_round_ = false;
    FERRY_RETURN_IF_ERROR(TakeRun());
    FERRY_RETURN_IF_ERROR(Push());
    // The barrier, at a round's end only (a page is sent once per round, so
    // sections inside a round need none): every thread's COMPRESS entries
    // sent and applied, its WRITEs completed, its channel's REGISTER FINISHED
    // sent; then the main one tells the destination how many rounds to wait for.
    if (round_end_) {
      round_end_ = false;
      ++round_;
      std::unique_lock lock(mu_);
      for (Worker& w : workers_) w.queue.push_back(Item{{}, true});
      work_cv_.notify_all();
      main_cv_.wait(lock, [&] {
        if (failed_ || aborted_) return true;
        for (const Worker& w : workers_) {
          if (w.synced < round_) return false;
        }
        return true;
      });
      if (failed_) return error_;
      if (aborted_) return Status::Cancelled("rdma: migration cancelled");
      lock.unlock();
      published_.Publish(Stats());  // every thread waits for work now
    }
    {
      std::lock_guard lock(mu_);
      if (failed_) return error_;
    }
    return conn_.SendWhenReady(EncodeRegisterFinished(0, round_));
  }

  uint64_t accounted_bytes() const override { return taken_; }

  void Abort() override {
    {
      std::lock_guard lock(mu_);
      aborted_ = true;
    }
    main_cv_.notify_all();
    work_cv_.notify_all();
    conn_.Shutdown();
    for (Worker& w : workers_) w.conn->Shutdown();
  }

 private:
  struct Worker {
    RdmaConnection* conn = nullptr;
    std::optional<PageWriter> writer;
    std::thread thread;
    std::deque<Item> queue;
    uint64_t synced = 0;  // rounds whose marker was sent
  };

  PublishedSourceStats published_;

  Status Hook() {
    main_.PutBe64(wire::kRamHook);
    return main_.Flush();
  }

  Status TakeRun() {
    if (runs_.len == 0) return Status();
    if (runs_.block < 0) return Status::Internal("rdma: page of a block that was not listed");
    batch_.runs.push_back({static_cast<uint32_t>(runs_.block), runs_.off, runs_.len});
    batch_bytes_ += runs_.len;
    taken_ += runs_.len;
    runs_.len = 0;
    if (batch_.runs.size() >= kBatchRuns || batch_bytes_ >= kBatchBytes) return Push();
    return Status();
  }

  // Hands the batch to the next thread (round robin), waiting while its
  // queue is full.
  Status Push() {
    if (batch_.runs.empty()) return Status();
    Worker& w = workers_[next_];
    next_ = (next_ + 1) % workers_.size();
    std::unique_lock lock(mu_);
    main_cv_.wait(lock, [&] { return failed_ || aborted_ || w.queue.size() < kQueueDepth; });
    if (failed_) return error_;
    if (aborted_) return Status::Cancelled("rdma: migration cancelled");
    w.queue.push_back(std::move(batch_));
    batch_ = Item{};
    batch_bytes_ = 0;
    work_cv_.notify_all();
    return Status();
  }

  void Fail(size_t i, const Status& s) {
    {
      std::lock_guard lock(mu_);
      if (!failed_) error_ = s.WithContext("rdma multifd channel " + std::to_string(i));
      failed_ = true;
    }
    main_cv_.notify_all();
  }

  void Loop(size_t i) {
    SetThreadName("rdma-mfd", i);
    Worker& w = workers_[i];
    while (true) {
      Item item;
      {
        std::unique_lock lock(mu_);
        work_cv_.wait(lock, [&] { return stop_ || aborted_ || !w.queue.empty(); });
        if (stop_ || aborted_) return;
        item = std::move(w.queue.front());
        w.queue.pop_front();
        if (failed_) {
          main_cv_.notify_all();
          continue;
        }
      }
      main_cv_.notify_all();  // room in the queue
      Status s;
      for (const Run& r : item.runs) {
        s = w.writer->Run(r.block, r.off, r.len);
        if (!s.ok()) break;
      }
      if (s.ok() && item.sync) {
        s = w.writer->EndRound();
        if (s.ok()) s = w.conn->SendWhenReady(w.writer->FinishedMessage());
      }
      if (!s.ok()) {
        Fail(i, s);
        continue;
      }
      if (item.sync) {
        std::lock_guard lock(mu_);
        ++w.synced;
      }
      if (item.sync) main_cv_.notify_all();
    }
  }

  RdmaConnection& conn_;
  StreamWriter& main_;
  ZeroPolicy zero_;
  std::function<void(std::string_view)> note_;
  bool complete_ = false;
  std::vector<RamBlock*> blocks_;
  LocalMemory local_;
  std::vector<Worker> workers_;  // after local_: their writers go first
  bool started_ = false;
  bool in_round_ = false;
  bool round_end_ = false;
  RunCoalescer runs_;
  Item batch_;
  uint64_t batch_bytes_ = 0;
  size_t next_ = 0;
  uint64_t round_ = 0;
  uint64_t taken_ = 0;

  std::mutex mu_;
  std::condition_variable main_cv_, work_cv_;
  bool stop_ = false, aborted_ = false, failed_ = false;
  Status error_;
};

}  // namespace

Result<std::unique_ptr<PageSink>> RdmaMultifdSinkFactory::Make(StreamWriter& main) {
  if (channels_.empty()) return Status::InvalidArgument("rdma: multifd without channels");
  return std::unique_ptr<PageSink>(std::make_unique<RdmaMultifdSink>(main_, channels_, zero_, main, note_));
}

}  // namespace ferry::rdma
