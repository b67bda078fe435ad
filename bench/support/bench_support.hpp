// SPDX-License-Identifier: Apache-2.0
// Benchmark support: heap-allocation counters (bench/support/alloc_counter.cpp replaces operator new) and a STREAM
// triad reference measured in the same run, so every kernel reports its bandwidth as a ratio to this machine's
// limit at the same working-set size.
#pragma once

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
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

} // namespace hir::bench
