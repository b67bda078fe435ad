// SPDX-License-Identifier: Apache-2.0
// CPU implementations of hindsight instruction replay: candidate validation, scores, selection (O(n) top-K by
// std::nth_element, then a sort of the K chosen indices only), and the replay batch gather. Validation passes run in
// full before anything is written; the per-candidate math is shared with the device backend via
// hir/detail/relabel.hpp.
#pragma once

#include <hir/backend/cpu/group_advantages.hpp>
#include <hir/backend/cpu/reinforce_pp.hpp>
#include <hir/backend/cpu/rewards.hpp>
#include <hir/backend/cpu/tag.hpp>
#include <hir/detail/relabel.hpp>
#include <hir/relabel/hindsight.hpp>
#include <hir/relabel/replay_batch.hpp>
#include <hir/relabel/select.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace hir {
namespace backend {
namespace cpu {
namespace detail {

using hir::detail::relabel_input_issue;
using hir::detail::relabel_issue;

/// The ranking key of candidate i (eligible or not).
template <class T>
double candidate_key(const replay_candidates_ref<T, host_space>& c, std::size_t i, std::int64_t step, double lambda,
                     const replay_select_options& opt) {
  const std::uint64_t mask = c.verdicts.masks[i];
  const unsigned n = c.verdicts.counts[i];
  const double div = hir::detail::diversity(static_cast<double>(c.entropy_sum[i]), c.length[i], opt.diversity);
  const double integ = opt.integrity == integrity_kind::weighted
                           ? hir::detail::integrity_weighted(
                                 mask, n, c.weights.data() + static_cast<std::size_t>(c.prompt[i]) * c.weight_stride)
                           : hir::detail::integrity_fraction(mask, n);
  return hir::detail::replay_key(opt.ranking, div, integ, lambda, opt.seed, step, i);
}

/// Selects the first `take` of [first, last) in the deterministic order and appends their indices to `out`.
inline void take_best(hir::detail::ranked_candidate* first, hir::detail::ranked_candidate* last, std::size_t take,
                      std::vector<std::int64_t>& out) {
  const std::size_t size = static_cast<std::size_t>(last - first);
  if (take == 0)
    return;
  if (take < size)
    std::nth_element(first, first + take, last, hir::detail::ranked_candidate_better{});
  for (std::size_t k = 0; k < std::min(take, size); ++k)
    out.push_back(first[k].index);
}

/// Sorts distinct indices in [0, n) ascending: std::sort for few, a flag pass (O(n)) when K log K would exceed n.
inline void sort_indices(std::vector<std::int64_t>& idx, std::size_t n) {
  const std::size_t k = idx.size();
  std::size_t log_k = 1;
  while ((std::size_t(1) << log_k) < k)
    ++log_k;
  if (k * log_k < n) {
    std::sort(idx.begin(), idx.end());
    return;
  }
  std::vector<unsigned char> chosen(n, 0);
  for (auto i : idx)
    chosen[static_cast<std::size_t>(i)] = 1;
  std::size_t w = 0;
  for (std::size_t i = 0; w < k; ++i) { // branch-free: overwrite until the next chosen index
    idx[w] = static_cast<std::int64_t>(i);
    w += chosen[i];
  }
}

} // namespace detail

/// Index and issue of the first row whose mask entry is not 0/1 or whose value is not finite on a valid token.
template <class T>
hir::detail::relabel_input_issue relabel_masked_rows_check_impl(tag_t const&, span<const std::uint8_t, host_space> mask,
                                                                span<const T, host_space> values, std::size_t length) {
  for (std::size_t i = 0; i < mask.size(); ++i) {
    if (mask[i] > 1)
      return {hir::detail::relabel_issue::mask_invalid, static_cast<long long>(i / length)};
    if (mask[i] && !std::isfinite(values[i]))
      return {hir::detail::relabel_issue::value_invalid, static_cast<long long>(i / length)};
  }
  return {};
}

template <class T>
void sequence_entropy_impl(tag_t const&, span<const T, host_space> entropy, span<const std::uint8_t, host_space> mask,
                           std::size_t length, span<T, host_space> out_sum, span<std::int64_t, host_space> out_length) {
  const std::size_t rows = mask.size() / length;
  for (std::size_t r = 0; r < rows; ++r) {
    const T* h = entropy.data() + r * length;
    const std::uint8_t* m = mask.data() + r * length;
    double s = 0;
    std::int64_t n = 0;
    for (std::size_t t = 0; t < length; ++t) {
      s += m[t] ? static_cast<double>(h[t]) : 0.0;
      n += m[t];
    }
    out_sum[r] = static_cast<T>(s);
    out_length[r] = n;
  }
}

/// One validation pass over the candidates: the first issue, per-prompt sizes and eligible counts.
template <class T>
hir::detail::replay_candidate_summary
replay_candidates_summary_impl(tag_t const&, replay_candidates_ref<T, host_space> c, replay_select_options const& opt) {
  using hir::detail::relabel_issue;
  hir::detail::replay_candidate_summary s;
  const std::size_t n = c.size(), B = c.num_prompts;
  s.prompt_size.assign(B, 0);
  s.prompt_eligible.assign(B, 0);
  std::vector<int> first_count(c.constraint_counts.empty() ? B : 0, -1);
  std::vector<char> weights_checked(opt.integrity == integrity_kind::weighted ? B : 0, 0);
  auto issue = [&](relabel_issue what, std::size_t i) {
    s.issue = {what, static_cast<long long>(i)};
    return s;
  };
  for (std::size_t i = 0; i < n; ++i) {
    const std::int64_t p = c.prompt[i];
    if (p < 0 || static_cast<std::size_t>(p) >= B)
      return issue(relabel_issue::prompt_out_of_range, i);
    const auto pu = static_cast<std::size_t>(p);
    const unsigned count = c.verdicts.counts[i];
    if (!c.constraint_counts.empty()) {
      if (count != c.constraint_counts[pu])
        return issue(relabel_issue::count_mismatch, i);
    } else if (first_count[pu] < 0) {
      first_count[pu] = static_cast<int>(count);
    } else if (static_cast<unsigned>(first_count[pu]) != count) {
      return issue(relabel_issue::count_inconsistent, i);
    }
    const double e = static_cast<double>(c.entropy_sum[i]);
    if (!std::isfinite(e) || e < 0)
      return issue(relabel_issue::entropy_invalid, i);
    if (c.length[i] < 1)
      return issue(relabel_issue::length_invalid, i);
    if (opt.integrity == integrity_kind::weighted && !weights_checked[pu]) {
      if (count > c.weight_stride)
        return issue(relabel_issue::weights_invalid, i);
      double sum = 0;
      for (unsigned k = 0; k < count; ++k) {
        const double w = static_cast<double>(c.weights[pu * c.weight_stride + k]);
        if (!std::isfinite(w) || w < 0)
          return issue(relabel_issue::weights_invalid, i);
        sum += w;
      }
      if (count > 0 && !(sum > 0))
        return issue(relabel_issue::weights_invalid, i);
      weights_checked[pu] = 1;
    }
    ++s.prompt_size[pu];
    const int eligible = hir::detail::replay_eligible(c.verdicts.masks[i], count) ? 1 : 0;
    s.prompt_eligible[pu] += eligible;
    s.eligible += static_cast<std::size_t>(eligible);
  }
  for (std::size_t p = 0; p < B; ++p)
    if (s.prompt_size[p] == 0)
      return issue(relabel_issue::prompt_empty, p);
  return s;
}

template <class T>
void replay_scores_impl(tag_t const&, replay_candidates_ref<T, host_space> c, std::int64_t step, double lambda,
                        span<double, host_space> out, replay_select_options const& opt) {
  for (std::size_t i = 0; i < c.size(); ++i)
    out[i] = hir::detail::replay_eligible(c.verdicts.masks[i], c.verdicts.counts[i])
                 ? detail::candidate_key(c, i, step, lambda, opt)
                 : -std::numeric_limits<double>::infinity();
}

/// The chosen candidates, ascending. O(n): keys, std::nth_element, then the K chosen put in index order (a sort of
/// the K indices when K log K < n, else one flag pass over n).
template <class T>
std::vector<std::int64_t> select_replays_impl(tag_t const&, replay_candidates_ref<T, host_space> c, std::int64_t step,
                                              double lambda, hir::detail::replay_plan const& plan,
                                              replay_select_options const& opt) {
  using hir::detail::ranked_candidate;
  const std::size_t n = c.size(), B = c.num_prompts;
  std::vector<std::int64_t> out;
  if (plan.allocation == replay_allocation::all_eligible) {
    out.reserve(plan.take);
    for (std::size_t i = 0; i < n; ++i)
      if (hir::detail::replay_eligible(c.verdicts.masks[i], c.verdicts.counts[i]))
        out.push_back(static_cast<std::int64_t>(i));
    return out;
  }
  out.reserve(plan.take);
  // Eligible candidates with their keys, in index order; branch-free compaction (eligibility is data-dependent and
  // mispredicts badly when it is).
  std::vector<ranked_candidate> ranked(n);
  std::size_t w = 0;
  for (std::size_t i = 0; i < n; ++i) {
    ranked[w] = {detail::candidate_key(c, i, step, lambda, opt), static_cast<std::int64_t>(i)};
    w += hir::detail::replay_eligible(c.verdicts.masks[i], c.verdicts.counts[i]) ? 1 : 0;
  }
  ranked.resize(w);
  if (plan.allocation == replay_allocation::top_k_global) {
    detail::take_best(ranked.data(), ranked.data() + ranked.size(), plan.take, out);
  } else { // per prompt quotas: bucket by prompt (stable counting sort), then the best of each bucket
    std::vector<std::int64_t> offset(B + 1, 0);
    for (const auto& rc : ranked)
      ++offset[static_cast<std::size_t>(c.prompt[static_cast<std::size_t>(rc.index)]) + 1];
    for (std::size_t p = 0; p < B; ++p)
      offset[p + 1] += offset[p];
    std::vector<ranked_candidate> bucketed(ranked.size());
    std::vector<std::int64_t> next(offset.begin(), offset.end() - 1);
    for (const auto& rc : ranked)
      bucketed[static_cast<std::size_t>(
          next[static_cast<std::size_t>(c.prompt[static_cast<std::size_t>(rc.index)])]++)] = rc;
    for (std::size_t p = 0; p < B; ++p)
      detail::take_best(bucketed.data() + offset[p], bucketed.data() + offset[p + 1],
                        static_cast<std::size_t>(plan.quota[p]), out);
  }
  detail::sort_indices(out, n);
  return out;
}

/// The first invalid response of a rollout batch (prompt index, verdict count, mask, log-probabilities, score).
template <class T>
hir::detail::relabel_input_issue rollout_batch_check_impl(tag_t const&, rollout_batch_ref<T, host_space> r) {
  using hir::detail::relabel_issue;
  const std::size_t N = r.batch, L = r.length, B = r.num_prompts;
  std::vector<int> first_count(r.constraint_counts.empty() ? B : 0, -1);
  for (std::size_t i = 0; i < N; ++i) {
    const auto ii = static_cast<long long>(i);
    const std::int64_t p = r.prompt[i];
    if (p < 0 || static_cast<std::size_t>(p) >= B)
      return {relabel_issue::prompt_out_of_range, ii};
    const auto pu = static_cast<std::size_t>(p);
    const unsigned count = r.verdicts.counts[i];
    if (!r.constraint_counts.empty()) {
      if (count != r.constraint_counts[pu])
        return {relabel_issue::count_mismatch, ii};
    } else if (first_count[pu] < 0) {
      first_count[pu] = static_cast<int>(count);
    } else if (static_cast<unsigned>(first_count[pu]) != count) {
      return {relabel_issue::count_inconsistent, ii};
    }
    if (!r.scores.empty() && !std::isfinite(static_cast<double>(r.scores[i])))
      return {relabel_issue::score_invalid, ii};
    // Branch-free per row (vectorizes): x − x is 0 for finite x and NaN for ±inf and NaN.
    const std::uint8_t* m = r.mask.data() + i * L;
    const T* old = r.old_logp.data() + i * L;
    const T* ref = r.ref_logp.empty() ? r.old_logp.data() + i * L : r.ref_logp.data() + i * L;
    unsigned high = 0;
    T acc = 0;
    for (std::size_t t = 0; t < L; ++t) {
      high |= m[t] & 0xFEu;
      acc += m[t] ? (old[t] - old[t]) + (ref[t] - ref[t]) : T(0);
    }
    if (high)
      return {relabel_issue::mask_invalid, ii};
    if (acc != acc)
      return {relabel_issue::logp_invalid, ii};
  }
  return {};
}

/// The first invalid replay index k (out of range, repeated, ineligible, empty response, bad recomputed row).
template <class T>
hir::detail::relabel_input_issue replay_indices_check_impl(tag_t const&, rollout_batch_ref<T, host_space> r,
                                                           span<const std::int64_t, host_space> replays,
                                                           replay_logp_ref<T, host_space> recomputed, bool need_old,
                                                           bool need_ref) {
  using hir::detail::relabel_issue;
  const std::size_t N = r.batch, L = r.length;
  std::vector<char> used(N, 0);
  for (std::size_t k = 0; k < replays.size(); ++k) {
    const auto kk = static_cast<long long>(k);
    const std::int64_t i = replays[k];
    if (i < 0 || static_cast<std::size_t>(i) >= N)
      return {relabel_issue::index_out_of_range, kk};
    const auto iu = static_cast<std::size_t>(i);
    if (used[iu])
      return {relabel_issue::index_repeated, kk};
    used[iu] = 1;
    if (!hir::detail::replay_eligible(r.verdicts.masks[iu], r.verdicts.counts[iu]))
      return {relabel_issue::index_ineligible, kk};
    const std::uint8_t* m = r.mask.data() + iu * L;
    bool any = false;
    for (std::size_t t = 0; t < L; ++t) {
      any = any || m[t];
      if (m[t] && ((need_old && !std::isfinite(recomputed.old_logp[k * L + t])) ||
                   (need_ref && !std::isfinite(recomputed.ref_logp[k * L + t]))))
        return {relabel_issue::recomputed_logp_invalid, kk};
    }
    if (!any)
      return {relabel_issue::response_empty, kk};
  }
  return {};
}

/// Gathers the N + K rows (see replay_batch.hpp).
template <class T>
void build_replay_batch_impl(tag_t const&, rollout_batch_ref<T, host_space> r,
                             span<const std::int64_t, host_space> replays, replay_logp_ref<T, host_space> recomputed,
                             replay_batch_options const& opt, replay_batch<T, tag_t>& out) {
  const std::size_t N = r.batch, L = r.length, K = replays.size(), B = r.num_prompts;
  std::vector<std::int64_t> replay_of(N, -1), row_of_original(N), row_of_replay(K);
  for (std::size_t k = 0; k < K; ++k)
    replay_of[static_cast<std::size_t>(replays[k])] = static_cast<std::int64_t>(k);
  if (opt.placement == replay_placement::after_source) {
    std::int64_t row = 0;
    for (std::size_t i = 0; i < N; ++i) {
      row_of_original[i] = row++;
      if (replay_of[i] >= 0)
        row_of_replay[static_cast<std::size_t>(replay_of[i])] = row++;
    }
  } else {
    for (std::size_t i = 0; i < N; ++i)
      row_of_original[i] = static_cast<std::int64_t>(i);
    for (std::size_t k = 0; k < K; ++k)
      row_of_replay[k] = static_cast<std::int64_t>(N + k);
  }

  const bool truncated = opt.old_logp == replay_old_logp::truncated_is;
  out.shape(B, N, K, L, !r.tokens.empty(), !r.ref_logp.empty(), truncated);
  std::fill(out.weight.begin(), out.weight.end(), T(1));

  auto copy_row = [L](const auto* src, std::size_t from, auto* dst, std::size_t to) {
    std::memcpy(dst + to * L, src + from * L, L * sizeof(*src));
  };
  for (std::size_t i = 0; i < N; ++i) {
    const auto row = static_cast<std::size_t>(row_of_original[i]);
    const unsigned n = r.verdicts.counts[i];
    const std::uint64_t all = hir::detail::low_bits(n);
    out.prompt[row] = r.prompt[i];
    out.constraint_mask[row] = all;
    out.constraint_count[row] = static_cast<std::uint8_t>(n);
    out.reward[row] =
        hir::detail::original_reward(r.scores.empty() ? nullptr : r.scores.data(), i, r.verdicts.masks[i], n);
    out.is_replay[row] = 0;
    out.origin[row] = static_cast<std::int64_t>(i);
    out.source_row[row] = static_cast<std::int64_t>(row);
    out.replay_row[row] = replay_of[i] >= 0 ? row_of_replay[static_cast<std::size_t>(replay_of[i])] : -1;
    out.group[row] = hir::detail::replay_group_id(opt.grouping, r.prompt[i], B, false);
    copy_row(r.mask.data(), i, out.mask.data(), row);
    copy_row(r.old_logp.data(), i, out.old_logp.data(), row);
    if (!r.tokens.empty())
      copy_row(r.tokens.data(), i, out.tokens.data(), row);
    if (!r.ref_logp.empty())
      copy_row(r.ref_logp.data(), i, out.ref_logp.data(), row);
  }
  const double log_cap = truncated ? std::log(opt.importance_cap) : 0.0;
  for (std::size_t k = 0; k < K; ++k) {
    const auto i = static_cast<std::size_t>(replays[k]);
    const auto row = static_cast<std::size_t>(row_of_replay[k]);
    const std::int64_t p = r.prompt[i];
    out.prompt[row] = p;
    out.constraint_mask[row] = r.verdicts.masks[i];
    out.constraint_count[row] = r.verdicts.counts[i];
    out.reward[row] = static_cast<T>(opt.replay_reward);
    out.is_replay[row] = 1;
    out.origin[row] = static_cast<std::int64_t>(i);
    out.source_row[row] = row_of_original[i];
    out.replay_row[row] = -1;
    out.group[row] = hir::detail::replay_group_id(opt.grouping, p, B, true);
    copy_row(r.mask.data(), i, out.mask.data(), row);
    if (!r.tokens.empty())
      copy_row(r.tokens.data(), i, out.tokens.data(), row);
    if (opt.old_logp == replay_old_logp::copy_from_source)
      copy_row(r.old_logp.data(), i, out.old_logp.data(), row);
    else
      copy_row(recomputed.old_logp.data(), k, out.old_logp.data(), row);
    if (!r.ref_logp.empty()) {
      if (opt.ref_logp == replay_ref_logp::copy_from_source)
        copy_row(r.ref_logp.data(), i, out.ref_logp.data(), row);
      else
        copy_row(recomputed.ref_logp.data(), k, out.ref_logp.data(), row);
    }
    if (truncated) { // w = min(π_old(y|q') / π_old(y|q), cap), per token or per sequence
      const std::uint8_t* m = r.mask.data() + i * L;
      const T* behaviour = r.old_logp.data() + i * L;
      const T* target = recomputed.old_logp.data() + k * L;
      T* w = out.weight.data() + row * L;
      if (opt.importance == importance_level::token) {
        for (std::size_t t = 0; t < L; ++t)
          if (m[t])
            w[t] = static_cast<T>(hir::detail::truncated_weight(
                static_cast<double>(target[t]) - static_cast<double>(behaviour[t]), log_cap));
      } else {
        double s = 0;
        for (std::size_t t = 0; t < L; ++t)
          s += m[t] ? static_cast<double>(target[t]) - static_cast<double>(behaviour[t]) : 0.0;
        const T ws = static_cast<T>(hir::detail::truncated_weight(s, log_cap));
        for (std::size_t t = 0; t < L; ++t)
          if (m[t])
            w[t] = ws;
      }
    }
  }
}

/// Index of the first negative or non-finite weight, or -1.
template <class T>
long long relabel_first_bad_weight_impl(tag_t const&, span<const T, host_space> w) {
  for (std::size_t i = 0; i < w.size(); ++i)
    if (!(static_cast<double>(w[i]) >= 0) || !std::isfinite(static_cast<double>(w[i])))
      return static_cast<long long>(i);
  return -1;
}

template <class T>
void weight_advantages_impl(tag_t const&, span<const T, host_space> a, span<const T, host_space> w, std::size_t length,
                            span<T, host_space> out) {
  if (a.size() == w.size()) {
    for (std::size_t i = 0; i < w.size(); ++i)
      out[i] = a[i] * w[i];
    return;
  }
  for (std::size_t r = 0; r < a.size(); ++r)
    for (std::size_t t = 0; t < length; ++t)
      out[r * length + t] = a[r] * w[r * length + t];
}

} // namespace cpu
} // namespace backend
} // namespace hir
