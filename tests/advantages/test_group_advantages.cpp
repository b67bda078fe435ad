// SPDX-License-Identifier: Apache-2.0
// group_advantages on every backend: worked values of rl-reference.md §2.4 for each preset, random ragged groups
// against the naive double reference, properties (zero sum, order invariance, exact zeros), and bad input.
#include "group_presets.hpp"
#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/reference.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <numeric>
#include <random>

namespace {

template <class B, class T>
std::vector<T> run(const std::vector<T>& scores, const hir::group_layout& layout, hir::group_advantage_options opt) {
  auto d_scores = hir::test::upload<B>(scores);
  hir::vector<T, B> d_out(scores.size());
  hir::group_storage<B> groups(B{}, layout);
  hir::group_advantages(B{}, hir::span_for<const T, B>(hir::view(d_scores)), groups.ref(), hir::view(d_out), opt);
  return hir::to_host(d_out);
}

const auto& all_presets = hir::test::group_presets();
using hir::test::to_ref;

} // namespace

TEST_CASE_TEMPLATE("group_advantages: worked values of rl-reference 2.4", B, HIR_TEST_BACKEND) {
  const std::vector<double> r = {1, 0, 0, 0};
  const auto layout = hir::group_layout::uniform(4, 4);
  struct worked {
    hir::group_advantage_options opt;
    double first, rest, tol;
  };
  const worked cases[] = {
      {hir::presets::verl_grpo(), 1.499997, -0.499999, 1e-6},
      {hir::presets::trl_grpo(), 1.499700, -0.499900, 1e-6},
      {hir::presets::openrlhf_group_norm(), 1.4999999970, -0.4999999990, 1e-10},
      {hir::presets::verl_dr_grpo(), 0.75, -0.25, 1e-15},
      {hir::presets::openrlhf_dr_grpo(), 0.75, -0.25, 1e-15},
      {hir::presets::verl_rloo(), 1.0, -1.0 / 3.0, 1e-15},
      {hir::presets::openrlhf_rloo(), 1.0, -1.0 / 3.0, 1e-15},
  };
  for (const auto& c : cases) {
    const auto a = run<B>(r, layout, c.opt);
    CHECK(std::fabs(a[0] - c.first) <= c.tol);
    for (int i = 1; i < 4; ++i)
      CHECK(std::fabs(a[static_cast<std::size_t>(i)] - c.rest) <= c.tol);
  }
  // GDPO's motivating collapse (TRL eps): groups (0, 1) and (0, 2) both give (−0.707, +0.707).
  const auto a = run<B>(std::vector<double>{0, 1, 0, 2}, hir::group_layout::uniform(4, 2), hir::presets::trl_grpo());
  for (int g = 0; g < 2; ++g) {
    CHECK(std::fabs(a[2 * g] + 0.70705) < 1e-4);
    CHECK(std::fabs(a[2 * g + 1] - 0.70705) < 1e-4);
  }
}

TEST_CASE_TEMPLATE("group_advantages: random ragged groups match the double reference", B, HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(1));
  for (int trial = 0; trial < 40; ++trial) {
    // Ragged sizes 1..9 (singletons included), members shuffled in batch order, some constant groups.
    const int num_groups = 1 + static_cast<int>(rng() % 30);
    std::vector<std::int64_t> ids;
    std::vector<double> s;
    for (int g = 0; g < num_groups; ++g) {
      const int n = 1 + static_cast<int>(rng() % 9);
      const bool constant = rng() % 5 == 0;
      const bool binary = rng() % 2 == 0;
      const double c = std::uniform_real_distribution<double>(-3, 3)(rng);
      for (int k = 0; k < n; ++k) {
        ids.push_back(1000 + 7 * g);
        s.push_back(constant ? c
                    : binary ? static_cast<double>(rng() % 2)
                             : std::uniform_real_distribution<double>(-5, 5)(rng));
      }
    }
    std::vector<std::size_t> perm(s.size());
    std::iota(perm.begin(), perm.end(), 0);
    if (trial % 2)
      std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<double> ps(s.size());
    std::vector<std::int64_t> pids(s.size());
    for (std::size_t i = 0; i < s.size(); ++i) {
      ps[i] = s[perm[i]];
      pids[i] = ids[perm[i]];
    }
    const auto layout = hir::group_layout::from_ids(pids);
    for (const auto& preset : all_presets) {
      const char* name = preset.first;
      const auto& opt = preset.second;
      CAPTURE(name);
      CAPTURE(trial);
      auto o = opt;
      if (o.singleton == hir::singleton_policy::error)
        o.singleton = hir::singleton_policy::zero;
      const auto expected = hir::ref::group_advantages(ps, pids, to_ref(o));
      HIR_CHECK_CLOSE(run<B>(ps, layout, o), expected, 1e-12, 1e-10);
      std::vector<float> fs(ps.begin(), ps.end());
      std::vector<double> fs_d(fs.begin(), fs.end());
      const auto expected_f = hir::ref::group_advantages(fs_d, pids, to_ref(o));
      HIR_CHECK_CLOSE(run<B>(fs, layout, o), expected_f, 2e-6, 2e-6);
    }
  }
}

TEST_CASE_TEMPLATE("group_advantages: properties", B, HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(2));
  std::vector<std::int64_t> sizes;
  std::vector<float> s;
  for (int g = 0; g < 50; ++g) {
    sizes.push_back(2 + static_cast<std::int64_t>(rng() % 15));
    for (std::int64_t k = 0; k < sizes.back(); ++k)
      s.push_back(std::uniform_real_distribution<float>(-1, 1)(rng));
  }
  const auto layout = hir::group_layout::from_sizes(sizes);

  SUBCASE("mean-baseline advantages sum to zero per group") {
    for (auto opt : {hir::presets::verl_grpo(), hir::presets::trl_dr_grpo(), hir::presets::verl_rloo()}) {
      const auto a = run<B>(s, layout, opt);
      auto r = layout.ref();
      for (std::size_t g = 0; g < layout.num_groups(); ++g) {
        double sum = 0, mag = 0;
        for (std::size_t k = r.begin(g); k < r.end(g); ++k) {
          sum += a[k];
          mag += std::fabs(a[k]);
        }
        CHECK(std::fabs(sum) <= 1e-5 * (1 + mag));
      }
    }
  }
  SUBCASE("invariant to the order of groups") {
    // Reverse the order of the groups: each sample's advantage is unchanged.
    std::vector<std::int64_t> rsizes(sizes.rbegin(), sizes.rend());
    std::vector<float> rs;
    auto r = layout.ref();
    for (std::size_t g = layout.num_groups(); g-- > 0;)
      for (std::size_t k = r.begin(g); k < r.end(g); ++k)
        rs.push_back(s[k]);
    const auto a = run<B>(s, layout, hir::presets::verl_grpo());
    const auto rlayout = hir::group_layout::from_sizes(rsizes);
    const auto ra = run<B>(rs, rlayout, hir::presets::verl_grpo());
    std::vector<float> back;
    auto rr = rlayout.ref();
    for (std::size_t g = layout.num_groups(); g-- > 0;)
      for (std::size_t k = rr.begin(g); k < rr.end(g); ++k)
        back.push_back(ra[k]);
    CHECK(back == a); // same kernel on the same group values: bitwise equal
  }
  SUBCASE("constant groups give exact zeros, also for non-dyadic values") {
    std::vector<float> c;
    for (float v : {0.35f, 0.4f, -1.7f, 0.1f})
      for (int k = 0; k < 16; ++k)
        c.push_back(v);
    for (auto opt : {hir::presets::verl_grpo(), hir::presets::verl_grpo_vectorized(), hir::presets::trl_grpo(),
                     hir::presets::openrlhf_group_norm(), hir::presets::verl_rloo()}) {
      for (std::size_t g : {8u, 16u}) {
        const auto a = run<B>(c, hir::group_layout::uniform(c.size(), g), opt);
        CHECK(std::all_of(a.begin(), a.end(), [](float v) { return v == 0.0f; }));
      }
    }
  }
  SUBCASE("output may alias the input") {
    auto d = hir::test::upload<B>(s);
    hir::group_storage<B> groups(B{}, layout);
    hir::group_advantages(B{}, hir::span_for<const float, B>(hir::view(d)), groups.ref(), hir::view(d),
                          hir::presets::trl_grpo());
    CHECK(hir::to_host(d) == run<B>(s, layout, hir::presets::trl_grpo()));
  }
}

TEST_CASE_TEMPLATE("group_advantages: singletons and bad input", B, HIR_TEST_BACKEND) {
  const std::vector<double> s = {0.5, 1, 0, 2.0};
  const std::vector<std::int64_t> sizes = {1, 2, 1};
  const auto layout = hir::group_layout::from_sizes(sizes);
  {
    const auto a = run<B>(s, layout, hir::presets::trl_grpo()); // zero
    CHECK(a[0] == 0.0);
    CHECK(a[3] == 0.0);
  }
  {
    const auto a = run<B>(s, layout, hir::presets::verl_grpo()); // raw score / (1 + eps)
    CHECK(a[0] == doctest::Approx(0.5 / (1 + 1e-6)).epsilon(1e-15));
    CHECK(a[3] == doctest::Approx(2.0 / (1 + 1e-6)).epsilon(1e-15));
    const auto d = run<B>(s, layout, hir::presets::verl_dr_grpo()); // raw score
    CHECK(d[0] == 0.5);
  }
  auto d_s = hir::test::upload<B>(s);
  const std::vector<double> sentinel = {9, 9, 9, 9};
  auto d_out = hir::test::upload<B>(sentinel);
  hir::group_storage<B> groups(B{}, layout);
  const auto cs = hir::span_for<const double, B>(hir::view(d_s));
  CHECK_THROWS_WITH_AS(hir::group_advantages(B{}, cs, groups.ref(), hir::view(d_out), hir::presets::openrlhf_rloo()),
                       doctest::Contains("hir::group_advantages: "), hir::invalid_argument);
  CHECK(hir::to_host(d_out) == sentinel); // nothing written

  std::vector<double> bad = s;
  bad[2] = std::numeric_limits<double>::quiet_NaN();
  auto d_bad = hir::test::upload<B>(bad);
  CHECK_THROWS_WITH_AS(
      hir::group_advantages(B{}, hir::span_for<const double, B>(hir::view(d_bad)), groups.ref(), hir::view(d_out)),
      "hir::group_advantages: scores[2] = nan is not finite", hir::invalid_argument);
  bad[2] = -std::numeric_limits<double>::infinity();
  d_bad = hir::test::upload<B>(bad);
  CHECK_THROWS_WITH_AS(
      hir::group_advantages(B{}, hir::span_for<const double, B>(hir::view(d_bad)), groups.ref(), hir::view(d_out)),
      "hir::group_advantages: scores[2] = -inf is not finite", hir::invalid_argument);
  CHECK(hir::to_host(d_out) == sentinel);

  hir::vector<double, B> short_out(3);
  CHECK_THROWS_WITH_AS(hir::group_advantages(B{}, cs, groups.ref(), hir::view(short_out)),
                       "hir::group_advantages: out.size() = 3 does not match scores.size() = 4", hir::invalid_argument);
  hir::group_storage<B> wrong(B{}, hir::group_layout::uniform(6, 2));
  CHECK_THROWS_WITH_AS(hir::group_advantages(B{}, cs, wrong.ref(), hir::view(d_out)),
                       "hir::group_advantages: scores.size() = 4 does not match groups.num_samples = 6",
                       hir::invalid_argument);
  auto o = hir::presets::verl_grpo();
  o.epsilon = -1;
  CHECK_THROWS_AS(hir::group_advantages(B{}, cs, groups.ref(), hir::view(d_out), o), hir::invalid_argument);

  // Layout factories reject empty groups and bad sizes.
  CHECK_THROWS_WITH_AS(hir::group_layout::uniform(10, 4),
                       "hir::group_layout::uniform: num_samples = 10 is not a multiple of group_size = 4",
                       hir::invalid_argument);
  const std::vector<std::int64_t> empty_group = {2, 0, 1};
  CHECK_THROWS_WITH_AS(hir::group_layout::from_sizes(empty_group),
                       "hir::group_layout::from_sizes: sizes[1] = 0 (every group needs a sample)",
                       hir::invalid_argument);
  const std::vector<std::int64_t> offs = {0, 2, 2};
  CHECK_THROWS_AS(hir::group_layout::from_offsets(offs), hir::invalid_argument);

  // An empty batch is fine and writes nothing.
  hir::vector<double, B> none(0);
  hir::group_storage<B> no_groups(B{}, hir::group_layout::from_sizes(std::vector<std::int64_t>{}));
  hir::group_advantages(B{}, hir::span_for<const double, B>(hir::view(none)), no_groups.ref(), hir::view(none));
}
