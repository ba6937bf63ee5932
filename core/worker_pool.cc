#include "core/worker_pool.h"

#include <algorithm>
#include <utility>

#include "core/thread_name.h"

namespace ferry {

WorkerPool::WorkerPool(unsigned threads, std::string_view name, size_t queue_capacity)
    : name_(name), capacity_(std::max<size_t>(1, queue_capacity)) {
  threads = std::max(1u, threads);
  threads_.reserve(threads);
  for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this, i] { Main(i); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void WorkerPool::Submit(std::function<void()> task) {
  std::unique_lock<std::mutex> lock(mu_);
  space_.wait(lock, [&] { return queue_.size() < capacity_; });
  queue_.push_back(std::move(task));
  lock.unlock();
  work_.notify_one();
}

void WorkerPool::Wait() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_.wait(lock, [&] { return queue_.empty() && running_ == 0; });
}

void WorkerPool::Main(unsigned index) {
  SetThreadName(name_, index);
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
    if (queue_.empty()) return;  // stopping, and nothing left to run
    std::function<void()> task = std::move(queue_.front());
    queue_.pop_front();
    ++running_;
    lock.unlock();
    space_.notify_one();
    task();
    task = nullptr;  // destroy captures outside the lock
    lock.lock();
    --running_;
    if (queue_.empty() && running_ == 0) idle_.notify_all();
  }
}

void ParallelFor(unsigned n, std::string_view name, const std::function<void(unsigned)>& fn) {
  if (n == 0) return;
  if (n == 1) {
    fn(0);
    return;
  }
  WorkerPool pool(n, name, n);
  for (unsigned i = 0; i < n; ++i) pool.Submit([&fn, i] { fn(i); });
  pool.Wait();
}

}  // namespace ferry
