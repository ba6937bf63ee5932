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

class RdmaMultifdSink final : public RdmaSinkBase {
 public:
  RdmaMultifdSink(RdmaConnection& conn, std::vector<RdmaConnection*> channels, ZeroPolicy zero, StreamWriter& main,
                  std::function<void(std::string_view)> note)
      : RdmaSinkBase(conn, main), zero_(zero), note_(std::move(note)) {
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

  Status OnSetupEnd() override {
    FERRY_ASSIGN_OR_RETURN(std::vector<DestBlock> dest, RequestBlocks());
    for (size_t i = 0; i < workers_.size(); ++i) {
      Worker& w = workers_[i];
      w.writer.emplace(*w.conn, local_, dest, zero_);
      w.thread = std::thread([this, i] { Loop(i); });
    }
    started_ = true;
    return conn_.SendWhenReady(EncodeEmpty(ControlType::kRegisterFinished));
  }

  bool started() const override { return started_; }

  Status SendRun(uint32_t block, uint64_t off, uint64_t len) override {
    batch_.runs.push_back({block, off, len});
    batch_bytes_ += len;
    if (batch_.runs.size() >= kBatchRuns || batch_bytes_ >= kBatchBytes) return Push();
    return Status();
  }

  Status EndSection() override {
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

  ZeroPolicy zero_;
  std::function<void(std::string_view)> note_;
  bool complete_ = false;
  std::vector<Worker> workers_;
  bool started_ = false;
  bool round_end_ = false;
  Item batch_;
  uint64_t batch_bytes_ = 0;
  size_t next_ = 0;
  uint64_t round_ = 0;

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
