// SPDX-License-Identifier: Apache-2.0
// reinforce_pp_advantages: hand-computed values (KL penalty, discount, reset across mask holes, whitening), every
// preset and option combination on random ragged batches (holes and padding in the masks) against the naive double
// reference, the whitening properties, and bad input (nothing written).
#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/reference.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>

namespace {

/// A span of const T over a vector.
template <class T>
hir::span<const T> cview(const std::vector<T>& v) {
  return hir::view(v);
}

template <class T>
struct batch {
  std::size_t rows = 0, length = 0;
  std::vector<T> scores, old_lp, ref_lp;
  std::vector<std::uint8_t> mask;
  std::vector<std::int64_t> ids;

  hir::token_batch_ref<T> tokens() const {
    hir::token_batch_ref<T> tb;
    tb.batch = rows;
    tb.length = length;
    tb.mask = hir::view(mask);
    tb.old_logp = hir::view(old_lp);
    tb.ref_logp = hir::view(ref_lp);
    return tb;
  }
  template <class U>
  batch<U> as() const {
    batch<U> b;
    b.rows = rows;
    b.length = length;
    b.scores.assign(scores.begin(), scores.end());
    b.old_lp.assign(old_lp.begin(), old_lp.end());
    b.ref_lp.assign(ref_lp.begin(), ref_lp.end());
    b.mask = mask;
    b.ids = ids;
    return b;
  }
};

template <class B, class T>
std::vector<T> run(const batch<T>& b, const hir::reinforce_pp_options& o) {
  std::vector<T> out(b.rows * b.length, T(-7));
  const auto layout = hir::group_layout::from_ids(b.ids);
  hir::reinforce_pp_advantages(B{}, cview(b.scores), b.tokens(), layout.ref(), hir::view(out), o);
  return out;
}

hir::ref::reinforce_config to_ref(const hir::reinforce_pp_options& o) {
  hir::ref::reinforce_config c;
  c.gamma = o.gamma;
  c.beta = o.kl == hir::kl_estimator::none ? 0.0 : o.kl_coef;
  c.kl = o.kl == hir::kl_estimator::abs                                        ? hir::ref::reinforce_config::abs_kl
         : o.kl == hir::kl_estimator::k2                                       ? hir::ref::reinforce_config::k2
         : (o.kl == hir::kl_estimator::k3 || o.kl == hir::kl_estimator::k3_st) ? hir::ref::reinforce_config::k3
                                                                               : hir::ref::reinforce_config::k1;
  c.clamp_every_estimator = o.kl_clamp_every_estimator;
  c.baseline = o.baseline == hir::reinforce_baseline::group_mean_of_score    ? hir::ref::reinforce_config::score_mean
               : o.baseline == hir::reinforce_baseline::group_mean_of_return ? hir::ref::reinforce_config::return_mean
                                                                             : hir::ref::reinforce_config::none;
  c.singleton_raw = o.singleton == hir::singleton_policy::raw_score;
  c.whiten = o.whiten == hir::whitening::none          ? hir::ref::reinforce_config::no_whitening
             : o.whiten == hir::whitening::center_only ? hir::ref::reinforce_config::center_only
             : o.whiten == hir::whitening::keep_mean   ? hir::ref::reinforce_config::keep_mean
                                                       : hir::ref::reinforce_config::standard;
  c.unbiased = o.std == hir::std_kind::unbiased;
  c.eps_added = o.epsilon_kind == hir::whitening_epsilon::add_to_variance;
  c.eps = o.epsilon;
  return c;
}

template <class T>
std::vector<double> reference(const batch<T>& b, const hir::reinforce_pp_options& o) {
  const std::vector<double> s(b.scores.begin(), b.scores.end()), ol(b.old_lp.begin(), b.old_lp.end()),
      rl(b.ref_lp.begin(), b.ref_lp.end());
  return hir::ref::reinforce_pp(s, b.mask, ol, rl, b.rows, b.length, b.ids, to_ref(o));
}

/// A random batch: ragged groups (ids shuffled over the rows), masks with a prompt-like prefix, holes and padding,
/// binary or continuous scores, log-probs around −2; lengths 1 … max_length.
batch<double> random_batch(std::mt19937_64& rng, std::size_t max_length = 12) {
  batch<double> b;
  const int groups = 1 + static_cast<int>(rng() % 6);
  for (int g = 0; g < groups; ++g) {
    const int n = 1 + static_cast<int>(rng() % 5);
    for (int k = 0; k < n; ++k)
      b.ids.push_back(100 + 13 * g);
  }
  std::shuffle(b.ids.begin(), b.ids.end(), rng);
  b.rows = b.ids.size();
  b.length = 1 + rng() % max_length;
  b.mask.assign(b.rows * b.length, 0);
  std::normal_distribution<double> lp(-2.0, 0.7);
  const bool binary = rng() % 2 == 0;
  for (std::size_t i = 0; i < b.rows; ++i) {
    const std::size_t start = rng() % 3 == 0 ? rng() % b.length : 0;
    const std::size_t end = start + 1 + rng() % (b.length - start);
    for (std::size_t t = start; t < end; ++t)
      b.mask[i * b.length + t] = rng() % 5 == 0 && t != start ? 0 : 1; // holes, never an empty row
    b.scores.push_back(binary ? static_cast<double>(rng() % 2) : std::uniform_real_distribution<double>(-2, 2)(rng));
  }
  for (std::size_t k = 0; k < b.rows * b.length; ++k) {
    b.old_lp.push_back(lp(rng));
    b.ref_lp.push_back(b.old_lp.back() + 0.3 * lp(rng) + 0.6);
  }
  return b;
}

std::size_t valid_tokens(const std::vector<std::uint8_t>& m) {
  return static_cast<std::size_t>(std::count(m.begin(), m.end(), std::uint8_t{1}));
}

} // namespace

TEST_CASE_TEMPLATE("reinforce_pp: hand-computed returns, KL penalty and whitening", B, HIR_TEST_BACKEND) {
  SUBCASE("KL penalty and discount, no whitening") {
    // r = (−β·0.2, −β·(−0.4), 1 − β·0.6) with β = 0.5; γ = 0.5: G2 = 0.7, G1 = 0.2 + 0.35, G0 = −0.1 + 0.275.
    batch<double> b;
    b.rows = 1;
    b.length = 3;
    b.scores = {1.0};
    b.mask = {1, 1, 1};
    b.old_lp = {-1.0, -2.0, -0.5};
    b.ref_lp = {-1.2, -1.6, -1.1};
    b.ids = {0};
    hir::reinforce_pp_options o;
    o.kl_coef = 0.5;
    o.gamma = 0.5;
    o.whiten = hir::whitening::none;
    const auto a = run<B>(b, o);
    CHECK(a[0] == doctest::Approx(0.175).epsilon(1e-14));
    CHECK(a[1] == doctest::Approx(0.55).epsilon(1e-14));
    CHECK(a[2] == doctest::Approx(0.7).epsilon(1e-14));
    o.kl = hir::kl_estimator::k2; // ½κ²: r = (−0.01, −0.04, 1 − 0.09)
    const auto k2 = run<B>(b, o);
    CHECK(k2[2] == doctest::Approx(0.91).epsilon(1e-14));
    CHECK(k2[1] == doctest::Approx(-0.04 + 0.5 * 0.91).epsilon(1e-14));
  }
  SUBCASE("the running return restarts after a masked position (verl)") {
    batch<double> b;
    b.rows = 1;
    b.length = 4;
    b.scores = {1.0};
    b.mask = {1, 0, 1, 0}; // last valid token is t = 2
    b.ids = {0};
    hir::reinforce_pp_options o;
    o.whiten = hir::whitening::none;
    const auto a = run<B>(b, o);
    CHECK(a == std::vector<double>{0.0, 0.0, 1.0, 0.0});
  }
  SUBCASE("whitening over the valid tokens of the batch") {
    // Returns (γ = 1, no KL): row 0 = (1, 1, ·), row 1 = (0, 0, 0); valid values 1, 1, 0, 0, 0: μ = 0.4,
    // Σ(v − μ)² = 1.2, unbiased σ² = 0.3, biased 0.24.
    batch<double> b;
    b.rows = 2;
    b.length = 3;
    b.scores = {1.0, 0.0};
    b.mask = {1, 1, 0, 1, 1, 1};
    b.ids = {0, 1};
    const auto verl = run<B>(b, hir::presets::verl_reinforce_pp());
    const double r = 1.0 / std::sqrt(0.3 + 1e-8);
    const std::vector<double> expected = {0.6 * r, 0.6 * r, 0.0, -0.4 * r, -0.4 * r, -0.4 * r};
    HIR_CHECK_CLOSE(verl, expected, 1e-15, 1e-14);
    const auto orl = run<B>(b, hir::presets::openrlhf_reinforce(0.0));
    const double rb = 1.0 / std::sqrt(0.24);
    HIR_CHECK_CLOSE(orl, (std::vector<double>{0.6 * rb, 0.6 * rb, 0.0, -0.4 * rb, -0.4 * rb, -0.4 * rb}), 1e-15, 1e-14);
    auto o = hir::presets::verl_reinforce_pp();
    o.whiten = hir::whitening::center_only;
    HIR_CHECK_CLOSE(run<B>(b, o), (std::vector<double>{0.6, 0.6, 0.0, -0.4, -0.4, -0.4}), 1e-15, 1e-14);
    o.whiten = hir::whitening::keep_mean;
    HIR_CHECK_CLOSE(
        run<B>(b, o),
        (std::vector<double>{0.6 * r + 0.4, 0.6 * r + 0.4, 0.0, -0.4 * r + 0.4, -0.4 * r + 0.4, -0.4 * r + 0.4}), 1e-15,
        1e-14);
  }
  SUBCASE("baselines: group mean of the score vs of the return") {
    // One group of two rows, β = 1, k1 with κ = 0.5 on every valid token; row 0 has 2 tokens, row 1 has 1.
    batch<double> b;
    b.rows = 2;
    b.length = 2;
    b.scores = {1.0, 0.0};
    b.mask = {1, 1, 1, 0};
    b.old_lp = {-1.0, -1.0, -1.0, -1.0};
    b.ref_lp = {-1.5, -1.5, -1.5, -1.5};
    b.ids = {7, 7};
    auto o = hir::presets::verl_reinforce_pp_baseline(1.0);
    o.whiten = hir::whitening::none;
    // verl: a = (1 − 1, 0 − 0.5) = (0, −0.5), mean −0.25 → (0.25, −0.25) tiled.
    CHECK(run<B>(b, o) == std::vector<double>{0.25, 0.25, -0.25, 0.0});
    o = hir::presets::openrlhf_reinforce_baseline(1.0);
    o.whiten = hir::whitening::none;
    // OpenRLHF: centred scores (0.5, −0.5); row 0 rewards (−0.5, 0.5 − 0.5) → returns (−0.5, 0); row 1: −1.
    CHECK(run<B>(b, o) == std::vector<double>{-0.5, 0.0, -1.0, 0.0});
  }
}

TEST_CASE_TEMPLATE("reinforce_pp: presets and options match the naive double reference", B, HIR_TEST_BACKEND) {
  std::vector<std::pair<const char*, hir::reinforce_pp_options>> configs = {
      {"verl_reinforce_pp", hir::presets::verl_reinforce_pp()},
      {"verl_reinforce_pp(0.05)", hir::presets::verl_reinforce_pp(0.05)},
      {"verl_reinforce_pp_baseline(0.05)", hir::presets::verl_reinforce_pp_baseline(0.05)},
      {"openrlhf_reinforce", hir::presets::openrlhf_reinforce()},
      {"openrlhf_reinforce_baseline(0.2)", hir::presets::openrlhf_reinforce_baseline(0.2)},
      {"hir_paper_code_advantages", hir::presets::hir_paper_code_advantages()},
  };
  {
    auto o = hir::presets::verl_reinforce_pp(0.3);
    o.kl = hir::kl_estimator::k3;
    o.gamma = 0.9;
    configs.push_back({"k3, gamma 0.9", o});
    o.kl = hir::kl_estimator::abs;
    o.whiten = hir::whitening::keep_mean;
    configs.push_back({"abs, keep_mean", o});
    o = hir::presets::openrlhf_reinforce(2.0);
    o.kl = hir::kl_estimator::k2;
    o.whiten = hir::whitening::center_only;
    configs.push_back({"k2 clamped to 10, center_only", o});
    o = hir::presets::verl_reinforce_pp_baseline(0.1);
    o.singleton = hir::singleton_policy::zero;
    o.std = hir::std_kind::biased;
    configs.push_back({"return baseline, singleton zero, biased", o});
    o = hir::presets::openrlhf_reinforce_baseline(0.1);
    o.singleton = hir::singleton_policy::raw_score;
    o.gamma = 0.7;
    o.whiten = hir::whitening::none;
    configs.push_back({"score baseline, singleton raw, gamma 0.7, no whitening", o});
  }
  std::mt19937_64 rng(hir::test::seed(11));
  for (int trial = 0; trial < 60; ++trial) {
    const auto b = random_batch(rng);
    CAPTURE(trial);
    for (const auto& [label, preset] : configs) {
      const std::string name = label;
      CAPTURE(name);
      if (valid_tokens(b.mask) < 2)
        continue;
      auto opt = preset;
      if (opt.singleton == hir::singleton_policy::error) // random batches have groups of one
        opt.singleton = hir::singleton_policy::zero;
      HIR_CHECK_CLOSE(run<B>(b, opt), reference(b, opt), 1e-10, 1e-9);
      const auto f = b.as<float>();
      HIR_CHECK_CLOSE(run<B>(f, opt), reference(f, opt), 2e-5, 2e-5);
    }
  }
}

TEST_CASE_TEMPLATE("reinforce_pp: long rows, discounts, holes and non-finite padding (vectorized rows)", B,
                   HIR_TEST_BACKEND) {
  // Rows longer than one 8-position chunk of the CPU backend's AVX-512 row kernels (float log-probs, k1 or no KL;
  // per-token returns and the group mean of the return), with lengths that leave partial chunks, and inf/NaN
  // log-probs at masked positions, which must be ignored.
  std::vector<std::pair<const char*, hir::reinforce_pp_options>> configs;
  auto o = hir::presets::verl_reinforce_pp(0.05);
  configs.push_back({"k1 0.05", o});
  o.gamma = 0.9;
  configs.push_back({"k1 0.05, gamma 0.9", o});
  o.whiten = hir::whitening::keep_mean;
  o.std = hir::std_kind::biased;
  configs.push_back({"k1, gamma 0.9, keep_mean, biased", o});
  o = hir::presets::verl_reinforce_pp(0.0);
  o.gamma = 0.8;
  o.whiten = hir::whitening::center_only;
  configs.push_back({"no KL, gamma 0.8, center_only", o});
  o = hir::presets::verl_reinforce_pp(0.2);
  o.whiten = hir::whitening::none;
  configs.push_back({"k1 0.2, no whitening", o});
  o = hir::presets::verl_reinforce_pp(0.1);
  o.baseline = hir::reinforce_baseline::group_mean_of_score;
  configs.push_back({"k1, score baseline", o});
  configs.push_back({"verl_reinforce_pp_baseline(0.05)", hir::presets::verl_reinforce_pp_baseline(0.05)});
  o = hir::presets::verl_reinforce_pp_baseline(0.0);
  o.whiten = hir::whitening::keep_mean;
  configs.push_back({"return baseline, no KL, keep_mean", o});
  std::mt19937_64 rng(hir::test::seed(12));
  for (int trial = 0; trial < 40; ++trial) {
    const auto b = random_batch(rng, 100);
    auto dirty = b; // the reference multiplies padding by 0, so it sees the finite batch
    for (std::size_t k = 0; k < b.mask.size(); ++k)
      if (!b.mask[k] && rng() % 4 == 0)
        dirty.old_lp[k] = rng() % 2 ? std::numeric_limits<double>::infinity() : std::nan("");
    CAPTURE(trial);
    CAPTURE(b.length);
    if (valid_tokens(b.mask) < 2)
      continue;
    for (const auto& [label, opt] : configs) {
      const std::string name = label;
      CAPTURE(name);
      HIR_CHECK_CLOSE(run<B>(dirty.as<float>(), opt), reference(b.as<float>(), opt), 2e-5, 2e-5);
      HIR_CHECK_CLOSE(run<B>(dirty, opt), reference(b, opt), 1e-10, 1e-9);
    }
  }
}

TEST_CASE_TEMPLATE("reinforce_pp: properties", B, HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(12));
  for (int trial = 0; trial < 20; ++trial) {
    auto b = random_batch(rng);
    if (valid_tokens(b.mask) < 2)
      continue;
    CAPTURE(trial);
    for (auto o : {hir::presets::verl_reinforce_pp(0.1), hir::presets::openrlhf_reinforce(0.1)}) {
      const auto a = run<B>(b, o);
      auto raw_opt = o;
      raw_opt.whiten = hir::whitening::none;
      const auto raw = run<B>(b, raw_opt);
      double n = 0, sum = 0, ss = 0;
      for (std::size_t k = 0; k < a.size(); ++k) {
        if (!b.mask[k]) {
          CHECK(a[k] == 0.0); // exact zeros at masked positions
          continue;
        }
        n += 1;
        sum += a[k];
      }
      const double mean = sum / n;
      double raw_sum = 0, raw_ss = 0;
      for (std::size_t k = 0; k < a.size(); ++k)
        raw_sum += raw[k];
      for (std::size_t k = 0; k < a.size(); ++k)
        if (b.mask[k]) {
          ss += (a[k] - mean) * (a[k] - mean);
          raw_ss += (raw[k] - raw_sum / n) * (raw[k] - raw_sum / n);
        }
      CHECK(std::fabs(mean) < 1e-12 * (1 + n));
      // Whitened values have unit variance (of the kind the whitening used) unless the returns are (nearly)
      // constant, where ε dominates: σ²/(σ² + ε) or exactly 1 with max(σ², ε).
      const bool unbiased = o.std == hir::std_kind::unbiased;
      const double var = ss / (unbiased ? n - 1 : n), raw_var = raw_ss / (unbiased ? n - 1 : n);
      if (raw_var > 1e-2)
        CHECK(var == doctest::Approx(1.0).epsilon(1e-5));
    }
  }
  SUBCASE("scale invariance of standard whitening (β = 0)") {
    auto b = random_batch(rng);
    while (valid_tokens(b.mask) < 3)
      b = random_batch(rng);
    for (auto& s : b.scores)
      s = s + 3.0;
    const auto a = run<B>(b, hir::presets::verl_reinforce_pp());
    auto b2 = b;
    for (auto& s : b2.scores)
      s = s * 4.0; // without KL the returns scale with the scores, and whitening removes the scale
    const auto a2 = run<B>(b2, hir::presets::verl_reinforce_pp());
    HIR_CHECK_CLOSE(a2, a, 1e-6, 1e-6); // equal up to ε's effect
  }
}

TEST_CASE_TEMPLATE("reinforce_pp: bad input throws and writes nothing", B, HIR_TEST_BACKEND) {
  batch<double> b;
  b.rows = 3;
  b.length = 3;
  b.scores = {1.0, 0.0, 0.5};
  b.mask = {1, 1, 0, 1, 0, 0, 1, 1, 1};
  b.old_lp = std::vector<double>(9, -1.0);
  b.ref_lp = std::vector<double>(9, -1.1);
  b.ids = {0, 0, 1};
  const auto layout = hir::group_layout::from_ids(b.ids);
  const std::vector<double> sentinel(9, 42.0);
  std::vector<double> out = sentinel;
  auto call = [&](const batch<double>& x, const hir::reinforce_pp_options& o) {
    out = sentinel;
    hir::reinforce_pp_advantages(B{}, hir::view(x.scores), x.tokens(), layout.ref(), hir::view(out), o);
  };
  const auto kl = hir::presets::verl_reinforce_pp(0.1);
  call(b, kl); // valid
  CHECK(out != sentinel);

  auto bad = b;
  bad.mask[4] = 2;
  CHECK_THROWS_WITH_AS(call(bad, kl), "hir::reinforce_pp_advantages: mask[1, 1] = 2 is neither 0 nor 1",
                       hir::invalid_argument);
  CHECK(out == sentinel);
  bad = b;
  bad.mask[3] = 0;
  CHECK_THROWS_WITH_AS(call(bad, kl), doctest::Contains("hir::reinforce_pp_advantages: row 1 has no valid token"),
                       hir::invalid_argument);
  CHECK(out == sentinel);
  bad = b;
  bad.scores[2] = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(call(bad, kl), "hir::reinforce_pp_advantages: scores[2] = inf is not finite",
                       hir::invalid_argument);
  bad = b;
  bad.old_lp[7] = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS(call(bad, kl), "hir::reinforce_pp_advantages: old_logp[2, 1] = nan is not finite",
                       hir::invalid_argument);
  CHECK(out == sentinel);
  bad.old_lp[7] = -1.0;
  bad.ref_lp[5] = -std::numeric_limits<double>::infinity(); // masked position: ignored
  call(bad, kl);
  CHECK(out[5] == 0.0);
  bad.ref_lp[0] = -std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(call(bad, kl), "hir::reinforce_pp_advantages: ref_logp[0, 0] = -inf is not finite",
                       hir::invalid_argument);
  {
    auto nokl = b; // without KL, the log-probs are not read at all
    nokl.old_lp.clear();
    nokl.ref_lp.clear();
    call(nokl, hir::presets::verl_reinforce_pp());
    CHECK_THROWS_WITH_AS(call(nokl, kl),
                         "hir::reinforce_pp_advantages: old_logp.size() = 0 does not match batch * length = 9",
                         hir::invalid_argument);
  }
  // Whitening with unbiased variance needs two valid tokens.
  batch<double> one;
  one.rows = 1;
  one.length = 2;
  one.scores = {1.0};
  one.mask = {0, 1};
  one.ids = {0};
  std::vector<double> out1(2, 42.0);
  const auto l1 = hir::group_layout::from_ids(one.ids);
  CHECK_THROWS_WITH_AS(hir::reinforce_pp_advantages(B{}, cview(one.scores), one.tokens(), l1.ref(), hir::view(out1),
                                                    hir::presets::verl_reinforce_pp()),
                       "hir::reinforce_pp_advantages: whitening with unbiased variance needs at least 2 valid tokens "
                       "in the batch (it has 1)",
                       hir::invalid_argument);
  CHECK(out1 == std::vector<double>{42.0, 42.0});
  hir::reinforce_pp_advantages(B{}, cview(one.scores), one.tokens(), l1.ref(), hir::view(out1),
                               hir::presets::openrlhf_reinforce(0.0)); // biased: σ² = 0, r = 1/sqrt(1e-8)
  CHECK(out1 == std::vector<double>{0.0, 0.0});
  // Groups of one under singleton_policy::error (OpenRLHF).
  CHECK_THROWS_WITH_AS(call(b, hir::presets::openrlhf_reinforce_baseline()),
                       "hir::reinforce_pp_advantages: group 1 (row 2) has one row and singleton_policy::error is set",
                       hir::invalid_argument);
  CHECK(out == sentinel);
  // Sizes and options.
  std::vector<double> short_out(8);
  CHECK_THROWS_WITH_AS(
      hir::reinforce_pp_advantages(B{}, cview(b.scores), b.tokens(), layout.ref(), hir::view(short_out), kl),
      "hir::reinforce_pp_advantages: out.size() = 8 does not match batch * length = 9", hir::invalid_argument);
  const auto wrong = hir::group_layout::uniform(4, 2);
  call(b, hir::presets::verl_reinforce_pp_baseline()); // verl: groups of one use μ = 0
  CHECK_THROWS_WITH_AS(hir::reinforce_pp_advantages(B{}, cview(b.scores), b.tokens(), wrong.ref(), hir::view(out),
                                                    hir::presets::verl_reinforce_pp_baseline()),
                       "hir::reinforce_pp_advantages: groups.num_samples = 4 does not match batch = 3",
                       hir::invalid_argument);
  hir::reinforce_pp_advantages(B{}, cview(b.scores), b.tokens(), wrong.ref(), hir::view(out),
                               hir::presets::verl_reinforce_pp()); // groups are not read without a baseline
  auto o = kl;
  o.gamma = 1.5;
  CHECK_THROWS_WITH_AS(call(b, o), "hir::reinforce_pp_advantages: gamma = 1.5 must be in [0, 1]",
                       hir::invalid_argument);
  o = kl;
  o.epsilon = 0.0;
  CHECK_THROWS_AS(call(b, o), hir::invalid_argument);
  o = kl;
  o.kl_clamp_every_estimator = true;
  o.kl_value_clamp = 0.0;
  CHECK_THROWS_AS(call(b, o), hir::invalid_argument);
  o = kl;
  o.kl_coef = -0.1;
  CHECK_THROWS_AS(call(b, o), hir::invalid_argument);
  // Output overlapping an input.
  std::vector<double> scores_and_out(12, 0.0);
  CHECK_THROWS_WITH_AS(hir::reinforce_pp_advantages(B{}, hir::span<const double>(scores_and_out.data(), 3), b.tokens(),
                                                    layout.ref(), hir::span<double>(scores_and_out.data() + 2, 9), kl),
                       "hir::reinforce_pp_advantages: out overlaps an input array", hir::invalid_argument);
  // An empty batch is fine.
  batch<double> none;
  std::vector<double> no_out;
  hir::reinforce_pp_advantages(B{}, cview(none.scores), none.tokens(), hir::group_layout().ref(), hir::view(no_out),
                               hir::presets::verl_reinforce_pp_baseline());
}
