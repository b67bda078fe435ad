// SPDX-License-Identifier: Apache-2.0
// Per-candidate and per-row math of hindsight instruction replay, shared by the CPU loops and the Thrust device
// backend (host/device code): eligibility, integrity and diversity terms, the ranking key, the deterministic
// "better candidate" order, the reward and group id of a replay-batch row and truncated importance weights.
#pragma once

#include <hir/config.hpp>
#include <hir/core/random.hpp>
#include <hir/relabel/replay_batch.hpp>
#include <hir/relabel/select.hpp>
#include <hir/rewards/reward_vector.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace hir {

namespace detail {

/// True when a response met at least one and not every constraint (0 < CLA < 1): only those can be replayed.
HIR_HOST_DEVICE inline bool replay_eligible(std::uint64_t mask, unsigned count) {
  // met ∈ [1, count − 1] as one unsigned comparison (no branch; count = 0 gives false)
  return static_cast<unsigned>(popcount64(mask)) - 1u < count - 1u;
}

/// F_int with integrity_kind::fraction_met.
HIR_HOST_DEVICE inline double integrity_fraction(std::uint64_t mask, unsigned count) {
  return count == 0 ? 1.0 : static_cast<double>(popcount64(mask)) / static_cast<double>(count);
}

/// F_int with integrity_kind::weighted; `w` points at the prompt's weight row (count entries).
template <class W>
HIR_HOST_DEVICE double integrity_weighted(std::uint64_t mask, unsigned count, const W* w) {
  double met = 0, total = 0;
  for (unsigned c = 0; c < count; ++c) {
    const double wc = static_cast<double>(w[c]);
    total += wc;
    met += ((mask >> c) & 1u) ? wc : 0.0;
  }
  return total > 0 ? met / total : 0.0;
}

/// F_div from the summed entropy and the response length.
HIR_HOST_DEVICE inline double diversity(double entropy_sum, std::int64_t length, diversity_kind kind) {
  return kind == diversity_kind::token_mean ? entropy_sum / static_cast<double>(length) : entropy_sum;
}

/// The ranking key of an eligible candidate `index` (higher is better).
HIR_HOST_DEVICE inline double replay_key(replay_ranking ranking, double div, double integ, double lambda,
                                         std::uint64_t seed, std::int64_t step, std::size_t index) {
  switch (ranking) {
  case replay_ranking::integrity_only:
    return integ;
  case replay_ranking::diversity_only:
    return div;
  case replay_ranking::random:
    return philox{seed}.uniform(static_cast<std::uint64_t>(step), static_cast<std::uint64_t>(index));
  case replay_ranking::score:
  default:
    return div + lambda * integ;
  }
}

/// A ranked candidate: its key and its index in the candidate arrays.
struct ranked_candidate {
  double key;
  std::int64_t index;
};

/// The deterministic candidate order: higher key first, equal keys by lower index first. Keys are never NaN.
struct ranked_candidate_better {
  HIR_HOST_DEVICE bool operator()(const ranked_candidate& a, const ranked_candidate& b) const {
    return a.key > b.key || (a.key == b.key && a.index < b.index);
  }
};

/// Reward of an original row: the caller's score when given, else ILA (1 when every constraint is met, else 0).
template <class T>
HIR_HOST_DEVICE T original_reward(const T* scores, std::size_t i, std::uint64_t mask, unsigned count) {
  return scores ? scores[i] : (mask == low_bits(count) ? T(1) : T(0));
}

/// Group id of a replay-batch row of prompt `prompt` for `grouping` (B = num_prompts).
HIR_HOST_DEVICE inline std::int64_t replay_group_id(replay_grouping grouping, std::int64_t prompt,
                                                    std::size_t num_prompts, bool replay) {
  return grouping == replay_grouping::global                   ? 0
         : grouping == replay_grouping::join_source || !replay ? prompt
                                                               : static_cast<std::int64_t>(num_prompts) + prompt;
}

/// Truncated importance weight min(exp(x), cap) without overflow (x = log π(y|q') − log π(y|q), token or summed).
HIR_HOST_DEVICE inline double truncated_weight(double log_ratio, double log_cap) {
  return ::exp(log_ratio < log_cap ? log_ratio : log_cap);
}

} // namespace detail
} // namespace hir
