// SPDX-License-Identifier: Apache-2.0
// Timing of device-backend benchmarks: CUDA events on the CUDA system (state.SetIterationTime, UseManualTime), the
// steady clock around a synchronizing call on Thrust's CPP/OMP systems.
#pragma once

#include <benchmark/benchmark.h>

#include <chrono>

#if defined(__CUDACC__)
#  include <cuda_runtime_api.h>
#endif

namespace hir::bench {

/// Times one iteration of `f` and reports it with state.SetIterationTime (register with ->UseManualTime()).
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
    state.SetIterationTime(static_cast<double>(ms) * 1e-3);
#else
    const auto t0 = std::chrono::steady_clock::now();
    f();
    state.SetIterationTime(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
#endif
  }

private:
#if defined(__CUDACC__)
  cudaEvent_t start_{}, stop_{};
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
