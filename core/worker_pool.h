// A fixed set of named worker threads taking tasks from a bounded queue: the
// one thread pool (verification hashing, the synthetic guest's fill,
// mapped-ram's reader threads).
//
//   WorkerPool pool(4, "verify-", /*queue_capacity=*/8);   // threads verify-0..3
//   for (auto& chunk : chunks) pool.Submit([&] { Hash(chunk); });  // blocks while 8 wait
//   pool.Wait();                                             // all submitted tasks ran
//
//   // fork-join over indexes: fn(0) .. fn(n-1), each on a pool thread
//   ParallelFor(n, "mapped-ram-r-", [&](unsigned i) { ... });
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace ferry {

class WorkerPool {
 public:
  // `threads` (at least 1) named `name` + index; Submit() blocks while
  // `queue_capacity` (at least 1) tasks wait for a thread.
  WorkerPool(unsigned threads, std::string_view name, size_t queue_capacity);
  // Runs what was submitted, then joins the threads.
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  void Submit(std::function<void()> task);
  // Returns once every task submitted so far has run.
  void Wait();
  unsigned size() const { return static_cast<unsigned>(threads_.size()); }

 private:
  void Main(unsigned index);

  std::string name_;
  const size_t capacity_;
  std::mutex mu_;
  std::condition_variable work_;   // a task was queued, or stopping
  std::condition_variable space_;  // the queue has room
  std::condition_variable idle_;   // a task finished
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  size_t running_ = 0;                       // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> threads_;
};

// Runs fn(0) .. fn(n-1) on n threads named `name` + index and returns when
// all have returned. n == 1 runs fn(0) on the calling thread.
void ParallelFor(unsigned n, std::string_view name, const std::function<void(unsigned)>& fn);

}  // namespace ferry
