// SPDX-License-Identifier: Apache-2.0
// select_replays: a hand-worked batch whose selections are asserted exactly for every allocation policy, ranking and
// λ schedule; the shortfall report; random batches against a naive reference (sort everything, then take);
// properties (eligibility, at most once, budget, determinism under a seed); and bad input.
#include "relabel_support.hpp"

#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/seed.hpp"

#include <hir/relabel/select.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>

namespace {

using idx = std::vector<std::int64_t>;

/// Host candidate arrays.
struct host_candidates {
  std::size_t B = 0;
  std::vector<std::int64_t> prompt;
  std::vector<std::uint64_t> masks;
  std::vector<std::uint8_t> counts;
  std::vector<double> entropy_sum;
  std::vector<std::int64_t> length;
  std::vector<std::uint8_t> constraint_counts;
  std::vector<double> weights;
  std::size_t weight_stride = 0;
};

template <class B>
struct backend_candidates {
  std::size_t num_prompts, stride;
  hir::vector<std::int64_t, B> prompt;
  hir::vector<std::uint64_t, B> masks;
  hir::vector<std::uint8_t, B> counts;
  hir::vector<double, B> entropy_sum;
  hir::vector<std::int64_t, B> length;
  hir::vector<std::uint8_t, B> constraint_counts;
  hir::vector<double, B> weights;
  explicit backend_candidates(const host_candidates& h)
      : num_prompts(h.B), stride(h.weight_stride), prompt(hir::test::upload<B>(h.prompt)),
        masks(hir::test::upload<B>(h.masks)), counts(hir::test::upload<B>(h.counts)),
        entropy_sum(hir::test::upload<B>(h.entropy_sum)), length(hir::test::upload<B>(h.length)),
        constraint_counts(hir::test::upload<B>(h.constraint_counts)), weights(hir::test::upload<B>(h.weights)) {}
  hir::replay_candidates_ref<double, hir::memory_space_t<B>> ref() const {
    hir::replay_candidates_ref<double, hir::memory_space_t<B>> c;
    c.num_prompts = num_prompts;
    c.prompt = hir::view(prompt);
    c.verdicts = {hir::view(masks), hir::view(counts)};
    c.entropy_sum = hir::view(entropy_sum);
    c.length = hir::view(length);
    c.constraint_counts = hir::view(constraint_counts);
    c.weights = hir::view(weights);
    c.weight_stride = stride;
    return c;
  }
};

// The hand-worked batch (docs/hindsight.md walks through it): B = 2 prompts, m = 4 responses each.
//   prompt 0 (4 constraints)                    prompt 1 (3 constraints)
//   r0 1111 success        (ineligible)         r4 001  1/3  H = 4.5 over 5 tokens (mean 0.9)
//   r1 0101 2/4  H = 2.0 over 4 (mean 0.5)       r5 011  2/3  H = 1.2 over 4 (mean 0.3)
//   r2 0000 all failed     (ineligible)         r6 110  2/3  H = 0.8 over 2 (mean 0.4)
//   r3 0111 3/4  H = 0.6 over 3 (mean 0.2)       r7 111  success (ineligible)
host_candidates worked_batch() {
  host_candidates h;
  h.B = 2;
  h.prompt = {0, 0, 0, 0, 1, 1, 1, 1};
  h.masks = {0b1111, 0b0101, 0b0000, 0b0111, 0b001, 0b011, 0b110, 0b111};
  h.counts = {4, 4, 4, 4, 3, 3, 3, 3};
  h.entropy_sum = {1.0, 2.0, 3.0, 0.6, 4.5, 1.2, 0.8, 0.1};
  h.length = {2, 4, 6, 3, 5, 4, 2, 1};
  h.constraint_counts = {4, 3};
  h.weights = {1, 1, 1, 5, 1, 2, 3, 0};
  h.weight_stride = 4;
  return h;
}

template <class B>
hir::replay_selection<B> select(const host_candidates& h, std::int64_t step, const hir::replay_select_options& o) {
  backend_candidates<B> c(h);
  return hir::select_replays(B{}, c.ref(), step, o);
}

template <class B>
idx chosen(const host_candidates& h, std::int64_t step, const hir::replay_select_options& o) {
  return hir::to_host(select<B>(h, step, o).indices);
}

hir::replay_select_options opts(hir::replay_allocation a, hir::replay_budget_kind k, std::size_t amount) {
  hir::replay_select_options o;
  o.allocation = a;
  o.budget_kind = k;
  o.target_group_size = amount;
  o.replays_per_prompt = amount;
  o.budget = amount;
  return o;
}

} // namespace

TEST_CASE_TEMPLATE("select_replays: hand-worked batch, every allocation policy", B, HIR_TEST_BACKEND) {
  const auto h = worked_batch();
  using A = hir::replay_allocation;
  using K = hir::replay_budget_kind;
  // Step 0: λ = 2. Token-mean scores F = H̄ + 2·CLA:
  //   r1 0.5 + 1.0 = 1.5   r3 0.2 + 1.5 = 1.7   r4 0.9 + 0.667 = 1.567   r5 0.3 + 1.333 = 1.633   r6 0.4 + 1.333
  //   = 1.733 order: r6, r3, r5, r4, r1
  SUBCASE("top-K global, authors' budget K = (n_target − m)·B") {
    auto s = select<B>(h, 0, opts(A::top_k_global, K::fill_to_target, 6)); // K = (6 − 4)·2 = 4
    CHECK(hir::to_host(s.indices) == idx{3, 4, 5, 6});
    CHECK(s.eligible == 5);
    CHECK(s.budget == 4);
    CHECK(s.complete());
    CHECK(s.extra_rollouts_per_prompt == 0);
    CHECK(s.lambda == doctest::Approx(2.0));
    CHECK(chosen<B>(h, 0, opts(A::top_k_global, K::absolute, 3)) == idx{3, 5, 6});
    CHECK(chosen<B>(h, 0, opts(A::top_k_global, K::per_prompt, 1)) == idx{3, 6});
    CHECK(chosen<B>(h, 0, opts(A::top_k_global, K::absolute, 0)).empty());
  }
  SUBCASE("top-k per group (paper)") {
    // prompt 0: r3 1.7, r1 1.5; prompt 1: r6, r5, r4
    CHECK(chosen<B>(h, 0, opts(A::top_k_per_group, K::per_prompt, 2)) == idx{1, 3, 5, 6});
    CHECK(chosen<B>(h, 0, opts(A::top_k_per_group, K::per_prompt, 1)) == idx{3, 6});
    CHECK(chosen<B>(h, 0, opts(A::top_k_per_group, K::fill_to_target, 5)) == idx{3, 6}); // k = 5 − 4
  }
  SUBCASE("even allocation across prompts") {
    // K = 3 over eligible counts (2, 3): level 1 each, the remainder to the lowest prompt: (2, 1)
    CHECK(chosen<B>(h, 0, opts(A::even_per_prompt, K::absolute, 3)) == idx{1, 3, 6});
    // K = 4: (2, 2)
    CHECK(chosen<B>(h, 0, opts(A::even_per_prompt, K::absolute, 4)) == idx{1, 3, 5, 6});
    // K = 5: prompt 0 saturates at 2, prompt 1 takes 3
    CHECK(chosen<B>(h, 0, opts(A::even_per_prompt, K::absolute, 5)) == idx{1, 3, 4, 5, 6});
    // K = 1: level 0, remainder to prompt 0 → its best, r3
    CHECK(chosen<B>(h, 0, opts(A::even_per_prompt, K::absolute, 1)) == idx{3});
  }
  SUBCASE("all eligible") {
    auto s = select<B>(h, 0, opts(A::all_eligible, K::absolute, 0));
    CHECK(hir::to_host(s.indices) == idx{1, 3, 4, 5, 6});
    CHECK(s.budget == 5);
    CHECK(s.complete());
  }
}

TEST_CASE_TEMPLATE("select_replays: hand-worked batch, rankings, diversity, integrity and schedules", B,
                   HIR_TEST_BACKEND) {
  const auto h = worked_batch();
  using A = hir::replay_allocation;
  using K = hir::replay_budget_kind;
  auto o = opts(A::top_k_global, K::absolute, 2);
  SUBCASE("summed entropy (paper): F = ΣH + 2·CLA → r4 5.17, r1 3.0, r5 2.53, r6 2.13, r3 2.1") {
    o.diversity = hir::diversity_kind::token_sum;
    CHECK(chosen<B>(h, 0, o) == idx{1, 4});
    o.budget = 4;
    CHECK(chosen<B>(h, 0, o) == idx{1, 4, 5, 6});
  }
  SUBCASE("integrity only: r3 .75, then r5 = r6 = 2/3 tie → lower index r5") {
    o.ranking = hir::replay_ranking::integrity_only;
    CHECK(chosen<B>(h, 0, o) == idx{3, 5});
    CHECK(select<B>(h, 0, o).lambda == 0.0);
  }
  SUBCASE("diversity only: r4 .9, r1 .5, r6 .4") {
    o.ranking = hir::replay_ranking::diversity_only;
    CHECK(chosen<B>(h, 0, o) == idx{1, 4});
    o.budget = 3;
    CHECK(chosen<B>(h, 0, o) == idx{1, 4, 6});
  }
  SUBCASE("weighted integrity: weights (1,1,1,5) and (1,2,3) → r6 5/6, r5 1/2, r3 3/8, r1 1/4, r4 1/6") {
    o.ranking = hir::replay_ranking::integrity_only;
    o.integrity = hir::integrity_kind::weighted;
    CHECK(chosen<B>(h, 0, o) == idx{5, 6});
    o.budget = 3;
    CHECK(chosen<B>(h, 0, o) == idx{3, 5, 6});
  }
  SUBCASE("exponential schedule at step 50: λ = 2·1.05^50 ≈ 22.93 → integrity dominates: r3, r6, r5") {
    auto s = select<B>(h, 50, o);
    CHECK(s.lambda == doctest::Approx(2.0 * std::pow(1.05, 50)));
    CHECK(hir::to_host(s.indices) == idx{3, 6});
    o.budget = 3;
    CHECK(chosen<B>(h, 50, o) == idx{3, 5, 6});
  }
  SUBCASE("constant schedule λ = 0 equals diversity only; λ = 0.5: r4 1.07, r3 .575, r1 .75, r5 .633, r6 .733") {
    o.lambda = hir::lambda_schedule::constant(0.0);
    CHECK(chosen<B>(h, 7, o) == idx{1, 4});
    o.lambda = hir::lambda_schedule::constant(0.5);
    o.budget = 3;
    CHECK(chosen<B>(h, 7, o) == idx{1, 4, 6});
    CHECK(select<B>(h, 7, o).lambda == 0.5);
  }
  SUBCASE(
      "linear schedule λ = λ0(1 + η s) = 0.1·(1 + 0.1·90) = 1 at step 90: r3 .95, r6 1.07, r5 .97, r4 1.23, r1 1.0") {
    o.lambda = hir::lambda_schedule::linear(0.1, 0.1);
    CHECK(select<B>(h, 90, o).lambda == doctest::Approx(1.0));
    CHECK(chosen<B>(h, 90, o) == idx{4, 6});
    o.budget = 4;
    CHECK(chosen<B>(h, 90, o) == idx{1, 4, 5, 6});
  }
  SUBCASE("user schedule λ(s) = s at step 3: r3 2.45, r6 2.4, r5 2.3, r1 2.0, r4 1.9") {
    o.lambda = hir::lambda_schedule::custom([](std::int64_t s) { return static_cast<double>(s); });
    CHECK(chosen<B>(h, 3, o) == idx{3, 6});
    o.budget = 4;
    CHECK(chosen<B>(h, 3, o) == idx{1, 3, 5, 6});
  }
  SUBCASE("random-k: the eligible candidates with the largest philox{seed}.uniform(step, index)") {
    o.ranking = hir::replay_ranking::random;
    o.seed = 1234;
    const std::vector<std::int64_t> eligible = {1, 3, 4, 5, 6};
    for (std::int64_t step : {1, 2, 3}) {
      std::vector<std::pair<double, std::int64_t>> keys;
      for (auto i : eligible)
        keys.push_back({hir::philox{1234}.uniform(static_cast<std::uint64_t>(step), static_cast<std::uint64_t>(i)), i});
      std::sort(keys.rbegin(), keys.rend());
      idx expect = {keys[0].second, keys[1].second};
      std::sort(expect.begin(), expect.end());
      CHECK(chosen<B>(h, step, o) == expect);
    }
    o.allocation = A::top_k_per_group;
    o.budget_kind = K::per_prompt;
    o.replays_per_prompt = 1;
    const auto per_group = chosen<B>(h, 5, o);
    REQUIRE(per_group.size() == 2);
    auto key = [](std::int64_t i) { return hir::philox{1234}.uniform(5, static_cast<std::uint64_t>(i)); };
    CHECK(per_group[0] == (key(1) > key(3) ? 1 : 3));
    const double k4 = key(4), k5 = key(5), k6 = key(6);
    CHECK(per_group[1] == (k4 > k5 && k4 > k6 ? 4 : k5 > k6 ? 5 : 6));
  }
}

TEST_CASE_TEMPLATE("select_replays: replay_scores agrees with the hand-worked keys", B, HIR_TEST_BACKEND) {
  const auto h = worked_batch();
  backend_candidates<B> c(h);
  hir::vector<double, B> out(8);
  hir::replay_scores(B{}, c.ref(), 0, hir::view(out), hir::replay_select_options{});
  const auto s = hir::to_host(out);
  const double ninf = -std::numeric_limits<double>::infinity();
  CHECK(s[0] == ninf);
  CHECK(s[2] == ninf);
  CHECK(s[7] == ninf);
  const std::vector<double> expect = {0.5 + 1.0, 0.2 + 1.5, 0.9 + 2.0 / 3.0, 0.3 + 4.0 / 3.0, 0.4 + 4.0 / 3.0};
  const std::vector<double> got = {s[1], s[3], s[4], s[5], s[6]};
  HIR_CHECK_CLOSE(got, expect, 1e-12, 1e-12);
}

TEST_CASE_TEMPLATE("select_replays: fewer eligible than the budget reports the extra rollouts (authors' rule)", B,
                   HIR_TEST_BACKEND) {
  const auto h = worked_batch();
  using A = hir::replay_allocation;
  using K = hir::replay_budget_kind;
  // n_target = 8, m = 4: K = 8 but only 5 eligible → r = ceil((8 − 5)/2) = 2, shrunk budget (8 − 4 − 2)·2 = 4.
  auto s = select<B>(h, 1, opts(A::top_k_global, K::fill_to_target, 8));
  CHECK(s.budget == 8);
  CHECK(s.size() == 5);
  CHECK(hir::to_host(s.indices) == idx{1, 3, 4, 5, 6});
  CHECK(s.shortfall == 3);
  CHECK_FALSE(s.complete());
  CHECK(s.extra_rollouts_per_prompt == 2);
  CHECK(s.budget_after_resampling == 4);
  // Even split: the same report.
  auto e = select<B>(h, 1, opts(A::even_per_prompt, K::absolute, 7));
  CHECK(e.size() == 5);
  CHECK(e.shortfall == 2);
  CHECK(e.extra_rollouts_per_prompt == 1);
  CHECK(e.budget_after_resampling == 5);
  // Per group k = 3: prompt 0 has only 2 eligible → 5 of 6, r = 1.
  auto g = select<B>(h, 1, opts(A::top_k_per_group, K::per_prompt, 3));
  CHECK(hir::to_host(g.indices) == idx{1, 3, 4, 5, 6});
  CHECK(g.budget == 6);
  CHECK(g.shortfall == 1);
  CHECK(g.extra_rollouts_per_prompt == 1);
  // replay_shortfall::error throws and names the rollouts to add.
  auto o = opts(A::top_k_global, K::fill_to_target, 8);
  o.shortfall = hir::replay_shortfall::error;
  CHECK_THROWS_WITH_AS(select<B>(h, 1, o), doctest::Contains("draw r = 2 more rollouts per prompt"),
                       hir::invalid_argument);
}

namespace {

/// Naive reference: every eligible candidate's key from the definitions, a full sort, then the allocation.
idx naive_select(const host_candidates& h, std::int64_t step, const hir::replay_select_options& o) {
  const double lambda = o.lambda(step);
  std::vector<std::pair<double, std::int64_t>> all; // (key, index)
  std::map<std::int64_t, std::vector<std::pair<double, std::int64_t>>> by_prompt;
  for (std::size_t i = 0; i < h.prompt.size(); ++i) {
    const unsigned n = h.counts[i];
    const int met = hir::test::met_count(h.masks[i], n);
    if (met == 0 || met == static_cast<int>(n))
      continue;
    const double div = o.diversity == hir::diversity_kind::token_mean
                           ? h.entropy_sum[i] / static_cast<double>(h.length[i])
                           : h.entropy_sum[i];
    const double integ = static_cast<double>(met) / n;
    double key = div + lambda * integ;
    if (o.ranking == hir::replay_ranking::integrity_only)
      key = integ;
    if (o.ranking == hir::replay_ranking::diversity_only)
      key = div;
    if (o.ranking == hir::replay_ranking::random)
      key = hir::philox{o.seed}.uniform(static_cast<std::uint64_t>(step), i);
    all.push_back({key, static_cast<std::int64_t>(i)});
    by_prompt[h.prompt[i]].push_back({key, static_cast<std::int64_t>(i)});
  }
  auto better = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  std::sort(all.begin(), all.end(), better);
  for (auto& [p, v] : by_prompt)
    std::sort(v.begin(), v.end(), better);
  std::vector<std::size_t> m(h.B, 0);
  for (auto p : h.prompt)
    ++m[static_cast<std::size_t>(p)];
  std::size_t K = 0;
  for (std::size_t p = 0; p < h.B; ++p)
    K += o.budget_kind == hir::replay_budget_kind::fill_to_target
             ? (o.target_group_size > m[p] ? o.target_group_size - m[p] : 0)
         : o.budget_kind == hir::replay_budget_kind::per_prompt ? o.replays_per_prompt
                                                                : 0;
  if (o.budget_kind == hir::replay_budget_kind::absolute)
    K = o.budget;
  idx out;
  if (o.allocation == hir::replay_allocation::all_eligible) {
    for (auto& kv : all)
      out.push_back(kv.second);
  } else if (o.allocation == hir::replay_allocation::top_k_global) {
    for (std::size_t k = 0; k < std::min(K, all.size()); ++k)
      out.push_back(all[k].second);
  } else if (o.allocation == hir::replay_allocation::top_k_per_group) {
    for (auto& [p, v] : by_prompt) {
      const std::size_t q = o.budget_kind == hir::replay_budget_kind::per_prompt
                                ? o.replays_per_prompt
                                : (o.target_group_size > m[static_cast<std::size_t>(p)]
                                       ? o.target_group_size - m[static_cast<std::size_t>(p)]
                                       : 0);
      for (std::size_t k = 0; k < std::min(q, v.size()); ++k)
        out.push_back(v[k].second);
    }
  } else { // even: hand one replay at a time to the prompts in rounds, lowest prompt first, until K are handed out
    std::vector<std::size_t> given(h.B, 0);
    std::size_t left = std::min(K, all.size());
    // Round-robin by level: in round t every prompt with more than t eligible gets its (t+1)-th, lowest prompts
    // first; this is the most even split with the remainder at the lowest prompts.
    for (std::size_t t = 0; left > 0; ++t)
      for (std::size_t p = 0; p < h.B && left > 0; ++p) {
        auto it = by_prompt.find(static_cast<std::int64_t>(p));
        if (it != by_prompt.end() && it->second.size() > t) {
          out.push_back(it->second[t].second);
          --left;
        }
      }
  }
  std::sort(out.begin(), out.end());
  return out;
}

host_candidates random_candidates(std::mt19937_64& rng, std::size_t B, std::size_t m, bool quantized) {
  host_candidates h;
  h.B = B;
  std::uniform_real_distribution<double> ent(0, 3);
  for (std::size_t p = 0; p < B; ++p) {
    const auto n = static_cast<std::uint8_t>(1 + rng() % 7);
    h.constraint_counts.push_back(n);
    const std::size_t mp = m ? m : 1 + rng() % 9; // m = 0: ragged
    for (std::size_t k = 0; k < mp; ++k) {
      h.prompt.push_back(static_cast<std::int64_t>(p));
      std::uint64_t v = 0;
      for (unsigned c = 0; c < n; ++c)
        v |= static_cast<std::uint64_t>(rng() % 2) << c;
      h.masks.push_back(v);
      h.counts.push_back(n);
      h.length.push_back(1 + static_cast<std::int64_t>(rng() % 20));
      // quantized entropies make exact ties in the key frequent, to exercise the index tie-break
      h.entropy_sum.push_back(quantized ? static_cast<double>(rng() % 4) * h.length.back()
                                        : ent(rng) * h.length.back());
    }
  }
  // shuffle candidate order so prompts are interleaved
  std::vector<std::size_t> perm(h.prompt.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  host_candidates s = h;
  for (std::size_t i = 0; i < perm.size(); ++i) {
    s.prompt[i] = h.prompt[perm[i]];
    s.masks[i] = h.masks[perm[i]];
    s.counts[i] = h.counts[perm[i]];
    s.length[i] = h.length[perm[i]];
    s.entropy_sum[i] = h.entropy_sum[perm[i]];
  }
  return s;
}

} // namespace

TEST_CASE_TEMPLATE("select_replays: random batches match the naive reference", B, HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(11));
  using A = hir::replay_allocation;
  using K = hir::replay_budget_kind;
  for (int trial = 0; trial < 60; ++trial) {
    const bool ragged = trial % 3 == 0;
    const auto h = random_candidates(rng, 1 + rng() % 12, ragged ? 0 : 6, trial % 2 == 0);
    std::size_t min_m = 1000;
    {
      std::vector<std::size_t> m(h.B, 0);
      for (auto p : h.prompt)
        ++m[static_cast<std::size_t>(p)];
      min_m = *std::min_element(m.begin(), m.end());
    }
    for (auto a : {A::top_k_global, A::top_k_per_group, A::even_per_prompt, A::all_eligible})
      for (auto r : {hir::replay_ranking::score, hir::replay_ranking::integrity_only,
                     hir::replay_ranking::diversity_only, hir::replay_ranking::random})
        for (auto d : {hir::diversity_kind::token_mean, hir::diversity_kind::token_sum}) {
          hir::replay_select_options o;
          o.allocation = a;
          o.ranking = r;
          o.diversity = d;
          o.seed = rng();
          const std::int64_t step = static_cast<std::int64_t>(rng() % 80);
          if (a == A::top_k_per_group) {
            o.budget_kind = K::per_prompt;
            o.replays_per_prompt = rng() % (min_m + 1);
          } else if (trial % 2) {
            o.budget_kind = K::absolute;
            o.budget = rng() % (h.prompt.size() + 1);
          } else {
            o.budget_kind = K::fill_to_target;
            o.target_group_size = 6 + rng() % 4;
            std::size_t need = 0;
            std::vector<std::size_t> m(h.B, 0);
            for (auto p : h.prompt)
              ++m[static_cast<std::size_t>(p)];
            for (auto mp : m)
              need += o.target_group_size > mp ? o.target_group_size - mp : 0;
            if (need > h.prompt.size())
              o.target_group_size = 0; // K = 0 keeps the budget inside the batch
          }
          CAPTURE(trial);
          CAPTURE(static_cast<int>(a));
          CAPTURE(static_cast<int>(r));
          const auto s = select<B>(h, step, o);
          const auto got = hir::to_host(s.indices);
          CHECK(got == naive_select(h, step, o));
          CHECK(s.shortfall == s.budget - got.size());
        }
  }
}

TEST_CASE_TEMPLATE("select_replays: properties", B, HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(12));
  for (int trial = 0; trial < 30; ++trial) {
    const auto h = random_candidates(rng, 8 + rng() % 30, 6, false);
    hir::replay_select_options o;
    o.allocation = static_cast<hir::replay_allocation>(trial % 4);
    o.ranking = static_cast<hir::replay_ranking>((trial / 4) % 4);
    o.budget_kind = o.allocation == hir::replay_allocation::top_k_per_group ? hir::replay_budget_kind::per_prompt
                                                                            : hir::replay_budget_kind::fill_to_target;
    o.seed = 99;
    const auto s = select<B>(h, 3, o);
    const auto got = hir::to_host(s.indices);
    // no replay of successes or all-failed responses
    for (auto i : got) {
      const auto iu = static_cast<std::size_t>(i);
      const int met = hir::test::met_count(h.masks[iu], h.counts[iu]);
      CHECK(met > 0);
      CHECK(met < static_cast<int>(h.counts[iu]));
    }
    // each response at most once, ascending
    CHECK(std::set<std::int64_t>(got.begin(), got.end()).size() == got.size());
    CHECK(std::is_sorted(got.begin(), got.end()));
    // the budget is respected, and met unless eligibility is short
    if (o.allocation != hir::replay_allocation::all_eligible)
      CHECK(got.size() <= s.budget);
    CHECK(got.size() + s.shortfall == s.budget);
    if (s.eligible >= s.budget && o.allocation != hir::replay_allocation::top_k_per_group)
      CHECK(s.complete());
    // per-group quotas are per prompt
    if (o.allocation == hir::replay_allocation::top_k_per_group) {
      std::map<std::int64_t, std::size_t> per;
      for (auto i : got)
        ++per[h.prompt[static_cast<std::size_t>(i)]];
      for (auto& kv : per)
        CHECK(kv.second <= o.replays_per_prompt);
    }
    // determinism: the same inputs and seed give the same selection
    CHECK(hir::to_host(select<B>(h, 3, o).indices) == got);
  }
  // random-k: same seed → same; another seed or step → (almost surely) different on a large batch
  const auto h = random_candidates(rng, 200, 6, false);
  hir::replay_select_options o;
  o.ranking = hir::replay_ranking::random;
  o.seed = 7;
  const auto a = hir::to_host(select<B>(h, 4, o).indices);
  CHECK(hir::to_host(select<B>(h, 4, o).indices) == a);
  o.seed = 8;
  CHECK(hir::to_host(select<B>(h, 4, o).indices) != a);
  o.seed = 7;
  CHECK(hir::to_host(select<B>(h, 5, o).indices) != a);
}

TEST_CASE_TEMPLATE("select_replays: bad input gives clear errors", B, HIR_TEST_BACKEND) {
  const auto good = worked_batch();
  auto o = opts(hir::replay_allocation::top_k_global, hir::replay_budget_kind::absolute, 2);
  auto throws = [&](const host_candidates& h, const hir::replay_select_options& oo, const char* text) {
    CHECK_THROWS_WITH_AS(select<B>(h, 1, oo), doctest::Contains(text), hir::invalid_argument);
  };
  CHECK_NOTHROW(select<B>(good, 1, o));
  {
    auto h = good; // verdict vector with a count that disagrees with the prompt's constraint count
    h.counts[5] = 4;
    h.masks[5] = 0b1011;
    throws(h, o,
           "candidate 5 (prompt 1) has a verdict count that disagrees with its prompt's constraint count: 4 "
           "verdicts, 3 constraints");
    h.constraint_counts.clear(); // without per-prompt counts: disagreement with the other responses to the prompt
    throws(h, o, "candidate 5 (prompt 1, 4 constraints) has a verdict count that disagrees with an earlier response");
  }
  {
    auto h = good; // verdict bits at or above the count
    h.masks[4] = 0b1001;
    throws(h, o, "sample 4 has verdict bits set at or above its constraint count 3");
  }
  {
    host_candidates h; // empty batch
    h.B = 1;
    throws(h, o, "hir::select_replays: the batch is empty");
  }
  {
    auto oo = o; // budget larger than the batch
    oo.budget = 9;
    throws(good, oo, "the replay budget K = 9 exceeds the batch of 8 responses");
    auto f = opts(hir::replay_allocation::top_k_global, hir::replay_budget_kind::fill_to_target, 9); // K = 10
    throws(good, f, "the replay budget K = 10 exceeds the batch of 8 responses");
    auto g = opts(hir::replay_allocation::top_k_per_group, hir::replay_budget_kind::per_prompt, 3);
    auto h = good; // prompt 0 gets six responses, prompt 1 two: K = 6 fits the batch, k = 3 does not fit prompt 1
    h.prompt[4] = h.prompt[5] = 0;
    h.counts[4] = h.counts[5] = 4;
    throws(h, g, "the replay quota k = 3 of prompt 1 exceeds its 2 responses");
    auto a = opts(hir::replay_allocation::top_k_per_group, hir::replay_budget_kind::absolute, 2);
    throws(good, a, "budget_kind = absolute has no per-prompt quota");
  }
  {
    auto h = good;
    h.prompt[2] = 2;
    throws(h, o, "candidate 2 (prompt 2, 4 constraints) has a prompt index outside [0, num_prompts)");
    h = good;
    h.B = 3;
    h.constraint_counts.push_back(1);
    throws(h, o, "prompt 2 has no responses");
    h = good;
    h.entropy_sum[3] = -0.5;
    throws(h, o, "candidate 3 has a negative or non-finite summed entropy: entropy_sum = -0.5");
    h.entropy_sum[3] = std::nan("");
    throws(h, o, "candidate 3 has a negative or non-finite summed entropy");
    h = good;
    h.length[6] = 0;
    throws(h, o, "candidate 6 has a response length < 1: length = 0");
    h = good;
    h.entropy_sum.pop_back();
    throws(h, o, "entropy_sum.size() = 7 does not match prompt.size() = 8");
  }
  {
    auto oo = o; // λ that is not finite or negative
    oo.lambda = hir::lambda_schedule::custom([](std::int64_t) { return -1.0; });
    throws(good, oo, "lambda(step = 1) = -1 must be finite and >= 0");
    oo.lambda = hir::lambda_schedule::exponential(-2.0, 0.05);
    throws(good, oo, "lambda0 = -2 must be finite and >= 0");
    oo.lambda = hir::lambda_schedule::exponential(2.0, 1e6);
    CHECK_THROWS_WITH_AS(select<B>(good, 1000, oo), doctest::Contains("must be finite"), hir::invalid_argument);
  }
  {
    auto oo = o;
    oo.allocation = static_cast<hir::replay_allocation>(9);
    throws(good, oo, "allocation = 9 is not a replay_allocation");
  }
  {
    auto h = good; // weighted integrity with a zero-sum weight row
    auto oo = o;
    oo.integrity = hir::integrity_kind::weighted;
    h.weights = {0, 0, 0, 0, 1, 2, 3, 0};
    throws(h, oo, "candidate 0 (prompt 0, 4 constraints) has constraint weights that are negative");
    h.weights.pop_back();
    throws(h, oo, "weights.size() = 7 does not match num_prompts * weight_stride = 8");
  }
}
