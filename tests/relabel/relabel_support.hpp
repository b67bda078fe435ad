// SPDX-License-Identifier: Apache-2.0
// Test helpers for hindsight instruction replay: host-side rollout batches (hand-written or random), their copies in
// a backend's memory with the views the library takes, and small naive helpers that never call the library.
#pragma once

#include "support/backends.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace hir::test {

/// A rollout batch on the host: N responses of length L to B prompts (double precision).
struct host_rollouts {
  std::size_t N = 0, L = 0, B = 0;
  std::vector<std::int64_t> prompt;
  std::vector<std::uint64_t> masks;
  std::vector<std::uint8_t> counts;
  std::vector<std::int32_t> tokens;
  std::vector<std::uint8_t> mask;
  std::vector<double> old_logp, ref_logp, entropy, scores;
  std::vector<std::uint8_t> constraint_counts;
};

/// Number of met constraints (naive).
inline int met_count(std::uint64_t mask, unsigned n) {
  int k = 0;
  for (unsigned c = 0; c < n; ++c)
    k += static_cast<int>((mask >> c) & 1u);
  return k;
}

/// A random rollout batch: B prompts with m responses each (grouped, interleaved like verl), constraint counts
/// 1..8 per prompt, verdicts biased so that successes, all-failed and partial responses all occur, random lengths
/// (at least 1 valid token), log-probs in [−4, 0], entropies in [0, 3].
inline host_rollouts random_rollouts(std::mt19937_64& rng, std::size_t B, std::size_t m, std::size_t L) {
  host_rollouts r;
  r.N = B * m;
  r.L = L;
  r.B = B;
  std::uniform_real_distribution<double> lp(-4.0, 0.0), ent(0.0, 3.0);
  for (std::size_t p = 0; p < B; ++p)
    r.constraint_counts.push_back(static_cast<std::uint8_t>(1 + rng() % 8));
  for (std::size_t p = 0; p < B; ++p)
    for (std::size_t k = 0; k < m; ++k) {
      const unsigned n = r.constraint_counts[p];
      std::uint64_t v = 0;
      const auto kind = rng() % 6;
      if (kind == 0)
        v = (n == 64 ? ~0ull : ((1ull << n) - 1)); // success
      else if (kind == 1)
        v = 0; // all failed
      else
        for (unsigned c = 0; c < n; ++c)
          v |= static_cast<std::uint64_t>(rng() % 3 != 0) << c;
      r.prompt.push_back(static_cast<std::int64_t>(p));
      r.masks.push_back(v);
      r.counts.push_back(static_cast<std::uint8_t>(n));
      const std::size_t len = 1 + rng() % L;
      for (std::size_t t = 0; t < L; ++t) {
        r.mask.push_back(t < len ? 1 : 0);
        r.tokens.push_back(static_cast<std::int32_t>(rng() % 50000));
        r.old_logp.push_back(lp(rng));
        r.ref_logp.push_back(lp(rng));
        r.entropy.push_back(ent(rng));
      }
    }
  return r;
}

/// A host rollout batch copied into backend B's memory, with the library's view of it.
template <class B>
struct backend_rollouts {
  std::size_t N, L, NP;
  hir::vector<std::int64_t, B> prompt;
  hir::vector<std::uint64_t, B> masks;
  hir::vector<std::uint8_t, B> counts;
  hir::vector<std::int32_t, B> tokens;
  hir::vector<std::uint8_t, B> mask;
  hir::vector<double, B> old_logp, ref_logp, entropy, scores;
  hir::vector<std::uint8_t, B> constraint_counts;

  explicit backend_rollouts(const host_rollouts& h)
      : N(h.N), L(h.L), NP(h.B), prompt(upload<B>(h.prompt)), masks(upload<B>(h.masks)), counts(upload<B>(h.counts)),
        tokens(upload<B>(h.tokens)), mask(upload<B>(h.mask)), old_logp(upload<B>(h.old_logp)),
        ref_logp(upload<B>(h.ref_logp)), entropy(upload<B>(h.entropy)), scores(upload<B>(h.scores)),
        constraint_counts(upload<B>(h.constraint_counts)) {}

  template <class U>
  static hir::span_for<const U, B> cv(const hir::vector<U, B>& v) {
    return hir::view(v);
  }

  hir::rollout_batch_ref<double, hir::memory_space_t<B>> ref() const {
    hir::rollout_batch_ref<double, hir::memory_space_t<B>> r;
    r.batch = N;
    r.length = L;
    r.num_prompts = NP;
    r.prompt = cv(prompt);
    r.verdicts = {cv(masks), cv(counts)};
    r.tokens = cv(tokens);
    r.mask = cv(mask);
    r.old_logp = cv(old_logp);
    r.ref_logp = cv(ref_logp);
    r.entropy = cv(entropy);
    r.scores = cv(scores);
    r.constraint_counts = cv(constraint_counts);
    return r;
  }
};

/// Rows of a replay batch given on the host (only the fields pair building reads).
struct pair_rows {
  std::vector<std::int64_t> prompt, source_row;
  std::vector<double> reward;
  std::vector<std::uint8_t> is_replay;
};

/// build_preference_pairs on backend B for rows given on the host (copied to B's memory first).
template <class B>
hir::preference_pairs<B> pairs_of(const pair_rows& h, const hir::preference_pair_options& o) {
  const auto prompt = upload<B>(h.prompt), src = upload<B>(h.source_row);
  const auto reward = upload<B>(h.reward);
  const auto rep = upload<B>(h.is_replay);
  hir::replay_batch_ref<double, hir::memory_space_t<B>> r;
  r.batch = h.prompt.size();
  r.prompt = hir::view(prompt);
  r.source_row = hir::view(src);
  r.reward = hir::view(reward);
  r.is_replay = hir::view(rep);
  return hir::build_preference_pairs(B{}, r, o);
}

} // namespace hir::test
