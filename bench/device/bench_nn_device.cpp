// SPDX-License-Identifier: Apache-2.0
// The reference transformer's training step and generation on the device backend (hir::nn::model<float, device>), on
// the config (vocab 96, context 128, width 128, 4 layers, 4 heads; 0.82 M parameters), batch B × 128 tokens:
//
//   BM_DeviceTrainStep/B:32/part:0   zero_grad + forward + masked cross-entropy backward + clip_grad_norm + AdamW
//   BM_DeviceTrainStep/B:32/part:1   forward only
//   BM_DeviceTrainStep/B:32/part:2   forward + backward (no optimizer)
//
// as bench/nn/bench_nn.cpp's BM_TrainStep on the CPU backend, with its buffers on the device and a workspace for
// Thrust's temporaries (no device allocation after the warm-up). Tokens are uploaded from the host every step (as a
// trainer would); the forward's token and target checks and the loss read back one value each (they synchronize).
//
//   BM_DeviceGenerate/rows:256       device_generator: 256 prompts of 16 tokens, 64 new tokens each (KV cache), the
//                                    CPU's BM_Generate on the device
//
// Timing: CUDA events on a GPU (device_timer), the steady clock / thread CPU time on Thrust's CPP/OMP systems.
// Counters: tokens_per_s (of the fastest iteration), best_ms, GFLOP_per_s (bench_nn.cpp's count: 6·matmul params
// + 12·L·C·T per token, attention as full T×T); generation reports new_tokens_per_s. On CPP/OMP the GEMMs are the
// portable one-element-per-call functor, so only B = 2 (and 4 generated rows) is registered there (a smoke run); on
// CUDA B = 32 (the batch) and B = 8, and 256 and 32 generated rows.
#include "support/bench_support.hpp"
#include "support/device_timer.hpp"

#include <hir/nn/device.hpp>

#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

namespace {

using device_tag = hir::backend::device::tag_t;
constexpr std::size_t seq = 128;

double flops_per_token(const hir::nn::transformer_config& c) {
  const hir::nn::parameter_layout pl(c);
  return 6.0 * static_cast<double>(pl.matmul_count()) + 12.0 * static_cast<double>(c.layers * c.channels * c.context);
}

std::vector<hir::nn::token_t> random_tokens(std::size_t n, std::size_t V, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> d(0, static_cast<int>(V) - 1);
  std::vector<hir::nn::token_t> t(n);
  for (auto& x : t)
    x = d(rng);
  return t;
}

void BM_TrainStep(benchmark::State& state) {
  const std::size_t batch = static_cast<std::size_t>(state.range(0));
  const int part = static_cast<int>(state.range(1));
  const hir::nn::transformer_config cfg; // the config
  hir::device_workspace ws;
  const device_tag be = hir::device.with(ws);
  hir::nn::model<float, device_tag> m(cfg, batch, seq, be);
  m.init_parameters(1);
  hir::nn::adamw_state<float, device_tag> opt(m.params_layout());
  const auto tokens = random_tokens(batch * seq, cfg.vocab, 2), targets = random_tokens(batch * seq, cfg.vocab, 3);
  const thrust::device_vector<float> mask(batch * seq, 1.f);
  thrust::device_vector<float> scratch(batch * seq);
  const hir::nn::adamw_options aopt;
  float loss = 0.f;
  const auto step = [&] {
    m.zero_grad();
    m.forward(tokens, targets, batch, seq);
    if (part == 1)
      return;
    loss = m.backward_cross_entropy(hir::view(mask), hir::view(scratch));
    if (part == 2)
      return;
    hir::nn::clip_grad_norm(be, m.gradients(), 1.0);
    opt.update(be, m.parameters(), m.gradients(), aopt, 1e-3);
  };
  for (int i = 0; i < 3; ++i) // warm-up: the workspace, cuBLAS's handle and kernels
    step();
  const std::size_t allocations = ws.allocations();
  hir::bench::device_timer timer;
  for (auto _ : state)
    timer.time(state, step);
  benchmark::DoNotOptimize(loss);
  const double tok = static_cast<double>(batch * seq);
  timer.report(state, batch * seq, 0.0);
  state.counters["tokens_per_s"] = tok / timer.best();
  state.counters["GFLOP_per_s"] = flops_per_token(cfg) * tok / timer.best() * 1e-9;
  state.counters["workspace_allocs"] = static_cast<double>(ws.allocations() - allocations);
  state.counters["loss"] = static_cast<double>(loss);
#if HIR_NN_USE_CUBLAS
  state.SetLabel("cuBLAS");
#else
  state.SetLabel("portable Thrust GEMM");
#endif
}

// Generation with the KV cache (device_generator): R prompts of 16 tokens, 64 new tokens each (no stop token, so
// every row runs to the end), temperature 1 without filtering, as bench/nn/bench_nn.cpp's BM_Generate on the CPU.
void BM_Generate(benchmark::State& state) {
  const std::size_t rows = static_cast<std::size_t>(state.range(0)), prompt = 16, new_tokens = 64;
  const hir::nn::transformer_config cfg; // the config
  hir::device_workspace ws;
  const device_tag be = hir::device.with(ws);
  hir::nn::model<float, device_tag> m(cfg, 1, seq, be);
  m.init_parameters(1);
  hir::nn::device_generator<float> gen(cfg, rows, prompt + new_tokens);
  const auto host_prompts = random_tokens(rows * prompt, cfg.vocab, 4);
  std::vector<std::uint64_t> host_ids(rows);
  for (std::size_t r = 0; r < rows; ++r)
    host_ids[r] = r;
  const thrust::device_vector<hir::nn::token_t> prompts(host_prompts.begin(), host_prompts.end());
  const thrust::device_vector<std::size_t> lengths(rows, prompt);
  const thrust::device_vector<std::uint64_t> ids(host_ids.begin(), host_ids.end());
  thrust::device_vector<hir::nn::token_t> tokens(rows * new_tokens);
  thrust::device_vector<float> logp(rows * new_tokens), entropy(rows * new_tokens);
  thrust::device_vector<std::size_t> out_lengths(rows);
  hir::nn::generation_options opt;
  opt.max_new_tokens = new_tokens;
  std::uint64_t seed = 0;
  const auto run = [&] {
    opt.seed = ++seed;
    gen.generate(be, m, hir::view(prompts), hir::view(lengths), hir::view(ids), rows, prompt, opt, hir::view(tokens),
                 hir::view(logp), hir::view(entropy), hir::view(out_lengths));
  };
  run(); // warm-up: the workspace, cuBLAS's handle and kernels
  const std::size_t allocations = ws.allocations();
  hir::bench::device_timer timer;
  for (auto _ : state)
    timer.time(state, run);
  const double generated = static_cast<double>(rows * new_tokens);
  timer.report(state, rows * new_tokens, 0.0);
  state.counters["new_tokens_per_s"] = generated / timer.best();
  state.counters["workspace_allocs"] = static_cast<double>(ws.allocations() - allocations);
#if HIR_NN_USE_CUBLAS
  state.SetLabel("cuBLAS");
#else
  state.SetLabel("portable Thrust GEMM");
#endif
}

const bool registered = [] {
  if (!hir::bench::device_available()) {
    std::printf("bench_nn_device: no usable CUDA device; no device benchmark is registered\n");
    return false;
  }
  auto* b = benchmark::RegisterBenchmark("BM_DeviceTrainStep", BM_TrainStep)->ArgNames({"B", "part"});
#if HIR_DEVICE_IS_CUDA
  b->ArgsProduct({{32}, {0, 1, 2}})->Args({8, 0});
#else
  b->Args({2, 0});
#endif
  b->Unit(benchmark::kMillisecond)->UseManualTime();
  auto* g = benchmark::RegisterBenchmark("BM_DeviceGenerate", BM_Generate)->ArgNames({"rows"});
#if HIR_DEVICE_IS_CUDA
  g->Arg(256)->Arg(32);
#else
  g->Arg(4);
#endif
  g->Unit(benchmark::kMillisecond)->UseManualTime();
  return true;
}();

} // namespace
