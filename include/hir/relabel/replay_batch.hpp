// SPDX-License-Identifier: Apache-2.0
// Replay batches: from a batch of N original rollouts and the K responses selected for replay, build the training
// batch of N + K rows that hindsight instruction replay optimizes (docs/hindsight.md, §3–4 of the algorithm).
//
//   original row   prompt p, its full instruction q (constraint mask = all n bits), reward R (ILA or the caller's
//                  score), its own response, mask, old and reference log-probs
//   replay row     the same prompt p under the rewritten instruction q' (constraint mask = the constraints the
//                  response met, in their original order), reward 1, the source's response and mask unchanged,
//                  is_replay = 1, source_row = the row of its original, and log-probs
//                    copy_from_source  log π_old(y|q), log π_ref(y|q) copied (authors): the PPO ratio of a replay is
//                                      π_θ(y|q') / π_old(y|q), the importance weight of sampling under q
//                    recomputed        the caller's log π_old(y|q'), log π_ref(y|q') (ratio starts at 1)
//                    truncated_is      old = log π_old(y|q') and weight w = min(π_old(y|q') / π_old(y|q), cap) per
//                                      token or per sequence, to multiply into the replay's token losses
//   group ids      global (one group: REINFORCE++ whitening over the batch, authors), join_source (replays join
//                  their prompt's group), own_group (replays of a prompt form a group of their own)
//
// The result feeds hir::reinforce_pp_advantages / hir::group_advantages (reward, token_batch(), groups) and
// hir::policy_loss; hir::row_instructions + hir::tokenize_instructions render each row's instruction.
#pragma once

#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/groups.hpp>
#include <hir/core/span.hpp>
#include <hir/core/tokens.hpp>
#include <hir/detail/relabel_issues.hpp>
#include <hir/relabel/select.hpp>
#include <hir/rewards/reward_vector.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace hir {

/// A batch of original rollouts in memory space `Space`: N responses of length L (padded) to B prompts.
/// Arrays an operation does not use may be empty (see each function).
template <class T, class Space = host_space>
struct rollout_batch_ref {
  std::size_t batch = 0;                             ///< N, number of responses
  std::size_t length = 0;                            ///< L, padded response length
  std::size_t num_prompts = 0;                       ///< B
  span<const std::int64_t, Space> prompt;            ///< [N] prompt index of each response, in [0, B)
  verdict_ref<Space> verdicts;                       ///< [N] verdict mask and constraint count of each response
  span<const std::int32_t, Space> tokens;            ///< [N × L] response token ids (empty: not gathered)
  span<const std::uint8_t, Space> mask;              ///< [N × L] 1 = valid response token
  span<const T, Space> old_logp;                     ///< [N × L] log π_old(y_t | q, y<t)
  span<const T, Space> ref_logp;                     ///< [N × L] log π_ref(y_t | q, y<t) (empty: no reference policy)
  span<const T, Space> entropy;                      ///< [N × L] token entropies of π_old (select_replays only)
  span<const T, Space> scores;                       ///< [N] rewards of the originals (empty: ILA from the verdicts)
  span<const std::uint8_t, Space> constraint_counts; ///< [B] constraint count of each prompt (empty: not checked)
  span<const T, Space> weights; ///< [B × weight_stride] constraint weights (weighted integrity only)
  std::size_t weight_stride = 0;
};

/// Log-probabilities of the replays recomputed by the caller under their rewritten instructions, one row per replay
/// in the order of the replay indices given to build_replay_batch.
template <class T, class Space = host_space>
struct replay_logp_ref {
  span<const T, Space> old_logp; ///< [K × L] log π_old(y_t | q', y<t)
  span<const T, Space> ref_logp; ///< [K × L] log π_ref(y_t | q', y<t)
};

/// Where a replay's old log-probabilities (the PPO ratio's denominator) come from.
enum class replay_old_logp {
  copy_from_source, ///< log π_old(y|q) of the source (authors): ratio π_θ(y|q')/π_old(y|q)
  recomputed,       ///< the caller's log π_old(y|q'): ratio π_θ(y|q')/π_old(y|q'), off-policyness ignored
  truncated_is      ///< the caller's log π_old(y|q') plus weight min(π_old(y|q')/π_old(y|q), importance_cap)
};

/// Where a replay's reference log-probabilities (the KL anchor) come from.
enum class replay_ref_logp {
  copy_from_source, ///< log π_ref(y|q) of the source (authors)
  recomputed        ///< the caller's log π_ref(y|q')
};

/// Level of the truncated importance weight.
enum class importance_level {
  token,   ///< w_t = min(exp(log π_old(y_t|q',·) − log π_old(y_t|q,·)), cap) per token
  sequence ///< w = min(exp(Σ_t (log π_old(y_t|q',·) − log π_old(y_t|q,·))), cap) on every token of the replay
};

/// How rows are grouped for group-relative advantages.
enum class replay_grouping {
  global,      ///< every row in group 0: the batch is one group (REINFORCE++ global whitening, authors)
  join_source, ///< group = prompt index: replays join their source's group
  own_group    ///< originals: prompt index; replays: num_prompts + prompt index (replays of a prompt form a group)
};

/// Row order of the batch.
enum class replay_placement {
  after_originals, ///< rows 0..N−1 are the originals in input order, then the replays in the order given
  after_source     ///< each replay directly follows its original (the authors' insertion order)
};

/// Options of build_replay_batch. The defaults are the authors' code.
struct replay_batch_options {
  replay_old_logp old_logp = replay_old_logp::copy_from_source;
  replay_ref_logp ref_logp = replay_ref_logp::copy_from_source;
  importance_level importance = importance_level::sequence; ///< truncated_is only
  double importance_cap = 2.0;                              ///< truncated_is only (> 0, finite)
  replay_grouping grouping = replay_grouping::global;
  replay_placement placement = replay_placement::after_originals;
  double replay_reward = 1.0; ///< reward of a replay (finite)
};

namespace detail {
/// A span of const U over a backend vector.
template <class Backend, class U>
span<const U, memory_space_t<Backend>> const_view(const hir::vector<U, Backend>& v) {
  return {backend::traits<Backend>::raw(v), v.size()};
}
/// A span of U over a backend vector.
template <class Backend, class U>
span<U, memory_space_t<Backend>> mutable_view(hir::vector<U, Backend>& v) {
  return {backend::traits<Backend>::raw(v), v.size()};
}
} // namespace detail

/// A view of a replay batch (see replay_batch for the fields).
template <class T, class Space = host_space>
struct replay_batch_ref {
  std::size_t batch = 0, length = 0, num_prompts = 0, num_originals = 0, num_replays = 0;
  span<const std::int64_t, Space> prompt, origin, source_row, replay_row, group;
  span<const std::uint64_t, Space> constraint_mask;
  span<const std::uint8_t, Space> constraint_count, is_replay;
  span<const T, Space> reward;
  span<const std::int32_t, Space> tokens;
  span<const std::uint8_t, Space> mask;
  span<const T, Space> old_logp, ref_logp, weight;
};

/// The training batch of originals plus replays: R = N + K rows of length L, in Backend's memory.
template <class T, class Backend>
struct replay_batch {
  using space = memory_space_t<Backend>;

  std::size_t batch = 0;         ///< R = N + K
  std::size_t length = 0;        ///< L
  std::size_t num_prompts = 0;   ///< B
  std::size_t num_originals = 0; ///< N
  std::size_t num_replays = 0;   ///< K

  hir::vector<std::int64_t, Backend> prompt;           ///< [R] prompt index
  hir::vector<std::uint64_t, Backend> constraint_mask; ///< [R] kept constraints of the prompt's instruction (bit c =
                                                       ///< constraint c): all n bits for originals, the met ones
                                                       ///< for replays
  hir::vector<std::uint8_t, Backend> constraint_count; ///< [R] n of the prompt's original instruction
  hir::vector<T, Backend> reward;                      ///< [R] R of originals, replay_reward (1) of replays
  hir::vector<std::uint8_t, Backend> is_replay;        ///< [R] 1 for replays
  hir::vector<std::int64_t, Backend> origin;           ///< [R] index of the row's response in the input batch
  hir::vector<std::int64_t, Backend> source_row;       ///< [R] row of the original holding the same response
                                                       ///< (the row itself for originals)
  hir::vector<std::int64_t, Backend> replay_row;       ///< [R] originals: row of their replay or −1; replays: −1
  hir::vector<std::int64_t, Backend> group;            ///< [R] group id for the chosen replay_grouping (not dense:
                                                       ///< build a layout with hir::replay_group_layout)
  hir::vector<std::int32_t, Backend> tokens;           ///< [R × L] response token ids (empty if the input had none)
  hir::vector<std::uint8_t, Backend> mask;             ///< [R × L]
  hir::vector<T, Backend> old_logp;                    ///< [R × L] PPO denominator of each row
  hir::vector<T, Backend> ref_logp;                    ///< [R × L] (empty if the input had no reference log-probs)
  hir::vector<T, Backend> weight;                      ///< [R × L] importance weights (truncated_is only, else empty):
                                                       ///< 1 on originals and padding

  /// Sets the counts and sizes every array for R = originals + replays rows of `length` tokens; tokens, ref_logp and
  /// weight get R × L entries only when present (else none). A reused batch keeps its capacity. Used by the
  /// backends' build_replay_batch, which then fill every entry.
  void shape(std::size_t prompts, std::size_t originals, std::size_t replays, std::size_t L, bool with_tokens,
             bool with_ref_logp, bool with_weight) {
    const std::size_t R = originals + replays;
    batch = R;
    length = L;
    num_prompts = prompts;
    num_originals = originals;
    num_replays = replays;
    prompt.resize(R);
    constraint_mask.resize(R);
    constraint_count.resize(R);
    reward.resize(R);
    is_replay.resize(R);
    origin.resize(R);
    source_row.resize(R);
    replay_row.resize(R);
    group.resize(R);
    mask.resize(R * L);
    old_logp.resize(R * L);
    tokens.resize(with_tokens ? R * L : 0);
    ref_logp.resize(with_ref_logp ? R * L : 0);
    weight.resize(with_weight ? R * L : 0);
  }

  /// The token view for advantages and losses: mask, old_logp, ref_logp (logp is left empty: the caller's forward
  /// pass under each row's instruction provides it).
  token_batch_ref<T, space> token_batch() const {
    token_batch_ref<T, space> t;
    t.batch = batch;
    t.length = length;
    t.mask = cview(mask);
    t.old_logp = cview(old_logp);
    t.ref_logp = cview(ref_logp);
    return t;
  }

  /// A view of every field.
  replay_batch_ref<T, space> ref() const {
    replay_batch_ref<T, space> r;
    r.batch = batch;
    r.length = length;
    r.num_prompts = num_prompts;
    r.num_originals = num_originals;
    r.num_replays = num_replays;
    r.prompt = cview(prompt);
    r.origin = cview(origin);
    r.source_row = cview(source_row);
    r.replay_row = cview(replay_row);
    r.group = cview(group);
    r.constraint_mask = cview(constraint_mask);
    r.constraint_count = cview(constraint_count);
    r.is_replay = cview(is_replay);
    r.reward = cview(reward);
    r.tokens = cview(tokens);
    r.mask = cview(mask);
    r.old_logp = cview(old_logp);
    r.ref_logp = cview(ref_logp);
    r.weight = cview(weight);
    return r;
  }
  operator replay_batch_ref<T, space>() const { return ref(); }

private:
  template <class U>
  static span<const U, space> cview(const hir::vector<U, Backend>& v) {
    return detail::const_view<Backend>(v);
  }
};

/// The group layout of a replay batch's `group` ids (numbered by first appearance, members in row order).
template <class T, class Backend>
group_layout replay_group_layout(const replay_batch<T, Backend>& b) {
  const auto ids = to_host(detail::const_view<Backend>(b.group));
  return group_layout::from_ids(span<const std::int64_t>(ids.data(), ids.size()));
}

namespace detail {

inline void check_replay_batch_options(const char* fn, const replay_batch_options& o) {
  if (static_cast<unsigned>(o.old_logp) > static_cast<unsigned>(replay_old_logp::truncated_is))
    fail(fn, "old_logp = ", static_cast<int>(o.old_logp), " is not a replay_old_logp");
  if (static_cast<unsigned>(o.ref_logp) > static_cast<unsigned>(replay_ref_logp::recomputed))
    fail(fn, "ref_logp = ", static_cast<int>(o.ref_logp), " is not a replay_ref_logp");
  if (static_cast<unsigned>(o.importance) > static_cast<unsigned>(importance_level::sequence))
    fail(fn, "importance = ", static_cast<int>(o.importance), " is not an importance_level");
  if (static_cast<unsigned>(o.grouping) > static_cast<unsigned>(replay_grouping::own_group))
    fail(fn, "grouping = ", static_cast<int>(o.grouping), " is not a replay_grouping");
  if (static_cast<unsigned>(o.placement) > static_cast<unsigned>(replay_placement::after_source))
    fail(fn, "placement = ", static_cast<int>(o.placement), " is not a replay_placement");
  if (o.old_logp == replay_old_logp::truncated_is && !(o.importance_cap > 0 && std::isfinite(o.importance_cap)))
    fail(fn, "importance_cap = ", o.importance_cap, " must be finite and > 0");
  if (!std::isfinite(o.replay_reward))
    fail(fn, "replay_reward = ", o.replay_reward, " must be finite");
}

/// Checks the sizes of a rollout batch's arrays (entropy only when `need_entropy` or given).
template <class T, class Space>
void check_rollout_sizes(const char* fn, const rollout_batch_ref<T, Space>& r, bool need_entropy) {
  if (r.batch == 0)
    fail(fn, "the batch is empty (batch = 0)");
  if (r.length == 0)
    fail(fn, "length = 0");
  if (r.num_prompts == 0)
    fail(fn, "num_prompts = 0 with batch = ", r.batch);
  const std::size_t nl = r.batch * r.length;
  check_size(fn, "prompt.size()", r.prompt.size(), "batch", r.batch);
  check_size(fn, "verdicts.size()", r.verdicts.size(), "batch", r.batch);
  check_size(fn, "mask.size()", r.mask.size(), "batch * length", nl);
  check_size(fn, "old_logp.size()", r.old_logp.size(), "batch * length", nl);
  if (!r.tokens.empty())
    check_size(fn, "tokens.size()", r.tokens.size(), "batch * length", nl);
  if (!r.ref_logp.empty())
    check_size(fn, "ref_logp.size()", r.ref_logp.size(), "batch * length", nl);
  if (need_entropy || !r.entropy.empty())
    check_size(fn, "entropy.size()", r.entropy.size(), "batch * length", nl);
  if (!r.scores.empty())
    check_size(fn, "scores.size()", r.scores.size(), "batch", r.batch);
  if (!r.constraint_counts.empty())
    check_size(fn, "constraint_counts.size()", r.constraint_counts.size(), "num_prompts", r.num_prompts);
}

} // namespace detail

/// Selects replays straight from a rollout batch: sums token entropies over each response's mask (hir::
/// sequence_entropy) and calls select_replays on the resulting candidates. Uses prompt, verdicts, mask, entropy,
/// constraint_counts, weights.
template <class Backend, class T>
HIR_NODISCARD replay_selection<Backend> select_replays(Backend const& be,
                                                       rollout_batch_ref<T, memory_space_t<Backend>> rollouts,
                                                       std::int64_t step, replay_select_options const& opt = {}) {
  detail::check_backend<Backend>();
  detail::check_rollout_sizes("select_replays", rollouts, true);
  hir::vector<T, Backend> sums(rollouts.batch);
  hir::vector<std::int64_t, Backend> lengths(rollouts.batch);
  sequence_entropy(be, rollouts.entropy, rollouts.mask, rollouts.length, detail::mutable_view<Backend>(sums),
                   detail::mutable_view<Backend>(lengths));
  replay_candidates_ref<T, memory_space_t<Backend>> c;
  c.num_prompts = rollouts.num_prompts;
  c.prompt = rollouts.prompt;
  c.verdicts = rollouts.verdicts;
  c.entropy_sum = detail::const_view<Backend>(sums);
  c.length = detail::const_view<Backend>(lengths);
  c.constraint_counts = rollouts.constraint_counts;
  c.weights = rollouts.weights;
  c.weight_stride = rollouts.weight_stride;
  return select_replays(be, c, step, opt);
}

/// Builds the batch of originals plus replays into `out`, reusing its storage (no allocation when `out` already
/// holds a batch of the same or larger shape: call it every step with the same `out`).
/// \param rollouts    the originals: prompt, verdicts, mask, old_logp (required), tokens, ref_logp, scores,
///                    constraint_counts (optional); entropy is not read
/// \param replays     indices of the responses to replay (each eligible, each at most once), e.g.
///                    select_replays(...).indices; replays keep this order under after_originals
/// \param out         overwritten with the R = N + K rows
/// \param recomputed  with old_logp = recomputed / truncated_is: the caller's log π_old(y|q') rows, one per replay
///                    in `replays` order; with ref_logp = recomputed: log π_ref(y|q') rows
/// \throws hir::invalid_argument on an empty batch, mismatched sizes, invalid or inconsistent verdicts, a prompt
///         index out of range, a mask entry other than 0/1, a non-finite log-probability on a valid token or score,
///         a replay index out of range, repeated, not eligible or with an empty response, missing or non-finite
///         recomputed log-probabilities, or a bad option; `out` is untouched then.
template <class Backend, class T>
void build_replay_batch(Backend const& be, rollout_batch_ref<T, memory_space_t<Backend>> rollouts,
                        span<const std::int64_t, memory_space_t<Backend>> replays, replay_batch<T, Backend>& out,
                        replay_batch_options const& opt = {},
                        replay_logp_ref<T, memory_space_t<Backend>> recomputed = {}) {
  detail::check_backend<Backend>();
  constexpr const char* fn = "build_replay_batch";
  detail::check_replay_batch_options(fn, opt);
  detail::check_rollout_sizes(fn, rollouts, false);
  const std::size_t K = replays.size(), KL = K * rollouts.length;
  if (K > rollouts.batch)
    detail::fail(fn, "replays.size() = ", K, " exceeds the batch of ", rollouts.batch, " responses");
  const bool need_old = opt.old_logp != replay_old_logp::copy_from_source;
  const bool need_ref = opt.ref_logp == replay_ref_logp::recomputed;
  if (need_old)
    detail::check_size(fn, "recomputed.old_logp.size()", recomputed.old_logp.size(), "replays.size() * length", KL);
  if (need_ref) {
    if (rollouts.ref_logp.empty())
      detail::fail(fn, "ref_logp = recomputed but the rollouts have no ref_logp");
    detail::check_size(fn, "recomputed.ref_logp.size()", recomputed.ref_logp.size(), "replays.size() * length", KL);
  }
  validate_verdicts(be, fn, rollouts.verdicts);
  const detail::relabel_input_issue rows = rollout_batch_check_impl(be, rollouts);
  if (rows)
    detail::fail(fn, "response ", rows.index, " ", detail::describe(rows.issue));
  const detail::relabel_input_issue reps =
      replay_indices_check_impl(be, rollouts, replays, recomputed, need_old, need_ref);
  if (reps)
    detail::fail(fn, "replay ", reps.index, " (index ",
                 to_host(replays.subspan(static_cast<std::size_t>(reps.index), 1))[0], ") ",
                 detail::describe(reps.issue));
  build_replay_batch_impl(be, rollouts, replays, recomputed, opt, out);
}

/// Builds the batch of originals plus replays (see the overload writing into an existing batch for the
/// parameters and errors).
template <class Backend, class T>
HIR_NODISCARD replay_batch<T, Backend>
build_replay_batch(Backend const& be, rollout_batch_ref<T, memory_space_t<Backend>> rollouts,
                   span<const std::int64_t, memory_space_t<Backend>> replays, replay_batch_options const& opt = {},
                   replay_logp_ref<T, memory_space_t<Backend>> recomputed = {}) {
  replay_batch<T, Backend> out;
  build_replay_batch(be, rollouts, replays, out, opt, recomputed);
  return out;
}

/// build_replay_batch for a selection (its indices, ascending).
template <class Backend, class T>
HIR_NODISCARD replay_batch<T, Backend>
build_replay_batch(Backend const& be, rollout_batch_ref<T, memory_space_t<Backend>> rollouts,
                   const replay_selection<Backend>& selection, replay_batch_options const& opt = {},
                   replay_logp_ref<T, memory_space_t<Backend>> recomputed = {}) {
  return build_replay_batch(be, rollouts, detail::const_view<Backend>(selection.indices), opt, recomputed);
}

} // namespace hir
