// SPDX-License-Identifier: Apache-2.0
// Device implementation of group_advantages on Thrust: one validation reduction (first non-finite score, smallest
// group), then one functor per group running the same kernel as the CPU backend (hir/detail/group_kernels.hpp).
// Portable to Thrust's CPP, OMP and CUDA systems; on CUDA, uniform groups of 2..32 take the warp-shuffle fast path
// of detail/group_advantages.cuh (HIR_ENABLE_CUB=0 keeps the portable path, so it can be tested on a GPU too).
#pragma once

#include <hir/advantages/group_advantages.hpp>
#include <hir/backend/device/tag.hpp>
#include <hir/detail/group_kernels.hpp>

#include <thrust/for_each.h>
#include <thrust/functional.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/transform_reduce.h>

#include <cstdint>
#include <limits>

#if HIR_DEVICE_IS_CUDA && HIR_ENABLE_CUB
#  include <hir/backend/device/detail/group_advantages.cuh>
#endif

namespace hir {
namespace backend {
namespace device {
namespace detail {

/// i if x[i] is not finite, else a sentinel; reduced with minimum to find the first bad index.
template <class T>
struct hir_non_finite_index {
  const T* x;
  HIR_HOST_DEVICE long long operator()(long long i) const {
    const T v = x[i];
    return (v - v == v - v) ? std::numeric_limits<long long>::max() : i; // v − v is NaN iff v is ±inf or NaN
  }
};

template <class Ref>
struct hir_group_size_of {
  Ref groups;
  HIR_HOST_DEVICE long long operator()(long long g) const { return static_cast<long long>(groups.size(g)); }
};

template <class T>
struct hir_to_double {
  HIR_HOST_DEVICE double operator()(T v) const { return static_cast<double>(v); }
};
struct hir_square_dev {
  double mean;
  template <class T>
  HIR_HOST_DEVICE double operator()(T v) const {
    const double d = static_cast<double>(v) - mean;
    return d * d;
  }
};

template <bool Contiguous, class T>
struct hir_group_advantages_functor {
  const T* s;
  group_ref<device_space> groups;
  T* out;
  group_advantage_options opt;
  double batch_denominator;
  HIR_HOST_DEVICE void operator()(std::size_t g) const {
    hir::detail::group_advantages_one<Contiguous>(s, groups, g, out, opt, batch_denominator);
  }
};

/// First non-finite element of a device array, or -1 (one scalar read back).
template <class T>
long long first_non_finite(tag_t const& be, const T* x, std::size_t n) {
  if (n == 0)
    return -1;
  const long long r = thrust::transform_reduce(policy(be), thrust::counting_iterator<long long>(0),
                                               thrust::counting_iterator<long long>(static_cast<long long>(n)),
                                               hir_non_finite_index<T>{x}, std::numeric_limits<long long>::max(),
                                               thrust::minimum<long long>());
  return r == std::numeric_limits<long long>::max() ? -1 : r;
}

} // namespace detail

template <class T>
void group_advantages_impl(tag_t const& be, span<const T, device_space> scores, group_ref<device_space> groups,
                           span<T, device_space> out, group_advantage_options const& opt) {
  constexpr const char* fn = "group_advantages";
  const long long bad = detail::first_non_finite(be, scores.data(), scores.size());
  if (bad >= 0)
    hir::detail::fail(fn, "scores[", bad, "] = ", to_host(scores.subspan(static_cast<std::size_t>(bad), 1))[0],
                      " is not finite");
  if (opt.singleton == singleton_policy::error && groups.num_groups > 0) {
    const long long smallest =
        thrust::transform_reduce(detail::policy(be), thrust::counting_iterator<long long>(0),
                                 thrust::counting_iterator<long long>(static_cast<long long>(groups.num_groups)),
                                 detail::hir_group_size_of<group_ref<device_space>>{groups},
                                 std::numeric_limits<long long>::max(), thrust::minimum<long long>());
    if (smallest == 1)
      hir::detail::fail(fn, "a group has one sample and singleton_policy::error is set");
  }
  double batch_denominator = 1.0;
  if (opt.scale == scale_kind::batch_std) {
    const auto n = scores.size();
    double sd = 0.0;
    if (n > 0) {
      auto first = thrust::device_pointer_cast(scores.data());
      const double sum = thrust::transform_reduce(detail::policy(be), first, first + n, detail::hir_to_double<T>{}, 0.0,
                                                  thrust::plus<double>());
      const double mean = sum / static_cast<double>(n);
      const double ss = thrust::transform_reduce(detail::policy(be), first, first + n, detail::hir_square_dev{mean},
                                                 0.0, thrust::plus<double>());
      const double denom = opt.std == std_kind::unbiased ? static_cast<double>(n) - 1.0 : static_cast<double>(n);
      sd = denom > 0 ? ::sqrt(ss / denom) : std::numeric_limits<double>::quiet_NaN();
    }
    batch_denominator = hir::detail::batch_denominator(sd, opt.epsilon);
  }
#if HIR_DEVICE_IS_CUDA && HIR_ENABLE_CUB
  // CUDA fast path: uniform contiguous groups of 2..32 (warp-segment reductions, coalesced).
  if (groups.uniform_size >= 2 && groups.contiguous() &&
      detail::group_advantages_uniform_cuda(scores.data(), out.data(), scores.size(), groups.uniform_size, opt,
                                            batch_denominator, be.stream))
    return;
#endif
  auto first = thrust::counting_iterator<std::size_t>(0);
  auto last = first + groups.num_groups;
  if (groups.contiguous())
    thrust::for_each(
        detail::policy(be), first, last,
        detail::hir_group_advantages_functor<true, T>{scores.data(), groups, out.data(), opt, batch_denominator});
  else
    thrust::for_each(
        detail::policy(be), first, last,
        detail::hir_group_advantages_functor<false, T>{scores.data(), groups, out.data(), opt, batch_denominator});
}

} // namespace device
} // namespace backend
} // namespace hir
