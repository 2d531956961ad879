// A small persistent thread pool for the many short parallel regions of decode (a packed product,
// a layer's attention: some microseconds each, hundreds per token), where an OpenMP region with
// passive threads pays a kernel wake-up per region and one with spinning threads stalls whenever
// another process takes a core from one of its threads.
//
//   parallel_chunks(n, fn)   runs fn(c) once for every chunk c in [0, n), on the calling thread
//                            and the pool's num_threads() - 1 workers, and returns when all have run.
//
// Contract:
//   - Chunks are claimed one at a time from a shared counter, by whichever thread asks first: the
//     caller claims chunks too, and a worker that wakes late finds none left and goes back to
//     waiting. The caller thus never waits for a worker that has not started (a late or
//     descheduled worker costs parallelism, not time); it waits only for chunks a worker is
//     running. Which thread runs a chunk does not change its result: fn(c) must compute the same
//     thing whichever thread calls it (disjoint outputs per chunk), so results do not depend on
//     the thread count or the timing.
//   - An exception thrown by fn reaches the caller of parallel_chunks once every chunk that was
//     started has ended (the first one; later ones are dropped), so nothing is left running on
//     the caller's data. Which other chunks ran is unspecified (the caller alone stops at the
//     throwing chunk; the pool's threads run the remaining ones).
//   - One job at a time: a call from inside a chunk, from an OpenMP parallel region, or from a
//     second thread while the pool runs another job runs all chunks on the calling thread.
//   - The pool is created at the first call with num_threads() - 1 workers (set_num_threads,
//     backend/ops.h) and rebuilt at the next call after the thread count changes. With one thread
//     everything runs on the caller.
//
// Waiting policy (what llama.cpp's thread pool does with its poll level, bounded for shared cores):
//   - An idle worker polls for the next job for LOWBIT_POOL_SPIN_US microseconds (default 100),
//     calling sched_yield() every few microseconds so that a thread of this or another process
//     waiting for the core gets it, then sleeps in the kernel (futex) until the next job. Decode's
//     gaps between products (norms, the activations' quantization, sampling) are shorter than the
//     spin, so on idle cores the workers never sleep during a generation; a neighbour's thread
//     runs in their yields, and a worker left without jobs for 100 us stops using its core.
//   - The caller, when all chunks are claimed and some still run on workers, polls for
//     LOWBIT_POOL_WAIT_SPIN_US microseconds (default 20) and then sleeps until the last one ends:
//     a worker that lost its core mid-chunk is then not kept from the caller's core.
//   - When the workers did not help with a job, other threads want the cores: a stall (after its
//     own chunks the caller waited for a worker's chunk longer than its own took, and over
//     100 us: the worker lost its core mid-chunk) or a miss (the caller ran every chunk while the
//     workers were polling, not asleep: none got a core in time). The next 16 jobs then run on the
//     caller alone, twice as many after each further stall or miss (up to 1,024), half as many
//     after a job the workers helped with; jobs of 32 chunks or more (the LM head at decode, a
//     prompt's products) are offered to the workers all the same. During a backoff idle workers
//     sleep at once instead of polling (a polling worker would take a share of the contended
//     cores from the caller), so on cores
//     another process keeps busy decode runs about as fast as on one thread instead of waiting
//     for threads that lost their cores, and it is back on all threads some tokens after the
//     cores are free again.
//   - LOWBIT_POOL_SPIN_US=0 makes workers sleep as soon as a job ends (every job then wakes them
//     through the kernel, as OMP_WAIT_POLICY=PASSIVE does). Both variables are read once; a value
//     that is not a non-negative integer throws lowbit::Error. LOWBIT_POOL_STATS=1 prints, at
//     exit, the jobs run, the chunks the caller ran, the serial jobs, stalls and misses.
#pragma once

#include <cstdint>
#include <type_traits>

namespace lowbit {

namespace detail {
using ChunkFn = void (*)(void* ctx, int64_t chunk);
void parallel_chunks_impl(int64_t n, ChunkFn fn, void* ctx);
}  // namespace detail

// Runs fn(c) for c in [0, n) on the pool (see above). n may be 0; at most 2^20 - 1 chunks.
template <class F>
void parallel_chunks(int64_t n, F&& fn) {
  auto call = [](void* ctx, int64_t c) { (*static_cast<std::remove_reference_t<F>*>(ctx))(c); };
  detail::parallel_chunks_impl(n, call, const_cast<void*>(static_cast<const void*>(&fn)));
}

// The settings the pool runs with (for benchmarks' reports): microseconds an idle worker polls,
// microseconds the caller polls for running chunks.
struct PoolWaitPolicy {
  int64_t worker_spin_us = 100, caller_spin_us = 20;
};
PoolWaitPolicy pool_wait_policy();

}  // namespace lowbit
