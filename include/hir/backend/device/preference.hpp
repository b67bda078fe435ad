// SPDX-License-Identifier: Apache-2.0
// Device implementations of the dual-level preference losses on Thrust. Sequence log-probabilities are a
// reduce_by_key over rows (double sums); the token gradient is one transform (valid-token counts by reduce_by_key for
// the mean). Pair building compacts the originals, orders them by (prompt, failure, row) with two stable sorts,
// reduces each prompt's bucket to (start, successes, size), and writes pair j of a bucket found by a vectorized
// binary search over the buckets' pair offsets; the instruction-level pairs are a stream compaction of the replay
// rows. It reads back two sizes (response and instruction pairs) to size the output. The loss is one
// transform_reduce over pairs of the per-level sums (double) read back once; the gradient spreads ±w·dL/dh to the
// chosen and rejected row of every pair, stable-sorts the 2P contributions by row (pair order kept inside a row, as
// the CPU adds them) and sums them with reduce_by_key, so rows in several pairs accumulate without atomics. The
// per-pair math is the CPU's (hir/detail/preference.hpp).
#pragma once

#include <hir/backend/device/relabel.hpp>
#include <hir/backend/device/rewards.hpp>
#include <hir/backend/device/tag.hpp>
#include <hir/detail/preference.hpp>
#include <hir/detail/relabel_issues.hpp>
#include <hir/losses/preference.hpp>

#include <thrust/binary_search.h>
#include <thrust/copy.h>
#include <thrust/count.h>
#include <thrust/device_vector.h>
#include <thrust/fill.h>
#include <thrust/for_each.h>
#include <thrust/functional.h>
#include <thrust/gather.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/discard_iterator.h>
#include <thrust/iterator/transform_iterator.h>
#include <thrust/reduce.h>
#include <thrust/scan.h>
#include <thrust/scatter.h>
#include <thrust/sort.h>
#include <thrust/transform.h>
#include <thrust/transform_reduce.h>

#include <cstddef>
#include <cstdint>

namespace hir {
namespace backend {
namespace device {
namespace detail {

template <class T>
struct hir_pf_non_finite {
  const T* x;
  HIR_HOST_DEVICE bool operator()(std::size_t i) const { return !hir_rl_finite(static_cast<double>(x[i])); }
};

struct hir_pf_mask_invalid {
  const std::uint8_t* mask;
  HIR_HOST_DEVICE bool operator()(std::size_t i) const { return mask[i] > 1; }
};

template <class T>
struct hir_pf_write_sequence {
  const hir_rl_row_sum* rows;
  T* out;
  sequence_reduction reduction;
  HIR_HOST_DEVICE void operator()(std::size_t r) const {
    out[r] =
        static_cast<T>(hir::detail::sequence_value(rows[r].sum, static_cast<std::size_t>(rows[r].count), reduction));
  }
};

struct hir_pf_mask_count {
  const std::uint8_t* mask;
  HIR_HOST_DEVICE long long operator()(std::size_t k) const { return mask[k]; }
};

template <class T>
struct hir_pf_token_grad {
  const T* grad_seq;
  const std::uint8_t* mask;
  const long long* count; ///< valid tokens per row (mean), else nullptr
  std::size_t length;
  sequence_reduction reduction;
  T* out;
  HIR_HOST_DEVICE void operator()(std::size_t k) const {
    const std::size_t r = k / length;
    const double scale = hir::detail::sequence_grad_scale(count ? static_cast<std::size_t>(count[r]) : 0, reduction);
    out[k] = mask[k] ? static_cast<T>(static_cast<double>(grad_seq[r]) * scale) : T(0);
  }
};

/// Row r is invalid for pair building (as the CPU checks it).
template <class T>
struct hir_pf_row_invalid {
  replay_batch_ref<T, device_space> b;
  HIR_HOST_DEVICE bool operator()(std::size_t r) const {
    if (!hir_rl_finite(static_cast<double>(b.reward[r])) || b.is_replay[r] > 1)
      return true;
    if (b.is_replay[r]) {
      const std::int64_t s = b.source_row[r];
      if (s < 0 || static_cast<std::size_t>(s) >= b.batch || b.is_replay[static_cast<std::size_t>(s)] ||
          b.prompt[static_cast<std::size_t>(s)] != b.prompt[r])
        return true;
    }
    return false;
  }
};

struct hir_pf_is_zero {
  HIR_HOST_DEVICE bool operator()(std::uint8_t x) const { return x == 0; }
};
struct hir_pf_is_nonzero {
  HIR_HOST_DEVICE bool operator()(std::uint8_t x) const { return x != 0; }
};

/// 1 for a failure (reward below the threshold), 0 for a success: sorts successes first.
template <class T>
struct hir_pf_failure_key {
  const T* reward;
  double threshold;
  HIR_HOST_DEVICE int operator()(std::int64_t r) const {
    return hir::detail::preference_success(static_cast<double>(reward[static_cast<std::size_t>(r)]), threshold) ? 0 : 1;
  }
};

/// A prompt's bucket of originals in the sorted order: first position, successes, size.
struct hir_pf_bucket {
  long long start;
  long long wins;
  long long size;
};
struct hir_pf_bucket_plus {
  HIR_HOST_DEVICE hir_pf_bucket operator()(const hir_pf_bucket& a, const hir_pf_bucket& b) const {
    return {a.start < b.start ? a.start : b.start, a.wins + b.wins, a.size + b.size};
  }
};
struct hir_pf_bucket_of_pos {
  const int* failure;
  HIR_HOST_DEVICE hir_pf_bucket operator()(long long pos) const {
    return {pos, failure[static_cast<std::size_t>(pos)] ? 0 : 1, 1};
  }
};
/// Response-level pairs of a bucket: |S|·|F| (all_pairs) or |F| when |S| > 0 (round_robin).
struct hir_pf_bucket_pairs {
  bool all_pairs;
  HIR_HOST_DEVICE long long operator()(const hir_pf_bucket& b) const {
    const long long losses = b.size - b.wins;
    return all_pairs ? b.wins * losses : (b.wins > 0 ? losses : 0);
  }
};

/// Response-level pair j: its bucket (the last with offset ≤ j), then (success, failure) in the CPU's order.
struct hir_pf_write_response_pair {
  const std::int64_t* rows; ///< originals sorted by (prompt, failure, row)
  const hir_pf_bucket* buckets;
  const long long* offset;     ///< first pair of each bucket
  const std::int64_t* bucket1; ///< 1 + bucket of each pair (upper_bound)
  bool all_pairs;
  std::int64_t* chosen;
  std::int64_t* rejected;
  HIR_HOST_DEVICE void operator()(std::size_t j) const {
    const auto b = static_cast<std::size_t>(bucket1[j] - 1);
    const hir_pf_bucket k = buckets[b];
    const long long q = static_cast<long long>(j) - offset[b], losses = k.size - k.wins;
    const long long w = all_pairs ? q / losses : q % k.wins, l = all_pairs ? q % losses : q;
    chosen[j] = rows[static_cast<std::size_t>(k.start + w)];
    rejected[j] = rows[static_cast<std::size_t>(k.start + k.wins + l)];
  }
};

/// The issue of pair j: a row out of range, then a level other than 0/1.
struct hir_pf_pair_issue {
  preference_pairs_ref<device_space> p;
  std::size_t rows;
  HIR_HOST_DEVICE hir_rl_issue_key operator()(std::size_t j) const {
    using hir::detail::relabel_issue;
    const auto jj = static_cast<long long>(j);
    const std::int64_t c = p.chosen[j], r = p.rejected[j];
    if (c < 0 || static_cast<std::size_t>(c) >= rows || r < 0 || static_cast<std::size_t>(r) >= rows)
      return hir_rl_issue(jj, 0, relabel_issue::pair_out_of_range);
    if (p.level[j] > 1)
      return hir_rl_issue(jj, 1, relabel_issue::pair_level_invalid);
    return hir_rl_no_issue();
  }
};

/// h of pair j: (log π − log π_ref)(chosen) − (log π − log π_ref)(rejected), ref_logp may be null.
template <class T>
struct hir_pf_pair_h {
  preference_pairs_ref<device_space> p;
  const T* logp;
  const T* ref_logp;
  HIR_HOST_DEVICE double of(std::int64_t row) const {
    const auto r = static_cast<std::size_t>(row);
    return static_cast<double>(logp[r]) - (ref_logp ? static_cast<double>(ref_logp[r]) : 0.0);
  }
  HIR_HOST_DEVICE double operator()(std::size_t j) const { return of(p.chosen[j]) - of(p.rejected[j]); }
};

template <class T>
struct hir_pf_pair_sums {
  hir_pf_pair_h<T> h;
  preference_loss_kind kind;
  double beta, smoothing;
  HIR_HOST_DEVICE hir::detail::preference_sums operator()(std::size_t j) const {
    double dh;
    return hir::detail::preference_pair_sums(kind, beta, smoothing, h(j), h.p.level[j], dh);
  }
};

/// Contribution e of the gradient: pair j = e / 2 adds w·dL/dh to its chosen row (e even) and subtracts it from its
/// rejected row (e odd).
template <class T>
struct hir_pf_grad_entry {
  hir_pf_pair_h<T> h;
  preference_loss_kind kind;
  double beta, smoothing, scale0, scale1;
  std::int64_t* row;
  double* value;
  HIR_HOST_DEVICE void operator()(std::size_t e) const {
    const std::size_t j = e / 2;
    double loss, dh;
    hir::detail::preference_pair_loss(kind, beta, smoothing, h(j), loss, dh);
    const double g = (h.p.level[j] ? scale1 : scale0) * dh;
    row[e] = e % 2 ? h.p.rejected[j] : h.p.chosen[j];
    value[e] = e % 2 ? -g : g;
  }
};

template <class T>
struct hir_pf_to {
  HIR_HOST_DEVICE T operator()(double x) const { return static_cast<T>(x); }
};

} // namespace detail

template <class T>
long long preference_first_non_finite_impl(tag_t const& be, span<const T, device_space> x) {
  return detail::first_index_where(be, x.size(), detail::hir_pf_non_finite<T>{x.data()});
}

inline long long preference_first_invalid_mask_impl(tag_t const& be, span<const std::uint8_t, device_space> mask) {
  return detail::first_index_where(be, mask.size(), detail::hir_pf_mask_invalid{mask.data()});
}

template <class T>
void sequence_logp_impl(tag_t const& be, span<const T, device_space> logp, span<const std::uint8_t, device_space> mask,
                        std::size_t length, span<T, device_space> out, sequence_reduction reduction) {
  const std::size_t rows = mask.size() / length;
  const detail::scratch_buffer<detail::hir_rl_row_sum> acc = detail::row_sums(be, logp, mask, length);
  thrust::for_each(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                   thrust::counting_iterator<std::size_t>(rows),
                   detail::hir_pf_write_sequence<T>{acc.data(), out.data(), reduction});
}

template <class T>
void sequence_logp_backward_impl(tag_t const& be, span<const T, device_space> grad_seq,
                                 span<const std::uint8_t, device_space> mask, std::size_t length,
                                 span<T, device_space> grad_token, sequence_reduction reduction) {
  const std::size_t n = mask.size(), rows = n / length;
  const detail::scratch_buffer<long long> count(be, reduction == sequence_reduction::mean ? rows : 0);
  if (!count.empty()) {
    auto keys =
        thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0), detail::hir_rl_row_of{length});
    auto vals = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0),
                                                detail::hir_pf_mask_count{mask.data()});
    thrust::reduce_by_key(detail::policy(be), keys, keys + n, vals, thrust::make_discard_iterator(), count.begin());
  }
  thrust::for_each(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                   thrust::counting_iterator<std::size_t>(n),
                   detail::hir_pf_token_grad<T>{grad_seq.data(), mask.data(), detail::raw_or_null(count), length,
                                                reduction, grad_token.data()});
}

/// First invalid row of a batch for pair building, or -1.
template <class T>
long long preference_rows_check_impl(tag_t const& be, replay_batch_ref<T, device_space> b) {
  return detail::first_index_where(be, b.batch, detail::hir_pf_row_invalid<T>{b});
}

template <class T>
void build_preference_pairs_impl(tag_t const& be, replay_batch_ref<T, device_space> b,
                                 preference_pair_options const& opt, preference_pairs<tag_t>& out) {
  const std::size_t R = b.batch;
  const auto pol = detail::policy(be);
  const auto rows = thrust::counting_iterator<std::int64_t>(0);
  const auto is_replay = thrust::device_pointer_cast(b.is_replay.data());
  const bool all_pairs = opt.pairing == response_pairing::all_pairs;
  // Response level: originals ordered by (prompt, failure, row) by two stable sorts, then one bucket per prompt.
  // Scratch is sized by R (the originals are at most R, the buckets at most the originals); ranges mark the parts used.
  const std::size_t Rr = opt.response_level ? R : 0;
  const detail::scratch_buffer<std::int64_t> orig(be, Rr), sorted_rows(be, Rr);
  const detail::scratch_buffer<detail::hir_pf_bucket> buckets(be, Rr);
  const detail::scratch_buffer<long long> offset(be, Rr);
  std::size_t num_response = 0, nb = 0;
  if (opt.response_level) {
    const auto end = thrust::copy_if(pol, rows, rows + static_cast<std::int64_t>(R), is_replay, orig.begin(),
                                     detail::hir_pf_is_zero{});
    const auto n = static_cast<std::size_t>(end - orig.begin());
    if (n > 0) {
      const detail::scratch_buffer<int> failure(be, n), sorted_failure(be, n);
      const detail::scratch_buffer<std::int64_t> prompt(be, n), unique(be, n), perm(be, n);
      thrust::transform(pol, orig.begin(), end, failure.begin(),
                        detail::hir_pf_failure_key<T>{b.reward.data(), opt.success_threshold});
      thrust::stable_sort_by_key(pol, failure.begin(), failure.end(), orig.begin());
      thrust::gather(pol, orig.begin(), end, thrust::device_pointer_cast(b.prompt.data()), prompt.begin());
      // the second sort carries the failure flags along with the rows
      thrust::sequence(pol, perm.begin(), perm.end());
      thrust::stable_sort_by_key(pol, prompt.begin(), prompt.end(), perm.begin());
      thrust::gather(pol, perm.begin(), perm.end(), orig.begin(), sorted_rows.begin());
      thrust::gather(pol, perm.begin(), perm.end(), failure.begin(), sorted_failure.begin());
      auto vals = thrust::make_transform_iterator(thrust::counting_iterator<long long>(0),
                                                  detail::hir_pf_bucket_of_pos{sorted_failure.data()});
      const auto ends = thrust::reduce_by_key(pol, prompt.begin(), prompt.end(), vals, unique.begin(), buckets.begin(),
                                              thrust::equal_to<std::int64_t>(), detail::hir_pf_bucket_plus{});
      nb = static_cast<std::size_t>(ends.second - buckets.begin());
      auto counts = thrust::make_transform_iterator(buckets.begin(), detail::hir_pf_bucket_pairs{all_pairs});
      thrust::exclusive_scan(pol, counts, counts + static_cast<std::ptrdiff_t>(nb), offset.begin());
      num_response = static_cast<std::size_t>(thrust::reduce(pol, counts, counts + static_cast<std::ptrdiff_t>(nb),
                                                             0LL)); // one scalar read back
    }
  }
  const std::size_t num_instruction =
      opt.instruction_level
          ? static_cast<std::size_t>(thrust::count_if(pol, is_replay, is_replay + static_cast<std::ptrdiff_t>(R),
                                                      detail::hir_pf_is_nonzero{}))
          : 0; // one scalar read back
  const std::size_t P = num_response + num_instruction;
  out.chosen.resize(P);
  out.rejected.resize(P);
  out.level.resize(P);
  out.num_response = num_response;
  out.num_instruction = num_instruction;
  if (num_response > 0) {
    const detail::scratch_buffer<std::int64_t> bucket1(be, num_response);
    thrust::upper_bound(pol, offset.begin(), offset.begin() + static_cast<std::ptrdiff_t>(nb),
                        thrust::counting_iterator<long long>(0),
                        thrust::counting_iterator<long long>(static_cast<long long>(num_response)), bucket1.begin());
    thrust::for_each(
        pol, thrust::counting_iterator<std::size_t>(0), thrust::counting_iterator<std::size_t>(num_response),
        detail::hir_pf_write_response_pair{sorted_rows.data(), buckets.data(), offset.data(), bucket1.data(), all_pairs,
                                           thrust::raw_pointer_cast(out.chosen.data()),
                                           thrust::raw_pointer_cast(out.rejected.data())});
  }
  if (num_instruction > 0) {
    const auto first = out.chosen.begin() + static_cast<std::ptrdiff_t>(num_response);
    thrust::copy_if(pol, rows, rows + static_cast<std::int64_t>(R), is_replay, first, detail::hir_pf_is_nonzero{});
    thrust::gather(pol, first, out.chosen.end(), thrust::device_pointer_cast(b.source_row.data()),
                   out.rejected.begin() + static_cast<std::ptrdiff_t>(num_response));
  }
  thrust::fill(pol, out.level.begin(), out.level.begin() + static_cast<std::ptrdiff_t>(num_response),
               static_cast<std::uint8_t>(preference_level::response));
  thrust::fill(pol, out.level.begin() + static_cast<std::ptrdiff_t>(num_response), out.level.end(),
               static_cast<std::uint8_t>(preference_level::instruction));
}

inline hir::detail::relabel_input_issue
preference_pairs_check_impl(tag_t const& be, preference_pairs_ref<device_space> p, std::size_t rows) {
  return detail::first_issue(be, p.size(), detail::hir_pf_pair_issue{p, rows});
}

template <class T>
preference_loss_result preference_loss_impl(tag_t const& be, preference_pairs_ref<device_space> p,
                                            span<const T, device_space> logp, span<const T, device_space> ref_logp,
                                            span<T, device_space> grad, preference_loss_options const& opt) {
  const auto pol = detail::policy(be);
  const std::size_t P = p.size();
  const detail::hir_pf_pair_h<T> h{p, logp.data(), ref_logp.empty() ? nullptr : ref_logp.data()};
  const hir::detail::preference_sums zero = {{0, 0}, {0, 0}, {0, 0}, {0, 0}};
  const hir::detail::preference_sums sums = thrust::transform_reduce(
      pol, thrust::counting_iterator<std::size_t>(0), thrust::counting_iterator<std::size_t>(P),
      detail::hir_pf_pair_sums<T>{h, opt.kind, opt.beta, opt.label_smoothing}, zero,
      hir::detail::hir_pref_sums_plus{}); // the one read back
  if (!grad.empty()) {
    double scale[2];
    hir::detail::preference_scales(sums, opt, scale);
    const detail::scratch_buffer<std::int64_t> row(be, 2 * P), unique(be, 2 * P);
    const detail::scratch_buffer<double> value(be, 2 * P), total(be, 2 * P);
    thrust::for_each(pol, thrust::counting_iterator<std::size_t>(0), thrust::counting_iterator<std::size_t>(2 * P),
                     detail::hir_pf_grad_entry<T>{h, opt.kind, opt.beta, opt.label_smoothing, scale[0], scale[1],
                                                  row.data(), value.data()});
    thrust::stable_sort_by_key(pol, row.begin(), row.end(), value.begin());
    const auto ends = thrust::reduce_by_key(pol, row.begin(), row.end(), value.begin(), unique.begin(), total.begin());
    const auto d_grad = thrust::device_pointer_cast(grad.data());
    thrust::fill(pol, d_grad, d_grad + static_cast<std::ptrdiff_t>(grad.size()), T(0));
    thrust::scatter(
        pol, thrust::make_transform_iterator(total.begin(), detail::hir_pf_to<T>{}),
        thrust::make_transform_iterator(total.begin() + (ends.first - unique.begin()), detail::hir_pf_to<T>{}),
        unique.begin(), d_grad);
  }
  return hir::detail::preference_result(sums, opt);
}

} // namespace device
} // namespace backend
} // namespace hir
