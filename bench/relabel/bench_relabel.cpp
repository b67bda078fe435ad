// SPDX-License-Identifier: Apache-2.0
// Hindsight instruction replay on the CPU backend: selection (top-K over the batch, top-k per prompt, even split,
// random-k) and replay-batch building for n = 1e3 … 1e6 candidates (m = 8 responses per prompt, K = 2 per prompt,
// about a third of the responses eligible), against a full std::sort of the same keys (what an O(n log n) selection
// would cost) — top-K must scale linearly; and the dual-level preference loss (with its gradient) and pair building
// for 1e5 pairs. Items are candidates, rows or pairs; batch building reports bytes moved (inputs read + outputs
// written) to compare with BM_Triad at a similar working set, for a fresh batch per call (page faults of the new
// allocation included) and for a batch reused across calls (what a trainer does every step).
#include "support/bench_support.hpp"

// Only the headers this benchmark measures (the CPU backend of relabel, preference losses and verdict checks).
#include <hir/backend/cpu/preference.hpp>
#include <hir/backend/cpu/relabel.hpp>
#include <hir/backend/cpu/rewards.hpp>
#include <hir/backend/cpu/tag.hpp>

#include <algorithm>
#include <random>
#include <vector>

namespace {

using cpu_t = hir::backend::cpu::tag_t;

struct candidates {
  std::size_t B;
  std::vector<std::int64_t> prompt, length;
  std::vector<std::uint64_t> masks;
  std::vector<std::uint8_t> counts;
  std::vector<float> entropy_sum;

  explicit candidates(std::size_t n, std::size_t m = 8) : B(n / m) {
    std::mt19937_64 rng(42);
    std::uniform_real_distribution<float> ent(0.f, 3.f);
    for (std::size_t i = 0; i < n; ++i) {
      prompt.push_back(static_cast<std::int64_t>(i / m));
      counts.push_back(6);
      // a third succeed, a third fail everything, a third are partial (eligible)
      const auto kind = rng() % 3;
      masks.push_back(kind == 0 ? 0x3f : kind == 1 ? 0 : 1 + rng() % 62);
      length.push_back(1 + static_cast<std::int64_t>(rng() % 512));
      entropy_sum.push_back(ent(rng) * static_cast<float>(length.back()));
    }
  }
  hir::replay_candidates_ref<float> ref() const {
    hir::replay_candidates_ref<float> c;
    c.num_prompts = B;
    c.prompt = prompt;
    c.verdicts = {masks, counts};
    c.entropy_sum = entropy_sum;
    c.length = length;
    return c;
  }
};

void BM_SelectReplays(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  const candidates c(n);
  hir::replay_select_options o;
  o.allocation = static_cast<hir::replay_allocation>(state.range(1));
  o.ranking = state.range(2) ? hir::replay_ranking::random : hir::replay_ranking::score;
  o.budget_kind = hir::replay_budget_kind::per_prompt; // K = 2 per prompt
  const auto before = hir::bench::alloc_now();
  std::size_t chosen = 0;
  for (auto _ : state) {
    auto s = hir::select_replays(hir::cpu, c.ref(), 10, o);
    chosen = s.size();
    benchmark::DoNotOptimize(s.indices.data());
  }
  hir::bench::report_allocs(state, before);
  state.counters["replays"] = static_cast<double>(chosen);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

/// Baseline: compute the same keys and fully sort the eligible ones (O(n log n)).
void BM_SelectByFullSort(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  const candidates c(n);
  hir::vector<double, cpu_t> keys(n);
  for (auto _ : state) {
    hir::replay_scores(hir::cpu, c.ref(), 10, hir::view(keys));
    std::vector<std::pair<double, std::int64_t>> ranked;
    ranked.reserve(n);
    for (std::size_t i = 0; i < n; ++i)
      if (keys[i] > -1e300)
        ranked.push_back({-keys[i], static_cast<std::int64_t>(i)});
    std::sort(ranked.begin(), ranked.end());
    std::vector<std::int64_t> out;
    for (std::size_t k = 0; k < std::min(2 * c.B, ranked.size()); ++k)
      out.push_back(ranked[k].second);
    std::sort(out.begin(), out.end());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
}

struct rollouts {
  std::size_t N, L, B;
  std::vector<std::int64_t> prompt;
  std::vector<std::uint64_t> masks;
  std::vector<std::uint8_t> counts;
  std::vector<std::int32_t> tokens;
  std::vector<std::uint8_t> mask;
  std::vector<float> old_logp, ref_logp;

  rollouts(std::size_t n, std::size_t l) : N(n), L(l), B(n / 8) {
    const candidates c(n);
    prompt = c.prompt;
    masks = c.masks;
    counts = c.counts;
    std::mt19937 rng(7);
    tokens.resize(N * L);
    mask.resize(N * L);
    old_logp.resize(N * L);
    ref_logp.resize(N * L);
    for (std::size_t i = 0; i < N * L; ++i) {
      tokens[i] = static_cast<std::int32_t>(rng() % 150000);
      mask[i] = (i % L) < 1 + (i / L) % L ? 1 : 0;
      old_logp[i] = -static_cast<float>(rng() % 1000) / 100.f;
      ref_logp[i] = old_logp[i] - 0.01f;
    }
  }
  hir::rollout_batch_ref<float> ref() const {
    hir::rollout_batch_ref<float> r;
    r.batch = N;
    r.length = L;
    r.num_prompts = B;
    r.prompt = prompt;
    r.verdicts = {masks, counts};
    r.tokens = tokens;
    r.mask = mask;
    r.old_logp = old_logp;
    r.ref_logp = ref_logp;
    return r;
  }
};

void BM_BuildReplayBatch(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0)), L = static_cast<std::size_t>(state.range(1));
  const rollouts r(n, L);
  const candidates c(n);
  hir::replay_select_options o;
  o.budget_kind = hir::replay_budget_kind::per_prompt;
  const auto sel = hir::select_replays(hir::cpu, c.ref(), 10, o);
  hir::replay_batch_options bo;
  bo.placement = static_cast<hir::replay_placement>(state.range(2));
  const bool reuse = state.range(3) != 0;
  hir::replay_batch<float, cpu_t> out;
  const hir::span<const std::int64_t> idx(sel.indices);
  if (reuse)
    hir::build_replay_batch(hir::cpu, r.ref(), idx, out, bo); // first touch outside the timed loop
  const auto before = hir::bench::alloc_now();
  for (auto _ : state) {
    if (reuse) {
      hir::build_replay_batch(hir::cpu, r.ref(), idx, out, bo);
      benchmark::DoNotOptimize(out.old_logp.data());
    } else {
      auto b = hir::build_replay_batch(hir::cpu, r.ref(), sel, bo);
      benchmark::DoNotOptimize(b.old_logp.data());
    }
  }
  hir::bench::report_allocs(state, before);
  // token arrays: 13 B per element read (tokens, mask, old, ref) for N rows, written for N + K rows
  const double rows_out = static_cast<double>(n + sel.size());
  state.counters["replays"] = static_cast<double>(sel.size());
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
  state.SetBytesProcessed(static_cast<std::int64_t>(static_cast<double>(state.iterations()) * 13.0 *
                                                    static_cast<double>(L) * (static_cast<double>(n) + rows_out)));
}

void BM_PreferenceLoss(benchmark::State& state) {
  const std::size_t P = static_cast<std::size_t>(state.range(0)), R = P; // rows reused across pairs
  std::mt19937_64 rng(3);
  std::vector<std::int64_t> c(P), rj(P);
  std::vector<std::uint8_t> lv(P);
  std::vector<float> lp(R), ref(R), grad(R);
  for (std::size_t j = 0; j < P; ++j) {
    c[j] = static_cast<std::int64_t>(rng() % R);
    rj[j] = static_cast<std::int64_t>(rng() % R);
    lv[j] = static_cast<std::uint8_t>(j % 2);
  }
  for (std::size_t i = 0; i < R; ++i) {
    lp[i] = -static_cast<float>(rng() % 10000) / 100.f;
    ref[i] = lp[i] + 0.5f;
  }
  const hir::preference_pairs_ref<hir::host_space> p{c, rj, lv};
  hir::preference_loss_options o;
  o.kind = state.range(1) ? hir::preference_loss_kind::ipo : hir::preference_loss_kind::sigmoid;
  const auto before = hir::bench::alloc_now();
  for (auto _ : state) {
    auto res = hir::preference_loss(hir::cpu, p, hir::span<const float>(lp), hir::span<const float>(ref),
                                    hir::span<float>(grad), o);
    benchmark::DoNotOptimize(res.loss);
    benchmark::ClobberMemory();
  }
  hir::bench::report_allocs(state, before);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * P));
}

void BM_BuildPreferencePairs(benchmark::State& state) {
  // n originals, 8 per prompt, half successes; every third original replayed → about 1e5 pairs for n = 4e4
  const std::size_t n = static_cast<std::size_t>(state.range(0)), K = n / 3, R = n + K;
  std::vector<std::int64_t> prompt(R), src(R);
  std::vector<float> reward(R);
  std::vector<std::uint8_t> rep(R);
  for (std::size_t i = 0; i < n; ++i) {
    prompt[i] = static_cast<std::int64_t>(i / 8);
    src[i] = static_cast<std::int64_t>(i);
    reward[i] = (i * 2654435761u) % 2 ? 1.f : 0.f;
  }
  for (std::size_t k = 0; k < K; ++k) {
    prompt[n + k] = prompt[3 * k];
    src[n + k] = static_cast<std::int64_t>(3 * k);
    reward[n + k] = 1.f;
    rep[n + k] = 1;
  }
  hir::replay_batch_ref<float> b;
  b.batch = R;
  b.prompt = prompt;
  b.source_row = src;
  b.reward = reward;
  b.is_replay = rep;
  std::size_t pairs = 0;
  for (auto _ : state) {
    auto p = hir::build_preference_pairs(hir::cpu, b);
    pairs = p.size();
    benchmark::DoNotOptimize(p.chosen.data());
  }
  state.counters["pairs"] = static_cast<double>(pairs);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * pairs));
}

} // namespace

// allocation: 0 top_k_global, 1 top_k_per_group, 2 even_per_prompt; ranking: 0 score, 1 random
BENCHMARK(BM_SelectReplays)
    ->ArgNames({"n", "alloc", "random"})
    ->ArgsProduct({{1'000, 10'000, 100'000, 1'000'000}, {0, 1, 2}, {0}})
    ->Args({1'000'000, 0, 1})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_SelectByFullSort)
    ->ArgName("n")
    ->Arg(1'000)
    ->Arg(10'000)
    ->Arg(100'000)
    ->Arg(1'000'000)
    ->Unit(benchmark::kMicrosecond);
// placement: 0 after_originals, 1 after_source; reuse: 0 a fresh batch per call, 1 the same batch every call
BENCHMARK(BM_BuildReplayBatch)
    ->ArgNames({"n", "L", "after_source", "reuse"})
    ->ArgsProduct({{1'000, 10'000, 100'000, 1'000'000}, {16}, {0}, {0, 1}})
    ->Args({100'000, 256, 0, 1})
    ->Args({100'000, 256, 1, 1})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();
BENCHMARK(BM_PreferenceLoss)
    ->ArgNames({"pairs", "ipo"})
    ->Args({100'000, 0})
    ->Args({100'000, 1})
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_BuildPreferencePairs)->ArgName("originals")->Arg(40'000)->Unit(benchmark::kMicrosecond);
