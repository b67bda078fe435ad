// SPDX-License-Identifier: Apache-2.0
// Hindsight instruction replay end to end: the options of one HiR step (select → rewrite → replay batch →
// advantages → loss) in one struct, the two named variants of the algorithm, and the advantage step on a replay
// batch (docs/hindsight.md):
//
//   hir_paper_code   the authors' released training code: m = 6 rollouts, top-K over the batch with
//                    K = (8 − 6)·B (2 replays per prompt on average), token-mean entropy, λ = 2·1.05^s; replays copy
//                    old and reference log-probs from their source and follow it in the batch; REINFORCE++ with k1
//                    KL in the reward (β = 0.001), γ = 1, whitening over all valid tokens; PPO clip 0.2 with dual
//                    clip 3, token mean
//   hir_paper_eq     the paper's formulas: top-k per prompt (k = 2), summed entropy, everything else as above
//
// A trainer's step:
//   sel   = select_replays(be, rollouts, step, opt.select)
//   batch = build_replay_batch(be, rollouts, sel, opt.batch)          (+ recomputed log-probs if asked for)
//   text  = row_instructions(prompts, batch.prompt, batch.constraint_mask) → tokenize_instructions(…, tokenizer)
//   logp  = the caller's forward pass of each row's response under its instruction
//   adv   = hindsight_advantages(be, batch, opt)
//   loss  = policy_loss(be, batch.token_batch() with logp, adv, grad, opt.policy)
#pragma once

#include <hir/advantages/group_advantages.hpp>
#include <hir/advantages/reinforce_pp.hpp>
#include <hir/core/groups.hpp>
#include <hir/losses/policy_loss.hpp>
#include <hir/losses/preference.hpp>
#include <hir/relabel/replay_batch.hpp>
#include <hir/relabel/select.hpp>

#include <cstddef>

namespace hir {

/// The advantage estimator of a HiR step.
enum class hindsight_advantage {
  reinforce_pp,  ///< REINFORCE++ token advantages (reinforce_pp_advantages) on the batch (authors)
  group_relative ///< group-relative sequence advantages (group_advantages, e.g. GRPO) over the batch's group ids
};

/// Every choice of one HiR step. Each ablation of the algorithm is a field here, not a fork.
struct hindsight_options {
  std::size_t rollouts_per_prompt = 6; ///< m: responses the trainer samples per prompt (the selection budget uses the
                                       ///< batch's actual group sizes; m is for the sampler)
  replay_select_options select;        ///< which failures are replayed (select_replays)
  replay_batch_options batch;          ///< how the batch of originals + replays is built (build_replay_batch)
  hindsight_advantage estimator = hindsight_advantage::reinforce_pp;
  reinforce_pp_options reinforce_pp;  ///< estimator reinforce_pp
  group_advantage_options group;      ///< estimator group_relative (groups from batch.grouping)
  policy_loss_options policy;         ///< the policy loss on that batch (policy_loss)
  preference_pair_options pairs;      ///< the dual-level preference view (build_preference_pairs)
  preference_loss_options preference; ///< its DPO / IPO loss (preference_loss)
};

namespace presets {

/// The authors' code (sastpg/HIR at ffd6919): 6 rollouts, K = (8 − 6)·B top-K over the whole batch, F = token-mean
/// entropy + 2·1.05^s·CLA, replays inserted after their source with copied old/ref log-probs and reward 1, one
/// group; REINFORCE++ with k1 KL in the reward (β = 0.001), γ = 1, whitening over all valid tokens; PPO clip
/// ε = 0.2 with dual clip c = 3, token mean, no KL term in the loss.
inline hindsight_options hir_paper_code() {
  hindsight_options o;
  o.rollouts_per_prompt = 6;
  o.select.allocation = replay_allocation::top_k_global;
  o.select.ranking = replay_ranking::score;
  o.select.diversity = diversity_kind::token_mean;
  o.select.integrity = integrity_kind::fraction_met;
  o.select.lambda = lambda_schedule::exponential(2.0, 0.05);
  o.select.budget_kind = replay_budget_kind::fill_to_target;
  o.select.target_group_size = 8;
  o.select.shortfall = replay_shortfall::report;
  o.batch.old_logp = replay_old_logp::copy_from_source;
  o.batch.ref_logp = replay_ref_logp::copy_from_source;
  o.batch.grouping = replay_grouping::global;
  o.batch.placement = replay_placement::after_source;
  o.batch.replay_reward = 1.0;
  o.estimator = hindsight_advantage::reinforce_pp;
  o.reinforce_pp = presets::hir_paper_code_advantages();
  o.policy = presets::hir_paper_code_loss();
  return o;
}

/// The paper's formulas: top-k per prompt with k = 2 (= 8 − 6) by F = Σ_t H_t + 2·1.05^s·CLA; the rest as
/// hir_paper_code.
inline hindsight_options hir_paper_eq() {
  hindsight_options o = hir_paper_code();
  o.select.allocation = replay_allocation::top_k_per_group;
  o.select.diversity = diversity_kind::token_sum;
  o.select.budget_kind = replay_budget_kind::per_prompt;
  o.select.replays_per_prompt = 2;
  return o;
}

} // namespace presets

/// Importance-weighted advantages: out[r·L + t] = a · weight[r·L + t] with a = advantages[r] (per sequence, R
/// values) or advantages[r·L + t] (per token). For PPO clip (with or without dual clip), CISPO and REINFORCE a
/// weight w ≥ 0 on A multiplies the token's loss by w, so this applies replay_batch::weight (truncated_is).
/// \throws hir::invalid_argument on mismatched sizes or a negative or non-finite weight; `out` is untouched then.
template <class Backend, class T>
void weight_advantages(Backend const& be, span<const T, memory_space_t<Backend>> advantages,
                       span<const T, memory_space_t<Backend>> weight, std::size_t length,
                       span<T, memory_space_t<Backend>> out) {
  detail::check_backend<Backend>();
  constexpr const char* fn = "weight_advantages";
  if (length == 0)
    detail::fail(fn, "length = 0");
  detail::check_size(fn, "out.size()", out.size(), "weight.size()", weight.size());
  if (weight.size() % length != 0)
    detail::fail(fn, "weight.size() = ", weight.size(), " is not a multiple of length = ", length);
  if (advantages.size() != weight.size() && advantages.size() * length != weight.size())
    detail::fail(fn, "advantages.size() = ", advantages.size(), " is neither rows = ", weight.size() / length,
                 " nor rows * length = ", weight.size());
  const long long bad = relabel_first_bad_weight_impl(be, weight);
  if (bad >= 0)
    detail::fail(fn, "weight[", bad, "] = ", to_host(weight.subspan(static_cast<std::size_t>(bad), 1))[0],
                 " is negative or not finite");
  weight_advantages_impl(be, advantages, weight, length, out);
}

/// The advantages of a replay batch for opt.estimator: REINFORCE++ token advantages [R × L] (opt.reinforce_pp,
/// scores = batch.reward, groups from batch.group for its baselines), or group-relative sequence advantages [R]
/// (opt.group over the groups of batch.group). When the batch carries importance weights (truncated_is) they are
/// applied and the result is per token [R × L]. policy_loss takes either shape.
/// \throws hir::invalid_argument from the estimator (e.g. a row without valid tokens, a singleton group under
///         singleton_policy::error).
template <class T, class Backend>
HIR_NODISCARD hir::vector<T, Backend> hindsight_advantages(Backend const& be, const replay_batch<T, Backend>& batch,
                                                           const hindsight_options& opt) {
  detail::check_backend<Backend>();
  if (static_cast<unsigned>(opt.estimator) > static_cast<unsigned>(hindsight_advantage::group_relative))
    detail::fail("hindsight_advantages", "estimator = ", static_cast<int>(opt.estimator),
                 " is not a hindsight_advantage");
  const group_storage<Backend> groups(be, replay_group_layout(batch));
  const auto reward = detail::const_view<Backend>(batch.reward);
  hir::vector<T, Backend> adv(opt.estimator == hindsight_advantage::reinforce_pp ? batch.batch * batch.length
                                                                                 : batch.batch);
  if (opt.estimator == hindsight_advantage::reinforce_pp)
    reinforce_pp_advantages(be, reward, batch.token_batch(), groups.ref(), detail::mutable_view<Backend>(adv),
                            opt.reinforce_pp);
  else
    group_advantages(be, reward, groups.ref(), detail::mutable_view<Backend>(adv), opt.group);
  if (batch.weight.empty())
    return adv;
  hir::vector<T, Backend> weighted(batch.batch * batch.length);
  weight_advantages(be, detail::const_view<Backend>(adv), detail::const_view<Backend>(batch.weight), batch.length,
                    detail::mutable_view<Backend>(weighted));
  return weighted;
}

} // namespace hir
