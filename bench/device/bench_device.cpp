// SPDX-License-Identifier: Apache-2.0
// The foundation and hindsight benchmarks on the device backend, each beside a copy of the same element count
// measured in the same run, so that a kernel's bandwidth reads as a fraction of what this device moves:
//
//   BM_DeviceCopy                  thrust::copy of N floats (8 B per element): the bandwidth reference
//   BM_DeviceGroupAdvantages       GRPO (presets::verl_grpo), N rewards, G = 8 and 16: 8 B per reward
//   BM_DeviceReinforcePP           REINFORCE++ (presets::hir_paper_code_advantages: k1 KL in the reward,
//                                  β = 0.001, γ = 1, whitening), B × L tokens with random response lengths, as
//                                  bench/advantages/bench_reinforce_pp.cpp: 13 B per token (mask, old and
//                                  reference log-probs read, advantage written)
//   BM_DevicePolicyLoss            policy_loss forward + backward (PPO clip, dual clip 3, k3 KL β = 0.04, token
//                                  mean, per-token advantages), as bench/losses/bench_policy_loss.cpp, both
//                                  input_validation modes: 21 B per token
//   BM_DeviceConstraintNormalized  GDPO (presets::trl_gdpo, 6 constraints, groups of 8): 13 B per sample
//                                  (verdict mask and count read, advantage written)
//   BM_DeviceSelectReplays         select_replays, top-K (K = 2 per prompt) over n candidates of n/8 prompts of 8
//                                  rollouts, as bench/relabel/bench_relabel.cpp: time per call, candidates/s
//
// Everything goes through the public API, with device spans of thrust::device_vector (hir::view,
// hir::to_backend). Timing: CUDA events on a GPU, the steady clock around each (synchronizing) call on Thrust's
// CPP/OMP systems. Counters: N (elements: rewards, tokens, samples or candidates), best_GBps and best_ms (the
// fastest iteration, the least disturbed one on a shared machine: CUDA events on a GPU; on CPU systems the calling
// thread's CPU time on one OpenMP thread, wall time on more, as hir::bench::iteration_timer), threads (OpenMP's on
// CPU systems, 0 on a GPU); Google Benchmark's time and bytes_per_second are the mean (wall time on CPU systems).
// bench/run_device_bench.sh and scripts/gpu_check.sh divide a kernel's best_GBps by BM_DeviceCopy's at the same N. The
// targets on an H200 (the device-backend issue): REINFORCE++ and the policy loss ≥ 70% of the copy at N = 1.6e7, top-K
// over 1e6 candidates under 1 ms.
//
// The same source compiled with HIR_BENCH_DEVICE=0 (target bench_device_cpu_peer) runs the same benchmarks on the
// CPU backend (hir::cpu, std::vector, BM_Cpu* names, a std::copy split over OpenMP's threads as the copy) on the
// same data: the figures "beside the CPU backend's". CUDA build without a usable GPU: nothing is registered.
#include "support/bench_support.hpp"
#include "support/device_timer.hpp"

#if !defined(HIR_BENCH_DEVICE) || HIR_BENCH_DEVICE
#  define HIR_BENCH_ON_DEVICE 1
#  include <hir/device.hpp>

#  include <thrust/copy.h>
#else
#  define HIR_BENCH_ON_DEVICE 0
#  include <hir/hir.hpp>

#  include <algorithm>
#endif

#if defined(_OPENMP)
#  include <omp.h>
#endif

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

#if HIR_BENCH_ON_DEVICE
using be_t = hir::backend::device::tag_t;
constexpr const be_t& be = hir::device;
constexpr const char* prefix = "BM_Device";
template <class T>
using vec = thrust::device_vector<T>;
#else
using be_t = hir::backend::cpu::tag_t;
constexpr const be_t& be = hir::cpu;
constexpr const char* prefix = "BM_Cpu";
template <class T>
using vec = std::vector<T>;
#endif

// ---- the copy ----

void BM_Copy(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0));
  vec<float> a(n, 1.0f), b(n, 0.0f);
  hir::bench::device_timer timer;
#if HIR_BENCH_ON_DEVICE
  // What a user writes: thrust::copy on the device system (the stream hir::device runs on).
  auto copy = [&] { thrust::copy(hir::backend::device::detail::policy(be), a.begin(), a.end(), b.begin()); };
#else
  // std::copy (memmove) split over OpenMP's threads, as the CPU backend's threaded kernels split their work.
  auto copy = [&] {
    const float* src = a.data();
    float* dst = b.data();
#  if defined(_OPENMP)
#    pragma omp parallel
    {
      const std::size_t t = static_cast<std::size_t>(omp_get_thread_num()),
                        k = static_cast<std::size_t>(omp_get_num_threads()), chunk = (n + k - 1) / k;
      const std::size_t first = std::min(n, t * chunk), last = std::min(n, first + chunk);
      std::copy(src + first, src + last, dst + first);
    }
#  else
    std::copy(src, src + n, dst);
#  endif
    benchmark::ClobberMemory();
  };
#endif
  copy(); // warm up
  for (auto _ : state)
    timer.time(state, copy);
  timer.report(state, n, 8.0);
}

// ---- GRPO ----

void BM_GroupAdvantages(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0)), g = static_cast<std::size_t>(state.range(1));
  std::vector<float> host(n);
  std::mt19937 rng(1);
  for (auto& v : host)
    v = static_cast<float>(rng() % 2);
  const auto scores = hir::to_backend(be, host);
  vec<float> out(n);
  const hir::group_storage<be_t> groups(be, hir::group_layout::uniform(n, g));
  const auto opt = hir::presets::verl_grpo();
  auto call = [&] { hir::group_advantages(be, hir::view(scores), groups.ref(), hir::view(out), opt); };
  call(); // warm up
  hir::bench::device_timer timer;
  for (auto _ : state)
    timer.time(state, call);
  timer.report(state, n, 8.0);
}

// ---- REINFORCE++ ----

void BM_ReinforcePP(benchmark::State& state) {
  const std::size_t b = static_cast<std::size_t>(state.range(0)), l = static_cast<std::size_t>(state.range(1));
  const std::size_t n = b * l;
  std::vector<float> h_scores(b), h_old(n), h_ref(n);
  std::vector<std::uint8_t> h_mask(n, 0);
  {
    std::mt19937 rng(42);
    std::normal_distribution<float> z(0.f, 1.f);
    for (std::size_t i = 0; i < b; ++i) {
      h_scores[i] = static_cast<float>(rng() % 2);
      const std::size_t len = l / 4 + rng() % (l - l / 4 + 1);
      for (std::size_t t = 0; t < len; ++t)
        h_mask[i * l + t] = 1;
    }
    for (std::size_t k = 0; k < n; ++k) {
      h_old[k] = 0.5f * z(rng) - 2.0f;
      h_ref[k] = h_old[k] + 0.05f * z(rng);
    }
  }
  const auto scores = hir::to_backend(be, h_scores), old_lp = hir::to_backend(be, h_old),
             ref_lp = hir::to_backend(be, h_ref);
  const auto mask = hir::to_backend(be, h_mask);
  vec<float> out(n);
  hir::token_batch_ref<float, hir::memory_space_t<be_t>> tb;
  tb.batch = b, tb.length = l, tb.mask = hir::view(mask), tb.old_logp = hir::view(old_lp),
  tb.ref_logp = hir::view(ref_lp);
  const hir::group_storage<be_t> groups(be, hir::group_layout::uniform(b, 8));
  const auto opt = hir::presets::hir_paper_code_advantages();
  auto call = [&] { hir::reinforce_pp_advantages(be, hir::view(scores), tb, groups.ref(), hir::view(out), opt); };
  call(); // warm up
  hir::bench::device_timer timer;
  for (auto _ : state)
    timer.time(state, call);
  timer.report(state, n, 13.0);
}

// ---- policy loss, forward + backward ----

void BM_PolicyLoss(benchmark::State& state) {
  const std::size_t b = static_cast<std::size_t>(state.range(0)), l = static_cast<std::size_t>(state.range(1));
  const std::size_t n = b * l;
  std::vector<float> h_logp(n), h_old(n), h_ref(n), h_adv(n);
  std::vector<std::uint8_t> h_mask(n);
  {
    std::mt19937 rng(42);
    std::normal_distribution<float> z(0.f, 1.f);
    std::uniform_real_distribution<float> u(0.f, 1.f);
    std::vector<float> adv_seq(b);
    for (auto& a : adv_seq)
      a = z(rng);
    for (std::size_t k = 0; k < n; ++k) {
      h_logp[k] = 0.1f * z(rng) - 2.0f;
      h_old[k] = h_logp[k] + 0.05f * z(rng);
      h_ref[k] = h_logp[k] + 0.05f * z(rng);
      h_adv[k] = adv_seq[k / l];
      h_mask[k] = u(rng) < 0.9f;
    }
  }
  const auto logp = hir::to_backend(be, h_logp), old_lp = hir::to_backend(be, h_old),
             ref_lp = hir::to_backend(be, h_ref), adv = hir::to_backend(be, h_adv);
  const auto mask = hir::to_backend(be, h_mask);
  vec<float> grad(n);
  hir::token_batch_ref<float, hir::memory_space_t<be_t>> tb;
  tb.batch = b, tb.length = l, tb.mask = hir::view(mask), tb.logp = hir::view(logp), tb.old_logp = hir::view(old_lp),
  tb.ref_logp = hir::view(ref_lp);
  hir::policy_loss_options opt = hir::presets::verl_vanilla_loss(); // ε = 0.2, c = 3, token mean
  opt.kl = hir::kl_estimator::k3;
  opt.kl_coef = 0.04;
  opt.validation = state.range(2) ? hir::input_validation::fused : hir::input_validation::before_writing;
  hir::policy_loss_result r{};
  auto call = [&] { r = hir::policy_loss(be, tb, hir::view(adv), hir::view(grad), opt); };
  call(); // warm up
  hir::bench::device_timer timer;
  for (auto _ : state) {
    timer.time(state, call);
    benchmark::DoNotOptimize(r);
  }
  timer.report(state, n, 21.0);
  state.counters["loss"] = r.loss;
}

// ---- GDPO ----

void BM_ConstraintNormalized(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0)), g = static_cast<std::size_t>(state.range(1));
  std::vector<std::uint64_t> h_masks(n);
  std::vector<std::uint8_t> h_counts(n, 6);
  std::mt19937_64 rng(5);
  for (auto& m : h_masks)
    m = rng() & 0x3f;
  const auto masks = hir::to_backend(be, h_masks);
  const auto counts = hir::to_backend(be, h_counts);
  vec<float> out(n);
  const hir::verdict_ref<hir::memory_space_t<be_t>> v{hir::view(masks), hir::view(counts)};
  const hir::group_storage<be_t> groups(be, hir::group_layout::uniform(n, g));
  const auto opt = hir::presets::trl_gdpo();
  auto call = [&] { hir::constraint_normalized_advantages(be, v, groups.ref(), hir::view(out), opt); };
  call(); // warm up
  hir::bench::device_timer timer;
  for (auto _ : state)
    timer.time(state, call);
  timer.report(state, n, 13.0);
}

// ---- hindsight: replay selection ----

void BM_SelectReplays(benchmark::State& state) {
  const std::size_t n = static_cast<std::size_t>(state.range(0)), m = 8, B = n / m;
  std::vector<std::int64_t> h_prompt(n), h_length(n);
  std::vector<std::uint64_t> h_masks(n);
  std::vector<std::uint8_t> h_counts(n, 6);
  std::vector<float> h_entropy(n);
  {
    std::mt19937_64 rng(42);
    std::uniform_real_distribution<float> ent(0.f, 3.f);
    for (std::size_t i = 0; i < n; ++i) {
      h_prompt[i] = static_cast<std::int64_t>(i / m);
      // a third succeed, a third fail everything, a third are partial (eligible)
      const auto kind = rng() % 3;
      h_masks[i] = kind == 0 ? 0x3f : kind == 1 ? 0 : 1 + rng() % 62;
      h_length[i] = 1 + static_cast<std::int64_t>(rng() % 512);
      h_entropy[i] = ent(rng) * static_cast<float>(h_length[i]);
    }
  }
  const auto prompt = hir::to_backend(be, h_prompt), length = hir::to_backend(be, h_length);
  const auto masks = hir::to_backend(be, h_masks);
  const auto counts = hir::to_backend(be, h_counts);
  const auto entropy = hir::to_backend(be, h_entropy);
  hir::replay_candidates_ref<float, hir::memory_space_t<be_t>> c;
  c.num_prompts = B;
  c.prompt = hir::view(prompt), c.length = hir::view(length), c.entropy_sum = hir::view(entropy);
  c.verdicts = {hir::view(masks), hir::view(counts)};
  hir::replay_select_options o;
  o.allocation = static_cast<hir::replay_allocation>(state.range(1));
  o.budget_kind = hir::replay_budget_kind::per_prompt; // K = 2 per prompt
  std::size_t chosen = 0;
  auto call = [&] {
    auto s = hir::select_replays(be, c, 10, o);
    chosen = s.size();
  };
  call(); // warm up
  hir::bench::device_timer timer;
  for (auto _ : state)
    timer.time(state, call);
  timer.report(state, n, 0.0);
  state.counters["replays"] = static_cast<double>(chosen);
}

std::string name(const char* algorithm) {
  return std::string(prefix) + algorithm;
}

const bool registered = [] {
  if (!hir::bench::device_available()) {
    std::printf("bench_device: no usable CUDA device; no device benchmark is registered\n");
    return false;
  }
  // Every N a kernel below uses: rewards/samples (1e6, 1.6e7), tokens (1000 × 1000, 4000 × 4000), candidates.
  benchmark::RegisterBenchmark(name("Copy").c_str(), BM_Copy)
      ->ArgNames({"N"})
      ->Args({100'000})
      ->Args({1'000'000})
      ->Args({16'000'000})
      ->UseManualTime();
  benchmark::RegisterBenchmark(name("GroupAdvantages").c_str(), BM_GroupAdvantages)
      ->ArgNames({"N", "G"})
      ->ArgsProduct({{1'000'000, 16'000'000}, {8, 16}})
      ->UseManualTime();
  benchmark::RegisterBenchmark(name("ReinforcePP").c_str(), BM_ReinforcePP)
      ->ArgNames({"B", "L"})
      ->Args({1'000, 1'000})
      ->Args({4'000, 4'000})
      ->UseManualTime();
  // fused: 0 input_validation::before_writing (the default), 1 input_validation::fused
  benchmark::RegisterBenchmark(name("PolicyLoss").c_str(), BM_PolicyLoss)
      ->ArgNames({"B", "L", "fused"})
      ->ArgsProduct({{1'000}, {1'000}, {0, 1}})
      ->ArgsProduct({{4'000}, {4'000}, {0, 1}})
      ->UseManualTime();
  benchmark::RegisterBenchmark(name("ConstraintNormalized").c_str(), BM_ConstraintNormalized)
      ->ArgNames({"N", "G"})
      ->Args({1'000'000, 8})
      ->Args({16'000'000, 8})
      ->UseManualTime();
  // alloc: 0 top_k_global (top-K over the batch), 1 top_k_per_group, 2 even_per_prompt
  benchmark::RegisterBenchmark(name("SelectReplays").c_str(), BM_SelectReplays)
      ->ArgNames({"n", "alloc"})
      ->Args({100'000, 0})
      ->Args({1'000'000, 0})
      ->Args({1'000'000, 1})
      ->Args({1'000'000, 2})
      ->Unit(benchmark::kMillisecond)
      ->UseManualTime();
  return true;
}();

} // namespace
