// SPDX-License-Identifier: Apache-2.0
// Select: which failed responses hindsight instruction replay rewrites and replays (docs/hindsight.md, §2 of the
// algorithm). Selection is a pure function over per-candidate arrays (prompt index, verdict mask and count, summed
// token entropy, length) that returns the chosen candidates in ascending index order:
//
//   eligible     0 < (constraints met) / n < 1           (successes and all-failed responses are never replayed)
//   F(y)       = F_div(y) + λ(s) · F_int(y)
//   F_div(y)   = (1/|y|) Σ_t H_t  (token_mean, authors' code)   or   Σ_t H_t  (token_sum, paper)
//   F_int(y)   = (constraints met) / n  (fraction_met)       or   Σ_c w_c v_c / Σ_c w_c  (weighted)
//   λ(s)       = λ0 (1 + η)^s (exponential; λ0 = 2, η = 0.05)  |  λ0 (constant)  |  λ0 (1 + η s) (linear)  |  user
//
// Allocation of the budget: top-K over the whole batch with K = Σ_p max(0, n_target − m_p) = (n_target − m)·B for
// uniform groups (authors' code), top-k per prompt (paper), an even split of K over prompts (water-filling, the
// authors' alternative), or every eligible response. Ranking by the score, integrity only, diversity only, or a seeded
// Philox draw (random-k). When fewer responses are eligible than the budget asks for, the result reports how many more
// rollouts per prompt the caller should draw (the authors' r = ceil((K − selected)/B)) instead of silently replaying
// fewer.
//
// Ties: candidates are ordered by key, higher first; equal keys by lower candidate index first. The even split gives
// the remainder of K / (unsaturated prompts) to the lowest prompt indices. The result lists the chosen candidates in
// ascending index order, so it is a deterministic function of the inputs (and, for random ranking, of seed and step).
#pragma once

#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/span.hpp>
#include <hir/detail/relabel_issues.hpp>
#include <hir/rewards/reward_vector.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <utility>
#include <vector>

namespace hir {

/// How the diversity term F_div of a response is aggregated from its token entropies H_t.
enum class diversity_kind {
  token_mean, ///< (1/|y|) Σ_t H_t — the authors' code (verl agg_loss, token-mean)
  token_sum   ///< Σ_t H_t — the paper's formula
};

/// How the integrity term F_int of a response is computed from its verdicts.
enum class integrity_kind {
  fraction_met, ///< (number of constraints met) / n, the constraint-level accuracy
  weighted      ///< Σ_c w_c v_c / Σ_c w_c with per-prompt constraint weights (replay_candidates_ref::weights)
};

/// The key candidates are ranked by (higher first).
enum class replay_ranking {
  score,          ///< F_div + λ(step)·F_int (the paper and the authors' code)
  integrity_only, ///< F_int alone (the λ → ∞ ablation; equal F_int falls to the index tie-break, not to F_div)
  diversity_only, ///< F_div alone (the λ = 0 ablation)
  random          ///< philox{seed}.uniform(step, candidate index): the random-k ablation, reproducible and
                  ///< independent of the backend
};

/// Which candidates are taken once they are ranked.
enum class replay_allocation {
  top_k_global,    ///< the K best over the whole batch; a prompt may get 0 … m replays (authors' code)
  top_k_per_group, ///< the k_p best of each prompt (paper; k = 2 with m = 6)
  even_per_prompt, ///< K split as evenly as the prompts' eligible counts allow (water-filling), then the best of each
  all_eligible     ///< every eligible response (no budget)
};

/// How the replay budget is derived.
enum class replay_budget_kind {
  fill_to_target, ///< k_p = max(0, n_target − m_p) per prompt, K = Σ_p k_p = (n_target − m)·B (authors)
  per_prompt,     ///< k_p = replays_per_prompt, K = replays_per_prompt · B
  absolute        ///< K = budget (top_k_global and even_per_prompt only)
};

/// What to do when fewer responses are eligible than the budget asks for.
enum class replay_shortfall {
  report, ///< take every eligible one and report shortfall / extra_rollouts_per_prompt in the result
  error   ///< throw hir::invalid_argument naming the shortfall and the rollouts to add
};

/// The weight λ(s) of integrity against diversity at training step s.
class lambda_schedule {
public:
  enum class kind { exponential, constant, linear, custom };

  /// The authors' default: λ(s) = 2 · 1.05^s.
  lambda_schedule() = default;

  /// λ(s) = λ0 · (1 + η)^s: diverse failures early, nearly-successful ones later (λ(50) ≈ 23, λ(100) ≈ 263).
  static lambda_schedule exponential(double lambda0 = 2.0, double eta = 0.05) {
    return lambda_schedule(kind::exponential, lambda0, eta);
  }
  /// λ(s) = λ0 at every step.
  static lambda_schedule constant(double lambda0) { return lambda_schedule(kind::constant, lambda0, 0.0); }
  /// λ(s) = λ0 · (1 + η·s): the first-order version of the exponential schedule.
  static lambda_schedule linear(double lambda0, double eta) { return lambda_schedule(kind::linear, lambda0, eta); }
  /// λ(s) = f(s) for a user callable; its value must be finite and ≥ 0 at every step it is evaluated at.
  static lambda_schedule custom(std::function<double(std::int64_t)> f) {
    lambda_schedule s(kind::custom, 0.0, 0.0);
    s.fn_ = std::move(f);
    return s;
  }

  kind type() const noexcept { return kind_; }
  double lambda0() const noexcept { return lambda0_; }
  double eta() const noexcept { return eta_; }

  /// λ(step). Not validated here; select_replays checks that it is finite and ≥ 0.
  double operator()(std::int64_t step) const {
    const double s = static_cast<double>(step);
    switch (kind_) {
    case kind::constant:
      return lambda0_;
    case kind::linear:
      return lambda0_ * (1.0 + eta_ * s);
    case kind::custom:
      return fn_ ? fn_(step) : std::numeric_limits<double>::quiet_NaN();
    case kind::exponential:
    default:
      return lambda0_ * std::pow(1.0 + eta_, s);
    }
  }

private:
  lambda_schedule(kind k, double lambda0, double eta) : kind_(k), lambda0_(lambda0), eta_(eta) {}

  kind kind_ = kind::exponential;
  double lambda0_ = 2.0;
  double eta_ = 0.05;
  std::function<double(std::int64_t)> fn_;
};

/// Options of select_replays. The defaults are the authors' code: top-K over the batch with K = (8 − m)·B,
/// score = token-mean entropy + 2·1.05^s · fraction met, shortfall reported.
struct replay_select_options {
  replay_allocation allocation = replay_allocation::top_k_global;
  replay_ranking ranking = replay_ranking::score;
  diversity_kind diversity = diversity_kind::token_mean;
  integrity_kind integrity = integrity_kind::fraction_met;
  lambda_schedule lambda = lambda_schedule::exponential(2.0, 0.05);
  replay_budget_kind budget_kind = replay_budget_kind::fill_to_target;
  std::size_t target_group_size = 8;  ///< n_target (fill_to_target): the group size replays top up to
  std::size_t replays_per_prompt = 2; ///< k (per_prompt)
  std::size_t budget = 0;             ///< K (absolute)
  std::uint64_t seed = 0;             ///< seed of replay_ranking::random (the stream is the step)
  replay_shortfall shortfall = replay_shortfall::report;
};

/// The candidates of one selection, in memory space `Space`. Candidate i is a response to prompt `prompt[i]`.
template <class T, class Space = host_space>
struct replay_candidates_ref {
  std::size_t num_prompts = 0;                       ///< B; every prompt in [0, B) needs at least one candidate
  span<const std::int64_t, Space> prompt;            ///< [n] prompt index of each candidate, in [0, B)
  verdict_ref<Space> verdicts;                       ///< [n] verdict mask and constraint count of each candidate
  span<const T, Space> entropy_sum;                  ///< [n] Σ_t H_t over the response's valid tokens (finite, ≥ 0)
  span<const std::int64_t, Space> length;            ///< [n] number of valid response tokens |y| (≥ 1)
  span<const std::uint8_t, Space> constraint_counts; ///< [B] n_p of each prompt's instruction; empty: only checks
                                                     ///< that responses to one prompt agree with each other
  span<const T, Space> weights;  ///< [B × weight_stride] constraint weights (integrity_kind::weighted)
  std::size_t weight_stride = 0; ///< row stride of `weights` (≥ every constraint count)

  HIR_HOST_DEVICE std::size_t size() const { return prompt.size(); }
};

/// The result of select_replays: the chosen candidates and the budget bookkeeping.
template <class Backend>
struct replay_selection {
  hir::vector<std::int64_t, Backend> indices; ///< chosen candidates, ascending (each at most once)
  std::size_t eligible = 0;                   ///< |E|: candidates with 0 < fraction met < 1
  std::size_t budget = 0;                     ///< replays the options asked for (= eligible for all_eligible)
  std::size_t shortfall = 0;                  ///< budget − indices.size()
  std::size_t extra_rollouts_per_prompt = 0;  ///< r = ceil(shortfall / B): rollouts per prompt to add and reselect
  std::size_t budget_after_resampling = 0; ///< max(0, budget − r·B): the authors' shrunk budget (n_target − m − r)·B
  double lambda = 0.0;                     ///< λ(step) used (0 unless ranking is score)

  std::size_t size() const noexcept { return indices.size(); }
  /// True when the budget was met (no extra rollouts needed).
  bool complete() const noexcept { return shortfall == 0; }
};

/// The authors' replay budget K = (n_target − m)·B (0 when m ≥ n_target).
inline std::size_t replay_budget(std::size_t num_prompts, std::size_t rollouts_per_prompt,
                                 std::size_t target_group_size) {
  return target_group_size > rollouts_per_prompt ? (target_group_size - rollouts_per_prompt) * num_prompts : 0;
}

namespace detail {

/// What one validation pass over the candidates found: the first issue, per-prompt sizes and eligible counts.
struct replay_candidate_summary {
  relabel_input_issue issue;
  std::vector<std::int64_t> prompt_size;     ///< m_p
  std::vector<std::int64_t> prompt_eligible; ///< e_p
  std::size_t eligible = 0;
};

/// What the implementation takes: `take` candidates over the batch (top_k_global), quota[p] from prompt p
/// (top_k_per_group, even_per_prompt), or every eligible one.
struct replay_plan {
  replay_allocation allocation = replay_allocation::top_k_global;
  std::size_t take = 0;
  std::vector<std::int64_t> quota;
};

inline void check_replay_select_options(const char* fn, const replay_select_options& o) {
  if (static_cast<unsigned>(o.allocation) > static_cast<unsigned>(replay_allocation::all_eligible))
    fail(fn, "allocation = ", static_cast<int>(o.allocation), " is not a replay_allocation");
  if (static_cast<unsigned>(o.ranking) > static_cast<unsigned>(replay_ranking::random))
    fail(fn, "ranking = ", static_cast<int>(o.ranking), " is not a replay_ranking");
  if (static_cast<unsigned>(o.diversity) > static_cast<unsigned>(diversity_kind::token_sum))
    fail(fn, "diversity = ", static_cast<int>(o.diversity), " is not a diversity_kind");
  if (static_cast<unsigned>(o.integrity) > static_cast<unsigned>(integrity_kind::weighted))
    fail(fn, "integrity = ", static_cast<int>(o.integrity), " is not an integrity_kind");
  if (static_cast<unsigned>(o.budget_kind) > static_cast<unsigned>(replay_budget_kind::absolute))
    fail(fn, "budget_kind = ", static_cast<int>(o.budget_kind), " is not a replay_budget_kind");
  if (static_cast<unsigned>(o.shortfall) > static_cast<unsigned>(replay_shortfall::error))
    fail(fn, "shortfall = ", static_cast<int>(o.shortfall), " is not a replay_shortfall");
  const auto& l = o.lambda;
  if (o.ranking == replay_ranking::score && l.type() != lambda_schedule::kind::custom) {
    if (!std::isfinite(l.lambda0()) || l.lambda0() < 0)
      fail(fn, "lambda0 = ", l.lambda0(), " must be finite and >= 0");
    if (!std::isfinite(l.eta()) || (l.type() == lambda_schedule::kind::exponential && !(l.eta() > -1.0)))
      fail(fn, "eta = ", l.eta(), " must be finite (and > -1 for the exponential schedule)");
  }
  if (o.allocation == replay_allocation::top_k_per_group && o.budget_kind == replay_budget_kind::absolute)
    fail(fn, "budget_kind = absolute has no per-prompt quota; top_k_per_group needs fill_to_target or per_prompt");
}

/// Water-filling: the most even split of `total` over prompts with capacities `cap` (Σ cap ≥ total), each prompt
/// at most its capacity; the remainder goes to the lowest-indexed prompts that can take one more.
inline std::vector<std::int64_t> even_split(const std::vector<std::int64_t>& cap, std::size_t total) {
  std::int64_t hi = 0;
  for (auto c : cap)
    hi = std::max(hi, c);
  auto filled = [&](std::int64_t level) {
    std::int64_t s = 0;
    for (auto c : cap)
      s += std::min(c, level);
    return s;
  };
  std::int64_t lo = 0; // largest level with filled(level) ≤ total
  while (lo < hi) {
    const std::int64_t mid = lo + (hi - lo + 1) / 2;
    if (filled(mid) <= static_cast<std::int64_t>(total))
      lo = mid;
    else
      hi = mid - 1;
  }
  std::vector<std::int64_t> out(cap.size());
  std::int64_t rest = static_cast<std::int64_t>(total) - filled(lo);
  for (std::size_t p = 0; p < cap.size(); ++p) {
    out[p] = std::min(cap[p], lo);
    if (rest > 0 && cap[p] > lo) {
      ++out[p];
      --rest;
    }
  }
  return out;
}

/// Checks the candidate arrays' sizes (not their contents).
template <class T, class Space>
void check_replay_candidate_sizes(const char* fn, const replay_candidates_ref<T, Space>& c,
                                  const replay_select_options& opt) {
  if (c.size() == 0)
    fail(fn, "the batch is empty (no candidates)");
  if (c.num_prompts == 0)
    fail(fn, "num_prompts = 0 with ", c.size(), " candidates");
  check_size(fn, "verdicts.size()", c.verdicts.size(), "prompt.size()", c.size());
  check_size(fn, "entropy_sum.size()", c.entropy_sum.size(), "prompt.size()", c.size());
  check_size(fn, "length.size()", c.length.size(), "prompt.size()", c.size());
  if (!c.constraint_counts.empty())
    check_size(fn, "constraint_counts.size()", c.constraint_counts.size(), "num_prompts", c.num_prompts);
  if (opt.integrity == integrity_kind::weighted) {
    if (c.weight_stride == 0 || c.weight_stride > max_constraints)
      fail(fn, "weight_stride = ", c.weight_stride, " must be in [1, ", max_constraints, "] for weighted integrity");
    check_size(fn, "weights.size()", c.weights.size(), "num_prompts * weight_stride", c.num_prompts * c.weight_stride);
  }
}

/// Throws the message for a candidate issue.
template <class T, class Space>
[[noreturn]] void fail_candidate(const char* fn, const replay_candidates_ref<T, Space>& c, relabel_input_issue is) {
  const auto i = static_cast<std::size_t>(is.index);
  if (is.issue == relabel_issue::prompt_empty)
    fail(fn, "prompt ", i, " ", describe(is.issue));
  const auto p = to_host(c.prompt.subspan(i, 1))[0];
  const unsigned n = to_host(c.verdicts.counts.subspan(i, 1))[0];
  if (is.issue == relabel_issue::count_mismatch) {
    const unsigned np = to_host(c.constraint_counts.subspan(static_cast<std::size_t>(p), 1))[0];
    fail(fn, "candidate ", i, " (prompt ", p, ") ", describe(is.issue), ": ", n, " verdicts, ", np, " constraints");
  }
  if (is.issue == relabel_issue::entropy_invalid)
    fail(fn, "candidate ", i, " ", describe(is.issue),
         ": entropy_sum = ", static_cast<double>(to_host(c.entropy_sum.subspan(i, 1))[0]));
  if (is.issue == relabel_issue::length_invalid)
    fail(fn, "candidate ", i, " ", describe(is.issue), ": length = ", to_host(c.length.subspan(i, 1))[0]);
  fail(fn, "candidate ", i, " (prompt ", p, ", ", n, " constraints) ", describe(is.issue));
}

/// Validates the contents of the candidates and builds the plan for the options. Throws on any problem.
template <class Backend, class T>
replay_plan plan_replays(Backend const& be, const char* fn, replay_candidates_ref<T, memory_space_t<Backend>> c,
                         const replay_select_options& opt, std::size_t& eligible, std::size_t& budget) {
  check_replay_select_options(fn, opt);
  check_replay_candidate_sizes(fn, c, opt);
  validate_verdicts(be, fn, c.verdicts);
  const replay_candidate_summary s = replay_candidates_summary_impl(be, c, opt);
  if (s.issue)
    fail_candidate(fn, c, s.issue);
  const std::size_t n = c.size(), B = c.num_prompts;
  eligible = s.eligible;
  replay_plan plan;
  plan.allocation = opt.allocation;
  if (opt.allocation == replay_allocation::all_eligible) {
    budget = s.eligible;
    plan.take = s.eligible;
    return plan;
  }
  std::vector<std::int64_t> quota(B, 0);
  for (std::size_t p = 0; p < B; ++p) {
    const auto m = s.prompt_size[p];
    if (opt.budget_kind == replay_budget_kind::fill_to_target)
      quota[p] = std::max<std::int64_t>(0, static_cast<std::int64_t>(opt.target_group_size) - m);
    else
      quota[p] = static_cast<std::int64_t>(opt.replays_per_prompt);
  }
  if (opt.budget_kind == replay_budget_kind::absolute) {
    budget = opt.budget;
  } else {
    budget = 0;
    for (auto q : quota)
      budget += static_cast<std::size_t>(q);
  }
  if (budget > n)
    fail(fn, "the replay budget K = ", budget, " exceeds the batch of ", n,
         " responses (each response is replayed at most once)");
  if (opt.allocation == replay_allocation::top_k_per_group) {
    for (std::size_t p = 0; p < B; ++p)
      if (quota[p] > s.prompt_size[p])
        fail(fn, "the replay quota k = ", quota[p], " of prompt ", p, " exceeds its ", s.prompt_size[p], " responses");
    for (std::size_t p = 0; p < B; ++p)
      quota[p] = std::min(quota[p], s.prompt_eligible[p]);
    plan.quota = std::move(quota);
    for (auto q : plan.quota)
      plan.take += static_cast<std::size_t>(q);
    return plan;
  }
  plan.take = std::min(budget, s.eligible);
  if (opt.allocation == replay_allocation::even_per_prompt)
    plan.quota = even_split(s.prompt_eligible, plan.take);
  return plan;
}

/// Fills the shortfall fields of a selection (and throws under replay_shortfall::error).
template <class Backend>
void finish_selection(const char* fn, replay_selection<Backend>& r, std::size_t taken, std::size_t num_prompts,
                      const replay_select_options& opt) {
  r.shortfall = r.budget > taken ? r.budget - taken : 0;
  r.extra_rollouts_per_prompt = (r.shortfall + num_prompts - 1) / num_prompts;
  const std::size_t drop = r.extra_rollouts_per_prompt * num_prompts;
  r.budget_after_resampling = r.budget > drop ? r.budget - drop : 0;
  if (r.shortfall > 0 && opt.shortfall == replay_shortfall::error)
    fail(fn, "only ", taken, " of the K = ", r.budget, " replays can be selected (", r.eligible,
         " eligible responses); draw r = ", r.extra_rollouts_per_prompt,
         " more rollouts per prompt and select again with a budget of ", r.budget_after_resampling);
}

} // namespace detail

/// Per-response entropy statistics from token entropies: out_sum[i] = Σ_t mask[i,t]·H[i,t] and
/// out_length[i] = Σ_t mask[i,t], for the candidates of select_replays.
/// \param entropy  [B × length] token entropies H_t of π_old (finite on valid tokens)
/// \param mask     [B × length] 1 = valid response token, 0 = padding
/// \throws hir::invalid_argument on mismatched sizes, a mask entry other than 0/1, or a non-finite entropy on a valid
///         token; nothing is written then.
template <class Backend, class T>
void sequence_entropy(Backend const& be, span<const T, memory_space_t<Backend>> entropy,
                      span<const std::uint8_t, memory_space_t<Backend>> mask, std::size_t length,
                      span<T, memory_space_t<Backend>> out_sum,
                      span<std::int64_t, memory_space_t<Backend>> out_length) {
  detail::check_backend<Backend>();
  constexpr const char* fn = "sequence_entropy";
  if (length == 0)
    detail::fail(fn, "length = 0");
  if (mask.size() % length != 0)
    detail::fail(fn, "mask.size() = ", mask.size(), " is not a multiple of length = ", length);
  detail::check_size(fn, "entropy.size()", entropy.size(), "mask.size()", mask.size());
  detail::check_size(fn, "out_sum.size()", out_sum.size(), "rows", mask.size() / length);
  detail::check_size(fn, "out_length.size()", out_length.size(), "rows", mask.size() / length);
  const auto is = relabel_masked_rows_check_impl(be, mask, entropy, length);
  if (is)
    detail::fail(fn, "row ", is.index, " ", detail::describe(is.issue));
  sequence_entropy_impl(be, entropy, mask, length, out_sum, out_length);
}

/// The ranking key of every candidate: F_div + λ(step)·F_int (or the key of opt.ranking) for eligible candidates,
/// −∞ for the others. For inspection and logging; select_replays computes the same keys.
/// \throws hir::invalid_argument like select_replays.
template <class Backend, class T>
void replay_scores(Backend const& be, replay_candidates_ref<T, memory_space_t<Backend>> candidates, std::int64_t step,
                   span<double, memory_space_t<Backend>> out, replay_select_options const& opt = {}) {
  detail::check_backend<Backend>();
  constexpr const char* fn = "replay_scores";
  detail::check_replay_select_options(fn, opt);
  detail::check_replay_candidate_sizes(fn, candidates, opt);
  detail::check_size(fn, "out.size()", out.size(), "candidates.size()", candidates.size());
  validate_verdicts(be, fn, candidates.verdicts);
  const detail::replay_candidate_summary s = replay_candidates_summary_impl(be, candidates, opt);
  if (s.issue)
    detail::fail_candidate(fn, candidates, s.issue);
  double lambda = 0.0;
  if (opt.ranking == replay_ranking::score) {
    lambda = opt.lambda(step);
    if (!std::isfinite(lambda) || lambda < 0)
      detail::fail(fn, "lambda(step = ", step, ") = ", lambda, " must be finite and >= 0");
  }
  replay_scores_impl(be, candidates, step, lambda, out, opt);
}

/// Selects the responses to replay (hir-algorithm.md §2).
/// \param candidates  per-response arrays (see replay_candidates_ref); hir::sequence_entropy builds entropy_sum and
///                    length from token arrays
/// \param step        training step s (the authors count from 1); sets λ(s) and the random stream
/// \return the chosen candidates in ascending order and the budget bookkeeping; when fewer responses are eligible
///         than the budget asks for, every eligible one is taken (top_k_global, even_per_prompt) or every eligible one
///         of the short prompts (top_k_per_group), and `extra_rollouts_per_prompt` says how many more rollouts per
///         prompt to draw (unless opt.shortfall is error, which throws instead).
/// \throws hir::invalid_argument on an empty batch, mismatched sizes, invalid verdicts (bits at or above the count, a
///         count that disagrees with the prompt's constraint count), a prompt index out of range or a prompt without
///         responses, a negative or non-finite entropy, a length < 1, a budget larger than the batch (or a per-prompt
///         quota larger than the prompt's responses), an invalid λ, or a shortfall under replay_shortfall::error.
template <class Backend, class T>
HIR_NODISCARD replay_selection<Backend> select_replays(Backend const& be,
                                                       replay_candidates_ref<T, memory_space_t<Backend>> candidates,
                                                       std::int64_t step, replay_select_options const& opt = {}) {
  detail::check_backend<Backend>();
  constexpr const char* fn = "select_replays";
  replay_selection<Backend> r;
  const detail::replay_plan plan = detail::plan_replays(be, fn, candidates, opt, r.eligible, r.budget);
  if (opt.ranking == replay_ranking::score) {
    r.lambda = opt.lambda(step);
    if (!std::isfinite(r.lambda) || r.lambda < 0)
      detail::fail(fn, "lambda(step = ", step, ") = ", r.lambda, " must be finite and >= 0");
  }
  detail::finish_selection(fn, r, plan.take, candidates.num_prompts, opt);
  r.indices = select_replays_impl(be, candidates, step, r.lambda, plan, opt);
  return r;
}

} // namespace hir
