// SPDX-License-Identifier: Apache-2.0
// policy_loss on every backend: accuracy of the vectorizable exp, worked values, random batches against the
// independent dual-number reference (policy_loss_reference.hpp: verl's torch code op by op) for every loss × KL
// estimator × aggregation × advantage layout in float and double, finite-difference checks of every gradient in
// double (of the loss itself, or of the stop-gradient surrogate where the loss has one), micro-batching invariance
// with global normalizers, and bad input.
#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/seed.hpp"

#include "losses/exp_sweep.hpp"
#include "losses/policy_loss_reference.hpp"

#include <hir/detail/policy_loss_kernels.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <utility>

namespace {

using hir::kl_estimator;
using hir::loss_aggregation;
using hir::policy_loss_kind;

/// A batch in T on the host, plus the same values in double for the reference.
template <class T>
struct test_batch {
  std::size_t B = 0, L = 0;
  std::vector<T> logp, old_logp, ref_logp, adv; // adv: B (per sequence) or B·L (per token)
  std::vector<std::uint8_t> mask;
  bool token_adv = true;

  hir::ref::batch to_ref() const {
    hir::ref::batch b;
    b.B = B, b.L = L, b.mask = mask;
    b.logp.assign(logp.begin(), logp.end());
    b.old_logp.assign(old_logp.begin(), old_logp.end());
    if (b.old_logp.empty())
      b.old_logp = b.logp;
    b.ref_logp.assign(ref_logp.begin(), ref_logp.end());
    b.adv.resize(B * L);
    for (std::size_t k = 0; k < B * L; ++k)
      b.adv[k] = token_adv ? double(adv[k]) : double(adv[k / L]);
    return b;
  }
};

struct run_result {
  hir::policy_loss_result r;
  std::vector<double> grad;
};

/// Runs hir::policy_loss on backend Bk (uploading the arrays) and returns the result and the gradient as double.
template <class Bk, class T>
run_result run(const test_batch<T>& tb, const hir::policy_loss_options& opt) {
  auto d_mask = hir::test::upload<Bk>(tb.mask);
  auto d_logp = hir::test::upload<Bk>(tb.logp);
  auto d_old = hir::test::upload<Bk>(tb.old_logp);
  auto d_ref = hir::test::upload<Bk>(tb.ref_logp);
  auto d_adv = hir::test::upload<Bk>(tb.adv);
  hir::vector<T, Bk> d_grad(tb.B * tb.L);
  hir::token_batch_ref<T, hir::memory_space_t<Bk>> ref;
  ref.batch = tb.B, ref.length = tb.L;
  ref.mask = hir::view(std::as_const(d_mask));
  ref.logp = hir::view(std::as_const(d_logp));
  ref.old_logp = hir::view(std::as_const(d_old));
  ref.ref_logp = hir::view(std::as_const(d_ref));
  run_result out;
  out.r =
      hir::policy_loss(Bk{}, ref, hir::span_for<const T, Bk>(hir::view(std::as_const(d_adv))), hir::view(d_grad), opt);
  const auto g = hir::to_host(d_grad);
  out.grad.assign(g.begin(), g.end());
  return out;
}

hir::ref::loss_config to_ref(const hir::policy_loss_options& o) {
  hir::ref::loss_config c;
  c.loss = o.kind == policy_loss_kind::ppo_clip ? hir::ref::kind::ppo
           : o.kind == policy_loss_kind::gspo   ? hir::ref::kind::gspo
           : o.kind == policy_loss_kind::cispo  ? hir::ref::kind::cispo
                                                : hir::ref::kind::reinforce;
  c.clip_low = o.clip_low, c.clip_high = o.clip_high, c.clip_ratio_c = o.dual_clip;
  c.log_ratio_clamp = o.log_ratio_clamp, c.gspo_max = o.gspo_log_ratio_max;
  c.cispo_two_sided = o.cispo == hir::cispo_clip::two_sided, c.cispo_cap = o.cispo_cap;
  const hir::ref::kl_type kls[] = {hir::ref::kl_type::none,   hir::ref::kl_type::k1, hir::ref::kl_type::abs,
                                   hir::ref::kl_type::k2,     hir::ref::kl_type::k3, hir::ref::kl_type::k1_plus,
                                   hir::ref::kl_type::k3_plus};
  c.kl = kls[static_cast<int>(o.kl)];
  c.kl_coef = o.kl_coef, c.kl_log_ratio_clamp = o.kl_log_ratio_clamp, c.kl_value_clamp = o.kl_value_clamp;
  c.aggregation = static_cast<hir::ref::agg>(static_cast<int>(o.aggregation));
  c.normalizer = o.normalizer;
  return c;
}

/// Distance of x from the nearest kink of the loss (where the gradient jumps), so random inputs can avoid them.
double kink_distance(const hir::policy_loss_options& o, double ratio, double adv, double kappa) {
  double d = 1e300;
  auto near = [&](double bound) { d = std::min(d, std::fabs(ratio - bound) / bound); };
  if (o.kind != policy_loss_kind::reinforce) {
    near(1 - o.clip_low);
    near(1 + o.clip_high);
    if (o.dual_clip > 0)
      near(o.dual_clip);
    if (o.kind == policy_loss_kind::cispo && o.cispo == hir::cispo_clip::upper_cap)
      near(o.cispo_cap);
  }
  d = std::min(d, std::fabs(adv));
  if (o.kl == kl_estimator::abs)
    d = std::min(d, std::fabs(kappa));
  return d;
}

/// Random batch: rows of random valid length (some empty), mask holes, logp ≈ −2, |ℓ|, |κ| up to `spread`; values
/// at masked positions are garbage (NaN, inf, huge) since they must never be read. Tokens whose ratio is within
/// `margin` (relative) of a clip bound are redrawn, so float rounding cannot flip a branch against the reference.
template <class T>
test_batch<T> random_batch(std::mt19937_64& rng, std::size_t B, std::size_t L, bool token_adv,
                           const hir::policy_loss_options& o, double spread, double margin) {
  std::uniform_real_distribution<double> u(-1, 1);
  test_batch<T> tb;
  tb.B = B, tb.L = L, tb.token_adv = token_adv;
  tb.logp.resize(B * L), tb.old_logp.resize(B * L), tb.ref_logp.resize(B * L), tb.mask.resize(B * L);
  tb.adv.resize(token_adv ? B * L : B);
  const T garbage[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                       -std::numeric_limits<T>::infinity(), T(1e30), T(-7)};
  for (std::size_t i = 0; i < B; ++i) {
    const std::size_t len = rng() % 5 == 0 ? 0 : 1 + rng() % L;
    const double a_row = rng() % 7 == 0 ? 0.0 : 2 * u(rng);
    if (!token_adv)
      tb.adv[i] = static_cast<T>(a_row);
    for (std::size_t t = 0; t < L; ++t) {
      const std::size_t k = i * L + t;
      const bool valid = t < len && rng() % 6 != 0;
      tb.mask[k] = valid ? 1 : 0;
      if (!valid) {
        tb.logp[k] = garbage[rng() % 5], tb.old_logp[k] = garbage[rng() % 5], tb.ref_logp[k] = garbage[rng() % 5];
        if (token_adv)
          tb.adv[k] = garbage[rng() % 5];
        continue;
      }
      for (int attempt = 0;; ++attempt) {
        const T x = static_cast<T>(-2 + 0.5 * u(rng));
        const T ol = static_cast<T>(double(x) + spread * u(rng));
        const T rf = static_cast<T>(double(x) + spread * u(rng));
        const T a = token_adv ? static_cast<T>(rng() % 9 == 0 ? 0.0 : 2 * u(rng)) : static_cast<T>(a_row);
        const double ratio = std::exp(double(x) - double(ol));
        if (attempt < 100 && kink_distance(o, ratio, a == 0 ? 1.0 : double(a), double(x) - double(rf)) < margin)
          continue;
        tb.logp[k] = x, tb.old_logp[k] = ol, tb.ref_logp[k] = rf;
        if (token_adv)
          tb.adv[k] = a;
        break;
      }
    }
  }
  return tb;
}

/// Every option set the random tests sweep: 4 losses (with variants) × 7 KL estimators × 4 aggregations.
std::vector<hir::policy_loss_options> all_option_sets() {
  std::vector<hir::policy_loss_options> kinds;
  hir::policy_loss_options o;
  kinds.push_back(o); // symmetric PPO
  o.clip_high = 0.28, o.dual_clip = 3.0;
  kinds.push_back(o); // DAPO clip-higher with dual clip
  o = {};
  o.kind = policy_loss_kind::gspo, o.clip_low = 0.05, o.clip_high = 0.08;
  kinds.push_back(o);
  o.dual_clip = 1.5;
  kinds.push_back(o); // GSPO with dual clip
  o = {};
  o.kind = policy_loss_kind::cispo;
  kinds.push_back(o);
  o.cispo = hir::cispo_clip::upper_cap, o.cispo_cap = 1.1;
  kinds.push_back(o);
  o = {};
  o.kind = policy_loss_kind::reinforce;
  kinds.push_back(o);
  std::vector<hir::policy_loss_options> out;
  for (const auto& k : kinds)
    for (int kl = 0; kl <= static_cast<int>(kl_estimator::k3_st); ++kl)
      for (int agg = 0; agg <= static_cast<int>(loss_aggregation::seq_sum_constant); ++agg) {
        auto c = k;
        c.kl = static_cast<kl_estimator>(kl);
        c.kl_coef = kl == 0 ? 0.0 : 0.3;
        c.aggregation = static_cast<loss_aggregation>(agg);
        out.push_back(c);
      }
  return out;
}

std::string describe(const hir::policy_loss_options& o) {
  return "kind " + std::to_string(int(o.kind)) + " eps " + std::to_string(o.clip_low) + "/" +
         std::to_string(o.clip_high) + " c " + std::to_string(o.dual_clip) + " cispo " + std::to_string(int(o.cispo)) +
         " kl " + std::to_string(int(o.kl)) + " agg " + std::to_string(int(o.aggregation)) + " norm " +
         std::to_string(o.normalizer) + " validation " + std::to_string(int(o.validation));
}

void check_against_reference(const run_result& got, const hir::ref::loss_result& want, double abs_tol, double rel_tol) {
  auto close = [&](double a, double e) { return std::fabs(a - e) <= abs_tol + rel_tol * std::fabs(e); };
  CHECK_MESSAGE(close(got.r.loss, want.loss), got.r.loss, " vs ", want.loss);
  CHECK_MESSAGE(close(got.r.pg_loss, want.pg_loss), got.r.pg_loss, " vs ", want.pg_loss);
  CHECK_MESSAGE(close(got.r.kl_loss, want.kl_loss), got.r.kl_loss, " vs ", want.kl_loss);
  CHECK(close(got.r.clip_fraction_low, want.clip_low));
  CHECK(close(got.r.clip_fraction_high, want.clip_high));
  CHECK(close(got.r.dual_clip_fraction, want.dual_clip));
  CHECK_MESSAGE(close(got.r.approx_kl, want.approx_kl), got.r.approx_kl, " vs ", want.approx_kl);
  CHECK_MESSAGE(close(got.r.mean_ratio, want.mean_ratio), got.r.mean_ratio, " vs ", want.mean_ratio);
  CHECK_MESSAGE(close(got.r.mean_kl, want.mean_kl), got.r.mean_kl, " vs ", want.mean_kl);
  CHECK(got.r.valid_tokens == want.valid_tokens);
  CHECK(got.r.valid_sequences == want.valid_sequences);
  // gradients: relative to the largest one (they are scaled by 1/N, 1/S, ...)
  double scale = 0;
  for (double g : want.grad)
    scale = std::max(scale, std::fabs(g));
  HIR_CHECK_CLOSE(got.grad, want.grad, abs_tol * scale + 1e-300, rel_tol);
}

/// Units in the last place of float between a float result and the exact value (double).

} // namespace

TEST_CASE("policy_loss kernels: float exp within 2 ulp, e^d − 1 and e^d − 1 − d accurate") {
  double worst = 0, worst_x = 0;
  hir::test::for_each_exp_sweep_float([&](float x) { // about 35 million values
    const double err = hir::test::ulp_error(hir::detail::exp_accurate(x), std::exp(double(x)));
    if (err > worst)
      worst = err, worst_x = x;
  });
  MESSAGE("exp_accurate: max error ", worst, " ulp at x = ", worst_x);
  CHECK(worst <= 2.0);
  CHECK(hir::detail::exp_accurate(0.0f) == 1.0f);
  CHECK(std::isfinite(hir::detail::exp_accurate(1000.0f)));                          // clamped to 88.3
  CHECK(hir::detail::exp_accurate(std::numeric_limits<float>::quiet_NaN()) >= 0.0f); // defined, not NaN

  // e^d − 1 and e^d − 1 − d (k3) in float against double, relative error, including tiny d where the naive
  // e^d − d − 1 loses every digit.
  double worst_em1 = 0, worst_k3 = 0;
  for (int i = -20000; i <= 20000; ++i) {
    const float d =
        i == 0 ? 0.0f : static_cast<float>(std::copysign(std::pow(10.0, -8.0 + 9.9 * std::abs(i) / 20000.0), i));
    if (std::fabs(d) > 80.0f)
      continue;
    const auto e = hir::detail::exp_minus_one_k3(d);
    const double em1 = std::expm1(double(d));
    const double k3 = em1 - double(d); // exact enough in double for |d| ≥ 1e-8
    if (d != 0.0f) {
      worst_em1 = std::max(worst_em1, std::fabs(e.em1 - em1) / std::fabs(em1));
      worst_k3 = std::max(worst_k3, std::fabs(e.k3 - k3) / std::fabs(k3));
    } else {
      CHECK(e.em1 == 0.0f);
      CHECK(e.k3 == 0.0f);
    }
  }
  MESSAGE("e^d - 1: max relative error ", worst_em1, "; e^d - 1 - d: ", worst_k3);
  CHECK(worst_em1 < 4e-7); // ~3 ulp
  CHECK(worst_k3 < 1e-6);  // the naive float formula has relative error ~1 at |d| = 1e-4
}

TEST_CASE_TEMPLATE("policy_loss: worked values", Bk, HIR_TEST_BACKEND) {
  // One sequence of 4 tokens, A = +1 on the first two rows... written out by hand.
  test_batch<double> tb;
  tb.B = 2, tb.L = 3, tb.token_adv = false;
  // row 0: A = +1, ratios 1.5, 1.1, (masked); row 1: A = −1, ratios 0.5, 4.0, 1.0
  tb.mask = {1, 1, 0, 1, 1, 1};
  tb.logp = {-1, -2, 0, -1, -2, -3};
  tb.old_logp = {-1 - std::log(1.5), -2 - std::log(1.1), 0, -1 - std::log(0.5), -2 - std::log(4.0), -3};
  tb.ref_logp = {-1, -2 + 0.5, 0, -1 - 0.25, -2, -3 + 1};
  tb.adv = {1.0, -1.0};

  SUBCASE("PPO clip, token mean: L = (−1.2 − 1.1 + 0.8 + 4 + 1) / 5") {
    hir::policy_loss_options o;
    const auto got = run<Bk>(tb, o);
    CHECK(got.r.pg_loss == doctest::Approx((-1.2 - 1.1 + 0.8 + 4.0 + 1.0) / 5).epsilon(1e-14));
    CHECK(got.r.loss == doctest::Approx(got.r.pg_loss).epsilon(1e-15));
    // gradient −A·ρ/N where unclipped: token 0 clipped (ρ > 1.2, A > 0), token 3 clipped (ρ < 0.8, A < 0)
    const std::vector<double> want = {0, -1.1 / 5, 0, 0, 4.0 / 5, 1.0 / 5};
    HIR_CHECK_CLOSE(got.grad, want, 1e-15, 1e-13);
    CHECK(got.r.clip_fraction_high == doctest::Approx(0.2));
    CHECK(got.r.clip_fraction_low == doctest::Approx(0.2));
    CHECK(got.r.dual_clip_fraction == 0.0);
    CHECK(got.r.mean_ratio == doctest::Approx((1.5 + 1.1 + 0.5 + 4 + 1) / 5).epsilon(1e-14));
    CHECK(got.r.approx_kl == doctest::Approx(-(std::log(1.5) + std::log(1.1) + std::log(0.5) + std::log(4.0)) / 5));
    CHECK(got.r.valid_tokens == 5);
    CHECK(got.r.valid_sequences == 2);
    CHECK(got.r.normalizer == 5.0);
  }
  SUBCASE("dual clip c = 3 caps the A < 0, ρ = 4 token at 3 with zero gradient") {
    hir::policy_loss_options o;
    o.dual_clip = 3;
    const auto got = run<Bk>(tb, o);
    CHECK(got.r.pg_loss == doctest::Approx((-1.2 - 1.1 + 0.8 + 3.0 + 1.0) / 5).epsilon(1e-14));
    const std::vector<double> want = {0, -1.1 / 5, 0, 0, 0, 1.0 / 5};
    HIR_CHECK_CLOSE(got.grad, want, 1e-15, 1e-13);
    CHECK(got.r.dual_clip_fraction == doctest::Approx(0.2));
  }
  SUBCASE("seq-mean-token-mean: row means (−2.3/2, 5.8/3), averaged over 2 sequences") {
    hir::policy_loss_options o;
    o.aggregation = loss_aggregation::seq_mean_token_mean;
    const auto got = run<Bk>(tb, o);
    CHECK(got.r.pg_loss == doctest::Approx((-2.3 / 2 + 5.8 / 3) / 2).epsilon(1e-14));
    const std::vector<double> want = {0, -1.1 / 4, 0, 0, 4.0 / 6, 1.0 / 6};
    HIR_CHECK_CLOSE(got.grad, want, 1e-15, 1e-13);
  }
  SUBCASE("seq-mean-token-sum and seq_sum_constant (Dr.GRPO, C = 10)") {
    hir::policy_loss_options o;
    o.aggregation = loss_aggregation::seq_mean_token_sum;
    auto got = run<Bk>(tb, o);
    CHECK(got.r.pg_loss == doctest::Approx((-2.3 + 5.8) / 2).epsilon(1e-14));
    o.aggregation = loss_aggregation::seq_sum_constant;
    o.normalizer = 10;
    got = run<Bk>(tb, o);
    CHECK(got.r.pg_loss == doctest::Approx((-2.3 + 5.8) / 10).epsilon(1e-14));
    o.normalizer = 0; // verl's default: the padded length L = 3
    got = run<Bk>(tb, o);
    CHECK(got.r.pg_loss == doctest::Approx((-2.3 + 5.8) / 3).epsilon(1e-14));
  }
  SUBCASE("KL estimators at κ = 0, −0.5, 0.25, 0, −1 (ref − logp = 0, 0.5, −0.25, 0, 1)") {
    const double kappa[] = {0, -0.5, 0.25, 0, -1};
    hir::policy_loss_options o;
    o.kind = policy_loss_kind::reinforce; // pg = −A·logp
    o.kl_coef = 0.5;
    for (auto e : {kl_estimator::k1, kl_estimator::abs, kl_estimator::k2, kl_estimator::k3, kl_estimator::k1_st,
                   kl_estimator::k3_st}) {
      CAPTURE(int(e));
      o.kl = e;
      const auto got = run<Bk>(tb, o);
      double value = 0;
      std::vector<double> grad_kl;
      for (double k : kappa) {
        double v = 0, g = 0;
        switch (e) {
        case kl_estimator::k1:
          v = k, g = 1;
          break;
        case kl_estimator::abs:
          v = std::fabs(k), g = k > 0 ? 1 : k < 0 ? -1 : 0;
          break;
        case kl_estimator::k2:
          v = 0.5 * k * k, g = k;
          break;
        case kl_estimator::k3:
          v = std::exp(-k) + k - 1, g = 1 - std::exp(-k);
          break;
        case kl_estimator::k1_st:
          v = k, g = k;
          break;
        default: // k3_st
          v = std::exp(-k) + k - 1, g = k;
          break;
        }
        value += v / 5;
        grad_kl.push_back(g);
      }
      CHECK(got.r.kl_loss == doctest::Approx(value).epsilon(1e-13));
      CHECK(got.r.mean_kl == doctest::Approx(value).epsilon(1e-13));
      const double A[] = {1, 1, -1, -1, -1};
      const std::size_t pos[] = {0, 1, 3, 4, 5};
      for (int j = 0; j < 5; ++j)
        CHECK(got.grad[pos[j]] == doctest::Approx((-A[j] + 0.5 * grad_kl[j]) / 5).epsilon(1e-13));
    }
  }
  SUBCASE("k3 clamps: −κ = 30 is clamped to 20 before exp and the value to 10, both with zero gradient") {
    test_batch<double> one;
    one.B = 1, one.L = 1, one.mask = {1}, one.logp = {-31}, one.old_logp = {-31}, one.ref_logp = {-1}, one.adv = {0};
    hir::policy_loss_options o;
    o.kl = kl_estimator::k3, o.kl_coef = 1;
    auto got = run<Bk>(one, o);
    CHECK(got.r.kl_loss == 10.0);
    CHECK(got.grad[0] == 0.0);
    o.kl_value_clamp = 0; // no value clamp: e^20 − 20 − 1, still no gradient (log-ratio clamp active)
    got = run<Bk>(one, o);
    CHECK(got.r.kl_loss == doctest::Approx(std::exp(20.0) - 21).epsilon(1e-14));
    CHECK(got.grad[0] == 0.0);
  }
  SUBCASE("CISPO: weights sg(clip(ρ)) = 1.2, 1.1 | 0.8, 1.2, 1 and TRL's min(ρ, 2)") {
    hir::policy_loss_options o;
    o.kind = policy_loss_kind::cispo;
    auto got = run<Bk>(tb, o);
    const double w[] = {1.2, 1.1, 0.8, 1.2, 1.0}, x[] = {-1, -2, -1, -2, -3}, A[] = {1, 1, -1, -1, -1};
    const std::size_t pos[] = {0, 1, 3, 4, 5};
    double l = 0;
    for (int j = 0; j < 5; ++j) {
      l += -w[j] * A[j] * x[j] / 5;
      CHECK(got.grad[pos[j]] == doctest::Approx(-w[j] * A[j] / 5).epsilon(1e-13));
    }
    CHECK(got.r.pg_loss == doctest::Approx(l).epsilon(1e-13));
    CHECK(got.r.clip_fraction_low == doctest::Approx(0.2));
    CHECK(got.r.clip_fraction_high == doctest::Approx(0.4));
    o.cispo = hir::cispo_clip::upper_cap, o.cispo_cap = 2;
    got = run<Bk>(tb, o);
    CHECK(got.grad[4] == doctest::Approx(2.0 / 5).epsilon(1e-13)); // −min(4, 2)·(−1)/5
    CHECK(got.grad[3] == doctest::Approx(0.5 / 5).epsilon(1e-13));
    CHECK(got.r.clip_fraction_high == doctest::Approx(0.2));
  }
  SUBCASE("GSPO: sequence ratios exp(mean ℓ) = sqrt(1.65) and cbrt(2), seq-mean-token-mean") {
    hir::policy_loss_options o = hir::presets::verl_gspo_loss();
    const auto got = run<Bk>(tb, o);
    const double r0 = std::sqrt(1.5 * 1.1), r1 = std::cbrt(0.5 * 4.0);
    // row 0 (A = 1): min(r0, 1.2) = 1.2 → clipped; row 1 (A = −1): r1 = 1.26 inside [0.8, ∞) → −A·r1
    CHECK(got.r.pg_loss == doctest::Approx((-1.2 + r1) / 2).epsilon(1e-13));
    const std::vector<double> want = {0, 0, 0, r1 / 6, r1 / 6, r1 / 6};
    HIR_CHECK_CLOSE(got.grad, want, 1e-15, 1e-12);
    CHECK(got.r.mean_ratio == doctest::Approx((2 * r0 + 3 * r1) / 5).epsilon(1e-13));
  }
  SUBCASE("GSPO: a sequence log-ratio of 12 is clamped to gspo_log_ratio_max = 10, with zero gradient") {
    test_batch<double> one;
    one.B = 1, one.L = 2, one.token_adv = false, one.mask = {1, 1}, one.logp = {-1, -2}, one.old_logp = {-13, -14};
    one.ref_logp = {-1, -2}, one.adv = {-1};
    hir::policy_loss_options o = hir::presets::verl_gspo_loss();
    auto got = run<Bk>(one, o);
    CHECK(got.r.pg_loss == doctest::Approx(std::exp(10.0)).epsilon(1e-13)); // −A·e^10, A < 0, no dual clip
    CHECK(got.grad[0] == 0.0);
    CHECK(got.grad[1] == 0.0);
    o.gspo_log_ratio_max = 12.5; // no clamp: gradient −A·e^12 / (|o|·S) per token
    got = run<Bk>(one, o);
    CHECK(got.grad[0] == doctest::Approx(std::exp(12.0) / 2).epsilon(1e-13));
  }
}

TEST_CASE_TEMPLATE("policy_loss: random batches match the dual-number reference", Bk, HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(11));
  const auto sets = all_option_sets();
  for (std::size_t s = 0; s < sets.size(); ++s) {
    auto o = sets[s];
    const bool token_adv = s % 2 == 0;
    o.validation = s % 3 == 0 ? hir::input_validation::fused : hir::input_validation::before_writing;
    if (s % 5 == 0) // explicit normalizer
      o.normalizer = o.aggregation == loss_aggregation::token_mean ? 1000.0 : 17.0;
    CAPTURE(describe(o));
    CAPTURE(token_adv);
    // L = 300 crosses the 256-token chunk; L = 37 has a vector tail. ℓ and κ spread 0.7 reach every clip.
    const std::size_t L = s % 4 == 0 ? 300 : 37, B = s % 4 == 0 ? 5 : 9;
    {
      const auto tb = random_batch<double>(rng, B, L, token_adv, o, 0.7, 1e-9);
      check_against_reference(run<Bk>(tb, o), hir::ref::policy_loss(to_ref(o), tb.to_ref()), 1e-12, 1e-10);
    }
    {
      const auto tb = random_batch<float>(rng, B, L, token_adv, o, 0.7, 1e-4);
      check_against_reference(run<Bk>(tb, o), hir::ref::policy_loss(to_ref(o), tb.to_ref()), 1e-6, 2e-5);
    }
  }
}

TEST_CASE_TEMPLATE("policy_loss: finite differences of every gradient (double)", Bk, HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(12));
  const double h = 1e-6;
  for (const auto& o0 : all_option_sets()) {
    for (bool token_adv : {false, true}) {
      auto o = o0;
      CAPTURE(describe(o));
      CAPTURE(token_adv);
      const auto tb = random_batch<double>(rng, 4, 9, token_adv, o, 0.7, 1e-3);
      const auto base = run<Bk>(tb, o);
      // Where the loss itself has the analytic gradient, difference the library's loss; where a stop-gradient
      // makes the gradient that of a surrogate (CISPO's weight, the straight-through KL, GSPO's sequence ratio
      // with per-token advantages), difference the reference surrogate with the detached parts frozen.
      const bool surrogate = o.kind == policy_loss_kind::cispo || o.kl == kl_estimator::k1_st ||
                             o.kl == kl_estimator::k3_st || (o.kind == policy_loss_kind::gspo && token_adv);
      const auto rb = tb.to_ref();
      const auto rc = to_ref(o);
      std::vector<double> fd(tb.B * tb.L, 0.0);
      double scale = 0;
      for (std::size_t k = 0; k < tb.B * tb.L; ++k) {
        scale = std::max(scale, std::fabs(base.grad[k]));
        if (!tb.mask[k])
          continue;
        if (surrogate) {
          auto xp = rb.logp, xm = rb.logp;
          xp[k] += h, xm[k] -= h;
          fd[k] =
              (hir::ref::surrogate_loss(rc, rb, xp, rb.logp) - hir::ref::surrogate_loss(rc, rb, xm, rb.logp)) / (2 * h);
        } else {
          auto tp = tb, tm = tb;
          tp.logp[k] += h, tm.logp[k] -= h;
          fd[k] = (run<Bk>(tp, o).r.loss - run<Bk>(tm, o).r.loss) / (2 * h);
        }
      }
      HIR_CHECK_CLOSE(base.grad, fd, 1e-7 * std::max(scale, 1e-3), 1e-6);
    }
  }
}

TEST_CASE_TEMPLATE("policy_loss: micro-batches with the global normalizer sum to the full batch", Bk,
                   HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(13));
  for (const auto& o0 : all_option_sets()) {
    if (o0.kl != kl_estimator::none && o0.kl != kl_estimator::k3)
      continue;
    auto o = o0;
    CAPTURE(describe(o));
    const std::size_t B = 12, L = 40;
    const auto full = random_batch<double>(rng, B, L, true, o, 0.7, 1e-9);
    // the global normalizer of the aggregation
    std::size_t N = 0, S = 0;
    for (std::size_t i = 0; i < B; ++i) {
      std::size_t n = 0;
      for (std::size_t t = 0; t < L; ++t)
        n += full.mask[i * L + t];
      N += n, S += n > 0;
    }
    o.normalizer = o.aggregation == loss_aggregation::token_mean         ? double(N)
                   : o.aggregation == loss_aggregation::seq_sum_constant ? 64.0
                                                                         : double(S);
    const auto whole = run<Bk>(full, o);
    // split rows into micro-batches of sizes 1..5
    double loss = 0, pg = 0, kl = 0;
    std::vector<double> grad;
    for (std::size_t i0 = 0; i0 < B;) {
      const std::size_t nb = std::min<std::size_t>(B - i0, 1 + rng() % 5);
      test_batch<double> mb;
      mb.B = nb, mb.L = L, mb.token_adv = true;
      auto slice = [&](const auto& v) {
        return std::vector(v.begin() + long(i0 * L), v.begin() + long((i0 + nb) * L));
      };
      mb.mask = slice(full.mask), mb.logp = slice(full.logp), mb.old_logp = slice(full.old_logp);
      mb.ref_logp = slice(full.ref_logp), mb.adv = slice(full.adv);
      const auto part = run<Bk>(mb, o);
      loss += part.r.loss, pg += part.r.pg_loss, kl += part.r.kl_loss;
      grad.insert(grad.end(), part.grad.begin(), part.grad.end());
      i0 += nb;
    }
    CHECK(loss == doctest::Approx(whole.r.loss).epsilon(1e-12));
    CHECK(pg == doctest::Approx(whole.r.pg_loss).epsilon(1e-12));
    CHECK(kl == doctest::Approx(whole.r.kl_loss).epsilon(1e-12));
    HIR_CHECK_CLOSE(grad, whole.grad, 1e-16, 1e-12);
  }
  SUBCASE("negative control: local token counts are not invariant") {
    hir::policy_loss_options o;
    test_batch<double> full;
    full.B = 4, full.L = 20, full.token_adv = true;
    full.mask.resize(80), full.logp.assign(80, -2.0), full.old_logp.assign(80, -1.99), full.adv.assign(80, 1.0);
    full.ref_logp.assign(80, -2.0);
    for (std::size_t t = 0; t < 20; ++t) // row 0 long, the others short: uneven micro-batches
      full.mask[t] = 1, full.mask[20 + t] = t < 2, full.mask[40 + t] = t < 3, full.mask[60 + t] = t < 1;
    const auto whole = run<Bk>(full, o);
    test_batch<double> a = full, b = full;
    a.B = b.B = 2;
    auto first = [&](auto v) { return std::vector(v.begin(), v.begin() + 40); };
    auto second = [&](auto v) { return std::vector(v.begin() + 40, v.end()); };
    a.mask = first(full.mask), a.logp = first(full.logp), a.old_logp = first(full.old_logp);
    a.ref_logp = first(full.ref_logp), a.adv = first(full.adv);
    b.mask = second(full.mask), b.logp = second(full.logp), b.old_logp = second(full.old_logp);
    b.ref_logp = second(full.ref_logp), b.adv = second(full.adv);
    const double split = run<Bk>(a, o).r.loss + run<Bk>(b, o).r.loss;
    CHECK(std::fabs(split - whole.r.loss) > 0.1 * std::fabs(whole.r.loss));
  }
}

TEST_CASE_TEMPLATE("policy_loss: empty masks, masked garbage, float agrees with double", Bk, HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(14));
  hir::policy_loss_options o = hir::presets::dapo_loss();
  o.kl = kl_estimator::k3, o.kl_coef = 0.1;
  SUBCASE("no valid token: loss, metrics and gradient are 0 (not an error), for every aggregation") {
    auto tb = random_batch<float>(rng, 3, 10, true, o, 0.5, 1e-4);
    std::fill(tb.mask.begin(), tb.mask.end(), 0);
    for (int agg = 0; agg < 4; ++agg)
      for (auto v : {hir::input_validation::before_writing, hir::input_validation::fused}) {
        o.aggregation = static_cast<loss_aggregation>(agg), o.validation = v;
        const auto got = run<Bk>(tb, o);
        CHECK(got.r.loss == 0.0);
        CHECK(got.r.mean_ratio == 0.0);
        CHECK(got.r.valid_tokens == 0);
        CHECK(got.r.valid_sequences == 0);
        for (double g : got.grad)
          CHECK(g == 0.0);
      }
  }
  SUBCASE("an empty batch (B = 0 or L = 0) returns zeros") {
    test_batch<float> tb;
    tb.B = 0, tb.L = 5;
    CHECK(run<Bk>(tb, o).r.loss == 0.0);
    tb.B = 4, tb.L = 0, tb.adv.assign(4, 1.0f), tb.token_adv = false;
    CHECK(run<Bk>(tb, o).r.valid_sequences == 0);
  }
  SUBCASE("values at masked positions never matter") {
    auto tb = random_batch<double>(rng, 6, 50, true, o, 0.5, 1e-9);
    auto clean = tb;
    for (std::size_t k = 0; k < tb.mask.size(); ++k)
      if (!tb.mask[k])
        clean.logp[k] = clean.old_logp[k] = clean.ref_logp[k] = clean.adv[k] = -1.0;
    const auto a = run<Bk>(tb, o), b = run<Bk>(clean, o);
    CHECK(a.r.loss == b.r.loss);
    CHECK(a.grad == b.grad);
  }
  SUBCASE("reinforce without old_logp: ratio metrics are those of ρ = 1") {
    auto tb = random_batch<double>(rng, 4, 30, false, o, 0.5, 1e-9);
    tb.old_logp.clear();
    tb.mask[0] = 1, tb.logp[0] = -2.0; // at least one valid token
    hir::policy_loss_options r;
    r.kind = policy_loss_kind::reinforce;
    const auto got = run<Bk>(tb, r);
    CHECK(got.r.mean_ratio == 1.0);
    CHECK(got.r.approx_kl == 0.0);
    check_against_reference(got, hir::ref::policy_loss(to_ref(r), tb.to_ref()), 1e-12, 1e-10);
  }
  SUBCASE("float and double runs agree") {
    const auto td = random_batch<double>(rng, 8, 100, true, o, 0.5, 1e-4);
    test_batch<float> tf;
    tf.B = td.B, tf.L = td.L, tf.mask = td.mask, tf.token_adv = true;
    tf.logp.assign(td.logp.begin(), td.logp.end()), tf.old_logp.assign(td.old_logp.begin(), td.old_logp.end());
    tf.ref_logp.assign(td.ref_logp.begin(), td.ref_logp.end()), tf.adv.assign(td.adv.begin(), td.adv.end());
    test_batch<double> rounded = td; // the double run on the float-rounded inputs
    for (std::size_t k = 0; k < td.logp.size(); ++k)
      rounded.logp[k] = tf.logp[k], rounded.old_logp[k] = tf.old_logp[k], rounded.ref_logp[k] = tf.ref_logp[k],
      rounded.adv[k] = tf.adv[k];
    const auto f = run<Bk>(tf, o), d = run<Bk>(rounded, o);
    CHECK(f.r.loss == doctest::Approx(d.r.loss).epsilon(1e-5));
    CHECK(f.r.clip_fraction_high == d.r.clip_fraction_high);
    HIR_CHECK_CLOSE(f.grad, d.grad, 1e-7, 1e-5);
  }
}

TEST_CASE_TEMPLATE("policy_loss: bad input throws before writing", Bk, HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(15));
  hir::policy_loss_options o;
  o.kl = kl_estimator::k3, o.kl_coef = 0.1;
  auto good = random_batch<float>(rng, 3, 8, true, o, 0.5, 1e-4);
  if (std::find(good.mask.begin(), good.mask.end(), 1) == good.mask.end()) { // ≈ 1 % of seeds: every row empty
    good.mask[0] = 1; // the cases below need a valid token to poison
    good.logp[0] = -2.0f, good.old_logp[0] = -2.1f, good.ref_logp[0] = -1.9f, good.adv[0] = 0.5f;
  }
  auto expect_throw = [&](const test_batch<float>& tb, const hir::policy_loss_options& opt, const std::string& needle) {
    CAPTURE(needle);
    std::string what;
    try {
      run<Bk>(tb, opt);
    } catch (const hir::invalid_argument& e) {
      what = e.what();
    }
    CHECK_MESSAGE(what.find(needle) != std::string::npos, what);
    CHECK_MESSAGE(what.rfind("hir::policy_loss: ", 0) == 0, what);
  };
  SUBCASE("mismatched sizes") {
    auto tb = good;
    tb.mask.pop_back();
    expect_throw(tb, o, "mask.size() = 23");
    tb = good, tb.logp.pop_back();
    expect_throw(tb, o, "logp.size() = 23");
    tb = good, tb.old_logp.clear();
    expect_throw(tb, o, "old_logp.size() = 0");
    tb = good, tb.ref_logp.resize(30);
    expect_throw(tb, o, "ref_logp.size() = 30");
    tb = good, tb.adv.resize(5);
    expect_throw(tb, o, "advantages.size() = 5 is neither batch = 3");
    // ref_logp may be empty without KL, old_logp without old (reinforce)
    tb = good, tb.ref_logp.clear();
    hir::policy_loss_options no_kl;
    CHECK_NOTHROW(run<Bk>(tb, no_kl));
    tb.old_logp.clear();
    no_kl.kind = policy_loss_kind::reinforce;
    CHECK_NOTHROW(run<Bk>(tb, no_kl));
  }
  SUBCASE("non-finite inputs at valid positions, named with row and column; grad untouched or zeroed") {
    std::size_t k = 0;
    while (!good.mask[k])
      ++k;
    const std::string where = "[" + std::to_string(k / 8) + ", " + std::to_string(k % 8) + "] = ";
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity()}) {
      for (auto v : {hir::input_validation::before_writing, hir::input_validation::fused}) {
        auto opt = o;
        opt.validation = v;
        auto tb = good;
        tb.logp[k] = bad;
        expect_throw(tb, opt, "logp" + where);
        tb = good, tb.old_logp[k] = bad;
        expect_throw(tb, opt, "old_logp" + where);
        tb = good, tb.ref_logp[k] = bad;
        expect_throw(tb, opt, "ref_logp" + where);
        tb = good, tb.adv[k] = bad;
        expect_throw(tb, opt, "advantages" + where);
      }
    }
    // per-sequence advantages: the row's advantage is checked only if the row has a valid token
    auto tb = good;
    tb.token_adv = false, tb.adv = {1.0f, std::numeric_limits<float>::quiet_NaN(), 2.0f};
    tb.mask[8 + 3] = 1, tb.logp[8 + 3] = tb.old_logp[8 + 3] = tb.ref_logp[8 + 3] = -2.0f;
    expect_throw(tb, o, "advantages[1] = nan");
    for (std::size_t t = 0; t < 8; ++t)
      tb.mask[8 + t] = 0;
    CHECK_NOTHROW(run<Bk>(tb, o));
    // the gradient is untouched (before_writing) or zero-filled (fused) when it throws
    tb = good;
    tb.logp[k] = std::numeric_limits<float>::infinity();
    auto d_mask = hir::test::upload<Bk>(tb.mask);
    auto d_logp = hir::test::upload<Bk>(tb.logp), d_old = hir::test::upload<Bk>(tb.old_logp);
    auto d_ref = hir::test::upload<Bk>(tb.ref_logp), d_adv = hir::test::upload<Bk>(tb.adv);
    for (auto v : {hir::input_validation::before_writing, hir::input_validation::fused}) {
      hir::vector<float, Bk> d_grad = hir::test::upload<Bk>(std::vector<float>(24, 7.0f));
      hir::token_batch_ref<float, hir::memory_space_t<Bk>> ref;
      ref.batch = 3, ref.length = 8, ref.mask = hir::view(std::as_const(d_mask));
      ref.logp = hir::view(std::as_const(d_logp)), ref.old_logp = hir::view(std::as_const(d_old));
      ref.ref_logp = hir::view(std::as_const(d_ref));
      auto opt = o;
      opt.validation = v;
      CHECK_THROWS_AS(hir::policy_loss(Bk{}, ref, hir::span_for<const float, Bk>(hir::view(std::as_const(d_adv))),
                                       hir::view(d_grad), opt),
                      hir::invalid_argument);
      const auto g = hir::to_host(d_grad);
      const float want = v == hir::input_validation::before_writing ? 7.0f : 0.0f;
      for (float x : g)
        CHECK(x == want);
    }
  }
  SUBCASE("a mask value other than 0 or 1") {
    auto tb = good;
    tb.mask[5] = 2;
    expect_throw(tb, o, "mask[0, 5] = 2 is not 0 or 1");
    auto opt = o;
    opt.validation = hir::input_validation::fused;
    expect_throw(tb, opt, "mask[0, 5] = 2 is not 0 or 1");
  }
  SUBCASE("bad options") {
    const double nan = std::numeric_limits<double>::quiet_NaN();
    auto bad = [&](auto set, const char* needle) {
      auto opt = o;
      set(opt);
      expect_throw(good, opt, needle);
    };
    bad([](auto& p) { p.clip_low = 1.0; }, "clip_low = 1 must be in [0, 1)");
    bad([](auto& p) { p.clip_low = -0.1; }, "clip_low = -0.1");
    bad([&](auto& p) { p.clip_high = nan; }, "clip_high = nan");
    bad([](auto& p) { p.dual_clip = 1.0; }, "dual_clip = 1 must be 0 (off) or a finite value > 1");
    bad([](auto& p) { p.dual_clip = -3; }, "dual_clip = -3");
    bad([](auto& p) { p.log_ratio_clamp = 0; }, "log_ratio_clamp = 0 must be in (0, 80]");
    bad([](auto& p) { p.log_ratio_clamp = 100; }, "log_ratio_clamp = 100");
    bad([](auto& p) { p.gspo_log_ratio_max = -1; }, "gspo_log_ratio_max = -1");
    bad([](auto& p) { p.cispo_cap = 0.5; }, "cispo_cap = 0.5 must be finite and >= 1");
    bad([](auto& p) { p.kl_coef = -1; }, "kl_coef = -1");
    bad([&](auto& p) { p.kl_coef = nan; }, "kl_coef = nan");
    bad([](auto& p) { p.kl_log_ratio_clamp = 81; }, "kl_log_ratio_clamp = 81");
    bad([](auto& p) { p.kl_value_clamp = -1; }, "kl_value_clamp = -1");
    bad([](auto& p) { p.normalizer = -5; }, "normalizer = -5");
    bad([](auto& p) { p.kind = static_cast<policy_loss_kind>(9); }, "kind = 9 is not a policy_loss_kind");
    bad([](auto& p) { p.kl = static_cast<kl_estimator>(9); }, "kl = 9 is not a kl_estimator");
    bad([](auto& p) { p.aggregation = static_cast<loss_aggregation>(9); }, "aggregation = 9");
    bad([](auto& p) { p.cispo = static_cast<hir::cispo_clip>(9); }, "cispo = 9");
    bad([](auto& p) { p.validation = static_cast<hir::input_validation>(9); }, "validation = 9");
  }
  SUBCASE("the gradient may not overlap an input") {
    auto d_mask = hir::test::upload<Bk>(good.mask); // two declarations: the types differ (nvcc rejects one `auto`)
    auto d_logp = hir::test::upload<Bk>(good.logp);
    auto d_old = hir::test::upload<Bk>(good.old_logp), d_ref = hir::test::upload<Bk>(good.ref_logp);
    auto d_adv = hir::test::upload<Bk>(good.adv);
    hir::token_batch_ref<float, hir::memory_space_t<Bk>> ref;
    ref.batch = 3, ref.length = 8, ref.mask = hir::view(std::as_const(d_mask));
    ref.logp = hir::view(std::as_const(d_logp)), ref.old_logp = hir::view(std::as_const(d_old));
    ref.ref_logp = hir::view(std::as_const(d_ref));
    std::string what;
    try {
      hir::policy_loss(Bk{}, ref, hir::span_for<const float, Bk>(hir::view(std::as_const(d_adv))), hir::view(d_old), o);
    } catch (const hir::invalid_argument& e) {
      what = e.what();
    }
    CHECK_MESSAGE(what.find("grad_logp overlaps an input array") != std::string::npos, what);
  }
}
