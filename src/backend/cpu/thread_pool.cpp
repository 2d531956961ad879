#include "backend/cpu/thread_pool.h"

#include "backend/ops.h"
#include "core/error.h"

#include <linux/futex.h>
#include <omp.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace lowbit {

namespace {

// Sleeping and waking on a 32-bit atomic: the futex system call directly (FUTEX_WAIT returns at
// once when the word no longer holds `old`, compared under the kernel's lock, so a wake-up between
// the caller's check and the sleep is not lost).
void futex_wait(std::atomic<uint32_t>& a, uint32_t old) {
  static_assert(sizeof(std::atomic<uint32_t>) == sizeof(uint32_t));
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&a), FUTEX_WAIT_PRIVATE, old, nullptr, nullptr, 0);
}
void futex_wake(std::atomic<uint32_t>& a, int n) {
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(&a), FUTEX_WAKE_PRIVATE, n, nullptr, nullptr, 0);
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

int64_t env_us(const char* name, int64_t fallback) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  char* end = nullptr;
  const long long v = std::strtoll(env, &end, 10);
  LB_CHECK(end != env && *end == '\0' && v >= 0, "{}='{}' is not a non-negative number of microseconds", name, env);
  return int64_t(v);
}

using Clock = std::chrono::steady_clock;

// Polls `done()` for `us` microseconds: pause instructions, the clock read every 64 of them and
// sched_yield() every 8 us (a runnable thread on this core, ours or not, then runs first).
// Returns whether done() became true.
template <class Done>
bool poll_for(int64_t us, Done&& done) {
  if (us <= 0) return done();
  const auto start = Clock::now();
  auto next_yield = start + std::chrono::microseconds(8);
  const auto deadline = start + std::chrono::microseconds(us);
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (done()) return true;
      cpu_relax();
    }
    const auto now = Clock::now();
    if (now >= deadline) return done();
    if (now >= next_yield) {
      sched_yield();
      next_yield = now + std::chrono::microseconds(8);
    }
  }
}

// The job word: the job's sequence number, its chunk count and the next unclaimed chunk, in one
// 64-bit atomic so that a claim (compare-and-swap) succeeds only for the job the claimer saw:
//   bits 63..40  sequence number (24 bits, wraps)
//   bits 39..20  chunk count n
//   bits 19..0   next chunk to claim (claims stop at n)
constexpr int kChunkBits = 20;
constexpr uint64_t kChunkMask = (uint64_t(1) << kChunkBits) - 1;
constexpr uint32_t kSeqMask = (uint32_t(1) << 24) - 1;
inline uint32_t seq_of(uint64_t s) { return uint32_t(s >> (2 * kChunkBits)); }
inline int64_t count_of(uint64_t s) { return int64_t((s >> kChunkBits) & kChunkMask); }
inline int64_t next_of(uint64_t s) { return int64_t(s & kChunkMask); }

thread_local bool t_in_pool = false;  // a worker, or the caller inside parallel_chunks

class ThreadPool {
 public:
  ThreadPool(int workers, PoolWaitPolicy policy) : policy_(policy) {
    threads_.reserve(size_t(workers));
    for (int i = 0; i < workers; ++i) threads_.emplace_back([this, workers] { worker_loop(workers + 1); });
  }
  ~ThreadPool() {
    if (const char* e = std::getenv("LOWBIT_POOL_STATS"); e != nullptr && *e == '1')
      std::fprintf(stderr,
                   "lowbit thread pool: %lld jobs on %d workers + caller (%lld chunks, %lld by the caller), %lld "
                   "serial after stalls or misses, %lld stalls (%.0f us), %lld misses\n",
                   (long long)stats_.jobs, workers(), (long long)stats_.chunks, (long long)stats_.chunks_by_caller,
                   (long long)stats_.serial_jobs, (long long)stats_.stalls, stats_.stall_us, (long long)stats_.misses);
    stop_.store(true, std::memory_order_seq_cst);
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    futex_wake(epoch_, INT32_MAX);
    for (auto& t : threads_) t.join();
  }
  int workers() const { return int(threads_.size()); }

  // Caller side; one job at a time (the caller holds g_pool_mu).
  void run(int64_t n, detail::ChunkFn fn, void* ctx) {
    if (serial_left_ > 0 && n < kAlwaysOffered) {
      --serial_left_;
      ++stats_.serial_jobs;
      for (int64_t c = 0; c < n; ++c) fn(ctx, c);
      return;
    }
    const auto t0 = Clock::now();
    // The previous job has ended (done_ reached its count), so no worker reads fn_/ctx_ now: a
    // worker reads them only after claiming a chunk of the current job.
    fn_ = fn;
    ctx_ = ctx;
    done_.store(0, std::memory_order_relaxed);
    seq_ = (seq_ + 1) & kSeqMask;
    state_.store(uint64_t(seq_) << (2 * kChunkBits) | uint64_t(n) << kChunkBits, std::memory_order_release);
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    const bool woke = sleepers_.load(std::memory_order_seq_cst) > 0;
    if (woke) futex_wake(epoch_, INT32_MAX);
    const int64_t own = run_chunks(seq_);
    const auto t1 = Clock::now();
    const uint32_t total = uint32_t(n);
    if (!poll_for(policy_.caller_spin_us, [&] { return done_.load(std::memory_order_acquire) == total; })) {
      caller_sleeping_.store(true, std::memory_order_seq_cst);
      for (uint32_t v; (v = done_.load(std::memory_order_seq_cst)) != total;) futex_wait(done_, v);
      caller_sleeping_.store(false, std::memory_order_relaxed);
    }
    const auto t2 = Clock::now();
    ++stats_.jobs;
    stats_.chunks_by_caller += own;
    stats_.chunks += n;
    // The workers did not help: a stall (after its own chunks the caller waited longer than they
    // took, and than kStallUs, for a chunk a worker holds: a worker lost its core mid-chunk) or a
    // miss (the caller ran every chunk though the workers were polling, not asleep: none got a
    // core in time; a worker woken from its sleep misses a short job anyway). Both mean other
    // threads want the cores; then the next jobs run on the caller alone, twice as many after each
    // further one, half as many after a job the workers helped with (see the header).
    const auto wait = t2 - t1;
    const bool stall = wait > std::max<Clock::duration>(t1 - t0, std::chrono::microseconds(kStallUs));
    const bool miss = own == n && !woke;
    if (stall || miss) {
      stats_.stalls += stall;
      stats_.misses += miss;
      if (stall) stats_.stall_us += std::chrono::duration<double, std::micro>(wait).count();
      backoff_ = std::min<int64_t>(kMaxBackoff, backoff_ == 0 ? kFirstBackoff : 2 * backoff_);
    } else if (own < n) {
      backoff_ /= 2;
    }
    // During a backoff the workers do not poll: jobs are rare, and a polling worker would take
    // a share of the contended cores from the caller.
    calm_.store(backoff_ == 0, std::memory_order_relaxed);
    serial_left_ = backoff_;
    // Every chunk has ended (done_ reached n), so no thread holds ctx any more.
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lock(error_mu_);
      error.swap(error_);
    }
    if (error) std::rethrow_exception(error);
  }

  struct Stats {
    int64_t jobs = 0, serial_jobs = 0, chunks = 0, chunks_by_caller = 0, stalls = 0, misses = 0;
    double stall_us = 0;
  };
  // Claims and runs chunks of job `seq` until none is left; returns how many it ran.
  int64_t run_chunks(uint32_t seq) {
    int64_t ran = 0;
    uint64_t s = state_.load(std::memory_order_acquire);
    for (;;) {
      if (seq_of(s) != seq || next_of(s) >= count_of(s)) return ran;
      if (!state_.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      // The claim holds the job open (it cannot end before this chunk is counted), so fn_ and
      // ctx_ are this job's.
      try {
        fn_(ctx_, next_of(s));
      } catch (...) {  // kept for the caller, which rethrows it once every chunk has ended
        std::lock_guard<std::mutex> lock(error_mu_);
        if (!error_) error_ = std::current_exception();
      }
      ++ran;
      // seq_cst, as the caller's store to caller_sleeping_ and load of done_: either this thread
      // sees the caller asleep, or the caller sees this count before it sleeps.
      const uint32_t d = done_.fetch_add(1, std::memory_order_seq_cst) + 1;
      if (d == uint32_t(count_of(s)) && caller_sleeping_.load(std::memory_order_seq_cst)) futex_wake(done_, 1);
      s = state_.load(std::memory_order_acquire);
    }
  }

  void worker_loop(int threads) {
    t_in_pool = true;
    // OpenBLAS (its OpenMP build), called from a chunk, sizes its thread count from the calling
    // thread's omp_get_max_threads() and resets its global count when that differs; a worker's
    // default would differ from the caller's set_num_threads() value, and the two would keep
    // resetting it.
    omp_set_num_threads(threads);
    // Jobs start only after the constructor returns, so 0 (epoch_'s first value) is the epoch
    // before any job, even if the first job is published before this thread starts.
    uint32_t seen = 0;
    for (;;) {
      auto fresh = [&] { return epoch_.load(std::memory_order_acquire) != seen; };
      poll_for(policy_.worker_spin_us, [&] { return fresh() || !calm_.load(std::memory_order_relaxed); });
      if (!fresh()) {
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        // Returns at once when epoch_ is no longer `seen` (the kernel compares it under its lock).
        while (epoch_.load(std::memory_order_seq_cst) == seen) futex_wait(epoch_, seen);
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
      }
      if (stop_.load(std::memory_order_acquire)) return;
      seen = epoch_.load(std::memory_order_acquire);
      run_chunks(seq_of(state_.load(std::memory_order_acquire)));
    }
  }

  // Backoff after stalls and misses, in jobs: the first sends 16 jobs to the caller alone (a
  // token's worth on a small model), each further one twice as many, up to 1,024.
  static constexpr int64_t kStallUs = 100, kFirstBackoff = 16, kMaxBackoff = 1024;
  // Jobs of this many chunks (a small model's LM head at decode, a prompt's products: hundreds of
  // microseconds) are offered to the workers even during a backoff: a worker that wakes in time
  // takes part of the job, one that does not costs nothing.
  static constexpr int64_t kAlwaysOffered = 32;

  const PoolWaitPolicy policy_;
  int64_t backoff_ = 0, serial_left_ = 0;  // the caller's
  Stats stats_;                            // the caller's
  std::vector<std::thread> threads_;
  uint32_t seq_ = 0;  // the caller's; workers read the sequence number from state_
  detail::ChunkFn fn_ = nullptr;
  void* ctx_ = nullptr;
  // Each on its own cache line: workers poll epoch_ and state_ while others update done_.
  alignas(64) std::atomic<uint64_t> state_{0};
  alignas(64) std::atomic<uint32_t> epoch_{0};      // bumped per job (and at stop): what sleepers wait on
  alignas(64) std::atomic<uint32_t> done_{0};       // chunks of the current job that have run
  alignas(64) std::atomic<int> sleepers_{0};        // workers asleep (or about to be) on epoch_
  std::atomic<bool> caller_sleeping_{false};
  std::atomic<bool> calm_{true};  // no backoff: idle workers poll before they sleep
  std::atomic<bool> stop_{false};
  std::mutex error_mu_;
  std::exception_ptr error_;  // the first exception a chunk of the current job threw
};

std::mutex g_pool_mu;  // held by the caller of a job, and for creating or replacing g_pool
std::unique_ptr<ThreadPool> g_pool;

}  // namespace

PoolWaitPolicy pool_wait_policy() {
  static const PoolWaitPolicy p = [] {
    PoolWaitPolicy d;
    return PoolWaitPolicy{env_us("LOWBIT_POOL_SPIN_US", d.worker_spin_us),
                          env_us("LOWBIT_POOL_WAIT_SPIN_US", d.caller_spin_us)};
  }();
  return p;
}

namespace detail {

void parallel_chunks_impl(int64_t n, ChunkFn fn, void* ctx) {
  LB_ASSERT(n >= 0 && uint64_t(n) <= kChunkMask);
  auto serial = [&] {
    for (int64_t c = 0; c < n; ++c) fn(ctx, c);
  };
  const int threads = num_threads();
  if (n <= 1 || threads <= 1 || t_in_pool || omp_in_parallel()) return serial();
  const PoolWaitPolicy policy = pool_wait_policy();
  std::unique_lock<std::mutex> pool_lock(g_pool_mu, std::try_to_lock);
  if (!pool_lock.owns_lock()) return serial();  // another thread's job runs (or a rebuild)
  if (!g_pool || g_pool->workers() != threads - 1) {
    g_pool.reset();
    g_pool = std::make_unique<ThreadPool>(threads - 1, policy);
  }
  struct InPool {  // reset on the way out, an exception's included
    InPool() { t_in_pool = true; }
    ~InPool() { t_in_pool = false; }
  } in_pool;
  g_pool->run(n, fn, ctx);
}

}  // namespace detail

}  // namespace lowbit
