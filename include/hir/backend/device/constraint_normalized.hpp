// SPDX-License-Identifier: Apache-2.0
// Device implementation of constraint_normalized_advantages (GDPO) on Thrust: a min-reduction finds the first
// invalid group (one index read back, then one small issue record computed on the device for the message), a
// second the first non-finite weight; then one functor per group computes the combined z-scores r_i in double into a
// scratch array of N doubles (per-constraint counts on the thread's stack; hir::detail::constraint_group_z and
// constraint_member_sum, the CPU's functions, so r_i is computed by the same operations); the batch normalization is
// two double reductions (sum/min/max, then the centred sum of squares) and one transform. Scratch (from the tag's
// workspace, if any): N doubles.
#pragma once

#include <hir/advantages/constraint_normalized.hpp>
#include <hir/backend/device/group_advantages.hpp>
#include <hir/backend/device/rewards.hpp>
#include <hir/backend/device/tag.hpp>
#include <hir/detail/group_kernels.hpp>

#include <thrust/fill.h>
#include <thrust/for_each.h>
#include <thrust/functional.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/transform.h>
#include <thrust/transform_reduce.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace hir {
namespace backend {
namespace device {
namespace detail {

/// The first problem of group g in the CPU backend's order: 1 = members with different constraint counts (first
/// differing member), 2 = more constraints than weights, 3 = a group of one under singleton_policy::error, 0 = none.
struct hir_cn_issue {
  int kind;
  long long first; ///< the group's first sample
  unsigned count;  ///< its constraint count
  long long other; ///< kind 1: the first member with a different count
  unsigned other_count;
};

struct hir_cn_group_issue {
  const std::uint8_t* counts;
  group_ref<device_space> groups;
  bool weighted;
  std::size_t num_weights;
  bool singleton_error;
  HIR_HOST_DEVICE hir_cn_issue operator()(std::size_t g) const {
    const std::size_t b = groups.begin(g), e = groups.end(g), first = groups.sample(b);
    const unsigned n = counts[first];
    hir_cn_issue is{0, static_cast<long long>(first), n, -1, 0};
    for (std::size_t k = b + 1; k < e; ++k) {
      const std::size_t i = groups.sample(k);
      if (counts[i] != n) {
        is.kind = 1;
        is.other = static_cast<long long>(i);
        is.other_count = counts[i];
        return is;
      }
    }
    if (weighted && n > num_weights)
      is.kind = 2;
    else if (e - b == 1 && singleton_error)
      is.kind = 3;
    return is;
  }
};
struct hir_cn_group_bad {
  hir_cn_group_issue issue;
  HIR_HOST_DEVICE bool operator()(std::size_t g) const { return issue(g).kind != 0; }
};

/// r_i = Σ_c w_c z_ic for every member of group g, into r (double), by the CPU's functions.
template <class W>
struct hir_cn_group_sums {
  verdict_ref<device_space> v;
  group_ref<device_space> groups;
  const W* w; ///< nullptr: unit weights
  constraint_normalized_options o;
  double* r;
  HIR_HOST_DEVICE void operator()(std::size_t g) const {
    double met[max_constraints], unmet[max_constraints];
    const unsigned n = hir::detail::constraint_group_z(v.masks.data(), v.counts.data(), groups, g, o, met, unmet);
    for (std::size_t k = groups.begin(g), e = groups.end(g); k < e; ++k) {
      const std::size_t i = groups.sample(k);
      r[i] = hir::detail::constraint_member_sum(v.masks[i], n, w, met, unmet);
    }
  }
};

/// Sum, minimum and maximum of the r_i.
struct hir_cn_range {
  double sum, lo, hi;
};
struct hir_cn_range_of {
  HIR_HOST_DEVICE hir_cn_range operator()(double r) const { return {r, r, r}; }
};
struct hir_cn_range_plus {
  HIR_HOST_DEVICE hir_cn_range operator()(const hir_cn_range& a, const hir_cn_range& b) const {
    return {a.sum + b.sum, b.lo < a.lo ? b.lo : a.lo, b.hi > a.hi ? b.hi : a.hi};
  }
};

template <class T>
struct hir_cn_affine {
  double shift, scale;
  HIR_HOST_DEVICE T operator()(double r) const { return static_cast<T>((r - shift) * scale); }
};

} // namespace detail

template <class T, class W>
void constraint_normalized_advantages_impl(tag_t const& be, verdict_ref<device_space> v, group_ref<device_space> groups,
                                           span<const W, device_space> weights, bool weighted,
                                           span<T, device_space> out, constraint_normalized_options const& o) {
  constexpr const char* fn = "constraint_normalized_advantages";
  // Validation, before anything is written.
  const detail::hir_cn_group_issue issue{v.counts.data(), groups, weighted, weights.size(),
                                         o.singleton == singleton_policy::error};
  const long long bad = detail::first_index_where(be, groups.num_groups, detail::hir_cn_group_bad{issue});
  if (bad >= 0) {
    const detail::scratch_buffer<detail::hir_cn_issue> d_is(be, 1);
    thrust::transform(detail::policy(be), thrust::counting_iterator<std::size_t>(static_cast<std::size_t>(bad)),
                      thrust::counting_iterator<std::size_t>(static_cast<std::size_t>(bad) + 1), d_is.begin(), issue);
    const detail::hir_cn_issue is = to_host(d_is.view())[0]; // one record read back
    if (is.kind == 1)
      hir::detail::fail(fn, "group ", bad, " has members with different constraint counts (sample ", is.first, ": ",
                        is.count, ", sample ", is.other, ": ", is.other_count, ")");
    if (is.kind == 2)
      hir::detail::fail(fn, "sample ", is.first, " has ", is.count,
                        " constraints but weights.size() = ", weights.size());
    hir::detail::fail(fn, "group ", bad, " (sample ", is.first, ") has one sample and singleton_policy::error is set");
  }
  if (weighted) {
    const long long bw = detail::first_non_finite(be, weights.data(), weights.size());
    if (bw >= 0)
      hir::detail::fail(fn, "weights[", bw, "] = ", to_host(weights.subspan(static_cast<std::size_t>(bw), 1))[0],
                        " is not finite");
  }
  const std::size_t n = v.size();
  if (n == 0)
    return;
  const detail::scratch_buffer<double> r(be, n); // every sample is in one group: fully written
  thrust::for_each(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                   thrust::counting_iterator<std::size_t>(groups.num_groups),
                   detail::hir_cn_group_sums<W>{v, groups, weighted ? weights.data() : nullptr, o, r.data()});
  auto d_out = thrust::device_pointer_cast(out.data());
  if (!o.batch_normalize) {
    thrust::transform(detail::policy(be), r.begin(), r.end(), d_out, detail::hir_cn_affine<T>{0.0, 1.0});
    return;
  }
  const detail::hir_cn_range range =
      thrust::transform_reduce(detail::policy(be), r.begin(), r.end(), detail::hir_cn_range_of{},
                               detail::hir_cn_range{0.0, HUGE_VAL, -HUGE_VAL}, detail::hir_cn_range_plus{});
  const double dn = static_cast<double>(n);
  const double denom = o.batch_std == std_kind::unbiased ? dn - 1.0 : dn;
  if (range.lo == range.hi || denom <= 0.0) { // every r equal, or the std is undefined (TRL: NaN → 0)
    thrust::fill(detail::policy(be), d_out, d_out + n, T(0));
    return;
  }
  const double mean = range.sum / dn;
  const double ss = thrust::transform_reduce(detail::policy(be), r.begin(), r.end(), detail::hir_square_dev{mean}, 0.0,
                                             thrust::plus<double>());
  const double inv = 1.0 / (std::sqrt(ss / denom) + o.batch_epsilon);
  thrust::transform(detail::policy(be), r.begin(), r.end(), d_out, detail::hir_cn_affine<T>{mean, inv});
}

} // namespace device
} // namespace backend
} // namespace hir
