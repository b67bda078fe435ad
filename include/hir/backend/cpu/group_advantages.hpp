// SPDX-License-Identifier: Apache-2.0
// CPU implementation of group_advantages: one validation pass (finite scores, singleton policy), then one fused pass
// per group (two-pass mean/variance in double on the group's values, which are cache-resident), shared with the
// device backend through hir/detail/group_kernels.hpp.
#pragma once

#include <hir/advantages/group_advantages.hpp>
#include <hir/backend/cpu/tag.hpp>
#include <hir/detail/group_kernels.hpp>

#include <algorithm>
#include <cmath>

namespace hir {
namespace backend {
namespace cpu {
namespace detail {

/// Index of the first non-finite value, or -1. Branch-free inner loop over blocks so it runs at read bandwidth.
template <class T>
long long first_non_finite(const T* x, std::size_t n) {
  constexpr std::size_t block = 1024;
  for (std::size_t start = 0; start < n; start += block) {
    const std::size_t end = std::min(n, start + block);
    T acc = 0;
    for (std::size_t i = start; i < end; ++i)
      acc += x[i] - x[i]; // 0 for finite x, NaN for ±inf and NaN
    if (acc != acc)
      for (std::size_t i = start; i < end; ++i)
        if (!std::isfinite(x[i]))
          return static_cast<long long>(i);
  }
  return -1;
}

/// Validates scores and group sizes for group-relative estimators; throws before anything is written.
template <class T>
void validate_group_scores(const char* fn, span<const T, host_space> scores, group_ref<host_space> groups,
                           singleton_policy singleton) {
  const long long bad = first_non_finite(scores.data(), scores.size());
  if (bad >= 0)
    hir::detail::fail(fn, "scores[", bad, "] = ", scores[static_cast<std::size_t>(bad)], " is not finite");
  if (singleton == singleton_policy::error)
    for (std::size_t g = 0; g < groups.num_groups; ++g)
      if (groups.size(g) == 1)
        hir::detail::fail(fn, "group ", g, " (sample ", groups.sample(groups.begin(g)),
                          ") has one sample and singleton_policy::error is set");
}

/// Standard deviation of all scores (two-pass, double).
template <class T>
double batch_std(span<const T, host_space> s, std_kind kind) {
  const std::size_t n = s.size();
  if (n == 0)
    return 0.0;
  double sum = 0;
  for (std::size_t i = 0; i < n; ++i)
    sum += s[i];
  const double mean = sum / static_cast<double>(n);
  double ss = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double d = s[i] - mean;
    ss += d * d;
  }
  const double denom = kind == std_kind::unbiased ? static_cast<double>(n) - 1.0 : static_cast<double>(n);
  return denom > 0 ? std::sqrt(ss / denom) : std::numeric_limits<double>::quiet_NaN();
}

} // namespace detail

template <class T>
void group_advantages_impl(tag_t const&, span<const T, host_space> scores, group_ref<host_space> groups,
                           span<T, host_space> out, group_advantage_options const& opt) {
  detail::validate_group_scores("group_advantages", scores, groups, opt.singleton);
  double batch_denominator = 1.0;
  if (opt.scale == scale_kind::batch_std)
    batch_denominator = hir::detail::batch_denominator(detail::batch_std(scores, opt.std), opt.epsilon);
  if (groups.contiguous())
    for (std::size_t g = 0; g < groups.num_groups; ++g)
      hir::detail::group_advantages_one<true>(scores.data(), groups, g, out.data(), opt, batch_denominator);
  else
    for (std::size_t g = 0; g < groups.num_groups; ++g)
      hir::detail::group_advantages_one<false>(scores.data(), groups, g, out.data(), opt, batch_denominator);
}

} // namespace cpu
} // namespace backend
} // namespace hir
