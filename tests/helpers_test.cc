// The shared small helpers of core/: big-endian loads and stores, Hex(),
// thread names, the worker pool, deadlines and stop wake-ups.
#include <poll.h>
#include <pthread.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "core/deadline.h"
#include "core/endian.h"
#include "core/format.h"
#include "core/stop_fd.h"
#include "core/thread_name.h"
#include "core/worker_pool.h"

namespace ferry {
namespace {

TEST(Endian, StoresBigEndianAndLoadsBack) {
  uint8_t b[8];
  StoreBe16(b, 0x1234);
  EXPECT_EQ(b[0], 0x12);
  EXPECT_EQ(b[1], 0x34);
  EXPECT_EQ(LoadBe16(b), 0x1234);
  StoreBe32(b, 0x5145564d);  // "QEVM"
  EXPECT_EQ(std::memcmp(b, "QEVM", 4), 0);
  EXPECT_EQ(LoadBe32(b), 0x5145564du);
  StoreBe64(b, 0x0102030405060708ull);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(b[i], i + 1);
  EXPECT_EQ(LoadBe64(b), 0x0102030405060708ull);
  // Unaligned addresses.
  uint8_t u[9] = {};
  StoreBe64(u + 1, 0xfedcba9876543210ull);
  EXPECT_EQ(LoadBe64(u + 1), 0xfedcba9876543210ull);
  EXPECT_EQ(u[1], 0xfe);
}

TEST(Format, Hex) {
  EXPECT_EQ(Hex(0), "0x0");
  EXPECT_EQ(Hex(4096), "0x1000");
  EXPECT_EQ(Hex(~0ull), "0xffffffffffffffff");
}

std::string CurrentThreadName() {
  char name[16] = {};
  pthread_getname_np(pthread_self(), name, sizeof(name));
  return name;
}

TEST(ThreadName, SetsAndCutsAt15Characters) {
  std::string a, b;
  std::thread([&] {
    SetThreadName("multifd-send-", 3);
    a = CurrentThreadName();
    SetThreadName("a-name-longer-than-fifteen");
    b = CurrentThreadName();
  }).join();
  EXPECT_EQ(a, "multifd-send-3");
  EXPECT_EQ(b, "a-name-longer-t");
}

TEST(WorkerPool, RunsEveryTaskOnNamedThreads) {
  std::mutex mu;
  std::set<std::string> names;
  std::atomic<int> sum{0};
  {
    WorkerPool pool(3, "pool-", 2);
    EXPECT_EQ(pool.size(), 3u);
    for (int i = 1; i <= 100; ++i) {
      pool.Submit([&, i] {
        sum += i;
        std::lock_guard<std::mutex> lock(mu);
        names.insert(CurrentThreadName());
      });
    }
    pool.Wait();
    EXPECT_EQ(sum.load(), 5050);
  }
  for (const std::string& n : names) EXPECT_TRUE(n == "pool-0" || n == "pool-1" || n == "pool-2") << n;
}

TEST(WorkerPool, SubmitBlocksWhileTheQueueIsFull) {
  WorkerPool pool(1, "bounded-", 1);
  std::atomic<bool> release{false};
  std::atomic<bool> started{false};
  pool.Submit([&] {  // occupies the only thread
    started = true;
    while (!release) std::this_thread::yield();
  });
  while (!started) std::this_thread::yield();
  pool.Submit([] {});  // fills the queue (capacity 1)
  std::atomic<bool> third_submitted{false};
  std::thread submitter([&] {
    pool.Submit([] {});
    third_submitted = true;
  });
  // The third Submit cannot return while the first task holds the thread and
  // the second fills the queue: nothing can have taken a task off it.
  for (int i = 0; i < 1000; ++i) std::this_thread::yield();
  EXPECT_FALSE(third_submitted.load());
  release = true;
  submitter.join();
  EXPECT_TRUE(third_submitted.load());
  pool.Wait();
}

TEST(WorkerPool, ParallelForCoversEveryIndexOnce) {
  std::vector<std::atomic<int>> hits(7);
  ParallelFor(7, "pfor-", [&](unsigned i) { hits[i]++; });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
  int one = 0;
  ParallelFor(1, "pfor-", [&](unsigned i) { one += static_cast<int>(i) + 1; });
  EXPECT_EQ(one, 1);
}

TEST(Deadline, ZeroExpiresAndHugeNever) {
  Deadline now(std::chrono::milliseconds(0));
  EXPECT_TRUE(now.Expired());
  EXPECT_EQ(now.PollMs(), 0);
  Deadline never(std::chrono::milliseconds::max());
  EXPECT_FALSE(never.Expired());
  EXPECT_EQ(never.PollMs(std::chrono::milliseconds(50)), 50);
  EXPECT_EQ(never.PollMs(), 3600 * 1000);  // at most an hour per poll()
  EXPECT_EQ(PollMsFor(std::chrono::microseconds(1), std::chrono::seconds(1)), 1);  // rounded up, no 0 ms spin
}

TEST(StopWatch, StopRequestMakesTheFdReadable) {
  std::stop_source src;
  StopWatch watch(src.get_token());
  ASSERT_TRUE(watch.status().ok()) << watch.status().ToString();
  pollfd p{watch.fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 0), 0);
  src.request_stop();
  EXPECT_EQ(::poll(&p, 1, 1000), 1);
  StopWatch none{std::stop_token{}};
  EXPECT_EQ(none.fd(), -1);
}

}  // namespace
}  // namespace ferry
