// SPDX-License-Identifier: Apache-2.0
// Device implementations of hindsight replay selection on Thrust: masked-row validation and sequence_entropy
// (reduce_by_key over rows), candidate validation, replay_scores and select_replays. The per-candidate math is the
// CPU's (hir/detail/relabel.hpp). Candidate validation sorts (prompt, index) pairs once to get each prompt's first
// candidate, size and eligible count without atomics, then a min-reduction finds the first invalid candidate in the
// CPU's order; it reads back one issue code and the 2·B per-prompt counts the host-side plan needs. Selection is
// portable top-K by sorting: the eligible candidates (stream compaction, index order) are stable-sorted by key,
// descending, so equal keys keep the lower index first — the CPU's tie-break (keys are normalized so −0 = +0); per
// prompt quotas take a second stable sort by prompt and a segmented rank scan. On CUDA Thrust dispatches these sorts
// of arithmetic keys to CUB's radix sort. The chosen indices are sorted ascending at the end.
#pragma once

#include <hir/backend/device/rewards.hpp>
#include <hir/backend/device/tag.hpp>
#include <hir/detail/relabel.hpp>
#include <hir/detail/relabel_issues.hpp>
#include <hir/relabel/select.hpp>

#include <thrust/copy.h>
#include <thrust/device_vector.h>
#include <thrust/functional.h>
#include <thrust/iterator/constant_iterator.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/discard_iterator.h>
#include <thrust/iterator/permutation_iterator.h>
#include <thrust/iterator/transform_iterator.h>
#include <thrust/reduce.h>
#include <thrust/scan.h>
#include <thrust/scatter.h>
#include <thrust/sequence.h>
#include <thrust/sort.h>
#include <thrust/transform.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace hir {
namespace backend {
namespace device {
namespace detail {

template <class T>
struct hir_rl_bad_token {
  const std::uint8_t* mask;
  const T* values;
  HIR_HOST_DEVICE bool operator()(std::size_t k) const {
    const T v = values[k];
    return mask[k] > 1 || (mask[k] != 0 && !(v - v == v - v));
  }
};

struct hir_rl_row_of {
  std::size_t length;
  HIR_HOST_DEVICE std::size_t operator()(std::size_t k) const { return k / length; }
};

/// Σ m·H (double) and Σ m of one row.
struct hir_rl_row_sum {
  double sum;
  long long count;
};
struct hir_rl_row_sum_plus {
  HIR_HOST_DEVICE hir_rl_row_sum operator()(const hir_rl_row_sum& a, const hir_rl_row_sum& b) const {
    return {a.sum + b.sum, a.count + b.count};
  }
};
template <class T>
struct hir_rl_token_sum {
  const std::uint8_t* mask;
  const T* h;
  HIR_HOST_DEVICE hir_rl_row_sum operator()(std::size_t k) const {
    return mask[k] ? hir_rl_row_sum{static_cast<double>(h[k]), static_cast<long long>(mask[k])}
                   : hir_rl_row_sum{0.0, 0};
  }
};
template <class T>
struct hir_rl_write_row_sum {
  const hir_rl_row_sum* rows;
  T* out_sum;
  std::int64_t* out_length;
  HIR_HOST_DEVICE void operator()(std::size_t r) const {
    out_sum[r] = static_cast<T>(rows[r].sum);
    out_length[r] = rows[r].count;
  }
};

/// Sort key of a candidate's prompt: out-of-range prompts go to the extra bucket B.
struct hir_rl_prompt_bucket {
  const std::int64_t* prompt;
  std::size_t num_prompts;
  HIR_HOST_DEVICE std::int64_t operator()(std::size_t i) const {
    const std::int64_t p = prompt[i];
    return (p < 0 || static_cast<std::size_t>(p) >= num_prompts) ? static_cast<std::int64_t>(num_prompts) : p;
  }
};

/// Per-prompt statistics: first candidate, size, eligible count.
struct hir_rl_prompt_stat {
  long long first;
  long long size;
  long long eligible;
};
struct hir_rl_prompt_stat_plus {
  HIR_HOST_DEVICE hir_rl_prompt_stat operator()(const hir_rl_prompt_stat& a, const hir_rl_prompt_stat& b) const {
    return {a.first < b.first ? a.first : b.first, a.size + b.size, a.eligible + b.eligible};
  }
};
struct hir_rl_candidate_stat {
  verdict_ref<device_space> v;
  HIR_HOST_DEVICE hir_rl_prompt_stat operator()(std::int64_t i) const {
    const auto k = static_cast<std::size_t>(i);
    return {i, 1, hir::detail::replay_eligible(v.masks[k], v.counts[k]) ? 1 : 0};
  }
};

/// 1 when prompt p's weight row is invalid for its first candidate's constraint count (as the CPU checks it).
template <class T>
struct hir_rl_weights_bad {
  replay_candidates_ref<T, device_space> c;
  const hir_rl_prompt_stat* stats;
  HIR_HOST_DEVICE std::uint8_t operator()(std::size_t p) const {
    if (stats[p].size == 0)
      return 0;
    const unsigned count = c.verdicts.counts[static_cast<std::size_t>(stats[p].first)];
    if (count > c.weight_stride)
      return 1;
    double sum = 0;
    for (unsigned k = 0; k < count; ++k) {
      const double w = static_cast<double>(c.weights[p * c.weight_stride + k]);
      if (!(w - w == w - w) || w < 0)
        return 1;
      sum += w;
    }
    return (count > 0 && !(sum > 0)) ? 1 : 0;
  }
};

/// The first issue of candidate i in the CPU's order (0 = none).
template <class T>
struct hir_rl_candidate_issue {
  replay_candidates_ref<T, device_space> c;
  const hir_rl_prompt_stat* stats;
  const std::uint8_t* weights_bad; ///< nullptr unless integrity_kind::weighted
  HIR_HOST_DEVICE int operator()(std::size_t i) const {
    using hir::detail::relabel_issue;
    const std::int64_t p = c.prompt[i];
    if (p < 0 || static_cast<std::size_t>(p) >= c.num_prompts)
      return static_cast<int>(relabel_issue::prompt_out_of_range);
    const auto pu = static_cast<std::size_t>(p);
    const unsigned count = c.verdicts.counts[i];
    if (!c.constraint_counts.empty()) {
      if (count != c.constraint_counts[pu])
        return static_cast<int>(relabel_issue::count_mismatch);
    } else if (count != c.verdicts.counts[static_cast<std::size_t>(stats[pu].first)]) {
      return static_cast<int>(relabel_issue::count_inconsistent);
    }
    const double e = static_cast<double>(c.entropy_sum[i]);
    if (!(e - e == e - e) || e < 0)
      return static_cast<int>(relabel_issue::entropy_invalid);
    if (c.length[i] < 1)
      return static_cast<int>(relabel_issue::length_invalid);
    if (weights_bad && weights_bad[pu])
      return static_cast<int>(relabel_issue::weights_invalid);
    return 0;
  }
};
template <class T>
struct hir_rl_candidate_bad {
  hir_rl_candidate_issue<T> issue;
  HIR_HOST_DEVICE bool operator()(std::size_t i) const { return issue(i) != 0; }
};
struct hir_rl_prompt_empty {
  const hir_rl_prompt_stat* stats;
  HIR_HOST_DEVICE bool operator()(std::size_t p) const { return stats[p].size == 0; }
};
struct hir_rl_stat_size {
  HIR_HOST_DEVICE std::int64_t operator()(const hir_rl_prompt_stat& s) const { return s.size; }
};
struct hir_rl_stat_eligible {
  HIR_HOST_DEVICE std::int64_t operator()(const hir_rl_prompt_stat& s) const { return s.eligible; }
};

/// The options a device functor needs (replay_select_options holds a std::function, which cannot go to a GPU).
struct hir_rl_key_options {
  diversity_kind diversity;
  integrity_kind integrity;
  replay_ranking ranking;
  std::uint64_t seed;
};

/// The ranking key of candidate i, normalized so that −0 and +0 are one key (the sorts must agree with ==).
template <class T>
struct hir_rl_key {
  replay_candidates_ref<T, device_space> c;
  std::int64_t step;
  double lambda;
  hir_rl_key_options opt;
  HIR_HOST_DEVICE double operator()(std::int64_t index) const {
    const auto i = static_cast<std::size_t>(index);
    const std::uint64_t mask = c.verdicts.masks[i];
    const unsigned n = c.verdicts.counts[i];
    const double div = hir::detail::diversity(static_cast<double>(c.entropy_sum[i]), c.length[i], opt.diversity);
    const double integ = opt.integrity == integrity_kind::weighted
                             ? hir::detail::integrity_weighted(
                                   mask, n, c.weights.data() + static_cast<std::size_t>(c.prompt[i]) * c.weight_stride)
                             : hir::detail::integrity_fraction(mask, n);
    return hir::detail::replay_key(opt.ranking, div, integ, lambda, opt.seed, step, i) + 0.0;
  }
};

template <class T>
struct hir_rl_score {
  hir_rl_key<T> key;
  HIR_HOST_DEVICE double operator()(std::int64_t i) const {
    const auto k = static_cast<std::size_t>(i);
    return hir::detail::replay_eligible(key.c.verdicts.masks[k], key.c.verdicts.counts[k])
               ? key(i)
               : -std::numeric_limits<double>::infinity();
  }
};

struct hir_rl_eligible_at {
  verdict_ref<device_space> v;
  HIR_HOST_DEVICE bool operator()(std::int64_t i) const {
    const auto k = static_cast<std::size_t>(i);
    return hir::detail::replay_eligible(v.masks[k], v.counts[k]);
  }
};
struct hir_rl_prompt_of {
  const std::int64_t* prompt;
  HIR_HOST_DEVICE std::int64_t operator()(std::int64_t i) const { return prompt[static_cast<std::size_t>(i)]; }
};
/// Keeps position j when its rank within its prompt is below the prompt's quota.
struct hir_rl_within_quota {
  const std::int64_t* prompt_of_pos;
  const std::int64_t* rank;
  const std::int64_t* quota;
  HIR_HOST_DEVICE bool operator()(std::size_t j) const {
    return rank[j] < quota[static_cast<std::size_t>(prompt_of_pos[j])];
  }
};

inline hir_rl_key_options lambda_free_options(const replay_select_options& o) {
  return {o.diversity, o.integrity, o.ranking, o.seed};
}

} // namespace detail

/// Index and issue of the first row whose mask entry is not 0/1 or whose value is not finite on a valid token.
template <class T>
hir::detail::relabel_input_issue
relabel_masked_rows_check_impl(tag_t const& be, span<const std::uint8_t, device_space> mask,
                               span<const T, device_space> values, std::size_t length) {
  const long long k =
      detail::first_index_where(be, mask.size(), detail::hir_rl_bad_token<T>{mask.data(), values.data()});
  if (k < 0)
    return {};
  const unsigned m = to_host(mask.subspan(static_cast<std::size_t>(k), 1))[0];
  return {m > 1 ? hir::detail::relabel_issue::mask_invalid : hir::detail::relabel_issue::value_invalid,
          k / static_cast<long long>(length)};
}

template <class T>
void sequence_entropy_impl(tag_t const& be, span<const T, device_space> entropy,
                           span<const std::uint8_t, device_space> mask, std::size_t length,
                           span<T, device_space> out_sum, span<std::int64_t, device_space> out_length) {
  const std::size_t n = mask.size(), rows = n / length;
  if (rows == 0)
    return;
  thrust::device_vector<detail::hir_rl_row_sum> acc(rows);
  auto keys = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0), detail::hir_rl_row_of{length});
  auto vals = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0),
                                              detail::hir_rl_token_sum<T>{mask.data(), entropy.data()});
  thrust::reduce_by_key(detail::policy(be), keys, keys + n, vals, thrust::make_discard_iterator(), acc.begin(),
                        thrust::equal_to<std::size_t>(), detail::hir_rl_row_sum_plus{});
  thrust::for_each(
      detail::policy(be), thrust::counting_iterator<std::size_t>(0), thrust::counting_iterator<std::size_t>(rows),
      detail::hir_rl_write_row_sum<T>{thrust::raw_pointer_cast(acc.data()), out_sum.data(), out_length.data()});
}

/// Candidate validation and per-prompt counts (reads back one issue code, or the 2·B per-prompt counts).
template <class T>
hir::detail::replay_candidate_summary replay_candidates_summary_impl(tag_t const& be,
                                                                     replay_candidates_ref<T, device_space> c,
                                                                     replay_select_options const& opt) {
  using hir::detail::relabel_issue;
  hir::detail::replay_candidate_summary s;
  const std::size_t n = c.size(), B = c.num_prompts;
  // Per-prompt first candidate, size and eligible count: sort (bucket, index) pairs, reduce by bucket, scatter.
  thrust::device_vector<detail::hir_rl_prompt_stat> stats(B + 1, detail::hir_rl_prompt_stat{-1, 0, 0});
  if (n > 0) {
    thrust::device_vector<std::int64_t> bucket(n), index(n);
    thrust::transform(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                      thrust::counting_iterator<std::size_t>(n), bucket.begin(),
                      detail::hir_rl_prompt_bucket{c.prompt.data(), B});
    thrust::sequence(detail::policy(be), index.begin(), index.end());
    thrust::stable_sort_by_key(detail::policy(be), bucket.begin(), bucket.end(), index.begin());
    thrust::device_vector<std::int64_t> unique(n);
    thrust::device_vector<detail::hir_rl_prompt_stat> per(n);
    auto vals = thrust::make_transform_iterator(index.begin(), detail::hir_rl_candidate_stat{c.verdicts});
    const auto ends =
        thrust::reduce_by_key(detail::policy(be), bucket.begin(), bucket.end(), vals, unique.begin(), per.begin(),
                              thrust::equal_to<std::int64_t>(), detail::hir_rl_prompt_stat_plus{});
    thrust::scatter(detail::policy(be), per.begin(), ends.second, unique.begin(), stats.begin());
  }
  const detail::hir_rl_prompt_stat* d_stats = thrust::raw_pointer_cast(stats.data());
  thrust::device_vector<std::uint8_t> weights_bad(opt.integrity == integrity_kind::weighted ? B : 0);
  if (!weights_bad.empty())
    thrust::transform(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                      thrust::counting_iterator<std::size_t>(B), weights_bad.begin(),
                      detail::hir_rl_weights_bad<T>{c, d_stats});
  const detail::hir_rl_candidate_issue<T> issue{
      c, d_stats, weights_bad.empty() ? nullptr : thrust::raw_pointer_cast(weights_bad.data())};
  const long long bad = detail::first_index_where(be, n, detail::hir_rl_candidate_bad<T>{issue});
  if (bad >= 0) {
    thrust::device_vector<int> code(1);
    thrust::transform(detail::policy(be), thrust::counting_iterator<std::size_t>(static_cast<std::size_t>(bad)),
                      thrust::counting_iterator<std::size_t>(static_cast<std::size_t>(bad) + 1), code.begin(), issue);
    s.issue = {static_cast<relabel_issue>(static_cast<int>(code[0])), bad}; // one scalar read back
    return s;
  }
  const long long empty = detail::first_index_where(be, B, detail::hir_rl_prompt_empty{d_stats});
  if (empty >= 0) {
    s.issue = {relabel_issue::prompt_empty, empty};
    return s;
  }
  thrust::device_vector<std::int64_t> size(B), eligible(B);
  thrust::transform(detail::policy(be), stats.begin(), stats.begin() + B, size.begin(), detail::hir_rl_stat_size{});
  thrust::transform(detail::policy(be), stats.begin(), stats.begin() + B, eligible.begin(),
                    detail::hir_rl_stat_eligible{});
  s.prompt_size = to_host(size);
  s.prompt_eligible = to_host(eligible);
  for (auto e : s.prompt_eligible)
    s.eligible += static_cast<std::size_t>(e);
  return s;
}

template <class T>
void replay_scores_impl(tag_t const& be, replay_candidates_ref<T, device_space> c, std::int64_t step, double lambda,
                        span<double, device_space> out, replay_select_options const& opt) {
  thrust::transform(detail::policy(be), thrust::counting_iterator<std::int64_t>(0),
                    thrust::counting_iterator<std::int64_t>(static_cast<std::int64_t>(c.size())),
                    thrust::device_pointer_cast(out.data()),
                    detail::hir_rl_score<T>{detail::hir_rl_key<T>{c, step, lambda, detail::lambda_free_options(opt)}});
}

/// The chosen candidates, ascending (portable top-K by stable sorting; see the file comment).
template <class T>
thrust::device_vector<std::int64_t>
select_replays_impl(tag_t const& be, replay_candidates_ref<T, device_space> c, std::int64_t step, double lambda,
                    hir::detail::replay_plan const& plan, replay_select_options const& opt) {
  const std::size_t n = c.size(), B = c.num_prompts;
  const auto ids = thrust::counting_iterator<std::int64_t>(0);
  thrust::device_vector<std::int64_t> idx(n);
  const auto last = thrust::copy_if(detail::policy(be), ids, ids + static_cast<std::int64_t>(n), idx.begin(),
                                    detail::hir_rl_eligible_at{c.verdicts});
  const auto m = static_cast<std::size_t>(last - idx.begin());
  idx.resize(m);
  if (plan.allocation == replay_allocation::all_eligible)
    return idx;
  thrust::device_vector<std::int64_t> out;
  if (plan.take == 0 || m == 0)
    return out;
  thrust::device_vector<double> key(m);
  thrust::transform(detail::policy(be), idx.begin(), idx.end(), key.begin(),
                    detail::hir_rl_key<T>{c, step, lambda, detail::lambda_free_options(opt)});
  // Higher key first; stable, so equal keys keep ascending index order.
  thrust::stable_sort_by_key(detail::policy(be), key.begin(), key.end(), idx.begin(), thrust::greater<double>());
  if (plan.allocation == replay_allocation::top_k_global) {
    const std::size_t take = plan.take < m ? plan.take : m;
    out.assign(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(take));
  } else {
    // Group by prompt (stable: the key order survives inside a prompt), rank within the prompt, keep rank < quota.
    thrust::device_vector<std::int64_t> prompt(m), rank(m);
    thrust::transform(detail::policy(be), idx.begin(), idx.end(), prompt.begin(),
                      detail::hir_rl_prompt_of{c.prompt.data()});
    thrust::stable_sort_by_key(detail::policy(be), prompt.begin(), prompt.end(), idx.begin());
    thrust::exclusive_scan_by_key(detail::policy(be), prompt.begin(), prompt.end(),
                                  thrust::constant_iterator<std::int64_t>(1), rank.begin());
    const thrust::device_vector<std::int64_t> quota(plan.quota.begin(), plan.quota.end());
    (void)B;
    out.resize(m);
    const auto end = thrust::copy_if(
        detail::policy(be), idx.begin(), idx.end(), thrust::counting_iterator<std::size_t>(0), out.begin(),
        detail::hir_rl_within_quota{thrust::raw_pointer_cast(prompt.data()), thrust::raw_pointer_cast(rank.data()),
                                    thrust::raw_pointer_cast(quota.data())});
    out.resize(static_cast<std::size_t>(end - out.begin()));
  }
  thrust::sort(detail::policy(be), out.begin(), out.end());
  return out;
}

} // namespace device
} // namespace backend
} // namespace hir
