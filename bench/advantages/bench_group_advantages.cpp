// SPDX-License-Identifier: Apache-2.0
// Group-normalized advantages (GRPO, verl conventions) for N = 1e5 … 1.6e7 float rewards, G = 8 and 16, uniform
// groups, on 1 and 2 threads (OpenMP, CPU backend). Minimum traffic: read N + write N floats (8 B per element).
// Counters: best_GBps (fastest iteration), triad_GBps (STREAM triad over the same 8·N bytes and threads, measured
// right after in the same process) and triad_ratio = best_GBps / triad_GBps; allocations per call (must be O(number
// of groups) at most: the CPU backend allocates nothing). BM_GroupAdvantagesFused runs the CPU backend with the
// validation fused into the fast path (each block of 8 groups checked just before it is written: one read pass
// fewer, but a non-finite score in a late block leaves earlier blocks written), to show what validating before
// writing costs.
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

std::vector<float> binary_rewards(std::size_t n) {
  std::vector<float> host(n);
  std::mt19937 rng(42);
  for (auto& v : host)
    v = static_cast<float>(rng() % 2); // binary rewards, the HiR/GRPO regime
  return host;
}

/// state.range: N, G, threads.
template <class B>
void BM_GroupAdvantages(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  const std::size_t g = static_cast<std::size_t>(state.range(1));
  const int threads = static_cast<int>(state.range(2));
  const int previous = hir::bench::set_threads(threads);
  auto scores = hir::to_backend(B{}, binary_rewards(n));
  hir::vector<float, B> out(n);
  hir::group_storage<B> groups(B{}, hir::group_layout::uniform(n, g));
  const auto opt = hir::presets::verl_grpo();
  const hir::span_for<const float, B> in(hir::view(scores));
  hir::group_advantages(B{}, in, groups.ref(), hir::view(out), opt); // warm up (touch pages)
  hir::bench::iteration_timer timer(threads);
  const auto before = hir::bench::alloc_now();
  for (auto _ : state) {
    timer.start();
    hir::group_advantages(B{}, in, groups.ref(), hir::view(out), opt);
    benchmark::ClobberMemory();
    timer.stop();
  }
  hir::bench::report_allocs(state, before);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n * 8));
  hir::bench::report_bandwidth(state, 8.0 * static_cast<double>(n), timer);
  hir::bench::set_threads(previous);
}

#if !HIR_BENCH_DEVICE
/// The CPU backend with input_validation::fused (state.range: N, G), 1 thread.
void BM_GroupAdvantagesFused(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  const std::size_t g = static_cast<std::size_t>(state.range(1));
  const int previous = hir::bench::set_threads(1);
  const auto scores = binary_rewards(n);
  std::vector<float> out(n);
  const auto layout = hir::group_layout::uniform(n, g);
  const auto opt = hir::presets::verl_grpo();
  const hir::span<const float> in(scores);
  if (!hir::backend::cpu::detail::uniform_path_applies<float>(layout.ref())) {
    state.SkipWithError("the uniform fast path is not compiled (needs AVX-512F)");
    return;
  }
  hir::backend::cpu::detail::group_advantages_cpu(in, layout.ref(), hir::view(out), opt, hir::input_validation::fused);
  hir::bench::iteration_timer timer(1);
  for (auto _ : state) {
    timer.start();
    hir::backend::cpu::detail::group_advantages_cpu(in, layout.ref(), hir::view(out), opt,
                                                    hir::input_validation::fused);
    benchmark::ClobberMemory();
    timer.stop();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n * 8));
  hir::bench::report_bandwidth(state, 8.0 * static_cast<double>(n), timer);
  hir::bench::set_threads(previous);
}
#endif

} // namespace

#if HIR_BENCH_DEVICE
BENCHMARK_TEMPLATE(BM_GroupAdvantages, bench_backend)
    ->ArgNames({"N", "G", "threads"})
    ->ArgsProduct({{100'000, 1'000'000, 4'000'000, 16'000'000}, {8, 16}, {1}})
    ->UseRealTime();
#else
BENCHMARK_TEMPLATE(BM_GroupAdvantages, bench_backend)
    ->ArgNames({"N", "G", "threads"})
    ->ArgsProduct({{100'000, 1'000'000, 4'000'000, 16'000'000}, {8, 16}, {1, 2}})
    ->UseRealTime();
BENCHMARK(BM_GroupAdvantagesFused)
    ->ArgNames({"N", "G"})
    ->ArgsProduct({{100'000, 1'000'000, 4'000'000, 16'000'000}, {8, 16}})
    ->UseRealTime();
#endif
