// SPDX-License-Identifier: Apache-2.0
// Benchmark support: heap-allocation counters (bench/support/alloc_counter.cpp replaces operator new) and a STREAM
// triad reference measured in the same run, so every kernel reports its bandwidth as a ratio to this machine's
// limit at the same working-set size.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <limits>
#include <vector>

namespace hir::bench {

struct alloc_snapshot {
  std::uint64_t allocs = 0;
  std::uint64_t bytes = 0;
  std::uint64_t large = 0; ///< allocations of 128 KiB or more (glibc mmaps these: fresh pages every time)
};
/// Totals since program start.
alloc_snapshot alloc_now();

/// Records per-iteration allocation counters between `before` and now: allocs, alloc_bytes, large_allocs.
inline void report_allocs(benchmark::State& state, const alloc_snapshot& before) {
  const alloc_snapshot after = alloc_now();
  const double iters = static_cast<double>(state.iterations() ? state.iterations() : 1);
  state.counters["allocs"] = static_cast<double>(after.allocs - before.allocs) / iters;
  state.counters["alloc_bytes"] = static_cast<double>(after.bytes - before.bytes) / iters;
  state.counters["large_allocs"] = static_cast<double>(after.large - before.large) / iters;
}

/// STREAM triad a[i] = b[i] + s·c[i] over n floats, split over `threads` OpenMP threads (if available):
/// 12 bytes per element. Used as the bandwidth reference.
void triad(float* a, const float* b, const float* c, float s, std::size_t n, int threads);

/// Sets OpenMP's thread count (no-op without OpenMP); returns the previous value.
int set_threads(int threads);

/// Times of each benchmark iteration: wall time and the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID, which
/// does not advance while the thread is preempted). best() is the fastest iteration by CPU time when `threads` is 1
/// and by wall time otherwise: on a shared machine the fastest iteration is the one least disturbed by other
/// processes, so ratios of best times measured in the same run are the robust figures (the mean, Google
/// Benchmark's bytes_per_second, includes preemption).
class iteration_timer {
public:
  explicit iteration_timer(int threads = 1) : threads_(threads) {}
  void start() {
    wall0_ = std::chrono::steady_clock::now();
    cpu0_ = thread_cpu_seconds();
  }
  void stop() {
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0_).count();
    const double cpu = thread_cpu_seconds() - cpu0_;
    best_wall_ = wall < best_wall_ ? wall : best_wall_;
    best_cpu_ = cpu < best_cpu_ && cpu > 0 ? cpu : best_cpu_;
  }
  double best_wall() const { return best_wall_; }
  double best_cpu() const { return best_cpu_; }
  double best() const { return threads_ == 1 && best_cpu_ < best_wall_ * 1.5 ? best_cpu_ : best_wall_; }
  int threads() const { return threads_; }

  /// The calling thread's CPU time in seconds.
  static double thread_cpu_seconds() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  }

private:
  int threads_;
  std::chrono::steady_clock::time_point wall0_{};
  double cpu0_ = 0.0;
  double best_wall_ = std::numeric_limits<double>::infinity();
  double best_cpu_ = std::numeric_limits<double>::infinity();
};

/// Best-of-`reps` STREAM triad bandwidth over `bytes` (three float arrays of bytes/12 elements, touched first) on
/// `threads` threads, in bytes per second (12 B per element, the STREAM convention: no write-allocate traffic),
/// timed as iteration_timer::best() times.
double triad_best_bytes_per_second(std::size_t bytes, int threads, int reps = 40);

/// Counters of a memory-bound kernel moving `bytes` per iteration, timed by `timer`: best_GBps, triad_GBps
/// (triad_best_bytes_per_second over the same bytes and threads, measured now, timed the same way) and triad_ratio
/// = best_GBps / triad_GBps. Call after report_allocs: the triad allocates.
void report_bandwidth(benchmark::State& state, double bytes, const iteration_timer& timer);

} // namespace hir::bench
