// SPDX-License-Identifier: Apache-2.0
// The triad bandwidth reference and a BM_Triad benchmark registered in every benchmark executable: run it beside a
// kernel (same working set in bytes) and divide the kernel's bytes_per_second by the triad's.
#include "support/bench_support.hpp"

#if defined(_OPENMP)
#  include <omp.h>
#endif

namespace hir::bench {

void triad(float* a, const float* b, const float* c, float s, std::size_t n, int threads) {
#if defined(_OPENMP)
#  pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
  for (long long i = 0; i < static_cast<long long>(n); ++i)
    a[i] = b[i] + s * c[i];
#else
  (void)threads;
  for (std::size_t i = 0; i < n; ++i)
    a[i] = b[i] + s * c[i];
#endif
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
/// BM_Triad/<bytes>/<threads>: triad over a working set of `bytes` (3 arrays), bytes_per_second = 12 B/element.
void BM_Triad(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0)) / 12;
  const int threads = static_cast<int>(state.range(1));
  std::vector<float> a(n, 0.f), b(n, 1.f), c(n, 2.f);
  for (auto _ : state) {
    hir::bench::triad(a.data(), b.data(), c.data(), 0.5f, n, threads);
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(12 * n));
}
} // namespace

// Working sets matching the kernels' minimum traffic: 8 MB (N = 1e6 advantages), 128 MB (N = 1.6e7), 6 MB
// (256 × 1024 loss tokens × 24 B), on 1 and 2 threads.
BENCHMARK(BM_Triad)
    ->ArgNames({"bytes", "threads"})
    ->ArgsProduct({{1 << 20, 8'000'000, 6'291'456, 25'165'824, 128'000'000}, {1, 2}})
    ->UseRealTime();
