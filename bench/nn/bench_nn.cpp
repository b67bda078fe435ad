// SPDX-License-Identifier: Apache-2.0
// hir::nn benchmarks on the config (vocab 96, context 128, width 128, 4 layers, 4 heads, batch 32 = 4,096
// tokens per step, 0.82 M parameters), on 1 and 2 threads:
//   BM_TrainStep   forward + masked cross-entropy backward + grad-norm clip + AdamW; tokens/s, model GFLOP/s
//                  (torch_gpt_bench.py's count: 6·matmul params + 12·L·C·T per token), the forward/backward/optimizer
//                  split, allocations per step (large_allocs = allocations ≥ 128 KiB), the layouts' bytes and the
//                  process's peak RSS (run it alone for a meaningful RSS).
//   BM_MatmulLayers the model's matmul layers alone (every forward and backward GEMM of one step, same shapes, same
//                  thread split): the GEMM rate at the model's shapes, measured in the same run, that the train step's
//                  GFLOP/s is divided by.
//   BM_Generate    256 sequences × 64 new tokens after 16-token prompts with the KV cache (temperature 1): new
//   tokens/s.
// Built twice: bench_nn (Eigen GEMM) and bench_nn_blas (OpenBLAS GEMM, HIR_NN_USE_CBLAS).
#include "support/bench_support.hpp"

#include <hir/nn.hpp>

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

#include <sys/resource.h>

namespace {

constexpr std::size_t batch = 32, seq = 128;

hir::nn::transformer_config bench_config() {
  return {};
} // the defaults are the config

double flops_per_token(const hir::nn::transformer_config& c) {
  const hir::nn::parameter_layout pl(c);
  return 6.0 * static_cast<double>(pl.matmul_count()) + 12.0 * static_cast<double>(c.layers * c.channels * c.context);
}

double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0; // KiB on Linux
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
  const int threads = static_cast<int>(state.range(0));
  hir::bench::set_threads(threads);
  const auto cfg = bench_config();
  hir::nn::model<float> m(cfg, batch, seq);
  m.init_parameters(1);
  hir::nn::adamw_state<float> opt(m.params_layout());
  const auto tokens = random_tokens(batch * seq, cfg.vocab, 2), targets = random_tokens(batch * seq, cfg.vocab, 3);
  std::vector<float> mask(batch * seq, 1.f), scratch(batch * seq);
  const hir::nn::adamw_options aopt;
  double fwd = 0, bwd = 0, upd = 0;
  using clock = std::chrono::steady_clock;
  const auto step = [&](bool timed) {
    const auto t0 = clock::now();
    m.zero_grad();
    m.forward(tokens, targets, batch, seq);
    const auto t1 = clock::now();
    const float loss = m.backward_cross_entropy(mask, hir::view(scratch));
    const auto t2 = clock::now();
    hir::nn::clip_grad_norm(hir::cpu, m.gradients(), 1.0);
    opt.update(hir::cpu, m.parameters(), m.gradients(), aopt, 1e-3);
    const auto t3 = clock::now();
    if (timed) {
      fwd += std::chrono::duration<double, std::milli>(t1 - t0).count();
      bwd += std::chrono::duration<double, std::milli>(t2 - t1).count();
      upd += std::chrono::duration<double, std::milli>(t3 - t2).count();
    }
    benchmark::DoNotOptimize(loss);
  };
  for (int i = 0; i < 3; ++i) // warm-up: touch every page, start the threads
    step(false);
  const auto before = hir::bench::alloc_now();
  for (auto _ : state)
    step(true);
  hir::bench::report_allocs(state, before);
  const double it = static_cast<double>(state.iterations());
  const double tok = static_cast<double>(batch * seq);
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) * static_cast<std::int64_t>(batch * seq));
  state.counters["tokens_per_s"] = benchmark::Counter(tok * it, benchmark::Counter::kIsRate);
  state.counters["GFLOP_per_s"] =
      benchmark::Counter(flops_per_token(cfg) * tok * it * 1e-9, benchmark::Counter::kIsRate);
  state.counters["fwd_ms"] = fwd / it;
  state.counters["bwd_ms"] = bwd / it;
  state.counters["opt_ms"] = upd / it;
  const double layout_bytes =
      4.0 * static_cast<double>(4 * m.params_layout().total + m.acts_layout().total) + 2.0 * 4.0 * batch * seq;
  state.counters["layout_MiB"] = layout_bytes / (1024.0 * 1024.0);
  state.counters["peak_rss_MiB"] = peak_rss_mib();
  state.SetLabel(hir::nn::detail::gemm_name());
}

void BM_MatmulLayers(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  hir::bench::set_threads(threads);
  const auto cfg = bench_config();
  const std::size_t N = batch * seq, C = cfg.channels;
  struct shape {
    std::size_t in, out;
    bool bias;
  };
  std::vector<shape> shapes;
  for (std::size_t l = 0; l < cfg.layers; ++l)
    shapes.insert(shapes.end(), {{C, 3 * C, true}, {C, C, true}, {C, 4 * C, true}, {4 * C, C, true}});
  shapes.push_back({C, cfg.vocab, false});
  double flops = 0;
  std::vector<std::vector<float>> x, w, b, y, dx, dw, db;
  std::mt19937_64 rng(4);
  std::uniform_real_distribution<float> u(-1, 1);
  for (const auto& s : shapes) {
    const auto fill = [&](std::size_t n) {
      std::vector<float> v(n);
      for (auto& e : v)
        e = u(rng);
      return v;
    };
    x.push_back(fill(N * s.in));
    w.push_back(fill(s.out * s.in));
    b.push_back(s.bias ? fill(s.out) : std::vector<float>());
    y.push_back(fill(N * s.out));
    dx.push_back(fill(N * s.in));
    dw.push_back(fill(s.out * s.in));
    db.push_back(s.bias ? fill(s.out) : std::vector<float>());
    flops += 6.0 * static_cast<double>(N * s.in * s.out);
  }
  const auto run = [&] {
    for (std::size_t i = 0; i < shapes.size(); ++i)
      hir::nn::matmul_forward<float>(hir::cpu, hir::view(y[i]), x[i], w[i], b[i], N, shapes[i].in, shapes[i].out);
    for (std::size_t i = shapes.size(); i-- > 0;)
      hir::nn::matmul_backward<float>(hir::cpu, hir::view(dx[i]), hir::view(dw[i]), hir::view(db[i]), y[i], x[i], w[i],
                                      N, shapes[i].in, shapes[i].out);
  };
  run();
  const auto before = hir::bench::alloc_now();
  for (auto _ : state) {
    run();
    benchmark::ClobberMemory();
  }
  hir::bench::report_allocs(state, before);
  state.counters["GFLOP_per_s"] =
      benchmark::Counter(flops * static_cast<double>(state.iterations()) * 1e-9, benchmark::Counter::kIsRate);
  state.SetLabel(hir::nn::detail::gemm_name());
}

void BM_Generate(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  hir::bench::set_threads(threads);
  const auto cfg = bench_config();
  const std::size_t B = 256, P = 16, N = 64;
  hir::nn::model<float> m(cfg, 1, 1);
  m.init_parameters(5);
  hir::nn::generator<float> gen(cfg, B, P + N);
  const auto prompts = random_tokens(B * P, cfg.vocab, 6);
  const std::vector<std::size_t> plen(B, P);
  std::vector<std::uint64_t> ids(B);
  for (std::size_t r = 0; r < B; ++r)
    ids[r] = r;
  std::vector<hir::nn::token_t> tok(B * N);
  std::vector<float> lp(B * N), ent(B * N);
  std::vector<std::size_t> len(B);
  hir::nn::generation_options opt;
  opt.max_new_tokens = N;
  const auto run = [&] {
    gen.generate(m, prompts, plen, ids, B, P, opt, hir::view(tok), hir::view(lp), hir::view(ent), hir::view(len));
    ++opt.seed;
  };
  run();
  const auto before = hir::bench::alloc_now();
  for (auto _ : state) {
    run();
    benchmark::DoNotOptimize(tok.data());
  }
  hir::bench::report_allocs(state, before);
  state.counters["new_tokens_per_s"] = benchmark::Counter(
      static_cast<double>(B * N) * static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
  state.SetLabel(hir::nn::detail::gemm_name());
}

} // namespace

BENCHMARK(BM_TrainStep)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MatmulLayers)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Generate)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
