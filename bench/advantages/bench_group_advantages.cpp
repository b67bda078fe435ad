// SPDX-License-Identifier: Apache-2.0
// Group-normalized advantages (GRPO, verl conventions) for N = 1e5 … 1.6e7 float rewards, G = 8 and 16, uniform
// groups. Minimum traffic: read N + write N floats (8 B per element); compare bytes_per_second with BM_Triad at the
// same working set (8·N bytes) in the same run. Counters: allocations per call (must be O(number of groups) at most).
#include "support/bench_support.hpp"

#if HIR_BENCH_DEVICE
#  include <hir/device.hpp>
using bench_backend = hir::backend::device::tag_t;
#else
#  include <hir/hir.hpp>
using bench_backend = hir::backend::cpu::tag_t;
#endif

#include <random>

namespace {

template <class B>
void BM_GroupAdvantages(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  const std::size_t g = static_cast<std::size_t>(state.range(1));
  std::vector<float> host(n);
  std::mt19937 rng(42);
  for (auto& v : host)
    v = static_cast<float>(rng() % 2); // binary rewards, the HiR/GRPO regime
  auto scores = hir::to_backend(B{}, host);
  hir::vector<float, B> out(n);
  hir::group_storage<B> groups(B{}, hir::group_layout::uniform(n, g));
  const auto opt = hir::presets::verl_grpo();
  const hir::span_for<const float, B> in(hir::view(scores));
  hir::group_advantages(B{}, in, groups.ref(), hir::view(out), opt); // warm up (touch pages)
  const auto before = hir::bench::alloc_now();
  for (auto _ : state) {
    hir::group_advantages(B{}, in, groups.ref(), hir::view(out), opt);
    benchmark::ClobberMemory();
  }
  hir::bench::report_allocs(state, before);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n * 8));
}

} // namespace

BENCHMARK_TEMPLATE(BM_GroupAdvantages, bench_backend)
    ->ArgNames({"N", "G"})
    ->ArgsProduct({{100'000, 1'000'000, 4'000'000, 16'000'000}, {8, 16}})
    ->UseRealTime();
