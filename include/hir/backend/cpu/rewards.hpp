// SPDX-License-Identifier: Apache-2.0
// CPU implementations of the reward-vector algorithms (hir/rewards/reward_vector.hpp). Inputs are validated in
// full before anything is written.
#pragma once

#include <hir/backend/cpu/tag.hpp>
#include <hir/rewards/reward_vector.hpp>

#include <cmath>

namespace hir {
namespace backend {
namespace cpu {

inline long long first_invalid_verdict_impl(tag_t const&, verdict_ref<host_space> v) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    const unsigned n = v.counts[i];
    if (n > max_constraints || (v.masks[i] & ~hir::detail::low_bits(n)) != 0)
      return static_cast<long long>(i);
  }
  return -1;
}

template <class T>
void instruction_rewards_impl(tag_t const&, verdict_ref<host_space> v, span<T, host_space> out) {
  for (std::size_t i = 0; i < v.size(); ++i)
    out[i] = v.masks[i] == hir::detail::low_bits(v.counts[i]) ? T(1) : T(0);
}

template <class T>
void constraint_rewards_impl(tag_t const&, verdict_ref<host_space> v, span<T, host_space> out) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    const unsigned n = v.counts[i];
    out[i] = n == 0 ? T(1) : static_cast<T>(static_cast<double>(hir::detail::popcount64(v.masks[i])) / n);
  }
}

template <class T, class W>
long long weighted_rewards_impl(tag_t const&, verdict_ref<host_space> v, span<const W, host_space> w,
                                std::size_t stride, span<T, host_space> out, weighted_reward_options const& opt) {
  for (std::size_t i = 0; i < v.size(); ++i) {
    const unsigned n = v.counts[i];
    if (n > stride)
      return static_cast<long long>(i);
    double sum = 0;
    for (unsigned c = 0; c < n; ++c) {
      const double wc = static_cast<double>(w[i * stride + c]);
      if (!(wc >= 0.0) || !std::isfinite(wc))
        return static_cast<long long>(i);
      sum += wc;
    }
    if (n > 0 && !(sum > 0.0))
      return static_cast<long long>(i);
  }
  for (std::size_t i = 0; i < v.size(); ++i) {
    const unsigned n = v.counts[i];
    if (n == 0) {
      out[i] = T(1);
      continue;
    }
    double sum = 0, met = 0;
    for (unsigned c = 0; c < n; ++c) {
      const double wc = static_cast<double>(w[i * stride + c]);
      sum += wc;
      met += ((v.masks[i] >> c) & 1u) ? wc : 0.0;
    }
    if (opt.level == weighted_reward_options::kind::constraint_level)
      out[i] = static_cast<T>(met / sum);
    else
      out[i] = met >= opt.threshold * sum ? T(1) : T(0);
  }
  return -1;
}

template <class T>
long long satisfaction_rates_impl(tag_t const&, verdict_ref<host_space> v, group_ref<host_space> groups,
                                  std::size_t stride, span<T, host_space> out) {
  for (std::size_t g = 0; g < groups.num_groups; ++g) {
    const unsigned n = v.counts[groups.sample(groups.begin(g))];
    if (n > stride)
      return static_cast<long long>(g);
    for (std::size_t k = groups.begin(g); k < groups.end(g); ++k)
      if (v.counts[groups.sample(k)] != n)
        return static_cast<long long>(g);
  }
  for (std::size_t g = 0; g < groups.num_groups; ++g) {
    const unsigned n = v.counts[groups.sample(groups.begin(g))];
    const double inv = 1.0 / static_cast<double>(groups.size(g));
    for (std::size_t c = 0; c < stride; ++c) {
      std::size_t met = 0;
      if (c < n)
        for (std::size_t k = groups.begin(g); k < groups.end(g); ++k)
          met += (v.masks[groups.sample(k)] >> c) & 1u;
      out[g * stride + c] = static_cast<T>(static_cast<double>(met) * inv);
    }
  }
  return -1;
}

} // namespace cpu
} // namespace backend
} // namespace hir
