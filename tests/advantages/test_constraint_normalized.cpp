// SPDX-License-Identifier: Apache-2.0
// constraint_normalized_advantages (GDPO): the collapse example of rl-reference.md §2.4 (sum-then-normalize maps
// "one more constraint met" and "two more" to the same advantages; per-constraint normalization does not), random
// ragged groups against the naive double reference, exact zeros, and bad input (nothing written).
#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/reference.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>

namespace {

hir::verdict_batch make_verdicts(const std::vector<std::vector<bool>>& v) {
  hir::verdict_batch b;
  for (const auto& row : v) {
    std::uint64_t m = 0;
    for (std::size_t c = 0; c < row.size(); ++c)
      m |= static_cast<std::uint64_t>(row[c]) << c;
    b.push_back(m, row.size());
  }
  return b;
}

template <class B, class T = double>
std::vector<T> run(const std::vector<std::vector<bool>>& v, const std::vector<std::int64_t>& ids,
                   const std::vector<double>& w, const hir::constraint_normalized_options& o) {
  const auto vb = make_verdicts(v);
  const auto layout = hir::group_layout::from_ids(ids);
  std::vector<T> out(v.size(), T(-7));
  if (w.empty())
    hir::constraint_normalized_advantages(B{}, vb.ref(), layout.ref(), hir::view(out), o);
  else
    hir::constraint_normalized_advantages(B{}, vb.ref(), layout.ref(), hir::view(w), hir::view(out), o);
  return out;
}

hir::ref::gdpo_config to_ref(const hir::constraint_normalized_options& o) {
  hir::ref::gdpo_config c;
  c.eps = o.epsilon;
  c.unbiased = o.std == hir::std_kind::unbiased;
  c.singleton =
      o.singleton == hir::singleton_policy::raw_score ? hir::ref::gdpo_config::raw : hir::ref::gdpo_config::zero;
  c.batch_normalize = o.batch_normalize;
  c.batch_eps = o.batch_epsilon;
  c.batch_unbiased = o.batch_std == hir::std_kind::unbiased;
  return c;
}

} // namespace

TEST_CASE_TEMPLATE("constraint_normalized: one more constraint met is not flattened (GDPO vs GRPO)", B,
                   HIR_TEST_BACKEND) {
  // Two groups of two samples with two constraints. Group A: (none met, one met); group B: (none, both).
  const std::vector<std::vector<bool>> v = {{false, false}, {true, false}, {false, false}, {true, true}};
  const std::vector<std::int64_t> ids = {0, 0, 1, 1};
  // GRPO on the summed reward (0, 1) and (0, 2) gives (−0.707, +0.707) in both groups (TRL eps).
  const std::vector<double> summed = {0, 1, 0, 2};
  std::vector<double> grpo(4);
  const auto layout = hir::group_layout::from_ids(ids);
  hir::group_advantages(B{}, hir::view(summed), layout.ref(), hir::view(grpo), hir::presets::trl_grpo());
  CHECK(grpo[1] == doctest::Approx(grpo[3]).epsilon(1e-4)); // equal up to ε = 1e-4
  CHECK(grpo[1] == doctest::Approx(1.0 / std::sqrt(2.0) / (1.0 + 1e-4 * std::sqrt(2.0))).epsilon(1e-12));
  // GDPO: per-constraint z-scores sum to (−z, z) in group A and (−2z, 2z) in group B, z = (1/2)/(√½ + 1e-4).
  const double z = 0.5 / (std::sqrt(0.5) + 1e-4);
  hir::constraint_normalized_options no_batch;
  no_batch.batch_normalize = false;
  const auto r = run<B>(v, ids, {}, no_batch);
  HIR_CHECK_CLOSE(r, (std::vector<double>{-z, z, -2 * z, 2 * z}), 1e-15, 1e-14);
  // With TRL's batch normalization: mean 0, unbiased std √(10 z²/3).
  const auto a = run<B>(v, ids, {}, hir::presets::trl_gdpo());
  const double sd = std::sqrt(10.0 * z * z / 3.0);
  HIR_CHECK_CLOSE(a,
                  (std::vector<double>{-z / (sd + 1e-4), z / (sd + 1e-4), -2 * z / (sd + 1e-4), 2 * z / (sd + 1e-4)}),
                  1e-15, 1e-13);
  CHECK(a[3] == doctest::Approx(2.0 * a[1]).epsilon(1e-12)); // two more met: twice the advantage of one more
}

TEST_CASE_TEMPLATE("constraint_normalized: weights, constant columns, singletons", B, HIR_TEST_BACKEND) {
  hir::constraint_normalized_options o;
  o.batch_normalize = false;
  // Column 1 is constant in the group (all met): exactly 0 whatever its weight.
  const std::vector<std::vector<bool>> v = {{true, true, false}, {false, true, false}, {false, true, true}};
  const std::vector<std::int64_t> ids = {5, 5, 5};
  const auto unweighted = run<B>(v, ids, {}, o);
  const auto weighted = run<B>(v, ids, {1.0, 1e6, 1.0}, o);
  CHECK(unweighted == weighted);
  const auto doubled = run<B>(v, ids, {2.0, 0.0, 2.0}, o);
  for (int i = 0; i < 3; ++i)
    CHECK(doubled[i] == doctest::Approx(2.0 * unweighted[i]).epsilon(1e-15));
  // Every column constant in every group: exact zeros, before and after batch normalization.
  const std::vector<std::vector<bool>> flat = {{true, false}, {true, false}, {false}, {false}};
  const std::vector<std::int64_t> flat_ids = {1, 1, 2, 2};
  for (auto opt : {o, hir::presets::trl_gdpo()}) {
    const auto zeros = run<B, float>(flat, flat_ids, {}, opt);
    CHECK(std::all_of(zeros.begin(), zeros.end(), [](float x) { return x == 0.0f; }));
  }
  // Groups of one: z = 0 (zero), z = v/(1 + ε) (raw_score), or an error.
  const std::vector<std::vector<bool>> single = {{true, false, true}};
  CHECK(run<B>(single, {3}, {}, o) == std::vector<double>{0.0});
  o.singleton = hir::singleton_policy::raw_score;
  CHECK(run<B>(single, {3}, {}, o)[0] == doctest::Approx(2.0 / (1.0 + 1e-4)).epsilon(1e-15));
  // A batch of one: the batch std is undefined (unbiased), so the advantage is 0 (TRL: NaN → 0).
  CHECK(run<B>(single, {3}, {}, hir::presets::trl_gdpo()) == std::vector<double>{0.0});
}

TEST_CASE_TEMPLATE("constraint_normalized: random ragged groups match the double reference", B, HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(21));
  std::vector<std::pair<const char*, hir::constraint_normalized_options>> configs = {
      {"trl_gdpo", hir::presets::trl_gdpo()}};
  {
    hir::constraint_normalized_options o;
    o.batch_normalize = false;
    configs.push_back({"no batch normalization", o});
    o.std = hir::std_kind::biased;
    o.epsilon = 0.0;
    o.singleton = hir::singleton_policy::raw_score;
    configs.push_back({"biased, eps 0, singleton raw", o});
    o = hir::presets::trl_gdpo();
    o.batch_std = hir::std_kind::biased;
    o.batch_epsilon = 1e-6;
    configs.push_back({"biased batch std", o});
  }
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<std::vector<bool>> v;
    std::vector<std::int64_t> ids;
    const int groups = 1 + static_cast<int>(rng() % 8);
    const std::size_t max_count = trial % 5 == 0 ? 64 : 1 + rng() % 10;
    for (int g = 0; g < groups; ++g) {
      const int size = 1 + static_cast<int>(rng() % 7);
      const std::size_t count = rng() % (max_count + 1); // a prompt's constraint count, 0 … max_count
      const double p = std::uniform_real_distribution<double>(0, 1)(rng);
      for (int k = 0; k < size; ++k) {
        std::vector<bool> row(count);
        for (std::size_t c = 0; c < count; ++c)
          row[c] = std::uniform_real_distribution<double>(0, 1)(rng) < p;
        v.push_back(row);
        ids.push_back(1000 - 3 * g);
      }
    }
    // Shuffle samples over the batch: members of a group are not contiguous.
    std::vector<std::size_t> perm(v.size());
    for (std::size_t i = 0; i < perm.size(); ++i)
      perm[i] = i;
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<std::vector<bool>> pv;
    std::vector<std::int64_t> pids;
    for (std::size_t i : perm) {
      pv.push_back(v[i]);
      pids.push_back(ids[i]);
    }
    std::vector<double> w(max_count);
    for (auto& x : w)
      x = std::uniform_real_distribution<double>(-1, 3)(rng);
    CAPTURE(trial);
    for (const auto& [label, o] : configs) {
      const std::string name = label;
      CAPTURE(name);
      const std::vector<double> unit;
      HIR_CHECK_CLOSE(run<B>(pv, pids, unit, o), hir::ref::gdpo(pv, pids, unit, to_ref(o)), 1e-12, 1e-10);
      HIR_CHECK_CLOSE(run<B>(pv, pids, w, o), hir::ref::gdpo(pv, pids, w, to_ref(o)), 1e-12, 1e-10);
      HIR_CHECK_CLOSE((run<B, float>(pv, pids, w, o)), hir::ref::gdpo(pv, pids, w, to_ref(o)), 2e-6, 2e-6);
    }
  }
}

TEST_CASE_TEMPLATE("constraint_normalized: large, contiguous and uniform groups match the double reference", B,
                   HIR_TEST_BACKEND) {
  // The CPU backend's other paths: groups above 16 members (column z-scores per group, not tabulated) and above 255
  // (counters flushed), constraint counts above 8 (several counter words), contiguous and uniform layouts.
  std::mt19937_64 rng(hir::test::seed(22));
  const std::vector<std::pair<int, std::size_t>> shape = {{2, 3}, {17, 6}, {40, 12}, {300, 9}, {8, 8},
                                                          {8, 0}, {1, 5},  {16, 64}, {5, 1},   {260, 6}};
  std::vector<std::vector<bool>> v;
  std::vector<std::int64_t> ids;
  for (std::size_t g = 0; g < shape.size(); ++g) {
    const double p = std::uniform_real_distribution<double>(0.05, 0.95)(rng);
    for (int k = 0; k < shape[g].first; ++k) {
      std::vector<bool> row(shape[g].second);
      for (std::size_t c = 0; c < row.size(); ++c)
        row[c] = std::uniform_real_distribution<double>(0, 1)(rng) < p;
      v.push_back(row);
      ids.push_back(static_cast<std::int64_t>(g));
    }
  }
  std::vector<double> w(64);
  for (auto& x : w)
    x = std::uniform_real_distribution<double>(-1, 3)(rng);
  hir::constraint_normalized_options no_batch;
  no_batch.batch_normalize = false;
  for (const auto& o : {hir::presets::trl_gdpo(), no_batch}) {
    CAPTURE(o.batch_normalize);
    const std::vector<double> unit;
    HIR_CHECK_CLOSE(run<B>(v, ids, unit, o), hir::ref::gdpo(v, ids, unit, to_ref(o)), 1e-12, 1e-10);
    HIR_CHECK_CLOSE(run<B>(v, ids, w, o), hir::ref::gdpo(v, ids, w, to_ref(o)), 1e-12, 1e-10);
    // Uniform groups of 6 (consecutive samples), 7 constraints each.
    std::vector<std::vector<bool>> uv(60, std::vector<bool>(7));
    std::vector<std::int64_t> uids(uv.size());
    for (std::size_t i = 0; i < uv.size(); ++i) {
      uids[i] = static_cast<std::int64_t>(i / 6);
      for (std::size_t c = 0; c < 7; ++c)
        uv[i][c] = rng() % 3 == 0;
    }
    const auto vb = make_verdicts(uv);
    hir::group_storage<B> groups(B{}, hir::group_layout::uniform(uv.size(), 6));
    std::vector<double> out(uv.size(), -7.0);
    hir::constraint_normalized_advantages(B{}, vb.ref(), groups.ref(), hir::view(out), o);
    HIR_CHECK_CLOSE(out, hir::ref::gdpo(uv, uids, unit, to_ref(o)), 1e-12, 1e-10);
  }
}

TEST_CASE_TEMPLATE("constraint_normalized: bad input throws and writes nothing", B, HIR_TEST_BACKEND) {
  const std::vector<double> sentinel = {42, 42, 42};
  std::vector<double> out = sentinel;
  const auto layout = hir::group_layout::from_ids(std::vector<std::int64_t>{0, 0, 1});
  hir::verdict_batch mixed; // sample 1 has 3 constraints, its group mate 2
  mixed.push_back({true, false});
  mixed.push_back({true, false, true});
  mixed.push_back({true});
  CHECK_THROWS_WITH_AS(hir::constraint_normalized_advantages(B{}, mixed.ref(), layout.ref(), hir::view(out)),
                       "hir::constraint_normalized_advantages: group 0 has members with different constraint counts "
                       "(sample 0: 2, sample 1: 3)",
                       hir::invalid_argument);
  CHECK(out == sentinel);
  hir::constraint_normalized_options unbatched;
  unbatched.batch_normalize = false;
  CHECK_THROWS_WITH_AS(hir::constraint_normalized_advantages(B{}, mixed.ref(), layout.ref(), hir::view(out), unbatched),
                       "hir::constraint_normalized_advantages: group 0 has members with different constraint counts "
                       "(sample 0: 2, sample 1: 3)",
                       hir::invalid_argument);
  CHECK(out == sentinel);
  hir::verdict_batch ok;
  ok.push_back({true, false});
  ok.push_back({false, false});
  ok.push_back({true});
  const std::vector<double> short_w = {1.0};
  CHECK_THROWS_WITH_AS(
      hir::constraint_normalized_advantages(B{}, ok.ref(), layout.ref(), hir::view(short_w), hir::view(out)),
      "hir::constraint_normalized_advantages: sample 0 has 2 constraints but weights.size() = 1",
      hir::invalid_argument);
  const std::vector<double> nan_w = {1.0, std::numeric_limits<double>::quiet_NaN()};
  CHECK_THROWS_WITH_AS(
      hir::constraint_normalized_advantages(B{}, ok.ref(), layout.ref(), hir::view(nan_w), hir::view(out)),
      "hir::constraint_normalized_advantages: weights[1] = nan is not finite", hir::invalid_argument);
  auto o = hir::presets::trl_gdpo();
  o.singleton = hir::singleton_policy::error;
  CHECK_THROWS_WITH_AS(hir::constraint_normalized_advantages(B{}, ok.ref(), layout.ref(), hir::view(out), o),
                       "hir::constraint_normalized_advantages: group 1 (sample 2) has one sample and "
                       "singleton_policy::error is set",
                       hir::invalid_argument);
  o = hir::presets::trl_gdpo();
  o.epsilon = -1;
  CHECK_THROWS_AS(hir::constraint_normalized_advantages(B{}, ok.ref(), layout.ref(), hir::view(out), o),
                  hir::invalid_argument);
  // Stray verdict bits and too many constraints (validate_verdicts).
  const std::vector<std::uint64_t> masks = {0x1, 0x6, 0x1};
  const std::vector<std::uint8_t> counts = {2, 2, 1};
  const hir::verdict_ref<> stray{hir::view(masks), hir::view(counts)};
  CHECK_THROWS_WITH_AS(hir::constraint_normalized_advantages(B{}, stray, layout.ref(), hir::view(out)),
                       "hir::constraint_normalized_advantages: sample 1 has verdict bits set at or above its "
                       "constraint count 2 (mask = 0x6)",
                       hir::invalid_argument);
  const std::vector<std::uint8_t> too_many = {2, 65, 1};
  const std::vector<std::uint64_t> masks2 = {0x1, 0x1, 0x1};
  const hir::verdict_ref<> many{hir::view(masks2), hir::view(too_many)};
  CHECK_THROWS_WITH_AS(hir::constraint_normalized_advantages(B{}, many, layout.ref(), hir::view(out)),
                       "hir::constraint_normalized_advantages: sample 1 has 65 constraints; at most 64 are supported",
                       hir::invalid_argument);
  std::vector<double> short_out(2);
  CHECK_THROWS_WITH_AS(hir::constraint_normalized_advantages(B{}, ok.ref(), layout.ref(), hir::view(short_out)),
                       "hir::constraint_normalized_advantages: out.size() = 2 does not match verdicts.size() = 3",
                       hir::invalid_argument);
  CHECK(out == sentinel);
  // An empty batch is fine.
  hir::verdict_batch none;
  std::vector<double> no_out;
  hir::constraint_normalized_advantages(B{}, none.ref(), hir::group_layout().ref(), hir::view(no_out));
}
