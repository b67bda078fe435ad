// SPDX-License-Identifier: Apache-2.0
// Device benchmarks: BM_DeviceCopy (thrust::copy of N floats, 8 B per element: the bandwidth reference measured in
// the same run) and BM_DeviceGroupAdvantages (GRPO, N rewards, G = 8 and 16, 8 B per element). Report each kernel's
// bytes_per_second as a fraction of BM_DeviceCopy's at the same N. Without a GPU (CUDA build) nothing is registered.
#include "support/bench_support.hpp"
#include "support/device_timer.hpp"

#include <hir/device.hpp>

#include <thrust/copy.h>

#include <cstdio>
#include <random>

namespace {

using dev = hir::backend::device::tag_t;

void BM_DeviceCopy(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  thrust::device_vector<float> a(n, 1.0f), b(n);
  hir::bench::device_timer timer;
  for (auto _ : state)
    timer.time(state,
               [&] { thrust::copy(hir::backend::device::detail::policy(hir::device), a.begin(), a.end(), b.begin()); });
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n * 8));
}

void BM_DeviceGroupAdvantages(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0)), g = static_cast<std::size_t>(state.range(1));
  std::vector<float> host(n);
  std::mt19937 rng(1);
  for (auto& v : host)
    v = static_cast<float>(rng() % 2);
  auto scores = hir::to_backend(hir::device, host);
  thrust::device_vector<float> out(n);
  hir::group_storage<dev> groups(hir::device, hir::group_layout::uniform(n, g));
  const hir::span<const float, hir::device_space> in(hir::view(scores));
  const auto opt = hir::presets::verl_grpo();
  hir::bench::device_timer timer;
  for (auto _ : state)
    timer.time(state, [&] { hir::group_advantages(hir::device, in, groups.ref(), hir::view(out), opt); });
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n * 8));
}

const bool registered = [] {
  if (!hir::bench::device_available()) {
    std::printf("bench_device: no usable CUDA device; no device benchmark is registered\n");
    return false;
  }
  benchmark::RegisterBenchmark("BM_DeviceCopy", BM_DeviceCopy)
      ->ArgNames({"N"})
      ->Args({1'000'000})
      ->Args({16'000'000})
      ->UseManualTime();
  benchmark::RegisterBenchmark("BM_DeviceGroupAdvantages", BM_DeviceGroupAdvantages)
      ->ArgNames({"N", "G"})
      ->ArgsProduct({{1'000'000, 16'000'000}, {8, 16}})
      ->UseManualTime();
  return true;
}();

} // namespace
