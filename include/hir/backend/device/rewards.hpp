// SPDX-License-Identifier: Apache-2.0
// Device implementations of the reward-vector algorithms on Thrust: a min-reduction finds the first invalid sample
// or group (one scalar read back, so errors are raised before anything is written), then one transform per output.
#pragma once

#include <hir/backend/device/tag.hpp>
#include <hir/detail/reward_kernels.hpp>
#include <hir/rewards/reward_vector.hpp>

#include <thrust/for_each.h>
#include <thrust/functional.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/transform.h>
#include <thrust/transform_reduce.h>

#include <limits>

namespace hir {
namespace backend {
namespace device {
namespace detail {

template <class Pred>
struct hir_index_if {
  Pred p;
  HIR_HOST_DEVICE long long operator()(long long i) const {
    return p(static_cast<std::size_t>(i)) ? i : std::numeric_limits<long long>::max();
  }
};

/// Smallest index i in [0, n) with pred(i), or -1 (one scalar read back).
template <class Pred>
long long first_index_where(tag_t const& be, std::size_t n, Pred pred) {
  if (n == 0)
    return -1;
  const long long r = thrust::transform_reduce(policy(be), thrust::counting_iterator<long long>(0),
                                               thrust::counting_iterator<long long>(static_cast<long long>(n)),
                                               hir_index_if<Pred>{pred}, std::numeric_limits<long long>::max(),
                                               thrust::minimum<long long>());
  return r == std::numeric_limits<long long>::max() ? -1 : r;
}

struct hir_verdict_invalid_at {
  const std::uint64_t* masks;
  const std::uint8_t* counts;
  HIR_HOST_DEVICE bool operator()(std::size_t i) const { return hir::detail::verdict_invalid(masks[i], counts[i]); }
};

template <class T>
struct hir_reward_at {
  const std::uint64_t* masks;
  const std::uint8_t* counts;
  T* out;
  bool instruction_level;
  HIR_HOST_DEVICE void operator()(std::size_t i) const {
    out[i] = static_cast<T>(instruction_level ? hir::detail::instruction_reward(masks[i], counts[i])
                                              : hir::detail::constraint_reward(masks[i], counts[i]));
  }
};

template <class W>
struct hir_weights_invalid_at {
  const W* w;
  const std::uint8_t* counts;
  std::size_t stride;
  HIR_HOST_DEVICE bool operator()(std::size_t i) const { return hir::detail::weights_invalid(w, i, stride, counts[i]); }
};

template <class T, class W>
struct hir_weighted_reward_at {
  const W* w;
  const std::uint64_t* masks;
  const std::uint8_t* counts;
  std::size_t stride;
  T* out;
  bool instruction_level;
  double threshold;
  HIR_HOST_DEVICE void operator()(std::size_t i) const {
    out[i] =
        static_cast<T>(hir::detail::weighted_reward(w, i, stride, masks[i], counts[i], instruction_level, threshold));
  }
};

struct hir_group_counts_invalid_at {
  const std::uint8_t* counts;
  group_ref<device_space> groups;
  std::size_t stride;
  HIR_HOST_DEVICE bool operator()(std::size_t g) const {
    return hir::detail::group_counts_invalid(counts, groups, g, stride);
  }
};

template <class T>
struct hir_rate_at {
  const std::uint64_t* masks;
  const std::uint8_t* counts;
  group_ref<device_space> groups;
  std::size_t stride;
  T* out;
  HIR_HOST_DEVICE void operator()(std::size_t k) const {
    out[k] = static_cast<T>(hir::detail::satisfaction_rate(masks, counts, groups, k / stride, k % stride));
  }
};

} // namespace detail

inline long long first_invalid_verdict_impl(tag_t const& be, verdict_ref<device_space> v) {
  return detail::first_index_where(be, v.size(), detail::hir_verdict_invalid_at{v.masks.data(), v.counts.data()});
}

template <class T>
void instruction_rewards_impl(tag_t const& be, verdict_ref<device_space> v, span<T, device_space> out) {
  thrust::for_each(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                   thrust::counting_iterator<std::size_t>(v.size()),
                   detail::hir_reward_at<T>{v.masks.data(), v.counts.data(), out.data(), true});
}

template <class T>
void constraint_rewards_impl(tag_t const& be, verdict_ref<device_space> v, span<T, device_space> out) {
  thrust::for_each(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                   thrust::counting_iterator<std::size_t>(v.size()),
                   detail::hir_reward_at<T>{v.masks.data(), v.counts.data(), out.data(), false});
}

template <class T, class W>
long long weighted_rewards_impl(tag_t const& be, verdict_ref<device_space> v, span<const W, device_space> w,
                                std::size_t stride, span<T, device_space> out, weighted_reward_options const& opt) {
  const long long bad =
      detail::first_index_where(be, v.size(), detail::hir_weights_invalid_at<W>{w.data(), v.counts.data(), stride});
  if (bad >= 0)
    return bad;
  thrust::for_each(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                   thrust::counting_iterator<std::size_t>(v.size()),
                   detail::hir_weighted_reward_at<T, W>{w.data(), v.masks.data(), v.counts.data(), stride, out.data(),
                                                        opt.level == weighted_reward_options::kind::instruction_level,
                                                        opt.threshold});
  return -1;
}

template <class T>
long long satisfaction_rates_impl(tag_t const& be, verdict_ref<device_space> v, group_ref<device_space> groups,
                                  std::size_t stride, span<T, device_space> out) {
  const long long bad = detail::first_index_where(be, groups.num_groups,
                                                  detail::hir_group_counts_invalid_at{v.counts.data(), groups, stride});
  if (bad >= 0)
    return bad;
  thrust::for_each(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                   thrust::counting_iterator<std::size_t>(groups.num_groups * stride),
                   detail::hir_rate_at<T>{v.masks.data(), v.counts.data(), groups, stride, out.data()});
  return -1;
}

} // namespace device
} // namespace backend
} // namespace hir
