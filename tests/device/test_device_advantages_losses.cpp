// SPDX-License-Identifier: Apache-2.0
// The device backend against the CPU backend on the same random inputs: policy_loss (every loss × KL family ×
// aggregation × advantage layout × validation mode, float and double), reinforce_pp_advantages (every baseline ×
// whitening × estimator, ragged and shuffled groups with singletons and constant groups, masks with holes) and
// constraint_normalized_advantages (ragged shuffled groups, singletons, constant columns, weights), plus identical
// error messages and untouched (or zero-filled) outputs on bad input. This TU includes the CPU backend's
// per-algorithm headers next to <hir/device.hpp>: they are plain C++ (no Eigen), so it compiles with nvcc too.
//
// Tolerances (documented in docs/device.md): results are computed by the same per-element functions; only the
// order of summation (and FMA contraction on CUDA) differs. Double: 1e-12 relative (+1e-13 absolute); float: the
// gradient and per-token outputs 2e-6 relative to the largest magnitude, reduced losses 1e-4 relative + 1e-6
// absolute (the CPU sums float partials), clip fractions within 1.5 tokens.
#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/seed.hpp"

#include <hir/backend/cpu/constraint_normalized.hpp>
#include <hir/backend/cpu/policy_loss.hpp>
#include <hir/backend/cpu/reinforce_pp.hpp>
#include <hir/backend/cpu/tag.hpp>
#include <hir/relabel/select.hpp>

#if defined(__CUDACC__) && defined(EIGEN_WORLD_VERSION)
#  error "Eigen must not reach a CUDA translation unit"
#endif

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace {

using hir::kl_estimator;
using hir::loss_aggregation;
using hir::policy_loss_kind;

template <class T>
using dvec = thrust::device_vector<T>;

template <class T>
dvec<T> up(const std::vector<T>& v) {
  return hir::to_backend(hir::device, v);
}
template <class T>
hir::span<const T, hir::device_space> dview(const dvec<T>& v) {
  return hir::view(v);
}

using hir::test::max_abs;
using hir::test::what_of;

// ---------------------------------------------------------------------------------------------------------------
// policy_loss

template <class T>
struct pl_batch {
  std::size_t B = 0, L = 0;
  std::vector<T> logp, old_logp, ref_logp, adv;
  std::vector<std::uint8_t> mask;
};

/// Random batch: ragged valid lengths (some rows empty), holes, garbage (NaN, inf, huge) at masked positions.
template <class T>
pl_batch<T> pl_random(std::mt19937_64& rng, std::size_t B, std::size_t L, bool token_adv, double spread) {
  std::uniform_real_distribution<double> u(-1, 1);
  pl_batch<T> b;
  b.B = B, b.L = L;
  b.logp.resize(B * L), b.old_logp.resize(B * L), b.ref_logp.resize(B * L), b.mask.resize(B * L);
  b.adv.resize(token_adv ? B * L : B);
  const T garbage[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(), T(1e30)};
  for (std::size_t i = 0; i < B; ++i) {
    const std::size_t len = i % 5 == 4 ? 0 : 1 + rng() % L; // every fifth row empty
    const bool holes = rng() % 2 == 0;
    for (std::size_t t = 0; t < L; ++t) {
      const std::size_t k = i * L + t;
      const bool valid = t < len && !(holes && rng() % 4 == 0);
      b.mask[k] = valid ? 1 : 0;
      if (valid) {
        b.logp[k] = static_cast<T>(-2.0 + 0.5 * u(rng));
        b.old_logp[k] = static_cast<T>(static_cast<double>(b.logp[k]) + spread * u(rng));
        b.ref_logp[k] = static_cast<T>(static_cast<double>(b.logp[k]) + spread * u(rng));
      } else {
        b.logp[k] = garbage[rng() % 3];
        b.old_logp[k] = garbage[rng() % 3];
        b.ref_logp[k] = garbage[rng() % 3];
      }
    }
  }
  for (std::size_t k = 0; k < b.adv.size(); ++k)
    b.adv[k] = static_cast<T>(1.5 * u(rng));
  if (token_adv) // garbage advantages at masked positions too
    for (std::size_t k = 0; k < b.adv.size(); ++k)
      if (!b.mask[k])
        b.adv[k] = garbage[rng() % 3];
  return b;
}

struct pl_out {
  hir::policy_loss_result r;
  std::vector<double> grad;
};

template <class T>
pl_out pl_cpu(const pl_batch<T>& b, const hir::policy_loss_options& o, bool with_old = true) {
  hir::token_batch_ref<T> tb;
  tb.batch = b.B, tb.length = b.L;
  tb.mask = hir::view(b.mask), tb.logp = hir::view(b.logp);
  if (with_old)
    tb.old_logp = hir::view(b.old_logp);
  tb.ref_logp = hir::view(b.ref_logp);
  std::vector<T> g(b.B * b.L, T(-3));
  pl_out out;
  out.r = hir::policy_loss(hir::cpu, tb, hir::span<const T>(hir::view(b.adv)), hir::view(g), o);
  out.grad.assign(g.begin(), g.end());
  return out;
}

template <class T>
pl_out pl_device(const pl_batch<T>& b, const hir::policy_loss_options& o, bool with_old = true,
                 std::vector<T>* grad_after = nullptr) {
  const auto mask = up(b.mask);
  const auto logp = up(b.logp), old_logp = up(b.old_logp), ref_logp = up(b.ref_logp), adv = up(b.adv);
  hir::token_batch_ref<T, hir::device_space> tb;
  tb.batch = b.B, tb.length = b.L;
  tb.mask = dview(mask), tb.logp = dview(logp);
  if (with_old)
    tb.old_logp = dview(old_logp);
  tb.ref_logp = dview(ref_logp);
  dvec<T> g(b.B * b.L, T(-3));
  pl_out out;
  try {
    out.r = hir::policy_loss(hir::device, tb, dview(adv), hir::view(g), o);
  } catch (...) {
    if (grad_after)
      *grad_after = hir::to_host(g);
    throw;
  }
  const auto h = hir::to_host(g);
  out.grad.assign(h.begin(), h.end());
  return out;
}

void check_results(const hir::policy_loss_result& d, const hir::policy_loss_result& c, double rel, double frac_tol) {
  // float: the CPU accumulates float partial sums (chunks of 256 tokens), so allow 1e-6 absolute for cancellation
  const double abs_tol = rel > 1e-9 ? 1e-6 : 1e-13;
  auto close = [&](double a, double e) { return std::fabs(a - e) <= abs_tol + rel * std::fabs(e); };
  CHECK_MESSAGE(close(d.loss, c.loss), d.loss, " vs ", c.loss);
  CHECK_MESSAGE(close(d.pg_loss, c.pg_loss), d.pg_loss, " vs ", c.pg_loss);
  CHECK_MESSAGE(close(d.kl_loss, c.kl_loss), d.kl_loss, " vs ", c.kl_loss);
  CHECK_MESSAGE(close(d.approx_kl, c.approx_kl), d.approx_kl, " vs ", c.approx_kl);
  CHECK_MESSAGE(close(d.mean_ratio, c.mean_ratio), d.mean_ratio, " vs ", c.mean_ratio);
  CHECK_MESSAGE(close(d.mean_kl, c.mean_kl), d.mean_kl, " vs ", c.mean_kl);
  CHECK(std::fabs(d.clip_fraction_low - c.clip_fraction_low) <= frac_tol);
  CHECK(std::fabs(d.clip_fraction_high - c.clip_fraction_high) <= frac_tol);
  CHECK(std::fabs(d.dual_clip_fraction - c.dual_clip_fraction) <= frac_tol);
  CHECK(d.valid_tokens == c.valid_tokens);
  CHECK(d.valid_sequences == c.valid_sequences);
  CHECK(d.normalizer == c.normalizer);
}

template <class T>
void policy_loss_matches_cpu(std::uint64_t salt) {
  std::mt19937_64 rng(hir::test::seed(salt));
  const bool is_float = std::is_same_v<T, float>;
  const double rel = is_float ? 1e-4 : 1e-12, grad_rel = is_float ? 2e-6 : 1e-12;
  const policy_loss_kind kinds[] = {policy_loss_kind::ppo_clip, policy_loss_kind::gspo, policy_loss_kind::cispo,
                                    policy_loss_kind::reinforce};
  const kl_estimator kls[] = {kl_estimator::none, kl_estimator::k1,    kl_estimator::abs,  kl_estimator::k2,
                              kl_estimator::k3,   kl_estimator::k1_st, kl_estimator::k3_st};
  const loss_aggregation aggs[] = {loss_aggregation::token_mean, loss_aggregation::seq_mean_token_mean,
                                   loss_aggregation::seq_mean_token_sum, loss_aggregation::seq_sum_constant};
  int combo = 0;
  for (auto kind : kinds)
    for (auto kl : kls)
      for (auto agg : aggs) {
        ++combo;
        hir::policy_loss_options o;
        o.kind = kind, o.kl = kl, o.aggregation = agg;
        o.kl_coef = kl == kl_estimator::none ? 0.0 : 0.05;
        o.dual_clip = combo % 2 ? 3.0 : 0.0;
        o.clip_high = combo % 3 ? 0.28 : 0.2;
        if (kind == policy_loss_kind::cispo && combo % 2)
          o.cispo = hir::cispo_clip::upper_cap, o.cispo_cap = 1.5;
        o.normalizer = combo % 5 == 0 ? 37.0 : 0.0;
        o.validation = combo % 4 == 0 ? hir::input_validation::fused : hir::input_validation::before_writing;
        const bool token_adv = combo % 2 == 0;
        const std::size_t B = 1 + rng() % 12, L = 1 + rng() % 40;
        const auto b = pl_random<T>(rng, B, L, token_adv, combo % 3 == 0 ? 3.0 : 0.4);
        CAPTURE(combo);
        CAPTURE(B);
        CAPTURE(L);
        const bool with_old = !(kind == policy_loss_kind::reinforce && combo % 2);
        const pl_out c = pl_cpu(b, o, with_old), d = pl_device(b, o, with_old);
        check_results(d.r, c.r, rel, 1.5 / static_cast<double>(std::max<std::size_t>(1, c.r.valid_tokens)));
        HIR_CHECK_CLOSE(d.grad, c.grad, grad_rel * max_abs(c.grad), grad_rel);
      }
}

// ---------------------------------------------------------------------------------------------------------------
// reinforce_pp_advantages

template <class T>
struct rpp_batch {
  std::size_t B = 0, L = 0;
  std::vector<T> scores, old_lp, ref_lp;
  std::vector<std::uint8_t> mask;
  std::vector<std::int64_t> ids;
};

/// Random batch: groups of 1..6 rows (some constant), shuffled over the batch; every row has a valid token, holes
/// and padding in the masks, garbage log-probs at masked positions.
template <class T>
rpp_batch<T> rpp_random(std::mt19937_64& rng, std::size_t L, bool shuffle) {
  std::uniform_real_distribution<double> u(-1, 1);
  rpp_batch<T> b;
  b.L = L;
  const int groups = 1 + static_cast<int>(rng() % 7);
  for (int g = 0; g < groups; ++g) {
    const int size = 1 + static_cast<int>(rng() % 6);
    const bool constant = rng() % 4 == 0;
    const double c = std::floor(3 * u(rng));
    for (int k = 0; k < size; ++k) {
      b.scores.push_back(static_cast<T>(constant ? c : std::floor(3 * u(rng)) + 0.25 * u(rng)));
      b.ids.push_back(500 + 7 * g);
    }
  }
  b.B = b.scores.size();
  if (shuffle) {
    std::vector<std::size_t> perm(b.B);
    for (std::size_t i = 0; i < b.B; ++i)
      perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    auto s = b.scores;
    auto ids = b.ids;
    for (std::size_t i = 0; i < b.B; ++i)
      b.scores[i] = s[perm[i]], b.ids[i] = ids[perm[i]];
  }
  b.mask.resize(b.B * L), b.old_lp.resize(b.B * L), b.ref_lp.resize(b.B * L);
  for (std::size_t i = 0; i < b.B; ++i) {
    const std::size_t start = rng() % 3 == 0 ? rng() % L : 0, len = 1 + rng() % (L - start);
    for (std::size_t t = 0; t < L; ++t) {
      const std::size_t k = i * L + t;
      bool valid = t >= start && t < start + len && !(rng() % 5 == 0);
      if (t == start)
        valid = true;
      b.mask[k] = valid ? 1 : 0;
      b.old_lp[k] = valid ? static_cast<T>(-1.5 + u(rng)) : std::numeric_limits<T>::quiet_NaN();
      b.ref_lp[k] =
          valid ? static_cast<T>(static_cast<double>(b.old_lp[k]) + 0.7 * u(rng)) : std::numeric_limits<T>::infinity();
    }
  }
  // Every row has a valid token, so a batch of one row of one valid token is the only one with fewer than the 2 valid
  // tokens whitening needs (it throws there, on both backends): give it a second valid token (a second row if L = 1).
  if (std::count(b.mask.begin(), b.mask.end(), std::uint8_t(1)) < 2) {
    const double lp = -1.5 + u(rng), ref = lp + 0.7 * u(rng);
    if (L >= 2) {
      const std::size_t k = static_cast<std::size_t>(std::find(b.mask.begin(), b.mask.end(), std::uint8_t(0)) -
                                                     b.mask.begin()); // row 0 (B = 1) has an invalid token
      b.mask[k] = 1, b.old_lp[k] = static_cast<T>(lp), b.ref_lp[k] = static_cast<T>(ref);
    } else {
      b.scores.push_back(static_cast<T>(std::floor(3 * u(rng))));
      b.ids.push_back(b.ids.back());
      b.mask.push_back(1), b.old_lp.push_back(static_cast<T>(lp)), b.ref_lp.push_back(static_cast<T>(ref));
      b.B = b.scores.size();
    }
  }
  return b;
}

template <class T>
std::vector<T> rpp_cpu(const rpp_batch<T>& b, const hir::reinforce_pp_options& o) {
  hir::token_batch_ref<T> tb;
  tb.batch = b.B, tb.length = b.L;
  tb.mask = hir::view(b.mask), tb.old_logp = hir::view(b.old_lp), tb.ref_logp = hir::view(b.ref_lp);
  const auto layout = hir::group_layout::from_ids(b.ids);
  std::vector<T> out(b.B * b.L, T(-7));
  hir::reinforce_pp_advantages(hir::cpu, hir::span<const T>(hir::view(b.scores)), tb, layout.ref(), hir::view(out), o);
  return out;
}

template <class T>
std::vector<T> rpp_device(const rpp_batch<T>& b, const hir::reinforce_pp_options& o) {
  const auto mask = up(b.mask);
  const auto old_lp = up(b.old_lp), ref_lp = up(b.ref_lp), scores = up(b.scores);
  hir::token_batch_ref<T, hir::device_space> tb;
  tb.batch = b.B, tb.length = b.L;
  tb.mask = dview(mask), tb.old_logp = dview(old_lp), tb.ref_logp = dview(ref_lp);
  const hir::group_storage<hir::backend::device::tag_t> groups(hir::device, hir::group_layout::from_ids(b.ids));
  dvec<T> out(b.B * b.L, T(-7));
  std::string what;
  try {
    hir::reinforce_pp_advantages(hir::device, dview(scores), tb, groups.ref(), hir::view(out), o);
  } catch (...) {
    const auto h = hir::to_host(out);
    CHECK_MESSAGE(std::all_of(h.begin(), h.end(), [](T v) { return v == T(-7); }), "out was written");
    throw;
  }
  return hir::to_host(out);
}

std::vector<std::pair<std::string, hir::reinforce_pp_options>> rpp_configs() {
  std::vector<std::pair<std::string, hir::reinforce_pp_options>> c = {
      {"verl", hir::presets::verl_reinforce_pp(0.01)},
      {"verl baseline", hir::presets::verl_reinforce_pp_baseline(0.01)},
      {"openrlhf", hir::presets::openrlhf_reinforce(0.05)},
      {"openrlhf baseline (no singletons)", hir::presets::openrlhf_reinforce_baseline(0.05)},
      {"hir paper", hir::presets::hir_paper_code_advantages()},
  };
  const kl_estimator kls[] = {kl_estimator::k1, kl_estimator::abs,   kl_estimator::k2,
                              kl_estimator::k3, kl_estimator::k3_st, kl_estimator::none};
  const hir::whitening wh[] = {hir::whitening::standard, hir::whitening::center_only, hir::whitening::keep_mean,
                               hir::whitening::none};
  const hir::reinforce_baseline bl[] = {hir::reinforce_baseline::none, hir::reinforce_baseline::group_mean_of_score,
                                        hir::reinforce_baseline::group_mean_of_return};
  int k = 0;
  for (auto b : bl)
    for (auto w : wh) {
      hir::reinforce_pp_options o;
      o.baseline = b, o.whiten = w;
      o.kl = kls[k % 6];
      o.kl_coef = k % 3 == 0 ? 0.0 : 0.02;
      o.gamma = k % 2 ? 0.9 : 1.0;
      o.singleton = k % 2 ? hir::singleton_policy::zero : hir::singleton_policy::raw_score;
      o.std = k % 3 == 1 ? hir::std_kind::biased : hir::std_kind::unbiased;
      o.epsilon_kind = k % 2 ? hir::whitening_epsilon::max_with_variance : hir::whitening_epsilon::add_to_variance;
      o.kl_clamp_every_estimator = k % 4 == 3;
      c.push_back({"grid " + std::to_string(k), o});
      ++k;
    }
  return c;
}

template <class T>
void reinforce_pp_matches_cpu(std::uint64_t salt) {
  std::mt19937_64 rng(hir::test::seed(salt));
  const double rel = std::is_same_v<T, float> ? 2e-6 : 1e-11;
  for (int trial = 0; trial < 12; ++trial) {
    const auto b = rpp_random<T>(rng, 1 + rng() % 24, trial % 2 == 1);
    for (const auto& cfg : rpp_configs()) {
      const std::string& name = cfg.first;
      const hir::reinforce_pp_options& o = cfg.second;
      CAPTURE(trial);
      CAPTURE(name);
      if (o.singleton == hir::singleton_policy::error) {
        const auto layout = hir::group_layout::from_ids(b.ids);
        bool single = false;
        for (std::size_t g = 0; g < layout.num_groups(); ++g)
          single = single || layout.size(g) == 1;
        if (single) {
          const std::string c = what_of([&] { rpp_cpu(b, o); });
          CHECK(!c.empty());
          CHECK(what_of([&] { rpp_device(b, o); }) == c);
          continue;
        }
      }
      const auto c = rpp_cpu(b, o);
      const auto d = rpp_device(b, o);
      HIR_CHECK_CLOSE(d, c, rel * (max_abs(c) + 1.0), rel);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// constraint_normalized_advantages

/// Appends one sample's verdicts as (mask, count).
void push(hir::verdict_batch& v, const std::vector<bool>& row) {
  std::uint64_t m = 0;
  for (std::size_t c = 0; c < row.size(); ++c)
    m |= static_cast<std::uint64_t>(row[c] ? 1 : 0) << c;
  v.push_back(m, row.size());
}

struct cn_batch {
  hir::verdict_batch v;
  std::vector<std::int64_t> ids;
  std::vector<double> w;
};

cn_batch cn_random(std::mt19937_64& rng, int trial) {
  cn_batch b;
  std::vector<std::vector<bool>> rows;
  std::vector<std::int64_t> ids;
  const int groups = 1 + static_cast<int>(rng() % 8);
  const std::size_t max_count = trial % 5 == 0 ? 64 : 1 + rng() % 10;
  for (int g = 0; g < groups; ++g) {
    const int size = 1 + static_cast<int>(rng() % 7);
    const std::size_t count = rng() % (max_count + 1);
    const double p = std::uniform_real_distribution<double>(0, 1)(rng);
    for (int k = 0; k < size; ++k) {
      std::vector<bool> row(count);
      for (std::size_t c = 0; c < count; ++c)
        row[c] = std::uniform_real_distribution<double>(0, 1)(rng) < p; // p near 0/1: constant columns
      rows.push_back(row);
      ids.push_back(1000 - 3 * g);
    }
  }
  std::vector<std::size_t> perm(rows.size());
  for (std::size_t i = 0; i < perm.size(); ++i)
    perm[i] = i;
  if (trial % 2)
    std::shuffle(perm.begin(), perm.end(), rng);
  for (std::size_t i : perm) {
    push(b.v, rows[i]);
    b.ids.push_back(ids[i]);
  }
  b.w.resize(max_count);
  for (auto& x : b.w)
    x = std::uniform_real_distribution<double>(-1, 3)(rng);
  return b;
}

template <class T>
std::vector<T> cn_cpu(const cn_batch& b, bool weighted, const hir::constraint_normalized_options& o) {
  const auto layout = hir::group_layout::from_ids(b.ids);
  std::vector<T> out(b.ids.size(), T(42));
  if (weighted)
    hir::constraint_normalized_advantages(hir::cpu, b.v.ref(), layout.ref(), hir::span<const double>(hir::view(b.w)),
                                          hir::view(out), o);
  else
    hir::constraint_normalized_advantages(hir::cpu, b.v.ref(), layout.ref(), hir::view(out), o);
  return out;
}

template <class T>
std::vector<T> cn_device(const cn_batch& b, bool weighted, const hir::constraint_normalized_options& o) {
  const auto masks = up(b.v.masks());
  const auto w = up(b.w);
  const auto counts = up(b.v.counts());
  hir::verdict_ref<hir::device_space> v{dview(masks), dview(counts)};
  const hir::group_storage<hir::backend::device::tag_t> groups(hir::device, hir::group_layout::from_ids(b.ids));
  dvec<T> out(b.ids.size(), T(42));
  try {
    if (weighted)
      hir::constraint_normalized_advantages(hir::device, v, groups.ref(), dview(w), hir::view(out), o);
    else
      hir::constraint_normalized_advantages(hir::device, v, groups.ref(), hir::view(out), o);
  } catch (...) {
    const auto h = hir::to_host(out);
    CHECK_MESSAGE(std::all_of(h.begin(), h.end(), [](T x) { return x == T(42); }), "out was written");
    throw;
  }
  return hir::to_host(out);
}

} // namespace

TEST_CASE("device policy_loss: matches the CPU backend on random batches (double)") {
  policy_loss_matches_cpu<double>(101);
}
TEST_CASE("device policy_loss: matches the CPU backend on random batches (float)") {
  policy_loss_matches_cpu<float>(102);
}

TEST_CASE("device policy_loss: larger batch, per-sequence and per-token advantages") {
  std::mt19937_64 rng(hir::test::seed(103));
  for (bool token_adv : {false, true}) {
    const auto b = pl_random<float>(rng, 64, 300, token_adv, 0.5);
    hir::policy_loss_options o = hir::presets::dapo_loss();
    o.kl = kl_estimator::k3, o.kl_coef = 0.01;
    const pl_out c = pl_cpu(b, o), d = pl_device(b, o);
    check_results(d.r, c.r, 1e-4, 1.5 / static_cast<double>(c.r.valid_tokens));
    HIR_CHECK_CLOSE(d.grad, c.grad, 2e-6 * max_abs(c.grad), 2e-6);
  }
}

TEST_CASE("device policy_loss: empty batches and all-masked batches") {
  pl_batch<double> b;
  CHECK(pl_device(b, {}).r.valid_tokens == 0);
  std::mt19937_64 rng(hir::test::seed(104));
  b = pl_random<double>(rng, 3, 5, true, 0.3);
  std::fill(b.mask.begin(), b.mask.end(), std::uint8_t(0));
  const pl_out d = pl_device(b, hir::presets::verl_gspo_loss());
  CHECK(d.r.loss == 0.0);
  CHECK(d.r.valid_sequences == 0);
  CHECK(std::all_of(d.grad.begin(), d.grad.end(), [](double g) { return g == 0.0; }));
}

TEST_CASE("device policy_loss: bad input gives the CPU's message; grad untouched or zero-filled") {
  std::mt19937_64 rng(hir::test::seed(105));
  for (bool token_adv : {true, false}) {
    const auto good = pl_random<float>(rng, 5, 9, token_adv, 0.3);
    std::size_t k = 0;
    while (k < good.mask.size() && !good.mask[k])
      ++k;
    REQUIRE(k < good.mask.size()); // row 0 is never empty; all its tokens holes: < 1e-5 of seeds
    for (auto v : {hir::input_validation::before_writing, hir::input_validation::fused}) {
      hir::policy_loss_options o;
      o.kl = kl_estimator::k3, o.kl_coef = 0.1, o.validation = v;
      CAPTURE(token_adv);
      CAPTURE(static_cast<int>(v));
      std::vector<pl_batch<float>> bad(5, good);
      bad[0].logp[k] = std::numeric_limits<float>::quiet_NaN();
      bad[1].old_logp[k] = std::numeric_limits<float>::infinity();
      bad[2].ref_logp[k] = -std::numeric_limits<float>::infinity();
      bad[3].adv[token_adv ? k : k / good.L] = std::numeric_limits<float>::quiet_NaN();
      bad[4].mask[good.B * good.L - 1] = 2;
      for (const auto& tb : bad) {
        const std::string c = what_of([&] { pl_cpu(tb, o); });
        std::vector<float> after;
        const std::string d = what_of([&] { pl_device(tb, o, true, &after); });
        CHECK(!c.empty());
        CHECK(d == c);
        const float expect = v == hir::input_validation::fused ? 0.0f : -3.0f;
        CHECK(std::all_of(after.begin(), after.end(), [&](float g) { return g == expect; }));
      }
    }
  }
}

TEST_CASE("device reinforce_pp: matches the CPU backend (double)") {
  reinforce_pp_matches_cpu<double>(201);
}
TEST_CASE("device reinforce_pp: matches the CPU backend (float)") {
  reinforce_pp_matches_cpu<float>(202);
}

TEST_CASE("device reinforce_pp: long rows (the return scan crosses many blocks)") {
  std::mt19937_64 rng(hir::test::seed(203));
  auto b = rpp_random<double>(rng, 3000, true);
  for (auto o : {hir::presets::verl_reinforce_pp(0.01), hir::presets::openrlhf_reinforce_baseline(0.01)}) {
    o.gamma = 0.999;
    o.singleton = hir::singleton_policy::zero;
    const auto c = rpp_cpu(b, o), d = rpp_device(b, o);
    HIR_CHECK_CLOSE(d, c, 1e-10 * (max_abs(c) + 1.0), 1e-10);
  }
}

TEST_CASE("device reinforce_pp: bad input gives the CPU's message and writes nothing") {
  std::mt19937_64 rng(hir::test::seed(204));
  auto good = rpp_random<double>(rng, 10, false);
  while (good.B < 3)
    good = rpp_random<double>(rng, 10, false);
  auto o = hir::presets::verl_reinforce_pp(0.01);
  std::size_t k = 0;
  while (k < good.mask.size() && !good.mask[k])
    ++k;
  REQUIRE(k < good.mask.size()); // rows are never empty; all tokens holes: < 1e-5 of seeds
  std::vector<std::pair<rpp_batch<double>, hir::reinforce_pp_options>> bad;
  auto b = good;
  b.scores[1] = std::numeric_limits<double>::infinity();
  bad.push_back({b, o});
  b = good, b.mask[2 * b.L + 3] = 2;
  bad.push_back({b, o});
  b = good, std::fill(b.mask.begin() + 1 * b.L, b.mask.begin() + 2 * b.L, std::uint8_t(0));
  bad.push_back({b, o});
  b = good, b.old_lp[k] = std::numeric_limits<double>::quiet_NaN();
  bad.push_back({b, o});
  b = good, b.ref_lp[k] = std::numeric_limits<double>::quiet_NaN();
  bad.push_back({b, o});
  b = good, b.ids = std::vector<std::int64_t>(b.B, 1), b.ids[b.B - 1] = 2; // the last row alone
  auto single = hir::presets::openrlhf_reinforce_baseline(0.01);
  bad.push_back({b, single});
  b = good, b.B = 1, b.scores.resize(1), b.ids.resize(1), b.mask.assign(b.L, 0), b.mask[0] = 1;
  b.old_lp.resize(b.L), b.ref_lp.resize(b.L);
  bad.push_back({b, o}); // unbiased whitening over one token
  for (const auto& item : bad) {
    const rpp_batch<double>& tb = item.first;
    const hir::reinforce_pp_options& opt = item.second;
    const std::string c = what_of([&] { rpp_cpu(tb, opt); });
    CHECK(!c.empty());
    CHECK(what_of([&] { rpp_device(tb, opt); }) == c);
  }
}

TEST_CASE("device constraint_normalized: matches the CPU backend on random ragged groups") {
  std::mt19937_64 rng(hir::test::seed(301));
  std::vector<hir::constraint_normalized_options> configs = {hir::presets::trl_gdpo()};
  {
    hir::constraint_normalized_options o;
    o.batch_normalize = false;
    configs.push_back(o);
    o.std = hir::std_kind::biased, o.epsilon = 0.0, o.singleton = hir::singleton_policy::raw_score;
    configs.push_back(o);
    o = hir::presets::trl_gdpo();
    o.batch_std = hir::std_kind::biased, o.batch_epsilon = 1e-6;
    configs.push_back(o);
  }
  for (int trial = 0; trial < 40; ++trial) {
    const cn_batch b = cn_random(rng, trial);
    CAPTURE(trial);
    for (std::size_t ci = 0; ci < configs.size(); ++ci) {
      CAPTURE(ci);
      for (bool weighted : {false, true}) {
        const auto c = cn_cpu<double>(b, weighted, configs[ci]);
        HIR_CHECK_CLOSE(cn_device<double>(b, weighted, configs[ci]), c, 1e-12 * (max_abs(c) + 1.0), 1e-12);
        const auto cf = cn_cpu<float>(b, weighted, configs[ci]);
        HIR_CHECK_CLOSE(cn_device<float>(b, weighted, configs[ci]), cf, 2e-6 * (max_abs(cf) + 1.0), 2e-6);
      }
    }
  }
}

TEST_CASE("device constraint_normalized: bad input gives the CPU's message and writes nothing") {
  cn_batch b;
  push(b.v, {true, false});
  push(b.v, {true, true});
  push(b.v, {false});
  b.ids = {4, 4, 9};
  b.w = {1.0, 2.0};
  hir::constraint_normalized_options o;
  o.singleton = hir::singleton_policy::error;
  std::vector<std::pair<cn_batch, bool>> bad;
  bad.push_back({b, true}); // the singleton
  auto x = b;
  x.ids = {4, 4, 4}; // different counts in one group
  bad.push_back({x, false});
  x = b, x.w = {1.0}; // too few weights
  bad.push_back({x, true});
  x = b, x.ids = {4, 4, 4}, x.v = hir::verdict_batch(), push(x.v, {true, false});
  push(x.v, {true, true}), push(x.v, {false, false});
  x.w = {1.0, std::numeric_limits<double>::quiet_NaN()};
  bad.push_back({x, true}); // a non-finite weight
  for (const auto& item : bad) {
    const cn_batch& tb = item.first;
    const bool weighted = item.second;
    const std::string c = what_of([&] { cn_cpu<double>(tb, weighted, o); });
    CHECK(!c.empty());
    CHECK(what_of([&] { cn_device<double>(tb, weighted, o); }) == c);
  }
}

TEST_CASE("device sequence_entropy: row sums and lengths against a naive sum; bad rows named") {
  std::mt19937_64 rng(hir::test::seed(401));
  const std::size_t rows = 37, L = 53;
  std::vector<float> h(rows * L);
  std::vector<std::uint8_t> m(rows * L);
  std::vector<double> sum(rows, 0.0);
  std::vector<std::int64_t> len(rows, 0);
  for (std::size_t k = 0; k < h.size(); ++k) {
    m[k] = rng() % 3 != 0;
    h[k] = m[k] ? static_cast<float>(std::uniform_real_distribution<double>(0, 3)(rng))
                : std::numeric_limits<float>::quiet_NaN(); // padding is never read
    if (m[k])
      sum[k / L] += h[k], ++len[k / L];
  }
  const auto d_h = up(h);
  const auto d_m = up(m);
  dvec<float> d_sum(rows);
  dvec<std::int64_t> d_len(rows);
  hir::sequence_entropy(hir::device, dview(d_h), dview(d_m), L, hir::view(d_sum), hir::view(d_len));
  HIR_CHECK_CLOSE(hir::to_host(d_sum), sum, 1e-5, 1e-6);
  CHECK(hir::to_host(d_len) == len);
  m[5 * L + 7] = 1, h[5 * L + 7] = std::numeric_limits<float>::infinity(); // row 5: inf on a valid token
  m[9 * L + 1] = 2;                                                        // row 9: mask entry 2
  const auto d_bad_m = up(m);
  const auto d_bad_h = up(h);
  CHECK(what_of([&] {
          hir::sequence_entropy(hir::device, dview(d_bad_h), dview(d_bad_m), L, hir::view(d_sum), hir::view(d_len));
        }) == "hir::sequence_entropy: row 5 has a non-finite value on a valid token");
  m[5 * L + 7] = 0;
  const auto d_bad_m2 = up(m);
  CHECK(what_of([&] {
          hir::sequence_entropy(hir::device, dview(d_bad_h), dview(d_bad_m2), L, hir::view(d_sum), hir::view(d_len));
        }) == "hir::sequence_entropy: row 9 has a token mask entry other than 0 or 1");
}

TEST_CASE("device select_replays: equal keys fall to the lower index, like the CPU") {
  // 40 candidates of 4 prompts, all eligible with equal keys under diversity_only: top-K must be the lowest indices
  // (globally, and per prompt for the quota allocations).
  const std::size_t n = 40, B = 4;
  std::vector<std::int64_t> prompt(n), len(n, 4);
  std::vector<std::uint64_t> masks(n, 0x1);
  std::vector<std::uint8_t> counts(n, 2);
  std::vector<double> ent(n, 2.0);
  for (std::size_t i = 0; i < n; ++i)
    prompt[i] = static_cast<std::int64_t>((i * 7) % B);
  ent[n - 1] = -0.0; // −0 and +0 must tie too
  ent[n - 2] = 0.0;
  const auto d_prompt = up(prompt), d_len = up(len);
  const auto d_masks = up(masks);
  const auto d_counts = up(counts);
  const auto d_ent = up(ent);
  hir::replay_candidates_ref<double, hir::device_space> c;
  c.num_prompts = B;
  c.prompt = dview(d_prompt), c.length = dview(d_len), c.entropy_sum = dview(d_ent);
  c.verdicts = {dview(d_masks), dview(d_counts)};
  hir::replay_select_options o;
  o.ranking = hir::replay_ranking::diversity_only;
  o.budget_kind = hir::replay_budget_kind::absolute, o.budget = 12;
  auto s = hir::select_replays(hir::device, c, 1, o);
  std::vector<std::int64_t> expect(12);
  for (std::size_t i = 0; i < 12; ++i)
    expect[i] = static_cast<std::int64_t>(i);
  CHECK(hir::to_host(s.indices) == expect);
  o.allocation = hir::replay_allocation::top_k_per_group;
  o.budget_kind = hir::replay_budget_kind::per_prompt, o.replays_per_prompt = 2;
  s = hir::select_replays(hir::device, c, 1, o);
  std::vector<std::int64_t> got = hir::to_host(s.indices), want;
  std::vector<int> taken(B, 0);
  for (std::size_t i = 0; i < n; ++i)
    if (taken[static_cast<std::size_t>(prompt[i])]++ < 2)
      want.push_back(static_cast<std::int64_t>(i));
  CHECK(got == want);
  // the two zero-entropy candidates rank last; with a budget of n − 1 only the higher index of the tie is dropped
  o.allocation = hir::replay_allocation::top_k_global;
  o.budget_kind = hir::replay_budget_kind::absolute, o.budget = n - 1;
  s = hir::select_replays(hir::device, c, 1, o);
  got = hir::to_host(s.indices);
  REQUIRE(got.size() == n - 1);
  CHECK(got.back() == static_cast<std::int64_t>(n - 2));
}
