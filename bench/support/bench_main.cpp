// SPDX-License-Identifier: Apache-2.0
// The triad bandwidth reference and a BM_Triad benchmark registered in every benchmark executable: run it beside a
// kernel (same working set in bytes) and divide the kernel's bytes_per_second by the triad's.
#include "support/bench_support.hpp"

#include <algorithm>

#if defined(_OPENMP)
#  include <omp.h>
#endif

namespace hir::bench {

namespace {
// Out of line and restrict-qualified so that the loop is vectorized without alias checks, and the one-thread case
// pays no OpenMP region (1–2 µs here, 10–20% of a 1 MiB triad).
__attribute__((noinline)) void triad_serial(float* __restrict a, const float* __restrict b, const float* __restrict c,
                                            float s, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i)
    a[i] = b[i] + s * c[i];
}
} // namespace

void triad(float* a, const float* b, const float* c, float s, std::size_t n, int threads) {
#if defined(_OPENMP)
  if (threads > 1) {
    const std::size_t chunk = (n + static_cast<std::size_t>(threads) - 1) / static_cast<std::size_t>(threads);
#  pragma omp parallel num_threads(threads)
    {
      const std::size_t begin = std::min(n, chunk * static_cast<std::size_t>(omp_get_thread_num()));
      triad_serial(a + begin, b + begin, c + begin, s, std::min(n, begin + chunk) - begin);
    }
    return;
  }
#endif
  (void)threads;
  triad_serial(a, b, c, s, n);
}

double triad_best_bytes_per_second(std::size_t bytes, int threads, int reps) {
  const std::size_t n = bytes / 12;
  std::vector<float> a(n, 0.f), b(n, 1.f), c(n, 2.f);
  triad(a.data(), b.data(), c.data(), 0.5f, n, threads); // warm up
  iteration_timer t(threads);
  for (int r = 0; r < reps; ++r) {
    t.start();
    triad(a.data(), b.data(), c.data(), 0.5f, n, threads);
    benchmark::ClobberMemory();
    t.stop();
  }
  return 12.0 * static_cast<double>(n) / t.best();
}

void report_bandwidth(benchmark::State& state, double bytes, const iteration_timer& timer) {
  const double best = bytes / timer.best();
  const double triad_bw = triad_best_bytes_per_second(static_cast<std::size_t>(bytes), timer.threads());
  state.counters["best_GBps"] = best / 1e9;
  state.counters["triad_GBps"] = triad_bw / 1e9;
  state.counters["triad_ratio"] = best / triad_bw;
}

int set_threads(int threads) {
#if defined(_OPENMP)
  const int prev = omp_get_max_threads();
  omp_set_num_threads(threads);
  return prev;
#else
  (void)threads;
  return 1;
#endif
}

} // namespace hir::bench

namespace {
/// BM_Triad/<bytes>/<threads>: triad over a working set of `bytes` (3 arrays), bytes_per_second = 12 B/element
/// (mean over iterations), best_GBps = the fastest iteration (iteration_timer::best()).
void BM_Triad(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0)) / 12;
  const int threads = static_cast<int>(state.range(1));
  std::vector<float> a(n, 0.f), b(n, 1.f), c(n, 2.f);
  hir::bench::triad(a.data(), b.data(), c.data(), 0.5f, n, threads); // warm up
  hir::bench::iteration_timer timer(threads);
  for (auto _ : state) {
    timer.start();
    hir::bench::triad(a.data(), b.data(), c.data(), 0.5f, n, threads);
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
    timer.stop();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(12 * n));
  state.counters["best_GBps"] = 12.0 * static_cast<double>(n) / timer.best() / 1e9;
}
} // namespace

// Working sets matching the kernels' minimum traffic: 0.8, 8, 32 and 128 MB (N = 1e5, 1e6, 4e6, 1.6e7 advantages
// × 8 B), 6 MB (256 × 1024 loss tokens × 24 B), on 1 and 2 threads.
BENCHMARK(BM_Triad)
    ->ArgNames({"bytes", "threads"})
    ->ArgsProduct({{800'000, 1 << 20, 8'000'000, 6'291'456, 25'165'824, 32'000'000, 128'000'000}, {1, 2}})
    ->UseRealTime();
