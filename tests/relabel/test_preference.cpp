// SPDX-License-Identifier: Apache-2.0
// Dual-level preference losses: pairs built from hand-worked batches, DPO (sigmoid, label smoothing) and IPO values
// against naive formulas, gradients by central finite differences (per row and through sequence_logp to tokens),
// and bad input.
#include "relabel_support.hpp"

#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <random>

namespace {

using i64 = std::vector<std::int64_t>;

using hir::test::pair_rows;
using hir::test::pairs_of;

/// Naive dual-level loss: per-pair formulas, level means, weights.
double naive_loss(const i64& c, const i64& r, const std::vector<std::uint8_t>& lv, const std::vector<double>& lp,
                  const std::vector<double>& ref, const hir::preference_loss_options& o) {
  double sum[2] = {0, 0}, n[2] = {0, 0};
  for (std::size_t j = 0; j < c.size(); ++j) {
    const auto a = static_cast<std::size_t>(c[j]), b = static_cast<std::size_t>(r[j]);
    const double h = (lp[a] - (ref.empty() ? 0 : ref[a])) - (lp[b] - (ref.empty() ? 0 : ref[b]));
    double l;
    if (o.kind == hir::preference_loss_kind::ipo) {
      l = (h - 1 / (2 * o.beta)) * (h - 1 / (2 * o.beta));
    } else {
      // −log σ(z) = log(1 + e^{−z}), −log σ(−z) = log(1 + e^{z}), z = βh (|z| < 30 here)
      const double z = o.beta * h;
      l = (1 - o.label_smoothing) * std::log1p(std::exp(-z)) + o.label_smoothing * std::log1p(std::exp(z));
    }
    sum[lv[j]] += l;
    n[lv[j]] += 1;
  }
  return o.response_weight * (n[0] ? sum[0] / n[0] : 0) + o.instruction_weight * (n[1] ? sum[1] / n[1] : 0);
}

template <class B>
hir::preference_loss_result loss_of(const hir::preference_pairs_ref<hir::memory_space_t<B>>& p,
                                    const std::vector<double>& lp, const std::vector<double>& ref,
                                    std::vector<double>* grad, const hir::preference_loss_options& o) {
  const auto d_lp = hir::test::upload<B>(lp), d_ref = hir::test::upload<B>(ref);
  hir::vector<double, B> d_g(grad ? lp.size() : 0);
  const auto res = hir::preference_loss(B{}, p, hir::span_for<const double, B>(hir::view(d_lp)),
                                        hir::span_for<const double, B>(hir::view(d_ref)), hir::view(d_g), o);
  if (grad)
    *grad = hir::to_host(d_g);
  return res;
}

} // namespace

TEST_CASE_TEMPLATE("build_preference_pairs: hand-worked batches", B, HIR_TEST_BACKEND) {
  // prompt 0: rows 0, 1 succeed, rows 2, 3 fail; prompt 1: rows 4, 5 fail (no pair); row 6 replays row 2.
  pair_rows h{{0, 0, 0, 0, 1, 1, 0}, {0, 1, 2, 3, 4, 5, 2}, {1, 1, 0, 0, 0, 0, 1}, {0, 0, 0, 0, 0, 0, 1}};
  hir::preference_pair_options o;
  auto p = pairs_of<B>(h, o);
  CHECK(hir::to_host(p.chosen) == i64{0, 0, 1, 1, 6});
  CHECK(hir::to_host(p.rejected) == i64{2, 3, 2, 3, 2});
  CHECK(hir::to_host(p.level) == std::vector<std::uint8_t>{0, 0, 0, 0, 1});
  CHECK(p.num_response == 4);
  CHECK(p.num_instruction == 1);
  o.pairing = hir::response_pairing::round_robin;
  p = pairs_of<B>(h, o);
  CHECK(hir::to_host(p.chosen) == i64{0, 1, 6});
  CHECK(hir::to_host(p.rejected) == i64{2, 3, 2});
  o.response_level = false;
  p = pairs_of<B>(h, o);
  CHECK(hir::to_host(p.chosen) == i64{6});
  o.response_level = true;
  o.instruction_level = false;
  o.success_threshold = 0.5; // rows with reward ≥ 0.5 succeed: the same here
  p = pairs_of<B>(h, o);
  CHECK(hir::to_host(p.level) == std::vector<std::uint8_t>{0, 0});

  // From build_replay_batch (authors' placement): r0 success, r1 and r2 fail (prompt 0); r3, r4 fail, r5 success
  // (prompt 1); replays of r4 and r1 follow their sources.
  hir::test::host_rollouts r;
  r.N = 6;
  r.L = 1;
  r.B = 2;
  r.prompt = {0, 0, 0, 1, 1, 1};
  r.masks = {0b111, 0b011, 0b000, 0b01, 0b10, 0b11};
  r.counts = {3, 3, 3, 2, 2, 2};
  r.mask = {1, 1, 1, 1, 1, 1};
  r.old_logp = {-1, -1, -1, -1, -1, -1};
  hir::test::backend_rollouts<B> d(r);
  hir::replay_batch_options bo;
  bo.placement = hir::replay_placement::after_source;
  const auto idx = hir::test::upload<B>(i64{1, 4});
  const auto batch = hir::build_replay_batch(B{}, d.ref(), hir::span_for<const std::int64_t, B>(hir::view(idx)), bo);
  // rows: r0 0, r1 1, r1' 2, r2 3, r3 4, r4 5, r4' 6, r5 7
  const auto q = hir::build_preference_pairs(B{}, batch.ref(), hir::preference_pair_options{});
  CHECK(hir::to_host(q.chosen) == i64{0, 0, 7, 7, 2, 6});
  CHECK(hir::to_host(q.rejected) == i64{1, 3, 4, 5, 1, 5});
  CHECK(hir::to_host(q.level) == std::vector<std::uint8_t>{0, 0, 0, 0, 1, 1});
}

TEST_CASE_TEMPLATE("preference_loss: hand-worked values", B, HIR_TEST_BACKEND) {
  // two rows: h = (−1 − (−1.5)) − (−2 − (−1.5)) = 1
  const auto c = hir::test::upload<B>(i64{0}), r = hir::test::upload<B>(i64{1});
  const auto lv = hir::test::upload<B>(std::vector<std::uint8_t>{0});
  const hir::preference_pairs_ref<hir::memory_space_t<B>> p{hir::view(c), hir::view(r), hir::view(lv)};
  std::vector<double> g;
  hir::preference_loss_options o;
  o.beta = 0.5;
  auto res = loss_of<B>(p, {-1.0, -2.0}, {-1.5, -1.5}, &g, o);
  const double s = 1 / (1 + std::exp(-0.5)); // σ(βh)
  CHECK(res.loss == doctest::Approx(-std::log(s)).epsilon(1e-14));
  CHECK(res.response_loss == doctest::Approx(-std::log(s)).epsilon(1e-14));
  CHECK(res.instruction_loss == 0.0);
  CHECK(res.response_pairs == 1);
  CHECK(res.response_accuracy == 1.0);
  CHECK(res.response_margin == doctest::Approx(0.5));
  CHECK(g[0] == doctest::Approx(-0.5 * (1 - s)).epsilon(1e-14));
  CHECK(g[1] == doctest::Approx(0.5 * (1 - s)).epsilon(1e-14));
  // label smoothing 0.1: −0.9 log σ(0.5) − 0.1 log σ(−0.5)
  o.label_smoothing = 0.1;
  res = loss_of<B>(p, {-1.0, -2.0}, {-1.5, -1.5}, &g, o);
  CHECK(res.loss == doctest::Approx(-0.9 * std::log(s) - 0.1 * std::log(1 - s)).epsilon(1e-14));
  CHECK(g[0] == doctest::Approx(0.5 * (-0.9 * (1 - s) + 0.1 * s)).epsilon(1e-14));
  // IPO: (1 − 1/(2·0.5))² = 0, gradient 0; with β = 0.25: (1 − 2)² = 1, dL/dh = −2
  o = {};
  o.kind = hir::preference_loss_kind::ipo;
  o.beta = 0.5;
  res = loss_of<B>(p, {-1.0, -2.0}, {-1.5, -1.5}, &g, o);
  CHECK(res.loss == doctest::Approx(0.0));
  o.beta = 0.25;
  o.response_weight = 3;
  res = loss_of<B>(p, {-1.0, -2.0}, {-1.5, -1.5}, &g, o);
  CHECK(res.loss == doctest::Approx(3.0));
  CHECK(g[0] == doctest::Approx(-6.0));
  CHECK(g[1] == doctest::Approx(6.0));
  // empty ref_logp = reference-free: h = −1 − (−2) = 1 as well
  o.response_weight = 1;
  res = loss_of<B>(p, {-1.0, -2.0}, {}, nullptr, o);
  CHECK(res.loss == doctest::Approx(1.0));
}

TEST_CASE_TEMPLATE("preference_loss: random pairs match the naive loss, gradients match finite differences", B,
                   HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(31));
  std::uniform_real_distribution<double> d(-30, -1);
  for (int trial = 0; trial < 20; ++trial) {
    const std::size_t R = 3 + rng() % 20, P = 1 + rng() % 40;
    i64 c(P), r(P);
    std::vector<std::uint8_t> lv(P);
    for (std::size_t j = 0; j < P; ++j) {
      c[j] = static_cast<std::int64_t>(rng() % R);
      r[j] = static_cast<std::int64_t>(rng() % R); // rows repeat across pairs: gradients accumulate
      lv[j] = static_cast<std::uint8_t>(rng() % 2);
    }
    std::vector<double> lp(R), ref(R);
    for (auto& v : lp)
      v = d(rng);
    for (auto& v : ref)
      v = d(rng);
    const auto dc = hir::test::upload<B>(c), dr = hir::test::upload<B>(r);
    const auto dl = hir::test::upload<B>(lv);
    const hir::preference_pairs_ref<hir::memory_space_t<B>> p{hir::view(dc), hir::view(dr), hir::view(dl)};
    hir::preference_loss_options o;
    o.kind = trial % 3 == 2 ? hir::preference_loss_kind::ipo : hir::preference_loss_kind::sigmoid;
    o.beta = trial % 3 == 2 ? 0.05 + 0.01 * trial : 0.02 + 0.02 * trial;
    o.label_smoothing = trial % 3 == 1 ? 0.2 : 0.0;
    o.response_weight = 0.3 + 0.1 * (trial % 4);
    o.instruction_weight = 1.7 - 0.2 * (trial % 5);
    CAPTURE(trial);
    std::vector<double> g;
    const auto res = loss_of<B>(p, lp, ref, &g, o);
    CHECK(res.loss == doctest::Approx(naive_loss(c, r, lv, lp, ref, o)).epsilon(1e-12));
    std::vector<double> fd(R);
    const double eps = 1e-5;
    for (std::size_t i = 0; i < R; ++i) {
      auto up = lp, dn = lp;
      up[i] += eps;
      dn[i] -= eps;
      fd[i] = (naive_loss(c, r, lv, up, ref, o) - naive_loss(c, r, lv, dn, ref, o)) / (2 * eps);
    }
    HIR_CHECK_CLOSE(g, fd, 1e-7, 1e-6);
    // the library's own loss under the same perturbation (four-point stencil), for a few rows
    for (std::size_t i = 0; i < std::min<std::size_t>(R, 4); ++i) {
      auto at = [&](double delta) {
        auto x = lp;
        x[i] += delta;
        return loss_of<B>(p, x, ref, nullptr, o).loss;
      };
      const double four = (-at(2 * eps) + 8 * at(eps) - 8 * at(-eps) + at(-2 * eps)) / (12 * eps);
      CHECK(std::fabs(g[i] - four) <= 1e-7 + 1e-6 * std::fabs(four));
    }
  }
}

TEST_CASE_TEMPLATE("sequence_logp: sums, means and the token gradient (chain rule by finite differences)", B,
                   HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(32));
  const std::size_t R = 6, L = 5;
  std::vector<double> lp(R * L);
  std::vector<std::uint8_t> mask(R * L);
  for (std::size_t i = 0; i < R * L; ++i) {
    lp[i] = -static_cast<double>(rng() % 1000) / 250.0;
    mask[i] = (i % L) < 1 + (i / L) % L ? 1 : 0;
  }
  mask[5 * L + 0] = 0; // row 5: no valid token (mean → 0)
  for (std::size_t t = 0; t < L; ++t)
    mask[5 * L + t] = 0;
  lp[4 * L + 4] = std::nan(""); // padding may hold anything
  mask[4 * L + 4] = 0;
  const auto dlp = hir::test::upload<B>(lp);
  const auto dm = hir::test::upload<B>(mask);
  for (auto red : {hir::sequence_reduction::sum, hir::sequence_reduction::mean}) {
    hir::vector<double, B> out(R);
    hir::sequence_logp(B{}, hir::span_for<const double, B>(hir::view(dlp)),
                       hir::span_for<const std::uint8_t, B>(hir::view(dm)), L, hir::view(out), red);
    const auto s = hir::to_host(out);
    for (std::size_t r = 0; r < R; ++r) {
      double sum = 0, n = 0;
      for (std::size_t t = 0; t < L; ++t)
        if (mask[r * L + t]) {
          sum += lp[r * L + t];
          n += 1;
        }
      CHECK(s[r] == doctest::Approx(red == hir::sequence_reduction::sum ? sum : (n ? sum / n : 0.0)));
    }
    // chain: loss(token logp) = preference_loss(sequence_logp(token logp)); d/dtoken by finite differences
    const auto c = hir::test::upload<B>(i64{0, 2, 1}), rj = hir::test::upload<B>(i64{1, 3, 4});
    const auto lv = hir::test::upload<B>(std::vector<std::uint8_t>{0, 1, 1});
    const hir::preference_pairs_ref<hir::memory_space_t<B>> p{hir::view(c), hir::view(rj), hir::view(lv)};
    hir::preference_loss_options o;
    o.beta = 0.3;
    auto total = [&](const std::vector<double>& x) {
      const auto dx = hir::test::upload<B>(x);
      hir::vector<double, B> seq(R);
      hir::sequence_logp(B{}, hir::span_for<const double, B>(hir::view(dx)),
                         hir::span_for<const std::uint8_t, B>(hir::view(dm)), L, hir::view(seq), red);
      return loss_of<B>(p, hir::to_host(seq), {}, nullptr, o).loss;
    };
    std::vector<double> gseq;
    loss_of<B>(p, s, {}, &gseq, o);
    const auto dg = hir::test::upload<B>(gseq);
    hir::vector<double, B> gtok(R * L);
    hir::sequence_logp_backward(B{}, hir::span_for<const double, B>(hir::view(dg)),
                                hir::span_for<const std::uint8_t, B>(hir::view(dm)), L, hir::view(gtok), red);
    const auto gt = hir::to_host(gtok);
    for (std::size_t i = 0; i < R * L; ++i) {
      if (!mask[i]) {
        CHECK(gt[i] == 0.0);
        continue;
      }
      auto up = lp, dn = lp;
      up[i] += 1e-6;
      dn[i] -= 1e-6;
      const double fd = (total(up) - total(dn)) / 2e-6;
      CHECK(std::fabs(gt[i] - fd) <= 1e-7 + 1e-5 * std::fabs(fd));
    }
  }
}

TEST_CASE_TEMPLATE("preference losses: bad input gives clear errors", B, HIR_TEST_BACKEND) {
  const auto c = hir::test::upload<B>(i64{0, 1}), r = hir::test::upload<B>(i64{1, 2});
  const auto lv = hir::test::upload<B>(std::vector<std::uint8_t>{0, 1});
  const hir::preference_pairs_ref<hir::memory_space_t<B>> p{hir::view(c), hir::view(r), hir::view(lv)};
  hir::preference_loss_options o;
  auto throws = [&](const hir::preference_pairs_ref<hir::memory_space_t<B>>& pp, const std::vector<double>& lp,
                    const hir::preference_loss_options& oo, const char* text) {
    std::vector<double> g;
    CHECK_THROWS_WITH_AS(loss_of<B>(pp, lp, {}, &g, oo), doctest::Contains(text), hir::invalid_argument);
  };
  CHECK_NOTHROW(loss_of<B>(p, {-1, -2, -3}, {}, nullptr, o));
  throws(p, {-1, -2}, o, "pair 1 names a row outside [0, rows)");
  throws(p, {}, o, "hir::preference_loss: the batch is empty");
  throws(p, {-1, std::nan(""), -3}, o, "logp[1] is not finite");
  throws(hir::preference_pairs_ref<hir::memory_space_t<B>>{}, {-1, -2, -3}, o, "there are no preference pairs");
  const auto bad_lv = hir::test::upload<B>(std::vector<std::uint8_t>{0, 2});
  throws({hir::view(c), hir::view(r), hir::view(bad_lv)}, {-1, -2, -3}, o, "pair 1 has a level other than 0");
  auto oo = o;
  oo.beta = 0;
  throws(p, {-1, -2, -3}, oo, "beta = 0 must be finite and > 0");
  oo = o;
  oo.label_smoothing = 0.5;
  throws(p, {-1, -2, -3}, oo, "label_smoothing = 0.5 must be in [0, 0.5)");
  oo.kind = hir::preference_loss_kind::ipo;
  oo.label_smoothing = 0.1;
  throws(p, {-1, -2, -3}, oo, "applies to the sigmoid loss only");
  oo = o;
  oo.instruction_weight = -1;
  throws(p, {-1, -2, -3}, oo, "instruction_weight = -1 must be finite and >= 0");
  {
    auto lp = hir::test::upload<B>(std::vector<double>{-1, -2, -3});
    CHECK_THROWS_WITH_AS(hir::preference_loss(B{}, p, hir::span_for<const double, B>(hir::view(lp)),
                                              hir::span_for<const double, B>{}, hir::view(lp), o),
                         doctest::Contains("grad overlaps logp or ref_logp"), hir::invalid_argument);
    oo = o;
    oo.kind = static_cast<hir::preference_loss_kind>(7);
    throws(p, {-1, -2, -3}, oo, "kind = 7 is not a preference_loss_kind");
  }
  // pair building
  pair_rows h{{0, 0, 1}, {0, 1, 0}, {1, 0, 1}, {0, 0, 1}}; // row 2 replays row 0 of another prompt
  CHECK_THROWS_WITH_AS(pairs_of<B>(h, {}), doctest::Contains("row 2 has a non-finite reward"), hir::invalid_argument);
  CHECK_THROWS_WITH_AS(pairs_of<B>(pair_rows{}, {}), doctest::Contains("the batch is empty"), hir::invalid_argument);
  // sequence_logp
  const auto lp = hir::test::upload<B>(std::vector<double>{-1, -2, -3, -4});
  const auto m = hir::test::upload<B>(std::vector<std::uint8_t>{1, 1, 1, 3});
  hir::vector<double, B> out(2);
  CHECK_THROWS_WITH_AS(hir::sequence_logp(B{}, hir::span_for<const double, B>(hir::view(lp)),
                                          hir::span_for<const std::uint8_t, B>(hir::view(m)), 2, hir::view(out)),
                       doctest::Contains("row 1 has a token mask entry other than 0 or 1"), hir::invalid_argument);
  CHECK_THROWS_WITH_AS(hir::sequence_logp(B{}, hir::span_for<const double, B>(hir::view(lp)),
                                          hir::span_for<const std::uint8_t, B>(hir::view(m)), 3, hir::view(out)),
                       doctest::Contains("mask.size() = 4 is not a multiple of length = 3"), hir::invalid_argument);
}
