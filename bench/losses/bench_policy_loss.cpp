// SPDX-License-Identifier: Apache-2.0
// policy_loss forward + backward (PPO clip with dual clip c = 3 and k3 KL, β = 0.04, token mean) for 256 × 1024
// and 64 × 4096 tokens on 1 thread, the setting of the PyTorch peer (shared/peers/torch-kernels/torch_grpo_bench.py).
// Minimum traffic per token: read logp, old_logp, ref_logp, advantage (4 B each, per-token advantages as in the
// peer) and the mask (1 B), write the gradient (4 B): 21 B. Counters: ns_per_token and best_GBps from the fastest
// iteration (thread CPU time), triad_GBps = the STREAM triad over the same bytes timed the same way right after, and
// triad_ratio = best_GBps / triad_GBps: the fraction of the bandwidth of the memory level the data lives in (5.5 MB:
// L3); allocations per call (must be 0). BM_LossTriad is the triad at the same bytes as a plain benchmark (mean
// figures). Variants: both input_validation modes, per-sequence advantages (17 B per token).
#include "support/bench_support.hpp"

#include <hir/hir.hpp>

#include <random>

namespace {

struct loss_data {
  std::size_t batch, length;
  std::vector<float> logp, old_logp, ref_logp, adv_token, adv_seq, grad;
  std::vector<std::uint8_t> mask;
  loss_data(std::size_t b, std::size_t l) : batch(b), length(l) {
    const std::size_t n = b * l;
    std::mt19937 rng(42);
    std::normal_distribution<float> z(0.f, 1.f);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    logp.resize(n), old_logp.resize(n), ref_logp.resize(n), adv_token.resize(n), adv_seq.resize(b), grad.resize(n);
    mask.resize(n);
    for (std::size_t i = 0; i < b; ++i)
      adv_seq[i] = z(rng);
    for (std::size_t k = 0; k < n; ++k) {
      logp[k] = 0.1f * z(rng) - 2.0f;
      old_logp[k] = logp[k] + 0.05f * z(rng);
      ref_logp[k] = logp[k] + 0.05f * z(rng);
      adv_token[k] = adv_seq[k / l];
      mask[k] = u(rng) < 0.9f;
    }
  }
  hir::token_batch_ref<float> tokens() const {
    hir::token_batch_ref<float> tb;
    tb.batch = batch, tb.length = length, tb.mask = mask, tb.logp = logp, tb.old_logp = old_logp,
    tb.ref_logp = ref_logp;
    return tb;
  }
};

/// state.range: B, L, validation (0 before_writing, 1 fused), advantages per token (1) or per sequence (0).
void BM_PolicyLoss(benchmark::State& state) {
  const std::size_t b = static_cast<std::size_t>(state.range(0)), l = static_cast<std::size_t>(state.range(1));
  const bool per_token = state.range(3) != 0;
  loss_data d(b, l);
  hir::policy_loss_options opt = hir::presets::verl_vanilla_loss(); // ε = 0.2, c = 3, token mean
  opt.kl = hir::kl_estimator::k3;
  opt.kl_coef = 0.04;
  opt.validation = state.range(2) ? hir::input_validation::fused : hir::input_validation::before_writing;
  const hir::span<const float> adv =
      per_token ? hir::span<const float>(d.adv_token) : hir::span<const float>(d.adv_seq);
  const auto tb = d.tokens();
  hir::policy_loss_result r = hir::policy_loss(hir::cpu, tb, adv, hir::view(d.grad), opt); // warm up
  hir::bench::iteration_timer timer(1);
  const auto before = hir::bench::alloc_now();
  for (auto _ : state) {
    timer.start();
    r = hir::policy_loss(hir::cpu, tb, adv, hir::view(d.grad), opt);
    benchmark::DoNotOptimize(r);
    benchmark::ClobberMemory();
    timer.stop();
  }
  hir::bench::report_allocs(state, before);
  const std::size_t n = b * l;
  const std::size_t bytes_per_token = per_token ? 21 : 17;
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations() * n));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * n * bytes_per_token));
  state.counters["ns_per_token"] = timer.best() / static_cast<double>(n) * 1e9; // fastest iteration
  state.counters["loss"] = r.loss;
  hir::bench::report_bandwidth(state, static_cast<double>(n * bytes_per_token), timer);
}

/// STREAM triad over exactly `bytes` (12 B per element), 1 thread: the reference for BM_PolicyLoss.
void BM_LossTriad(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0)) / 12;
  std::vector<float> a(n, 0.f), b(n, 1.f), c(n, 2.f);
  for (auto _ : state) {
    hir::bench::triad(a.data(), b.data(), c.data(), 0.5f, n, 1);
    benchmark::DoNotOptimize(a.data());
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(12 * n));
}

} // namespace

BENCHMARK(BM_PolicyLoss)
    ->ArgNames({"B", "L", "fused", "token_adv"})
    ->Args({256, 1024, 0, 1})
    ->Args({256, 1024, 1, 1})
    ->Args({64, 4096, 0, 1})
    ->Args({64, 4096, 1, 1})
    ->Args({256, 1024, 0, 0})
    ->Args({256, 1024, 1, 0})
    ->UseRealTime();
// 21 B × 262,144 tokens and 17 B × 262,144 tokens.
BENCHMARK(BM_LossTriad)->ArgName("bytes")->Arg(5'505'024)->Arg(4'456'448)->UseRealTime();
