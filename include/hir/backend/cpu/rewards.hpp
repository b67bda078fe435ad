// SPDX-License-Identifier: Apache-2.0
// CPU implementations of the reward-vector algorithms (hir/rewards/reward_vector.hpp): loops over the shared kernels
// of hir/detail/reward_kernels.hpp. Inputs are validated in full before anything is written.
#pragma once

#include <hir/backend/cpu/tag.hpp>
#include <hir/detail/reward_kernels.hpp>
#include <hir/rewards/reward_vector.hpp>

namespace hir {
namespace backend {
namespace cpu {

inline long long first_invalid_verdict_impl(tag_t const&, verdict_ref<host_space> v) {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (hir::detail::verdict_invalid(v.masks[i], v.counts[i]))
      return static_cast<long long>(i);
  return -1;
}

template <class T>
void instruction_rewards_impl(tag_t const&, verdict_ref<host_space> v, span<T, host_space> out) {
  for (std::size_t i = 0; i < v.size(); ++i)
    out[i] = static_cast<T>(hir::detail::instruction_reward(v.masks[i], v.counts[i]));
}

template <class T>
void constraint_rewards_impl(tag_t const&, verdict_ref<host_space> v, span<T, host_space> out) {
  for (std::size_t i = 0; i < v.size(); ++i)
    out[i] = static_cast<T>(hir::detail::constraint_reward(v.masks[i], v.counts[i]));
}

template <class T, class W>
long long weighted_rewards_impl(tag_t const&, verdict_ref<host_space> v, span<const W, host_space> w,
                                std::size_t stride, span<T, host_space> out, weighted_reward_options const& opt) {
  for (std::size_t i = 0; i < v.size(); ++i)
    if (hir::detail::weights_invalid(w.data(), i, stride, v.counts[i]))
      return static_cast<long long>(i);
  const bool ila = opt.level == weighted_reward_options::kind::instruction_level;
  for (std::size_t i = 0; i < v.size(); ++i)
    out[i] =
        static_cast<T>(hir::detail::weighted_reward(w.data(), i, stride, v.masks[i], v.counts[i], ila, opt.threshold));
  return -1;
}

template <class T>
long long satisfaction_rates_impl(tag_t const&, verdict_ref<host_space> v, group_ref<host_space> groups,
                                  std::size_t stride, span<T, host_space> out) {
  for (std::size_t g = 0; g < groups.num_groups; ++g)
    if (hir::detail::group_counts_invalid(v.counts.data(), groups, g, stride))
      return static_cast<long long>(g);
  for (std::size_t g = 0; g < groups.num_groups; ++g)
    for (std::size_t c = 0; c < stride; ++c)
      out[g * stride + c] =
          static_cast<T>(hir::detail::satisfaction_rate(v.masks.data(), v.counts.data(), groups, g, c));
  return -1;
}

} // namespace cpu
} // namespace backend
} // namespace hir
