// SPDX-License-Identifier: Apache-2.0
// CPU implementation of constraint_normalized_advantages: a validation pass over the groups, then the combined
// per-constraint z-scores r_i group by group (constraint counts per group on the stack, no heap scratch), visited
// once more per batch-normalization pass (mean and range, sum of squared deviations, output).
#pragma once

#include <hir/advantages/constraint_normalized.hpp>
#include <hir/backend/cpu/rewards.hpp>
#include <hir/backend/cpu/tag.hpp>
#include <hir/detail/group_kernels.hpp>

#include <cmath>
#include <cstdint>

namespace hir {
namespace backend {
namespace cpu {
namespace detail {

/// Calls f(sample, r_sample) for every sample, group by group, with r = Σ_c w_c z_c in double (the shared
/// hir::detail::constraint_group_z / constraint_member_sum, as on the device).
template <class W, class F>
void for_each_constraint_sum(verdict_ref<host_space> v, group_ref<host_space> groups, const W* w,
                             const constraint_normalized_options& o, F&& f) {
  double met[max_constraints], unmet[max_constraints];
  for (std::size_t g = 0; g < groups.num_groups; ++g) {
    const unsigned n = hir::detail::constraint_group_z(v.masks.data(), v.counts.data(), groups, g, o, met, unmet);
    for (std::size_t k = groups.begin(g), e = groups.end(g); k < e; ++k) {
      const std::size_t i = groups.sample(k);
      f(i, hir::detail::constraint_member_sum(v.masks[i], n, w, met, unmet));
    }
  }
}

} // namespace detail

template <class T, class W>
void constraint_normalized_advantages_impl(tag_t const&, verdict_ref<host_space> v, group_ref<host_space> groups,
                                           span<const W, host_space> weights, bool weighted, span<T, host_space> out,
                                           constraint_normalized_options const& o) {
  constexpr const char* fn = "constraint_normalized_advantages";
  // Validation, before anything is written.
  for (std::size_t g = 0; g < groups.num_groups; ++g) {
    const std::size_t b = groups.begin(g), e = groups.end(g);
    const std::size_t first = groups.sample(b);
    const unsigned n = v.counts[first];
    for (std::size_t k = b + 1; k < e; ++k)
      if (v.counts[groups.sample(k)] != n)
        hir::detail::fail(fn, "group ", g, " has members with different constraint counts (sample ", first, ": ", n,
                          ", sample ", groups.sample(k), ": ", static_cast<unsigned>(v.counts[groups.sample(k)]), ")");
    if (weighted && n > weights.size())
      hir::detail::fail(fn, "sample ", first, " has ", n, " constraints but weights.size() = ", weights.size());
    if (e - b == 1 && o.singleton == singleton_policy::error)
      hir::detail::fail(fn, "group ", g, " (sample ", first, ") has one sample and singleton_policy::error is set");
  }
  if (weighted)
    for (std::size_t c = 0; c < weights.size(); ++c)
      if (!std::isfinite(static_cast<double>(weights[c])))
        hir::detail::fail(fn, "weights[", c, "] = ", weights[c], " is not finite");
  const W* w = weighted ? weights.data() : nullptr;

  if (!o.batch_normalize) {
    detail::for_each_constraint_sum(v, groups, w, o, [&](std::size_t i, double r) { out[i] = static_cast<T>(r); });
    return;
  }
  const std::size_t n = v.size();
  if (n == 0)
    return;
  double sum = 0.0, lo = 0.0, hi = 0.0;
  bool first = true;
  detail::for_each_constraint_sum(v, groups, w, o, [&](std::size_t, double r) {
    sum += r;
    lo = first || r < lo ? r : lo;
    hi = first || r > hi ? r : hi;
    first = false;
  });
  const double dn = static_cast<double>(n);
  const double denom = o.batch_std == std_kind::unbiased ? dn - 1.0 : dn;
  if (lo == hi || denom <= 0.0) { // every r equal, or the std is undefined (TRL: NaN → 0)
    for (std::size_t i = 0; i < n; ++i)
      out[i] = T(0);
    return;
  }
  const double mean = sum / dn;
  double ss = 0.0;
  detail::for_each_constraint_sum(v, groups, w, o, [&](std::size_t, double r) { ss += (r - mean) * (r - mean); });
  const double inv = 1.0 / (std::sqrt(ss / denom) + o.batch_epsilon);
  detail::for_each_constraint_sum(v, groups, w, o,
                                  [&](std::size_t i, double r) { out[i] = static_cast<T>((r - mean) * inv); });
}

} // namespace cpu
} // namespace backend
} // namespace hir
