// SPDX-License-Identifier: Apache-2.0
// Device implementation of reinforce_pp_advantages on Thrust. Validation reads back at most a few scalars, in the
// CPU backend's order (scores, groups of one, then row by row: mask values, empty rows, non-finite log-probs):
// (1) reduce_by_key over the row index gives per-row records (valid count, first mask value above 1, first
// non-finite log-prob, last valid position, Σ_t r_t of the KL penalties); (2) group baselines run one functor per
// group on a B-double row-value array; (3) the returns G_t = r_t + γ·m_{t+1}·G_{t+1} are one inclusive scan over the
// reversed batch of affine maps g ↦ b_t + a_t·g composed right to left (a_t = 0 at a row's last position, so rows
// never mix and no keys are needed); (4) whitening statistics are two double reductions (mean, then the centred sum
// of squares) over the valid tokens; (5) one transform writes the output. The KL penalty is the shared
// hir::detail::reinforce_kl_reward and the group baselines and whitening scale are the CPU's (hir/detail/
// group_kernels.hpp). Scratch (from the tag's workspace, if any): B row records and B doubles, plus B·L doubles for
// the returns (not for the tiled group_mean_of_return baseline). Results match the CPU within rounding (the scan and
// the reductions associate differently): |Δ| ≲ 1e-12·(|A| + 1) in double.
#pragma once

#include <hir/advantages/reinforce_pp.hpp>
#include <hir/backend/device/group_advantages.hpp> // detail::first_non_finite
#include <hir/backend/device/rewards.hpp>
#include <hir/backend/device/tag.hpp>
#include <hir/detail/group_kernels.hpp>

#include <thrust/fill.h>
#include <thrust/for_each.h>
#include <thrust/functional.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/discard_iterator.h>
#include <thrust/iterator/reverse_iterator.h>
#include <thrust/iterator/transform_iterator.h>
#include <thrust/iterator/transform_output_iterator.h>
#include <thrust/reduce.h>
#include <thrust/scan.h>
#include <thrust/transform.h>
#include <thrust/transform_reduce.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

namespace hir {
namespace backend {
namespace device {
namespace detail {

/// Per-row record: valid tokens, first column with a mask value above 1, first valid column with a non-finite
/// old/ref log-prob (both LLONG_MAX when none), last valid column (−1 when none), Σ_t −β·k_t·m_t.
struct hir_rpp_row {
  long long count;
  long long first_big;
  long long first_non_finite;
  long long last;
  double kl_sum;
};
inline constexpr long long hir_rpp_none = std::numeric_limits<long long>::max();

struct hir_rpp_row_plus {
  HIR_HOST_DEVICE hir_rpp_row operator()(const hir_rpp_row& a, const hir_rpp_row& b) const {
    return {a.count + b.count, a.first_big < b.first_big ? a.first_big : b.first_big,
            a.first_non_finite < b.first_non_finite ? a.first_non_finite : b.first_non_finite,
            a.last > b.last ? a.last : b.last, a.kl_sum + b.kl_sum};
  }
};

template <class T>
struct hir_rpp_row_token {
  const std::uint8_t* mask;
  const T* old_lp;
  const T* ref_lp;
  std::size_t length;
  bool kl;
  reinforce_pp_options o;
  HIR_HOST_DEVICE hir_rpp_row operator()(std::size_t k) const {
    const long long t = static_cast<long long>(k % length);
    const unsigned m = mask[k];
    hir_rpp_row r{0, hir_rpp_none, hir_rpp_none, -1, 0.0};
    if (m > 1)
      r.first_big = t;
    if (m == 0)
      return r;
    r.count = 1;
    r.last = t;
    if (kl) {
      const T a = old_lp[k], b = ref_lp[k];
      if (!(a - a == a - a) || !(b - b == b - b))
        r.first_non_finite = t;
      else
        r.kl_sum = hir::detail::reinforce_kl_reward(a, b, o);
    }
    return r;
  }
};

struct hir_rpp_row_of {
  std::size_t length;
  HIR_HOST_DEVICE std::size_t operator()(std::size_t k) const { return k / length; }
};

struct hir_rpp_row_count {
  HIR_HOST_DEVICE double operator()(const hir_rpp_row& r) const { return static_cast<double>(r.count); }
};

struct hir_rpp_row_bad {
  const hir_rpp_row* rows;
  HIR_HOST_DEVICE bool operator()(std::size_t i) const {
    const hir_rpp_row& r = rows[i];
    return r.first_big != hir_rpp_none || r.count == 0 || r.first_non_finite != hir_rpp_none;
  }
};

struct hir_rpp_singleton_at {
  group_ref<device_space> groups;
  HIR_HOST_DEVICE bool operator()(std::size_t g) const { return groups.size(g) == 1; }
};

template <class T>
struct hir_rpp_to_double {
  HIR_HOST_DEVICE double operator()(T v) const { return static_cast<double>(v); }
};

/// v[i] −= μ_g over the rows of group g (μ_g = 0 or the own value for a group of one, per `singleton`).
struct hir_rpp_group_mean {
  group_ref<device_space> groups;
  double* v;
  singleton_policy singleton;
  HIR_HOST_DEVICE void operator()(std::size_t g) const {
    hir::detail::reinforce_subtract_group_mean(groups, g, v, singleton);
  }
};

/// v[i] += Σ_t r_t of the row (the tiled baseline's a_i before the group mean).
struct hir_rpp_add_kl_sum {
  HIR_HOST_DEVICE double operator()(double v, const hir_rpp_row& r) const { return v + r.kl_sum; }
};

/// The affine map g ↦ b + a·g of one token: G_t = b_t + a_t·G_{t+1}.
struct hir_rpp_affine {
  double a;
  double b;
};
/// Scan operator over the reversed batch: `later` is the composition of the maps of positions after t, `now` is
/// position t's map; the result is now ∘ later (function composition is associative).
struct hir_rpp_compose {
  HIR_HOST_DEVICE hir_rpp_affine operator()(const hir_rpp_affine& later, const hir_rpp_affine& now) const {
    return {now.a * later.a, now.b + now.a * later.b};
  }
};
struct hir_rpp_take_b {
  HIR_HOST_DEVICE double operator()(const hir_rpp_affine& f) const { return f.b; }
};

/// The affine map of token k: b = (m_t·(−β·k_t) + [t = T_i]·c_i), a = γ·m_{t+1} (0 at the last column).
template <class T>
struct hir_rpp_token_map {
  const std::uint8_t* mask;
  const T* old_lp;
  const T* ref_lp;
  const hir_rpp_row* rows;
  const double* terminal;
  std::size_t length;
  bool kl;
  reinforce_pp_options o;
  HIR_HOST_DEVICE hir_rpp_affine operator()(std::size_t k) const {
    const std::size_t i = k / length, t = k % length;
    double b = 0.0;
    if (mask[k] != 0) {
      if (kl)
        b = hir::detail::reinforce_kl_reward(old_lp[k], ref_lp[k], o);
      if (static_cast<long long>(t) == rows[i].last)
        b += terminal[i];
    }
    const double a = t + 1 < length ? o.gamma * static_cast<double>(mask[k + 1]) : 0.0;
    return {a, b};
  }
};

/// Σ m·(G − shift) and Σ m·(G − shift)² over tokens (shift = 0: the mean pass; shift = μ: the variance pass).
struct hir_rpp_moment {
  double s1;
  double s2;
};
struct hir_rpp_moment_plus {
  HIR_HOST_DEVICE hir_rpp_moment operator()(const hir_rpp_moment& a, const hir_rpp_moment& b) const {
    return {a.s1 + b.s1, a.s2 + b.s2};
  }
};
struct hir_rpp_token_moment {
  const std::uint8_t* mask;
  const double* g;
  double shift;
  HIR_HOST_DEVICE hir_rpp_moment operator()(std::size_t k) const {
    if (mask[k] == 0)
      return {0.0, 0.0};
    const double d = g[k] - shift;
    return {d, d * d};
  }
};
/// The same over rows for the tiled baseline, weighted by the row's valid count.
struct hir_rpp_row_moment {
  const hir_rpp_row* rows;
  const double* v;
  double shift;
  HIR_HOST_DEVICE hir_rpp_moment operator()(std::size_t i) const {
    const double n = static_cast<double>(rows[i].count), d = v[i] - shift;
    return {n * d, n * d * d};
  }
};

/// whiten(a) = (a − center)·scale + add at valid tokens, 0 elsewhere; `per_row` reads v[k / L] instead of v[k].
template <class T>
struct hir_rpp_output {
  const std::uint8_t* mask;
  const double* v;
  std::size_t length;
  bool per_row;
  double center, scale, add;
  T* out;
  HIR_HOST_DEVICE void operator()(std::size_t k) const {
    const double a = v[per_row ? k / length : k];
    out[k] = mask[k] != 0 ? static_cast<T>((a - center) * scale + add) : T(0);
  }
};

/// Sample of the first slot of group g (at most two scalars read back).
inline std::size_t group_first_sample(group_ref<device_space> groups, std::size_t g) {
  const std::size_t b = groups.uniform_size ? g * groups.uniform_size
                                            : static_cast<std::size_t>(to_host(groups.offsets.subspan(g, 1))[0]);
  return groups.members.empty() ? b : static_cast<std::size_t>(to_host(groups.members.subspan(b, 1))[0]);
}

} // namespace detail

template <class T>
void reinforce_pp_advantages_impl(tag_t const& be, span<const T, device_space> scores,
                                  token_batch_ref<T, device_space> tb, group_ref<device_space> groups,
                                  span<T, device_space> out, reinforce_pp_options const& o) {
  constexpr const char* fn = "reinforce_pp_advantages";
  const std::size_t B = tb.batch, L = tb.length, n = B * L;
  if (B == 0)
    return;
  const bool kl = o.kl_coef > 0.0 && o.kl != kl_estimator::none;
  const std::uint8_t* mask = tb.mask.data();
  const T* old_lp = kl ? tb.old_logp.data() : nullptr;
  const T* ref_lp = kl ? tb.ref_logp.data() : nullptr;

  // Scores, then groups of one.
  const long long bad_score = detail::first_non_finite(be, scores.data(), B);
  if (bad_score >= 0)
    hir::detail::fail(fn, "scores[", bad_score,
                      "] = ", to_host(scores.subspan(static_cast<std::size_t>(bad_score), 1))[0], " is not finite");
  const bool grouped = o.baseline != reinforce_baseline::none;
  if (grouped && o.singleton == singleton_policy::error) {
    const long long g = detail::first_index_where(be, groups.num_groups, detail::hir_rpp_singleton_at{groups});
    if (g >= 0)
      hir::detail::fail(fn, "group ", g, " (row ", detail::group_first_sample(groups, static_cast<std::size_t>(g)),
                        ") has one row and singleton_policy::error is set");
  }

  // Row records, then the first row with a problem.
  const detail::scratch_buffer<detail::hir_rpp_row> rows(be, B);
  if (n == 0) {
    thrust::fill(detail::policy(be), rows.begin(), rows.end(),
                 detail::hir_rpp_row{0, detail::hir_rpp_none, detail::hir_rpp_none, -1, 0.0});
  } else {
    auto keys = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0), detail::hir_rpp_row_of{L});
    auto vals = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0),
                                                detail::hir_rpp_row_token<T>{mask, old_lp, ref_lp, L, kl, o});
    thrust::reduce_by_key(detail::policy(be), keys, keys + n, vals, thrust::make_discard_iterator(), rows.begin(),
                          thrust::equal_to<std::size_t>(), detail::hir_rpp_row_plus{});
  }
  const detail::hir_rpp_row* d_rows = rows.data();
  const long long bad_row = detail::first_index_where(be, B, detail::hir_rpp_row_bad{d_rows});
  if (bad_row >= 0) {
    const auto i = static_cast<std::size_t>(bad_row);
    const detail::hir_rpp_row r = to_host(rows.view().subspan(i, 1))[0]; // one record read back
    if (r.first_big != detail::hir_rpp_none)
      hir::detail::fail(fn, "mask[", i, ", ", r.first_big, "] = ",
                        static_cast<int>(to_host(tb.mask.subspan(i * L + static_cast<std::size_t>(r.first_big), 1))[0]),
                        " is neither 0 nor 1");
    if (r.count == 0)
      hir::detail::fail(fn, "row ", i,
                        " has no valid token (its mask is all 0); drop empty responses or keep "
                        "their end-of-sequence token");
    const std::size_t k = i * L + static_cast<std::size_t>(r.first_non_finite);
    const T ov = to_host(tb.old_logp.subspan(k, 1))[0];
    if (!(ov - ov == ov - ov))
      hir::detail::fail(fn, "old_logp[", i, ", ", r.first_non_finite, "] = ", ov, " is not finite");
    hir::detail::fail(fn, "ref_logp[", i, ", ", r.first_non_finite, "] = ", to_host(tb.ref_logp.subspan(k, 1))[0],
                      " is not finite");
  }
  const bool scaled = o.whiten == whitening::standard || o.whiten == whitening::keep_mean;
  const double total_valid = thrust::transform_reduce(detail::policy(be), rows.begin(), rows.end(),
                                                      detail::hir_rpp_row_count{}, 0.0, thrust::plus<double>());
  if (scaled && o.std == std_kind::unbiased && total_valid < 2.0)
    hir::detail::fail(fn, "whitening with unbiased variance needs at least 2 valid tokens in the batch (it has ",
                      static_cast<std::size_t>(total_valid), ")");

  // Per-row values: the terminal reward (none, group_mean_of_score) or a_i (group_mean_of_return).
  const bool tiled = o.baseline == reinforce_baseline::group_mean_of_return;
  const detail::scratch_buffer<double> value(be, B);
  {
    auto first = thrust::device_pointer_cast(scores.data());
    thrust::transform(detail::policy(be), first, first + B, value.begin(), detail::hir_rpp_to_double<T>{});
  }
  double* d_value = value.data();
  auto subtract_group_means = [&] {
    thrust::for_each(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                     thrust::counting_iterator<std::size_t>(groups.num_groups),
                     detail::hir_rpp_group_mean{groups, d_value, o.singleton});
  };
  if (o.baseline == reinforce_baseline::group_mean_of_score)
    subtract_group_means();
  if (tiled) {
    thrust::transform(detail::policy(be), value.begin(), value.end(), rows.begin(), value.begin(),
                      detail::hir_rpp_add_kl_sum{});
    subtract_group_means();
  }

  // Returns (not for the tiled baseline).
  const detail::scratch_buffer<double> ret(be, tiled ? 0 : n);
  if (!tiled && n > 0) {
    auto maps =
        thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0),
                                        detail::hir_rpp_token_map<T>{mask, old_lp, ref_lp, d_rows, d_value, L, kl, o});
    auto in_first = thrust::make_reverse_iterator(maps + n);
    auto out_first =
        thrust::make_transform_output_iterator(thrust::make_reverse_iterator(ret.end()), detail::hir_rpp_take_b{});
    thrust::inclusive_scan(detail::policy(be), in_first, in_first + n, out_first, detail::hir_rpp_compose{});
  }
  const double* d_ret = ret.data();

  // Whitening statistics over the valid tokens (two passes in double).
  double mu = 0.0, scale = 1.0;
  if (o.whiten != whitening::none) {
    auto moments = [&](double shift) {
      if (tiled)
        return thrust::transform_reduce(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                                        thrust::counting_iterator<std::size_t>(B),
                                        detail::hir_rpp_row_moment{d_rows, d_value, shift},
                                        detail::hir_rpp_moment{0.0, 0.0}, detail::hir_rpp_moment_plus{});
      return thrust::transform_reduce(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                                      thrust::counting_iterator<std::size_t>(n),
                                      detail::hir_rpp_token_moment{mask, d_ret, shift},
                                      detail::hir_rpp_moment{0.0, 0.0}, detail::hir_rpp_moment_plus{});
    };
    mu = moments(0.0).s1 / total_valid;
    if (scaled) {
      const detail::hir_rpp_moment c = moments(mu);
      const double m2 = c.s2 - c.s1 * c.s1 / total_valid; // c.s1 ≈ 0: a correction for the rounding of μ
      scale = hir::detail::reinforce_whiten_scale(
          (m2 > 0.0 ? m2 : 0.0) / (o.std == std_kind::unbiased ? total_valid - 1.0 : total_valid), o);
    }
  }
  const double add = o.whiten == whitening::keep_mean ? mu : 0.0;
  if (n == 0)
    return;
  thrust::for_each(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                   thrust::counting_iterator<std::size_t>(n),
                   detail::hir_rpp_output<T>{mask, tiled ? d_value : d_ret, L, tiled, mu, scale, add, out.data()});
}

} // namespace device
} // namespace backend
} // namespace hir
