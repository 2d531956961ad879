// The decode thread pool (src/backend/cpu/thread_pool.h): every chunk runs exactly once, whatever
// the thread count, from nested calls, from two callers at once and across thread-count changes.
#include "backend/cpu/thread_pool.h"
#include "backend/ops.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace lowbit {
namespace {

// Runs `jobs` jobs of varying chunk counts and checks that each chunk of each ran once.
void expect_each_chunk_once(int jobs) {
  for (int j = 0; j < jobs; ++j) {
    const int64_t n = j % 37;  // 0 and 1 included (no parallel region)
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    parallel_chunks(n, [&](int64_t c) { hits[size_t(c)].fetch_add(1, std::memory_order_relaxed); });
    for (int64_t c = 0; c < n; ++c) ASSERT_EQ(hits[size_t(c)].load(), 1) << "job " << j << " chunk " << c << " of " << n;
  }
}

// Runs a job whose chunks each hold their thread until some chunk has run off the calling thread
// (or 20 s have passed, on cores busy with other work): a worker that gets a core claims one of
// them. Returns how many chunks ran on workers. 32 chunks: a job the workers are offered even
// during a backoff an earlier job left.
int chunks_run_off_the_caller() {
  const std::thread::id caller = std::this_thread::get_id();
  std::atomic<int> elsewhere{0};
  const auto t0 = std::chrono::steady_clock::now();
  parallel_chunks(32, [&](int64_t) {
    if (std::this_thread::get_id() != caller) elsewhere.fetch_add(1);
    while (elsewhere.load() == 0 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(20))
      std::this_thread::yield();
  });
  return elsewhere.load();
}

class ThreadPoolTest : public ::testing::Test {
 protected:
  void TearDown() override { set_num_threads(saved_); }
  int saved_ = num_threads();
};

TEST_F(ThreadPoolTest, EveryChunkRunsOnceAtAnyThreadCount) {
  for (int t : {1, 2, 3, 4}) {
    set_num_threads(t);
    expect_each_chunk_once(2000);
  }
}

TEST_F(ThreadPoolTest, ChunksRunOnTheWorkersToo) {
  set_num_threads(2);
  EXPECT_GT(chunks_run_off_the_caller(), 0);
}

TEST_F(ThreadPoolTest, AChunksExceptionReachesTheCallerAfterTheJob) {
  for (int t : {1, 2, 3}) {
    SCOPED_TRACE("threads " + std::to_string(t));
    set_num_threads(t);
    std::atomic<int> running{0};
    try {
      parallel_chunks(64, [&](int64_t c) {
        running.fetch_add(1);
        if (c == 5) {
          running.fetch_sub(1);
          throw std::runtime_error("chunk 5");
        }
        std::this_thread::sleep_for(std::chrono::microseconds(50));
        running.fetch_sub(1);
      });
      ADD_FAILURE() << "no exception";
    } catch (const std::runtime_error& e) {
      EXPECT_STREQ(e.what(), "chunk 5");
    }
    // Nothing of the job runs any more once the exception is out.
    EXPECT_EQ(running.load(), 0);
    // The pool is usable again, from this thread, with its workers.
    expect_each_chunk_once(200);
  }
  set_num_threads(2);
  EXPECT_GT(chunks_run_off_the_caller(), 0) << "after an exception the caller runs every job alone";
}

TEST_F(ThreadPoolTest, NestedCallsRunOnTheCallingThread) {
  set_num_threads(3);
  std::vector<std::atomic<int>> hits(64);
  parallel_chunks(8, [&](int64_t outer) {
    const std::thread::id self = std::this_thread::get_id();
    parallel_chunks(8, [&](int64_t inner) {
      EXPECT_EQ(std::this_thread::get_id(), self);
      hits[size_t(outer * 8 + inner)].fetch_add(1);
    });
  });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
}

TEST_F(ThreadPoolTest, TwoCallersAtOnceEachGetAllTheirChunks) {
  set_num_threads(2);
  std::thread other([] { expect_each_chunk_once(3000); });
  expect_each_chunk_once(3000);
  other.join();
}

}  // namespace
}  // namespace lowbit
