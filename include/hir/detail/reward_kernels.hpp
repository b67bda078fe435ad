// SPDX-License-Identifier: Apache-2.0
// Per-sample and per-group reward-vector math shared by the CPU loops and the device backend's Thrust functors.
#pragma once

#include <hir/config.hpp>
#include <hir/core/groups.hpp>
#include <hir/rewards/reward_vector.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace hir {
namespace detail {

/// True if sample i's verdicts are malformed: more than 64 constraints, or bits set at or above its count.
HIR_HOST_DEVICE inline bool verdict_invalid(std::uint64_t mask, unsigned count) {
  return count > max_constraints || (mask & ~low_bits(count)) != 0;
}

HIR_HOST_DEVICE inline double instruction_reward(std::uint64_t mask, unsigned count) {
  return mask == low_bits(count) ? 1.0 : 0.0;
}

HIR_HOST_DEVICE inline double constraint_reward(std::uint64_t mask, unsigned count) {
  return count == 0 ? 1.0 : static_cast<double>(popcount64(mask)) / count;
}

/// True if sample i's weights are unusable: count > stride, a negative or non-finite weight, or a zero sum.
template <class W>
HIR_HOST_DEVICE bool weights_invalid(const W* w, std::size_t i, std::size_t stride, unsigned count) {
  if (count > stride)
    return true;
  double sum = 0;
  for (unsigned c = 0; c < count; ++c) {
    const double wc = static_cast<double>(w[i * stride + c]);
    if (!(wc >= 0.0) || !(wc - wc == 0.0))
      return true;
    sum += wc;
  }
  return count > 0 && !(sum > 0.0);
}

/// Weighted constraint-level (fraction of weight met) or instruction-level (met ≥ threshold · total) reward.
template <class W>
HIR_HOST_DEVICE double weighted_reward(const W* w, std::size_t i, std::size_t stride, std::uint64_t mask,
                                       unsigned count, bool instruction_level, double threshold) {
  if (count == 0)
    return 1.0;
  double sum = 0, met = 0;
  for (unsigned c = 0; c < count; ++c) {
    const double wc = static_cast<double>(w[i * stride + c]);
    sum += wc;
    met += ((mask >> c) & 1u) ? wc : 0.0;
  }
  return instruction_level ? (met >= threshold * sum ? 1.0 : 0.0) : met / sum;
}

/// True if group g's members disagree on their constraint count or it exceeds stride.
template <class Ref>
HIR_HOST_DEVICE bool group_counts_invalid(const std::uint8_t* counts, const Ref& groups, std::size_t g,
                                          std::size_t stride) {
  const unsigned n = counts[groups.sample(groups.begin(g))];
  if (n > stride)
    return true;
  for (std::size_t k = groups.begin(g); k < groups.end(g); ++k)
    if (counts[groups.sample(k)] != n)
      return true;
  return false;
}

/// Satisfaction rate of constraint slot c in group g (0 for slots at or beyond the group's count).
template <class Ref>
HIR_HOST_DEVICE double satisfaction_rate(const std::uint64_t* masks, const std::uint8_t* counts, const Ref& groups,
                                         std::size_t g, std::size_t c) {
  const unsigned n = counts[groups.sample(groups.begin(g))];
  if (c >= n)
    return 0.0;
  std::size_t met = 0;
  for (std::size_t k = groups.begin(g); k < groups.end(g); ++k)
    met += (masks[groups.sample(k)] >> c) & 1u;
  return static_cast<double>(met) / static_cast<double>(groups.size(g));
}

} // namespace detail
} // namespace hir
