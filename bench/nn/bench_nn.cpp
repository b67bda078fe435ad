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
//                  tokens/s, allocations per generate() call.
// Built twice: bench_nn (the default GEMM: hir's AVX-512 kernel, Eigen on CPUs without AVX-512) and bench_nn_blas
// (OpenBLAS GEMM, HIR_NN_USE_CBLAS; the generator's attention and GELU stay on hir's AVX-512 code).
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

// ---- the end-to-end trainer's model (apps/hir_train): V 363, context 32, C 96, 3 layers, 4 heads ----------------

hir::nn::transformer_config rl_config() {
  hir::nn::transformer_config c;
  c.vocab = 363;
  c.context = 32;
  c.channels = 96;
  c.layers = 3;
  c.heads = 4;
  return c;
}

constexpr std::size_t rl_rows = 128, rl_seq = 30, rl_prompt = 10, rl_new = 20, rl_minibatches = 2;

/// The transformer work of one RL step of hir_train at its default sizes: generation of 128 rows (prompts of 5–10
/// tokens, up to 20 new tokens, no stop token: every row runs to the end, the worst case), the reference model's
/// forward over 128 × 30 tokens, and 2 optimizer steps (forward + backward from dL/dlogp + clip + AdamW) over 64 × 30
/// tokens each. Reports seconds per RL step and each part (gen_ms, ref_ms, update_ms); `part` selects what is timed
/// (0: the whole step, 1: generation, 2: reference forward, 3: the two updates).
void BM_RLStep(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  const int part = static_cast<int>(state.range(1));
  hir::bench::set_threads(threads);
  const auto cfg = rl_config();
  hir::nn::model<float> policy(cfg, rl_rows, rl_seq), ref(cfg, rl_rows, rl_seq);
  policy.init_parameters(11);
  ref.init_parameters(11);
  hir::nn::adamw_state<float> opt(policy.params_layout());
  hir::nn::generator<float> gen(cfg, rl_rows, rl_seq);
  const auto prompts = random_tokens(rl_rows * rl_prompt, cfg.vocab, 12);
  std::vector<std::size_t> plen(rl_rows);
  std::vector<std::uint64_t> ids(rl_rows);
  for (std::size_t r = 0; r < rl_rows; ++r) {
    plen[r] = 5 + r % 6;
    ids[r] = r;
  }
  std::vector<hir::nn::token_t> out(rl_rows * rl_new), tokens(rl_rows * rl_seq), targets(rl_rows * rl_seq);
  std::vector<float> lp(rl_rows * rl_new), ent(rl_rows * rl_new), dlogp(rl_rows * rl_seq);
  std::vector<std::size_t> len(rl_rows);
  hir::nn::generation_options gopt;
  gopt.max_new_tokens = rl_new;
  const hir::nn::adamw_options aopt;
  double t_gen = 0, t_ref = 0, t_upd = 0;
  using clock = std::chrono::steady_clock;
  const auto ms = [](clock::time_point a, clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  const auto step = [&](bool timed) {
    const auto t0 = clock::now();
    if (part == 0 || part == 1) {
      gen.generate(policy, prompts, plen, ids, rl_rows, rl_prompt, gopt, hir::view(out), hir::view(lp), hir::view(ent),
                   hir::view(len));
      ++gopt.seed;
    }
    // Sequences: prompt, response, padding (token 0, no target); targets are the next tokens of the response.
    for (std::size_t r = 0; r < rl_rows; ++r)
      for (std::size_t t = 0; t < rl_seq; ++t) {
        const std::size_t pl = plen[r];
        const auto at = [&](std::size_t u) -> hir::nn::token_t {
          return u < pl ? prompts[r * rl_prompt + u] : (u - pl < len[r] ? out[r * rl_new + u - pl] : 0);
        };
        tokens[r * rl_seq + t] = at(t);
        targets[r * rl_seq + t] = t + 1 >= pl && t + 1 < pl + len[r] && t + 1 < rl_seq ? at(t + 1) : -1;
        dlogp[r * rl_seq + t] = targets[r * rl_seq + t] >= 0 ? -1.0f / 1280.0f : 0.0f;
      }
    const auto t1 = clock::now();
    if (part == 0 || part == 2)
      ref.forward(tokens, targets, rl_rows, rl_seq);
    const auto t2 = clock::now();
    if (part == 0 || part == 3)
      for (std::size_t mb = 0; mb < rl_minibatches; ++mb) {
        const std::size_t r0 = rl_rows * mb / rl_minibatches, n = rl_rows / rl_minibatches;
        policy.forward(hir::span<const hir::nn::token_t>(tokens.data() + r0 * rl_seq, n * rl_seq),
                       hir::span<const hir::nn::token_t>(targets.data() + r0 * rl_seq, n * rl_seq), n, rl_seq);
        policy.backward(hir::span<const float>(dlogp.data() + r0 * rl_seq, n * rl_seq));
        hir::nn::clip_grad_norm(hir::cpu, policy.gradients(), 1.0);
        opt.update(hir::cpu, policy.parameters(), policy.gradients(), aopt, 1e-5);
        policy.zero_grad();
      }
    const auto t3 = clock::now();
    if (timed) {
      t_gen += ms(t0, t1);
      t_ref += ms(t1, t2);
      t_upd += ms(t2, t3);
    }
  };
  for (std::size_t r = 0; r < rl_rows; ++r)
    len[r] = rl_new;
  for (int i = 0; i < 3; ++i)
    step(false);
  const auto before = hir::bench::alloc_now();
  for (auto _ : state)
    step(true);
  hir::bench::report_allocs(state, before);
  const double it = static_cast<double>(state.iterations());
  state.counters["gen_ms"] = t_gen / it;
  state.counters["ref_ms"] = t_ref / it;
  state.counters["update_ms"] = t_upd / it;
  state.counters["step_ms"] = (t_gen + t_ref + t_upd) / it;
  state.SetLabel(hir::nn::detail::gemm_name());
}

} // namespace

BENCHMARK(BM_TrainStep)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MatmulLayers)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Generate)->ArgName("threads")->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_RLStep)
    ->ArgNames({"threads", "part"})
    ->ArgsProduct({{1, 2}, {0, 1, 2, 3}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
