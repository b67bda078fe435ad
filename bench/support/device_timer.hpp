// SPDX-License-Identifier: Apache-2.0
// Timing of device-backend benchmarks (and their CPU-backend twins): CUDA events on the CUDA system, the steady
// clock and the thread's CPU time around a synchronizing call on Thrust's CPP/OMP systems and on the CPU backend;
// every iteration is reported with state.SetIterationTime (UseManualTime) and the fastest is kept.
#pragma once

#include "bench_support.hpp"

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#  include <cuda_runtime_api.h>
#endif
#if defined(_OPENMP)
#  include <omp.h>
#endif

namespace hir::bench {

/// OpenMP threads of the calling context (1 without OpenMP).
inline int omp_threads() {
#if defined(_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Times one iteration with CUDA events (on the default stream, which hir::device uses) or the steady clock around
/// a synchronizing call, reports it with state.SetIterationTime (register with UseManualTime) and keeps the fastest.
class device_timer {
public:
  device_timer() {
#if defined(__CUDACC__)
    cudaEventCreate(&start_);
    cudaEventCreate(&stop_);
#endif
  }
  ~device_timer() {
#if defined(__CUDACC__)
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
#endif
  }
  device_timer(const device_timer&) = delete;
  device_timer& operator=(const device_timer&) = delete;

  template <class F>
  void time(benchmark::State& state, F&& f) {
#if defined(__CUDACC__)
    cudaEventRecord(start_);
    f();
    cudaEventRecord(stop_);
    cudaEventSynchronize(stop_);
    float ms = 0;
    cudaEventElapsedTime(&ms, start_, stop_);
    const double s = static_cast<double>(ms) * 1e-3;
    best_ = s < best_ ? s : best_;
#else
    const double cpu0 = hir::bench::iteration_timer::thread_cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double cpu = hir::bench::iteration_timer::thread_cpu_seconds() - cpu0;
    best_wall_ = s < best_wall_ ? s : best_wall_;
    best_cpu_ = cpu > 0 && cpu < best_cpu_ ? cpu : best_cpu_;
    // As hir::bench::iteration_timer::best(): on one thread the calling thread's CPU time, which does not advance
    // while the process is preempted (the least disturbed figure on a shared machine); wall time on more threads.
    best_ = threads_ == 1 && best_cpu_ < best_wall_ * 1.5 ? best_cpu_ : best_wall_;
#endif
    state.SetIterationTime(s);
  }
  /// The fastest iteration in seconds: CUDA events on a GPU; on CPU systems thread CPU time on one OpenMP thread,
  /// wall time on more.
  double best() const {
    return best_;
  }

  /// Counters: N, best_ms, ns_per_elem, threads and (bytes_per_elem > 0) best_GBps, and Google Benchmark's mean
  /// items and bytes per second.
  void report(benchmark::State& state, std::size_t n, double bytes_per_elem) const {
    const double dn = static_cast<double>(n);
    state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(n));
    state.counters["N"] = dn;
    state.counters["best_ms"] = best_ * 1e3;
#if !defined(__CUDACC__)
    state.counters["best_wall_ms"] = best_wall_ * 1e3;
#endif
    state.counters["ns_per_elem"] = best_ / dn * 1e9;
#if defined(__CUDACC__)
    state.counters["threads"] = 0; // a GPU
#else
    state.counters["threads"] = omp_threads();
#endif
    if (bytes_per_elem > 0) {
      state.SetBytesProcessed(static_cast<std::int64_t>(static_cast<double>(state.iterations()) * dn * bytes_per_elem));
      state.counters["best_GBps"] = dn * bytes_per_elem / best_ / 1e9;
    }
  }

private:
#if defined(__CUDACC__)
  cudaEvent_t start_{}, stop_{};
#endif
  double best_ = std::numeric_limits<double>::infinity();
#if !defined(__CUDACC__)
  int threads_ = omp_threads();
  double best_wall_ = std::numeric_limits<double>::infinity(), best_cpu_ = std::numeric_limits<double>::infinity();
#endif
};

/// True when a CUDA device is usable (always true on CPU device systems).
inline bool device_available() {
#if defined(__CUDACC__)
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
#else
  return true;
#endif
}

} // namespace hir::bench
