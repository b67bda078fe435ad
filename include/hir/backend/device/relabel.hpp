// SPDX-License-Identifier: Apache-2.0
// Device implementations of hindsight instruction replay on Thrust: masked-row validation and sequence_entropy
// (reduce_by_key over rows), candidate validation, replay_scores, select_replays, the replay batch (validation and
// gather) and importance-weighted advantages. The per-candidate and per-row math is the CPU's
// (hir/detail/relabel.hpp). Candidate validation sorts (prompt, index) pairs once to get each prompt's first
// candidate, size and eligible count without atomics, then a min-reduction finds the first invalid candidate in the
// CPU's order; it reads back one issue code and the 2·B per-prompt counts the host-side plan needs. Selection is
// portable top-K by sorting: the eligible candidates (stream compaction, index order) are stable-sorted by key,
// descending, so equal keys keep the lower index first — the CPU's tie-break (keys are normalized so −0 = +0); per
// prompt quotas take a second stable sort by prompt and a segmented rank scan. On CUDA Thrust dispatches these sorts
// of arithmetic keys to CUB's radix sort. The chosen indices are sorted ascending at the end.
//
// Replay batches: rollout and replay-index validation are each one min-reduction over tokens of a (row, rank, code)
// record, so the first offending row and its issue in the CPU's order come back as one small struct (the first
// response of each prompt, for the count-consistency check, comes from one stable sort; repeated replay indices
// from a stable sort of the indices). The batch is written by one functor per row and one per token: originals
// keep their rows (after_originals) or move down by the number of replays before them (after_source, an exclusive
// scan); sequence-level importance weights sum log-ratios per replay in double (reduce_by_key).
#pragma once

#include <hir/backend/device/rewards.hpp>
#include <hir/backend/device/tag.hpp>
#include <hir/core/error.hpp>
#include <hir/detail/relabel.hpp>
#include <hir/detail/relabel_issues.hpp>
#include <hir/relabel/hindsight.hpp>
#include <hir/relabel/replay_batch.hpp>
#include <hir/relabel/select.hpp>

#include <thrust/copy.h>
#include <thrust/device_vector.h>
#include <thrust/fill.h>
#include <thrust/for_each.h>
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
#include <thrust/transform_reduce.h>

#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
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

namespace detail {
/// Σ_t m·x (double) and Σ_t m of every row of a [rows × length] array (mask entries 0/1), by reduce_by_key.
template <class T>
scratch_buffer<hir_rl_row_sum> row_sums(tag_t const& be, span<const T, device_space> values,
                                        span<const std::uint8_t, device_space> mask, std::size_t length) {
  const std::size_t n = mask.size(), rows = n / length;
  scratch_buffer<hir_rl_row_sum> acc(be, rows); // one record per row: all written
  if (rows == 0)
    return acc;
  auto keys = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0), hir_rl_row_of{length});
  auto vals = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0),
                                              hir_rl_token_sum<T>{mask.data(), values.data()});
  thrust::reduce_by_key(policy(be), keys, keys + n, vals, thrust::make_discard_iterator(), acc.begin(),
                        thrust::equal_to<std::size_t>(), hir_rl_row_sum_plus{});
  return acc;
}
} // namespace detail

template <class T>
void sequence_entropy_impl(tag_t const& be, span<const T, device_space> entropy,
                           span<const std::uint8_t, device_space> mask, std::size_t length,
                           span<T, device_space> out_sum, span<std::int64_t, device_space> out_length) {
  const std::size_t rows = mask.size() / length;
  if (rows == 0)
    return;
  const detail::scratch_buffer<detail::hir_rl_row_sum> acc = detail::row_sums(be, entropy, mask, length);
  thrust::for_each(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                   thrust::counting_iterator<std::size_t>(rows),
                   detail::hir_rl_write_row_sum<T>{acc.data(), out_sum.data(), out_length.data()});
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
  const detail::scratch_buffer<detail::hir_rl_prompt_stat> stats(be, B + 1);
  thrust::fill(detail::policy(be), stats.begin(), stats.end(), detail::hir_rl_prompt_stat{-1, 0, 0});
  if (n > 0) {
    const detail::scratch_buffer<std::int64_t> bucket(be, n), index(be, n);
    thrust::transform(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                      thrust::counting_iterator<std::size_t>(n), bucket.begin(),
                      detail::hir_rl_prompt_bucket{c.prompt.data(), B});
    thrust::sequence(detail::policy(be), index.begin(), index.end());
    thrust::stable_sort_by_key(detail::policy(be), bucket.begin(), bucket.end(), index.begin());
    const detail::scratch_buffer<std::int64_t> unique(be, n);
    const detail::scratch_buffer<detail::hir_rl_prompt_stat> per(be, n);
    auto vals = thrust::make_transform_iterator(index.begin(), detail::hir_rl_candidate_stat{c.verdicts});
    const auto ends =
        thrust::reduce_by_key(detail::policy(be), bucket.begin(), bucket.end(), vals, unique.begin(), per.begin(),
                              thrust::equal_to<std::int64_t>(), detail::hir_rl_prompt_stat_plus{});
    thrust::scatter(detail::policy(be), per.begin(), ends.second, unique.begin(), stats.begin());
  }
  const detail::hir_rl_prompt_stat* d_stats = stats.data();
  const detail::scratch_buffer<std::uint8_t> weights_bad(be, opt.integrity == integrity_kind::weighted ? B : 0);
  if (!weights_bad.empty())
    thrust::transform(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                      thrust::counting_iterator<std::size_t>(B), weights_bad.begin(),
                      detail::hir_rl_weights_bad<T>{c, d_stats});
  const detail::hir_rl_candidate_issue<T> issue{c, d_stats, weights_bad.data()}; // nullptr when empty
  const long long bad = detail::first_index_where(be, n, detail::hir_rl_candidate_bad<T>{issue});
  if (bad >= 0) {
    const detail::scratch_buffer<int> code(be, 1);
    thrust::transform(detail::policy(be), thrust::counting_iterator<std::size_t>(static_cast<std::size_t>(bad)),
                      thrust::counting_iterator<std::size_t>(static_cast<std::size_t>(bad) + 1), code.begin(), issue);
    s.issue = {static_cast<relabel_issue>(to_host(code.view())[0]), bad}; // one scalar read back
    return s;
  }
  const long long empty = detail::first_index_where(be, B, detail::hir_rl_prompt_empty{d_stats});
  if (empty >= 0) {
    s.issue = {relabel_issue::prompt_empty, empty};
    return s;
  }
  const detail::scratch_buffer<std::int64_t> size(be, B), eligible(be, B);
  thrust::transform(detail::policy(be), stats.begin(), stats.begin() + B, size.begin(), detail::hir_rl_stat_size{});
  thrust::transform(detail::policy(be), stats.begin(), stats.begin() + B, eligible.begin(),
                    detail::hir_rl_stat_eligible{});
  s.prompt_size = to_host(size.view());
  s.prompt_eligible = to_host(eligible.view());
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
  // The eligible candidates, ascending, in the first m entries of idx (scratch; the result is a copy).
  const detail::scratch_buffer<std::int64_t> idx(be, n);
  const auto last = thrust::copy_if(detail::policy(be), ids, ids + static_cast<std::int64_t>(n), idx.begin(),
                                    detail::hir_rl_eligible_at{c.verdicts});
  const auto m = static_cast<std::size_t>(last - idx.begin());
  const auto idx_end = idx.begin() + static_cast<std::ptrdiff_t>(m);
  if (plan.allocation == replay_allocation::all_eligible)
    return thrust::device_vector<std::int64_t>(idx.begin(), idx_end);
  thrust::device_vector<std::int64_t> out;
  if (plan.take == 0 || m == 0)
    return out;
  const detail::scratch_buffer<double> key(be, m);
  thrust::transform(detail::policy(be), idx.begin(), idx_end, key.begin(),
                    detail::hir_rl_key<T>{c, step, lambda, detail::lambda_free_options(opt)});
  // Higher key first; stable, so equal keys keep ascending index order.
  thrust::stable_sort_by_key(detail::policy(be), key.begin(), key.end(), idx.begin(), thrust::greater<double>());
  if (plan.allocation == replay_allocation::top_k_global) {
    const std::size_t take = plan.take < m ? plan.take : m;
    out.assign(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(take));
  } else {
    // Group by prompt (stable: the key order survives inside a prompt), rank within the prompt, keep rank < quota.
    const detail::scratch_buffer<std::int64_t> prompt(be, m), rank(be, m), quota(be, B);
    thrust::transform(detail::policy(be), idx.begin(), idx_end, prompt.begin(),
                      detail::hir_rl_prompt_of{c.prompt.data()});
    thrust::stable_sort_by_key(detail::policy(be), prompt.begin(), prompt.end(), idx.begin());
    thrust::exclusive_scan_by_key(detail::policy(be), prompt.begin(), prompt.end(),
                                  thrust::constant_iterator<std::int64_t>(1), rank.begin());
    HIR_ASSERT(plan.quota.size() == B, "hir: select_replays: the plan has one quota per prompt");
#if HIR_DEVICE_IS_CUDA
    // Host -> device on the tag's stream: the workspace block under `quota` may still be read by earlier work queued
    // on that stream, which a copy on the default stream would not wait for (non-blocking streams).
    if (const cudaError_t err = cudaMemcpyAsync(quota.data(), plan.quota.data(), B * sizeof(std::int64_t),
                                                cudaMemcpyHostToDevice, be.stream);
        err != cudaSuccess)
      throw hir::cuda_error(static_cast<int>(err), std::string("hir::select_replays: cudaMemcpyAsync of the quotas: ") +
                                                       cudaGetErrorString(err));
#else
    thrust::copy(plan.quota.begin(), plan.quota.end(), quota.begin()); // host -> device
#endif
    out.resize(m);
    const auto end =
        thrust::copy_if(detail::policy(be), idx.begin(), idx_end, thrust::counting_iterator<std::size_t>(0),
                        out.begin(), detail::hir_rl_within_quota{prompt.data(), rank.data(), quota.data()});
    out.resize(static_cast<std::size_t>(end - out.begin()));
  }
  thrust::sort(detail::policy(be), out.begin(), out.end());
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Replay batches and importance-weighted advantages

namespace detail {

/// x is finite (no <cmath> call in device code: x − x is 0 for finite x and NaN for ±inf and NaN).
HIR_HOST_DEVICE inline bool hir_rl_finite(double x) {
  return x - x == x - x;
}

/// A candidate issue of a min-reduction: the offending row (or replay, pair), the rank of the check in the CPU's
/// order within that row, and the issue code. `index` is LLONG_MAX when there is none.
struct hir_rl_issue_key {
  long long index;
  int rank;
  int code;
};
HIR_HOST_DEVICE inline hir_rl_issue_key hir_rl_no_issue() {
  return {LLONG_MAX, INT_MAX, 0};
}
HIR_HOST_DEVICE inline hir_rl_issue_key hir_rl_issue(long long index, int rank, hir::detail::relabel_issue code) {
  return {index, rank, static_cast<int>(code)};
}
/// The issue of the lower index, then of the lower rank (the first one the CPU's loop meets).
struct hir_rl_issue_min {
  HIR_HOST_DEVICE hir_rl_issue_key operator()(const hir_rl_issue_key& a, const hir_rl_issue_key& b) const {
    return (a.index < b.index || (a.index == b.index && a.rank < b.rank)) ? a : b;
  }
};

/// The first issue over i ∈ [0, n) of f(i) (an hir_rl_issue_key), in the CPU's order: one min-reduction, one small
/// record read back.
template <class F>
hir::detail::relabel_input_issue first_issue(tag_t const& be, std::size_t n, F f) {
  if (n == 0)
    return {};
  const hir_rl_issue_key r =
      thrust::transform_reduce(policy(be), thrust::counting_iterator<std::size_t>(0),
                               thrust::counting_iterator<std::size_t>(n), f, hir_rl_no_issue(), hir_rl_issue_min{});
  if (r.code == 0)
    return {};
  return {static_cast<hir::detail::relabel_issue>(r.code), r.index};
}

/// Writes index[j] to first[bucket[j]] where position j starts a run of equal buckets (sorted buckets: one writer
/// per bucket).
struct hir_rl_mark_first {
  const std::int64_t* bucket;
  const std::int64_t* index;
  std::int64_t* first;
  HIR_HOST_DEVICE void operator()(std::size_t j) const {
    if (j == 0 || bucket[j] != bucket[j - 1])
      first[static_cast<std::size_t>(bucket[j])] = index[j];
  }
};

/// The first response of each prompt in [0, B) (entry B collects the out-of-range ones): one stable sort.
inline scratch_buffer<std::int64_t> first_of_prompt(tag_t const& be, span<const std::int64_t, device_space> prompt,
                                                    std::size_t num_prompts) {
  const std::size_t n = prompt.size();
  scratch_buffer<std::int64_t> first(be, num_prompts + 1);
  thrust::fill(policy(be), first.begin(), first.end(), std::int64_t(0));
  if (n == 0)
    return first;
  const scratch_buffer<std::int64_t> bucket(be, n), index(be, n);
  thrust::transform(policy(be), thrust::counting_iterator<std::size_t>(0), thrust::counting_iterator<std::size_t>(n),
                    bucket.begin(), hir_rl_prompt_bucket{prompt.data(), num_prompts});
  thrust::sequence(policy(be), index.begin(), index.end());
  thrust::stable_sort_by_key(policy(be), bucket.begin(), bucket.end(), index.begin());
  thrust::for_each(policy(be), thrust::counting_iterator<std::size_t>(0), thrust::counting_iterator<std::size_t>(n),
                   hir_rl_mark_first{bucket.data(), index.data(), first.data()});
  return first;
}

/// The issue of rollout token k (row i = k / L) in the CPU's order: prompt index, verdict count, score (checked at
/// t = 0), then a mask entry above 1 anywhere in the row, then a non-finite old/ref log-probability on a valid token.
template <class T>
struct hir_rl_rollout_token_issue {
  rollout_batch_ref<T, device_space> r;
  const std::int64_t* first; ///< first response of each prompt (constraint_counts empty), else nullptr
  HIR_HOST_DEVICE hir_rl_issue_key operator()(std::size_t k) const {
    using hir::detail::relabel_issue;
    const std::size_t i = k / r.length, t = k % r.length;
    const auto ii = static_cast<long long>(i);
    if (t == 0) {
      const std::int64_t p = r.prompt[i];
      if (p < 0 || static_cast<std::size_t>(p) >= r.num_prompts)
        return hir_rl_issue(ii, 0, relabel_issue::prompt_out_of_range);
      const auto pu = static_cast<std::size_t>(p);
      const unsigned count = r.verdicts.counts[i];
      if (!r.constraint_counts.empty()) {
        if (count != r.constraint_counts[pu])
          return hir_rl_issue(ii, 1, relabel_issue::count_mismatch);
      } else if (count != r.verdicts.counts[static_cast<std::size_t>(first[pu])]) {
        return hir_rl_issue(ii, 1, relabel_issue::count_inconsistent);
      }
      if (!r.scores.empty() && !hir_rl_finite(static_cast<double>(r.scores[i])))
        return hir_rl_issue(ii, 2, relabel_issue::score_invalid);
    }
    const std::uint8_t m = r.mask[k];
    if (m > 1)
      return hir_rl_issue(ii, 3, relabel_issue::mask_invalid);
    if (m != 0 && !(hir_rl_finite(static_cast<double>(r.old_logp[k])) &&
                    (r.ref_logp.empty() || hir_rl_finite(static_cast<double>(r.ref_logp[k])))))
      return hir_rl_issue(ii, 4, relabel_issue::logp_invalid);
    return hir_rl_no_issue();
  }
};

/// Marks sorted position j (j ≥ 1) whose index equals the previous one: its replay repeats an earlier replay.
struct hir_rl_mark_repeated {
  const std::int64_t* sorted_index;
  const std::int64_t* replay_of_pos;
  std::uint8_t* repeated;
  HIR_HOST_DEVICE void operator()(std::size_t j) const {
    if (sorted_index[j] == sorted_index[j - 1])
      repeated[static_cast<std::size_t>(replay_of_pos[j])] = 1;
  }
};

/// Valid-token indicator of replay token j (0 for an index out of range).
struct hir_rl_replay_valid {
  const std::int64_t* replays;
  const std::uint8_t* mask;
  std::size_t batch, length;
  HIR_HOST_DEVICE long long operator()(std::size_t j) const {
    const std::int64_t i = replays[j / length];
    if (i < 0 || static_cast<std::size_t>(i) >= batch)
      return 0;
    return mask[static_cast<std::size_t>(i) * length + j % length] != 0 ? 1 : 0;
  }
};

/// The issue of replay token j (replay k = j / L) in the CPU's order: index range, repetition, eligibility (t = 0),
/// a non-finite recomputed log-probability on a valid token, then an empty response.
template <class T>
struct hir_rl_replay_token_issue {
  rollout_batch_ref<T, device_space> r;
  const std::int64_t* replays;
  replay_logp_ref<T, device_space> rec;
  const std::uint8_t* repeated;
  const long long* valid;
  bool need_old, need_ref;
  HIR_HOST_DEVICE hir_rl_issue_key operator()(std::size_t j) const {
    using hir::detail::relabel_issue;
    const std::size_t L = r.length, k = j / L, t = j % L;
    const auto kk = static_cast<long long>(k);
    const std::int64_t i = replays[k];
    if (i < 0 || static_cast<std::size_t>(i) >= r.batch)
      return t == 0 ? hir_rl_issue(kk, 0, relabel_issue::index_out_of_range) : hir_rl_no_issue();
    const auto iu = static_cast<std::size_t>(i);
    if (t == 0) {
      if (repeated[k])
        return hir_rl_issue(kk, 1, relabel_issue::index_repeated);
      if (!hir::detail::replay_eligible(r.verdicts.masks[iu], r.verdicts.counts[iu]))
        return hir_rl_issue(kk, 2, relabel_issue::index_ineligible);
    }
    if (r.mask[iu * L + t] != 0 && ((need_old && !hir_rl_finite(static_cast<double>(rec.old_logp[j]))) ||
                                    (need_ref && !hir_rl_finite(static_cast<double>(rec.ref_logp[j])))))
      return hir_rl_issue(kk, 3, relabel_issue::recomputed_logp_invalid);
    if (t == 0 && valid[k] == 0)
      return hir_rl_issue(kk, 4, relabel_issue::response_empty);
    return hir_rl_no_issue();
  }
};

struct hir_rl_has_replay {
  HIR_HOST_DEVICE std::int64_t operator()(std::int64_t replay_of) const { return replay_of >= 0 ? 1 : 0; }
};
/// after_source: the row of original i is i plus the number of replays of earlier originals.
struct hir_rl_shift_by_index {
  std::int64_t* row;
  HIR_HOST_DEVICE void operator()(std::size_t i) const { row[i] += static_cast<std::int64_t>(i); }
};
/// after_source: a replay directly follows its original.
struct hir_rl_row_after_source {
  const std::int64_t* row_of_original;
  HIR_HOST_DEVICE std::int64_t operator()(std::int64_t i) const {
    return row_of_original[static_cast<std::size_t>(i)] + 1;
  }
};

/// Raw pointers to a replay batch's arrays (tokens, ref_logp, weight: nullptr when absent).
template <class T>
struct hir_rl_batch_out {
  std::int64_t *prompt, *origin, *source_row, *replay_row, *group;
  std::uint64_t* constraint_mask;
  std::uint8_t *constraint_count, *is_replay;
  T* reward;
  std::int32_t* tokens;
  std::uint8_t* mask;
  T *old_logp, *ref_logp, *weight;
};

/// The per-row fields of original i.
template <class T>
struct hir_rl_original_row {
  rollout_batch_ref<T, device_space> r;
  const std::int64_t* row_of_original;
  const std::int64_t* row_of_replay;
  const std::int64_t* replay_of;
  replay_grouping grouping;
  hir_rl_batch_out<T> out;
  HIR_HOST_DEVICE void operator()(std::size_t i) const {
    const auto row = static_cast<std::size_t>(row_of_original[i]);
    const unsigned n = r.verdicts.counts[i];
    out.prompt[row] = r.prompt[i];
    out.constraint_mask[row] = hir::detail::low_bits(n);
    out.constraint_count[row] = static_cast<std::uint8_t>(n);
    out.reward[row] =
        hir::detail::original_reward(r.scores.empty() ? nullptr : r.scores.data(), i, r.verdicts.masks[i], n);
    out.is_replay[row] = 0;
    out.origin[row] = static_cast<std::int64_t>(i);
    out.source_row[row] = static_cast<std::int64_t>(row);
    out.replay_row[row] = replay_of[i] >= 0 ? row_of_replay[static_cast<std::size_t>(replay_of[i])] : -1;
    out.group[row] = hir::detail::replay_group_id(grouping, r.prompt[i], r.num_prompts, false);
  }
};

/// The per-row fields of replay k.
template <class T>
struct hir_rl_replay_row {
  rollout_batch_ref<T, device_space> r;
  const std::int64_t* replays;
  const std::int64_t* row_of_original;
  const std::int64_t* row_of_replay;
  replay_grouping grouping;
  T replay_reward;
  hir_rl_batch_out<T> out;
  HIR_HOST_DEVICE void operator()(std::size_t k) const {
    const auto i = static_cast<std::size_t>(replays[k]);
    const auto row = static_cast<std::size_t>(row_of_replay[k]);
    const std::int64_t p = r.prompt[i];
    out.prompt[row] = p;
    out.constraint_mask[row] = r.verdicts.masks[i];
    out.constraint_count[row] = r.verdicts.counts[i];
    out.reward[row] = replay_reward;
    out.is_replay[row] = 1;
    out.origin[row] = static_cast<std::int64_t>(i);
    out.source_row[row] = row_of_original[i];
    out.replay_row[row] = -1;
    out.group[row] = hir::detail::replay_group_id(grouping, p, r.num_prompts, true);
  }
};

/// Token j of the originals: copied to its row (weight 1).
template <class T>
struct hir_rl_original_token {
  rollout_batch_ref<T, device_space> r;
  const std::int64_t* row_of_original;
  hir_rl_batch_out<T> out;
  HIR_HOST_DEVICE void operator()(std::size_t j) const {
    const std::size_t L = r.length;
    const std::size_t d = static_cast<std::size_t>(row_of_original[j / L]) * L + j % L;
    out.mask[d] = r.mask[j];
    out.old_logp[d] = r.old_logp[j];
    if (out.tokens)
      out.tokens[d] = r.tokens[j];
    if (out.ref_logp)
      out.ref_logp[d] = r.ref_logp[j];
    if (out.weight)
      out.weight[d] = T(1);
  }
};

/// m · (log π_old(y_t|q') − log π_old(y_t|q)) of replay token j, in double (sequence-level weights).
template <class T>
struct hir_rl_replay_log_ratio {
  const std::int64_t* replays;
  const std::uint8_t* mask;
  const T* behaviour;
  const T* target;
  std::size_t length;
  HIR_HOST_DEVICE double operator()(std::size_t j) const {
    const std::size_t s = static_cast<std::size_t>(replays[j / length]) * length + j % length;
    return mask[s] ? static_cast<double>(target[j]) - static_cast<double>(behaviour[s]) : 0.0;
  }
};

/// Token j of the replays: the source's mask and tokens, old/ref log-probs copied or recomputed, the truncated
/// importance weight (per token, or the replay's sequence weight) on valid tokens and 1 on padding.
template <class T>
struct hir_rl_replay_token {
  rollout_batch_ref<T, device_space> r;
  const std::int64_t* replays;
  const std::int64_t* row_of_replay;
  replay_logp_ref<T, device_space> rec;
  bool copy_old, copy_ref, token_level;
  double log_cap;
  const double* seq_log_ratio; ///< sequence-level truncated_is: Σ_t per replay
  hir_rl_batch_out<T> out;
  HIR_HOST_DEVICE void operator()(std::size_t j) const {
    const std::size_t L = r.length, k = j / L, t = j % L;
    const std::size_t s = static_cast<std::size_t>(replays[k]) * L + t;
    const std::size_t d = static_cast<std::size_t>(row_of_replay[k]) * L + t;
    const std::uint8_t m = r.mask[s];
    out.mask[d] = m;
    if (out.tokens)
      out.tokens[d] = r.tokens[s];
    out.old_logp[d] = copy_old ? r.old_logp[s] : rec.old_logp[j];
    if (out.ref_logp)
      out.ref_logp[d] = copy_ref ? r.ref_logp[s] : rec.ref_logp[j];
    if (out.weight)
      out.weight[d] = !m ? T(1)
                      : token_level
                          ? static_cast<T>(hir::detail::truncated_weight(
                                static_cast<double>(rec.old_logp[j]) - static_cast<double>(r.old_logp[s]), log_cap))
                          : static_cast<T>(hir::detail::truncated_weight(seq_log_ratio[k], log_cap));
  }
};

template <class T>
struct hir_rl_bad_weight {
  const T* w;
  HIR_HOST_DEVICE bool operator()(std::size_t i) const {
    const double x = static_cast<double>(w[i]);
    return !(x >= 0) || !hir_rl_finite(x);
  }
};

template <class T>
struct hir_rl_weight_advantage {
  const T* a;
  const T* w;
  T* out;
  std::size_t length;
  bool per_token;
  HIR_HOST_DEVICE void operator()(std::size_t i) const { out[i] = (per_token ? a[i] : a[i / length]) * w[i]; }
};

template <class U>
U* raw_or_null(thrust::device_vector<U>& v) {
  return v.empty() ? nullptr : thrust::raw_pointer_cast(v.data());
}
template <class U>
U* raw_or_null(const scratch_buffer<U>& v) {
  return v.data(); // nullptr when empty
}

} // namespace detail

/// The first invalid response of a rollout batch (prompt index, verdict count, score, mask, log-probabilities): one
/// min-reduction over tokens.
template <class T>
hir::detail::relabel_input_issue rollout_batch_check_impl(tag_t const& be, rollout_batch_ref<T, device_space> r) {
  const detail::scratch_buffer<std::int64_t> first = r.constraint_counts.empty()
                                                         ? detail::first_of_prompt(be, r.prompt, r.num_prompts)
                                                         : detail::scratch_buffer<std::int64_t>(be, 0);
  return detail::first_issue(be, r.batch * r.length,
                             detail::hir_rl_rollout_token_issue<T>{r, detail::raw_or_null(first)});
}

/// The first invalid replay index k (out of range, repeated, ineligible, bad recomputed row, empty response).
template <class T>
hir::detail::relabel_input_issue replay_indices_check_impl(tag_t const& be, rollout_batch_ref<T, device_space> r,
                                                           span<const std::int64_t, device_space> replays,
                                                           replay_logp_ref<T, device_space> recomputed, bool need_old,
                                                           bool need_ref) {
  const std::size_t K = replays.size(), L = r.length;
  if (K == 0)
    return {};
  // Repeats: stable sort of (index, k); a position equal to its predecessor repeats an earlier replay.
  const detail::scratch_buffer<std::int64_t> sorted(be, K), order(be, K);
  const detail::scratch_buffer<std::uint8_t> repeated(be, K);
  thrust::copy(detail::policy(be), thrust::device_pointer_cast(replays.data()),
               thrust::device_pointer_cast(replays.data()) + static_cast<std::ptrdiff_t>(K), sorted.begin());
  thrust::fill(detail::policy(be), repeated.begin(), repeated.end(), std::uint8_t(0));
  thrust::sequence(detail::policy(be), order.begin(), order.end());
  thrust::stable_sort_by_key(detail::policy(be), sorted.begin(), sorted.end(), order.begin());
  thrust::for_each(detail::policy(be), thrust::counting_iterator<std::size_t>(1),
                   thrust::counting_iterator<std::size_t>(K),
                   detail::hir_rl_mark_repeated{sorted.data(), order.data(), repeated.data()});
  // Valid tokens of each selected response (one per replay: all written).
  const detail::scratch_buffer<long long> valid(be, K);
  auto keys = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0), detail::hir_rl_row_of{L});
  auto vals = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0),
                                              detail::hir_rl_replay_valid{replays.data(), r.mask.data(), r.batch, L});
  thrust::reduce_by_key(detail::policy(be), keys, keys + K * L, vals, thrust::make_discard_iterator(), valid.begin());
  return detail::first_issue(be, K * L,
                             detail::hir_rl_replay_token_issue<T>{r, replays.data(), recomputed, repeated.data(),
                                                                  valid.data(), need_old, need_ref});
}

/// Builds the N + K rows (see replay_batch.hpp): one functor per row and one per token.
template <class T>
void build_replay_batch_impl(tag_t const& be, rollout_batch_ref<T, device_space> r,
                             span<const std::int64_t, device_space> replays,
                             replay_logp_ref<T, device_space> recomputed, replay_batch_options const& opt,
                             replay_batch<T, tag_t>& out) {
  const std::size_t N = r.batch, L = r.length, K = replays.size(), B = r.num_prompts;
  const auto pol = detail::policy(be);
  const auto d_replays = thrust::device_pointer_cast(replays.data());
  const detail::scratch_buffer<std::int64_t> replay_of(be, N), row_of_original(be, N), row_of_replay(be, K);
  thrust::fill(pol, replay_of.begin(), replay_of.end(), std::int64_t(-1));
  thrust::scatter(pol, thrust::counting_iterator<std::int64_t>(0),
                  thrust::counting_iterator<std::int64_t>(static_cast<std::int64_t>(K)), d_replays, replay_of.begin());
  if (opt.placement == replay_placement::after_source) {
    auto has = thrust::make_transform_iterator(replay_of.begin(), detail::hir_rl_has_replay{});
    thrust::exclusive_scan(pol, has, has + static_cast<std::ptrdiff_t>(N), row_of_original.begin());
    thrust::for_each(pol, thrust::counting_iterator<std::size_t>(0), thrust::counting_iterator<std::size_t>(N),
                     detail::hir_rl_shift_by_index{row_of_original.data()});
    thrust::transform(pol, d_replays, d_replays + static_cast<std::ptrdiff_t>(K), row_of_replay.begin(),
                      detail::hir_rl_row_after_source{row_of_original.data()});
  } else {
    thrust::sequence(pol, row_of_original.begin(), row_of_original.end());
    thrust::sequence(pol, row_of_replay.begin(), row_of_replay.end(), static_cast<std::int64_t>(N));
  }

  const bool truncated = opt.old_logp == replay_old_logp::truncated_is;
  out.shape(B, N, K, L, !r.tokens.empty(), !r.ref_logp.empty(), truncated);

  detail::hir_rl_batch_out<T> o;
  o.prompt = thrust::raw_pointer_cast(out.prompt.data());
  o.origin = thrust::raw_pointer_cast(out.origin.data());
  o.source_row = thrust::raw_pointer_cast(out.source_row.data());
  o.replay_row = thrust::raw_pointer_cast(out.replay_row.data());
  o.group = thrust::raw_pointer_cast(out.group.data());
  o.constraint_mask = thrust::raw_pointer_cast(out.constraint_mask.data());
  o.constraint_count = thrust::raw_pointer_cast(out.constraint_count.data());
  o.is_replay = thrust::raw_pointer_cast(out.is_replay.data());
  o.reward = thrust::raw_pointer_cast(out.reward.data());
  o.tokens = detail::raw_or_null(out.tokens);
  o.mask = thrust::raw_pointer_cast(out.mask.data());
  o.old_logp = thrust::raw_pointer_cast(out.old_logp.data());
  o.ref_logp = detail::raw_or_null(out.ref_logp);
  o.weight = detail::raw_or_null(out.weight);

  const std::int64_t* d_row_orig = row_of_original.data();
  const std::int64_t* d_row_rep = row_of_replay.data();
  thrust::for_each(pol, thrust::counting_iterator<std::size_t>(0), thrust::counting_iterator<std::size_t>(N),
                   detail::hir_rl_original_row<T>{r, d_row_orig, d_row_rep, replay_of.data(), opt.grouping, o});
  thrust::for_each(pol, thrust::counting_iterator<std::size_t>(0), thrust::counting_iterator<std::size_t>(K),
                   detail::hir_rl_replay_row<T>{r, replays.data(), d_row_orig, d_row_rep, opt.grouping,
                                                static_cast<T>(opt.replay_reward), o});
  thrust::for_each(pol, thrust::counting_iterator<std::size_t>(0), thrust::counting_iterator<std::size_t>(N * L),
                   detail::hir_rl_original_token<T>{r, d_row_orig, o});
  if (K == 0)
    return;
  const detail::scratch_buffer<double> seq(be, truncated && opt.importance == importance_level::sequence ? K : 0);
  if (!seq.empty()) {
    auto keys = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0), detail::hir_rl_row_of{L});
    auto vals = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0),
                                                detail::hir_rl_replay_log_ratio<T>{replays.data(), r.mask.data(),
                                                                                   r.old_logp.data(),
                                                                                   recomputed.old_logp.data(), L});
    thrust::reduce_by_key(pol, keys, keys + K * L, vals, thrust::make_discard_iterator(), seq.begin());
  }
  thrust::for_each(pol, thrust::counting_iterator<std::size_t>(0), thrust::counting_iterator<std::size_t>(K * L),
                   detail::hir_rl_replay_token<T>{
                       r, replays.data(), d_row_rep, recomputed, opt.old_logp == replay_old_logp::copy_from_source,
                       opt.ref_logp == replay_ref_logp::copy_from_source, opt.importance == importance_level::token,
                       truncated ? std::log(opt.importance_cap) : 0.0, detail::raw_or_null(seq), o});
}

/// Index of the first negative or non-finite weight, or -1.
template <class T>
long long relabel_first_bad_weight_impl(tag_t const& be, span<const T, device_space> w) {
  return detail::first_index_where(be, w.size(), detail::hir_rl_bad_weight<T>{w.data()});
}

template <class T>
void weight_advantages_impl(tag_t const& be, span<const T, device_space> a, span<const T, device_space> w,
                            std::size_t length, span<T, device_space> out) {
  thrust::for_each(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                   thrust::counting_iterator<std::size_t>(w.size()),
                   detail::hir_rl_weight_advantage<T>{a.data(), w.data(), out.data(), length, a.size() == w.size()});
}

} // namespace device
} // namespace backend
} // namespace hir
