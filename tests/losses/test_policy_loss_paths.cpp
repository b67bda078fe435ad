// SPDX-License-Identifier: Apache-2.0
// The CPU policy_loss's AVX-512 token loop (backend/cpu/policy_loss_avx512.hpp) against the portable loop it
// replaces, chunk by chunk: the same random chunks (every length 1 … 256, so every tail; masks with holes;
// advantages per token and per sequence; clamps of ℓ, of −κ and of the k3 value active; dual clip on and off) go
// through both, and the gradient, the 16 lanes of each summed term and the clip-flag counts must agree to float
// rounding. Also: the non-finite checks of input_validation::fused (NaN or ±inf in logp, old_logp or ref_logp at a
// valid position makes a summed lane non-finite; at a masked position it changes nothing), and the mask-counting
// and validation passes against plain loops. In hir.cpu.losses, test_policy_loss.cpp checks the whole function on
// the AVX-512 path (taken at run time when the CPU has AVX-512) against the double reference; hir.cpu.losses_portable
// builds both files with HIR_NO_AVX512, where the comparisons report that they did not run.
#include "losses/exp_sweep.hpp"
#include "support/seed.hpp"

#include <hir/backend/cpu/policy_loss.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

namespace {

namespace bc = hir::backend::cpu::detail;
using hir::detail::kl_family;

#if HIR_CPU_AVX512
struct chunk_input {
  std::size_t n = 0;
  std::vector<float> x, o, r, a; // a: n values (per token) or 1 (per sequence)
  std::vector<std::uint8_t> m;
  bool token_adv = true;
  float w = 1.0f;
};

/// A chunk of n tokens: log-ratios and −κ spread 0.8 around 0 plus 3% outliers beyond the clamps (±25), 15%
/// masked positions holding garbage (large values) the loops must ignore.
chunk_input random_chunk(std::mt19937_64& rng, std::size_t n, bool token_adv) {
  std::normal_distribution<float> z(0.f, 1.f);
  std::uniform_real_distribution<float> u(0.f, 1.f);
  chunk_input c;
  c.n = n, c.token_adv = token_adv;
  c.w = 0.5f + u(rng);
  c.x.resize(n), c.o.resize(n), c.r.resize(n), c.m.resize(n);
  c.a.resize(token_adv ? n : 1);
  for (auto& v : c.a)
    v = u(rng) < 0.1f ? 0.0f : z(rng); // exact zeros (constant groups) too
  for (std::size_t t = 0; t < n; ++t) {
    c.m[t] = u(rng) < 0.85f;
    c.x[t] = -2.0f + 0.5f * z(rng);
    c.o[t] = c.x[t] + (u(rng) < 0.03f ? 25.0f * (u(rng) < 0.5f ? -1.0f : 1.0f) : 0.8f * z(rng));
    c.r[t] = c.x[t] + (u(rng) < 0.03f ? 25.0f * (u(rng) < 0.5f ? -1.0f : 1.0f) : 0.8f * z(rng));
    if (!c.m[t]) {
      c.x[t] = 1e30f, c.o[t] = -1e30f, c.r[t] = 3e30f;
      if (token_adv)
        c.a[t] = -1e30f;
    }
  }
  return c;
}

struct chunk_output {
  std::vector<float> g;
  float f[bc::q_count][bc::loss_lanes] = {};
  std::int32_t code = 0;
};

template <kl_family F>
chunk_output run_portable(const chunk_input& c, const hir::detail::policy_token_params<float>& p) {
  chunk_output out;
  out.g.assign(c.n, -7.0f);
  std::vector<std::uint32_t> lanes(c.n);
  for (std::size_t t = 0; t < c.n; ++t)
    lanes[t] = c.m[t] ? 0xFFFFFFFFu : 0u;
  std::vector<float> adv = c.token_adv ? c.a : std::vector<float>(c.n, c.a[0]);
  out.code = bc::loss_chunk_loop<hir::policy_loss_kind::ppo_clip, F, float>(
      c.x.data(), c.o.data(), c.r.data(), adv.data(), lanes.data(), out.g.data(), c.n, 1.0f, 1.0f, c.w, p, out.f);
  return out;
}

/// e^x of n floats (n a multiple of 16) through the AVX-512 loop's exp.
HIR_CPU_AVX512_FN void exp_avx512_array(const float* x, float* y, std::size_t n) {
  for (std::size_t i = 0; i < n; i += 16)
    _mm512_storeu_ps(y + i, bc::exp_avx512(_mm512_loadu_ps(x + i)));
}

template <kl_family F, bool NanCheck>
chunk_output run_avx512(const chunk_input& c, const hir::detail::policy_token_params<float>& p) {
  chunk_output out;
  out.g.assign(c.n + 16, -7.0f); // 16 guard values after the chunk: a masked store must not touch them
  const float* ref = F == kl_family::none ? nullptr : c.r.data();
  if (c.token_adv)
    out.code = bc::loss_chunk_ppo_avx512<F, NanCheck, true>(c.x.data(), c.o.data(), ref, c.a.data(), 0.0f, c.m.data(),
                                                            out.g.data(), c.n, c.w, p, out.f);
  else
    out.code = bc::loss_chunk_ppo_avx512<F, NanCheck, false>(c.x.data(), c.o.data(), ref, nullptr, c.a[0], c.m.data(),
                                                             out.g.data(), c.n, c.w, p, out.f);
  for (std::size_t t = c.n; t < c.n + 16; ++t)
    REQUIRE(out.g[t] == -7.0f);
  out.g.resize(c.n);
  return out;
}

/// Σ over lane j of |term| for each summed term, from the portable per-token functions in double: the scale of a
/// lane sum's rounding error.
template <kl_family F>
std::vector<std::vector<double>> lane_scales(const chunk_input& c, const hir::policy_loss_options& opt) {
  const auto pd = hir::detail::make_policy_token_params<double>(opt);
  std::vector<std::vector<double>> s(bc::q_count, std::vector<double>(bc::loss_lanes, 1e-30));
  for (std::size_t t = 0; t < c.n; ++t) {
    if (!c.m[t])
      continue;
    const double a = c.token_adv ? c.a[t] : c.a[0];
    const auto e = hir::detail::policy_pg_token<hir::policy_loss_kind::ppo_clip, double>(c.x[t], c.o[t], a, 1, 1, pd);
    const auto k = hir::detail::kl_token<F, double>(c.x[t], c.r[t], pd);
    const std::size_t j = t % bc::loss_lanes;
    s[bc::q_pg][j] += std::fabs(e.pg);
    s[bc::q_kl][j] += std::fabs(k.value);
    s[bc::q_ratio][j] += std::fabs(e.ratio);
    s[bc::q_log_ratio][j] += std::fabs(e.log_ratio);
  }
  return s;
}

/// The scale of token t's gradient, w·(|A|·ρ + β·|e^d − 1|), in double.
double grad_scale(const chunk_input& c, std::size_t t, const hir::policy_loss_options& opt) {
  const double a = c.token_adv ? c.a[t] : c.a[0];
  const double l = std::clamp(double(c.x[t]) - c.o[t], -opt.log_ratio_clamp, opt.log_ratio_clamp);
  const double d = std::clamp(double(c.r[t]) - c.x[t], -opt.kl_log_ratio_clamp, opt.kl_log_ratio_clamp);
  return c.w * (std::fabs(a) * std::exp(l) + opt.kl_coef * std::fabs(std::expm1(d)));
}

std::vector<hir::policy_loss_options> option_sets() {
  std::vector<hir::policy_loss_options> sets;
  hir::policy_loss_options o = hir::presets::verl_vanilla_loss(); // ε = 0.2, c = 3
  o.kl_coef = 0.04;
  sets.push_back(o);
  o.clip_low = 0.2, o.clip_high = 0.28, o.dual_clip = 0; // clip-higher, no dual clip
  o.kl_coef = 0.5, o.log_ratio_clamp = 2.0, o.kl_log_ratio_clamp = 1.5, o.kl_value_clamp = 0.6; // clamps bite
  sets.push_back(o);
  o.dual_clip = 1.5, o.kl_value_clamp = 0, o.kl_coef = 1.0; // dual clip at 1.5, no value clamp
  sets.push_back(o);
  return sets;
}

template <kl_family F>
void compare_paths(std::mt19937_64& rng) {
  long long flag_mismatches = 0, tokens = 0;
  for (const auto& opt : option_sets()) {
    const auto p = hir::detail::make_policy_token_params<float>(opt);
    for (std::size_t n = 1; n <= bc::loss_chunk; n += (n < 40 ? 1 : 7)) {
      for (bool token_adv : {true, false}) {
        const chunk_input c = random_chunk(rng, n, token_adv);
        CAPTURE(n);
        CAPTURE(token_adv);
        CAPTURE(opt.dual_clip);
        const chunk_output want = run_portable<F>(c, p);
        const chunk_output got = run_avx512<F, false>(c, p), got_checked = run_avx512<F, true>(c, p);
        for (std::size_t t = 0; t < n; ++t) {
          CAPTURE(t);
          if (!c.m[t]) {
            REQUIRE(got.g[t] == 0.0f);
            continue;
          }
          REQUIRE(std::fabs(double(got.g[t]) - want.g[t]) <= 4e-7 * grad_scale(c, t, opt) + 1e-37);
          REQUIRE(got_checked.g[t] == got.g[t]);
        }
        const auto scale = lane_scales<F>(c, opt);
        for (int q = 0; q < bc::q_count; ++q)
          for (std::size_t j = 0; j < bc::loss_lanes; ++j) {
            CAPTURE(q);
            CAPTURE(j);
            REQUIRE(std::fabs(double(got.f[q][j]) - want.f[q][j]) <= 1e-6 * scale[q][j]);
            REQUIRE(got_checked.f[q][j] == got.f[q][j]); // + (±0): finite inputs change nothing
          }
        // A ρ within an ulp of 1 − ε_lo, 1 + ε_hi or c may fall on either side in the two loops; anything more
        // than a rare off-by-one is a bug.
        const auto field = [](std::int32_t code, int k) { return (code >> (10 * k)) & 1023; };
        for (int k = 0; k < 3; ++k)
          flag_mismatches += std::abs(field(got.code, k) - field(want.code, k));
        REQUIRE(got_checked.code == got.code);
        tokens += static_cast<long long>(n);
      }
    }
  }
  CHECK(flag_mismatches * 10000 <= tokens);
  MESSAGE("clip flags differing between the loops: ", flag_mismatches, " of ", tokens, " tokens");
}

/// True (and says so) when this CPU cannot run the AVX-512 loops: the case then checks nothing.
bool skip_without_avx512() {
  if (bc::cpu_has_avx512())
    return false;
  MESSAGE("this CPU has no AVX-512F/BW/VL/DQ: the AVX-512 loops do not run here, nothing to check");
  return true;
}
#endif

} // namespace

#if HIR_CPU_AVX512
TEST_CASE("policy_loss AVX-512 token loop agrees with the portable loop (PPO clip; no KL and k3)") {
  if (skip_without_avx512())
    return;
  std::mt19937_64 rng(hir::test::seed(101));
  SUBCASE("no KL") {
    compare_paths<kl_family::none>(rng);
  }
  SUBCASE("k3") {
    compare_paths<kl_family::k3>(rng);
  }
}

TEST_CASE("policy_loss AVX-512 token loop: its exp is within 2 ulp over [−87.3, 88.3]") {
  if (skip_without_avx512())
    return;
  // every 61st float in the range (about 35 million values), both signs, as for the portable exp_accurate; the
  // rounding of n by the 1.5·2^23 shift (an FMA) can differ from rint(x·log2 e) near halfway points
  double worst = 0, worst_x = 0;
  std::vector<float> x, y(4096);
  x.reserve(4096);
  const auto flush = [&] {
    x.resize((x.size() + 15) / 16 * 16, 0.0f);
    exp_avx512_array(x.data(), y.data(), x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double err = hir::test::ulp_error(y[i], std::exp(double(x[i])));
      if (err > worst)
        worst = err, worst_x = x[i];
    }
    x.clear();
  };
  hir::test::for_each_exp_sweep_float([&](float v) {
    x.push_back(v);
    if (x.size() == 4096)
      flush();
  });
  flush();
  MESSAGE("exp_avx512: max error ", worst, " ulp at x = ", worst_x);
  CHECK(worst <= 2.0);
}

TEST_CASE("policy_loss AVX-512 token loop: non-finite inputs at valid positions reach the sums (fused checks)") {
  if (skip_without_avx512())
    return;
  std::mt19937_64 rng(hir::test::seed(102));
  const hir::policy_loss_options opt = option_sets()[0];
  const auto p = hir::detail::make_policy_token_params<float>(opt);
  const float bad_values[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()};
  for (std::size_t n : {5, 16, 37, 256}) {
    for (int array = 0; array < 3; ++array) {
      for (float bad : bad_values) {
        chunk_input c = random_chunk(rng, n, true);
        const std::size_t t = static_cast<std::size_t>(rng() % n);
        CAPTURE(n);
        CAPTURE(array);
        CAPTURE(bad);
        CAPTURE(t);
        std::vector<float>& v = array == 0 ? c.x : array == 1 ? c.o : c.r;
        const auto any_non_finite = [](const chunk_output& out) {
          for (int q = 0; q < bc::q_count; ++q)
            for (std::size_t j = 0; j < bc::loss_lanes; ++j)
              if (!std::isfinite(out.f[q][j]))
                return true;
          return false;
        };
        c.m[t] = 0, v[t] = bad; // masked: ignored
        CHECK_FALSE(any_non_finite(run_avx512<kl_family::k3, true>(c, p)));
        c.m[t] = 1; // valid: detected, with and without the KL term (ref_logp only with it)
        c.x[t] = array == 0 ? bad : -2.0f, c.o[t] = array == 1 ? bad : -2.1f, c.r[t] = array == 2 ? bad : -1.9f;
        CHECK(any_non_finite(run_avx512<kl_family::k3, true>(c, p)));
        if (array != 2)
          CHECK(any_non_finite(run_avx512<kl_family::none, true>(c, p)));
      }
    }
  }
}
#else
TEST_CASE("policy_loss AVX-512 token loop: not compiled") {
  MESSAGE("built with HIR_NO_AVX512 (or not for x86-64 with GCC/Clang): no AVX-512 token loop to check");
}
#endif

TEST_CASE("policy_loss CPU passes: mask counts and validation match plain loops") {
  std::mt19937_64 rng(hir::test::seed(103));
  for (std::size_t L : {1, 15, 16, 17, 63, 64, 65, 200, 1000}) {
    CAPTURE(L);
    std::vector<std::uint8_t> m(L);
    std::size_t want = 0;
    for (auto& b : m) {
      b = static_cast<std::uint8_t>(rng() % 3 == 0);
      want += b;
    }
    auto got = bc::count_row(m.data(), L);
    CHECK(got.first == want);
    CHECK_FALSE(got.second);
    m[rng() % L] = 2; // a mask value above 1 anywhere is seen
    CHECK(bc::count_row(m.data(), L).second);
  }
  // check_and_count: a non-finite value at a valid position anywhere in a row (vector body or tail) throws
  for (std::size_t L : {7, 16, 40, 300}) {
    CAPTURE(L);
    const std::size_t B = 3, n = B * L;
    std::vector<float> x(n, -1.0f), o(n, -1.1f), r(n, -0.9f), a(n, 0.5f);
    std::vector<std::uint8_t> m(n, 1);
    bc::policy_loss_arrays<float> in{};
    in.logp = x.data(), in.old = o.data(), in.ref = r.data(), in.mask = m.data(), in.adv = a.data();
    in.token_adv = true, in.has_old = true, in.batch = B, in.length = L;
    const auto check = [&in] { return bc::check_and_count<true, true, true>("policy_loss", in); };
    const auto counts = check();
    CHECK(counts.valid_tokens == n);
    CHECK(counts.valid_sequences == B);
    for (int array = 0; array < 4; ++array) {
      std::vector<float>& v = array == 0 ? x : array == 1 ? o : array == 2 ? r : a;
      const std::size_t k = static_cast<std::size_t>(rng() % n);
      CAPTURE(array);
      CAPTURE(k);
      const float keep = v[k];
      v[k] = std::numeric_limits<float>::infinity();
      m[k] = 0; // masked: fine
      CHECK_NOTHROW(check());
      m[k] = 1;
      CHECK_THROWS_AS(check(), hir::invalid_argument);
      v[k] = keep;
    }
  }
}
