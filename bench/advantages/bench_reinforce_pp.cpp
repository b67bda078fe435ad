// SPDX-License-Identifier: Apache-2.0
// REINFORCE++ token-level advantages with k1 KL in the reward (the HiR authors' preset: β = 0.001, γ = 1, whitening
// over all valid tokens) for B × L = 256 × 1024, 64 × 4096 and 1024 × 2048 tokens with random response lengths,
// 1 thread. Minimum traffic per token: read mask (1 B), old_logp and ref_logp (4 B each), write the advantage (4 B):
// 13 B. Counters as in bench_group_advantages.cpp (best_GBps, triad_GBps over the same bytes, triad_ratio,
// ns_per_token) and allocations per call (L + B doubles of scratch).
#include "support/bench_support.hpp"

#include <hir/hir.hpp>

#include <random>

namespace {

/// state.range: B, L, baseline (0 none, 1 verl group mean of the return with groups of 8).
void BM_ReinforcePP(benchmark::State& state) {
  const std::size_t b = static_cast<std::size_t>(state.range(0)), l = static_cast<std::size_t>(state.range(1));
  const bool baseline = state.range(2) != 0;
  const int previous = hir::bench::set_threads(1);
  const std::size_t n = b * l;
  std::mt19937 rng(42);
  std::normal_distribution<float> z(0.f, 1.f);
  std::vector<float> scores(b), old_lp(n), ref_lp(n), out(n);
  std::vector<std::uint8_t> mask(n, 0);
  for (std::size_t i = 0; i < b; ++i) {
    scores[i] = static_cast<float>(rng() % 2);
    const std::size_t len = l / 4 + rng() % (l - l / 4 + 1);
    for (std::size_t t = 0; t < len; ++t)
      mask[i * l + t] = 1;
  }
  for (std::size_t k = 0; k < n; ++k) {
    old_lp[k] = 0.5f * z(rng) - 2.0f;
    ref_lp[k] = old_lp[k] + 0.05f * z(rng);
  }
  hir::token_batch_ref<float> tb;
  tb.batch = b, tb.length = l, tb.mask = mask, tb.old_logp = old_lp, tb.ref_logp = ref_lp;
  const auto layout = hir::group_layout::uniform(b, 8);
  auto opt = hir::presets::hir_paper_code_advantages();
  if (baseline)
    opt = hir::presets::verl_reinforce_pp_baseline(0.001);
  const hir::span<const float> s(scores);
  hir::reinforce_pp_advantages(hir::cpu, s, tb, layout.ref(), hir::view(out), opt); // warm up
  hir::bench::iteration_timer timer(1);
  const auto before = hir::bench::alloc_now();
  for (auto _ : state) {
    timer.start();
    hir::reinforce_pp_advantages(hir::cpu, s, tb, layout.ref(), hir::view(out), opt);
    benchmark::ClobberMemory();
    timer.stop();
  }
  hir::bench::report_allocs(state, before);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n * 13));
  state.counters["ns_per_token"] = timer.best() / static_cast<double>(n) * 1e9;
  hir::bench::report_bandwidth(state, 13.0 * static_cast<double>(n), timer);
  hir::bench::set_threads(previous);
}

} // namespace

BENCHMARK(BM_ReinforcePP)
    ->ArgNames({"B", "L", "baseline"})
    ->Args({256, 1024, 0})
    ->Args({64, 4096, 0})
    ->Args({1024, 2048, 0})
    ->Args({256, 1024, 1})
    ->UseRealTime();
