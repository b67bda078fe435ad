// SPDX-License-Identifier: Apache-2.0
// REINFORCE++ advantages at token level (verl `reinforce_plus_plus`, `reinforce_plus_plus_baseline`; OpenRLHF
// `reinforce`, `reinforce_baseline`). For row i of a padded [B, L] batch with mask m, score s_i and last valid
// position T_i:
//
//   KL penalty     k_t = estimator(old_logp_t − ref_logp_t)                      (only when kl_coef = β > 0)
//   token reward   r_t = c_i·[t = T_i] − β·k_t·m_t
//   return         G_t = r_t + γ·m_{t+1}·G_{t+1}     (verl: the running return is multiplied by the mask, so it
//                                                      restarts after every masked position)
//   baseline       none:                  c_i = s_i,  A_t = G_t
//                  group_mean_of_score:   c_i = s_i − μ_g(s)  then rewards and returns as above (OpenRLHF)
//                  group_mean_of_return:  a_i = (s_i − β Σ_t k_t m_t) − μ_g(a) tiled over the valid tokens (verl);
//                                         γ is not used
//   whitening      over all valid tokens of the batch, μ = mean, σ² = unbiased or biased variance,
//                  r = 1/sqrt(σ² + ε) (verl) or 1/sqrt(max(σ², ε)) (OpenRLHF):
//                  standard (A − μ)·r,  center_only A − μ,  keep_mean (A − μ)·r + μ,  none A
//
// The output is 0 at masked positions. Everything is accumulated in double. presets:: gives the verl, OpenRLHF and
// HiR-authors conventions (docs/advantages.md).
#pragma once

#include <hir/advantages/group_advantages.hpp>
#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/groups.hpp>
#include <hir/core/tokens.hpp>
#include <hir/losses/policy_loss.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace hir {

/// Which per-row baseline REINFORCE++ subtracts before whitening.
enum class reinforce_baseline {
  none,                ///< no baseline (verl `reinforce_plus_plus`, OpenRLHF `reinforce`)
  group_mean_of_score, ///< score − group mean of scores, then KL rewards and returns (OpenRLHF `reinforce_baseline`)
  group_mean_of_return ///< (score + Σ token KL penalty) − its group mean, tiled (verl `reinforce_plus_plus_baseline`)
};

/// How returns are whitened over the valid tokens of the batch.
enum class whitening {
  none,        ///< A = G
  standard,    ///< A = (G − μ)·r (verl masked_whiten, OpenRLHF)
  center_only, ///< A = G − μ (OpenRLHF --algo.advantage.no_std_norm)
  keep_mean    ///< A = (G − μ)·r + μ (verl masked_whiten(shift_mean=False))
};

/// Where ε enters the whitening scale r.
enum class whitening_epsilon {
  add_to_variance,  ///< r = 1/sqrt(σ² + ε) (verl)
  max_with_variance ///< r = 1/sqrt(max(σ², ε)) (OpenRLHF)
};

/// Options of reinforce_pp_advantages. The defaults are verl's `reinforce_plus_plus` without KL in the reward.
struct reinforce_pp_options {
  double gamma = 1.0;                    ///< γ ∈ [0, 1]
  double kl_coef = 0.0;                  ///< β ≥ 0; the KL penalty is in the reward only when β > 0
  kl_estimator kl = kl_estimator::k1;    ///< estimator of κ = old_logp − ref_logp (k1_st/k3_st: as k1/k3)
  double kl_log_ratio_clamp = 20.0;      ///< k3: −κ clamped to ±this before exp (verl, OpenRLHF: 20), (0, 80]
  double kl_value_clamp = 10.0;          ///< k3: value clamped to ≤ this (verl, OpenRLHF: 10); 0 = no clamp
  bool kl_clamp_every_estimator = false; ///< clamp every estimator's value to [−V, V] (OpenRLHF; needs V > 0)
  reinforce_baseline baseline = reinforce_baseline::none;
  singleton_policy singleton = singleton_policy::raw_score; ///< groups of one: μ_g = 0 (raw_score, verl),
                                                            ///< μ_g = own value (zero), or an error (OpenRLHF)
  whitening whiten = whitening::standard;
  std_kind std = std_kind::unbiased; ///< variance of the whitening (verl unbiased, OpenRLHF biased)
  whitening_epsilon epsilon_kind = whitening_epsilon::add_to_variance;
  double epsilon = 1e-8; ///< ε > 0 (both frameworks: 1e-8)
};

namespace presets {
/// verl `reinforce_plus_plus`: γ = 1, KL in the reward only when use_kl_in_reward (pass kl_ctrl.kl_coef, verl
/// default 0.001), k1, masked_whiten with unbiased variance and rsqrt(σ² + 1e-8).
inline reinforce_pp_options verl_reinforce_pp(double kl_coef = 0.0) {
  reinforce_pp_options o;
  o.kl_coef = kl_coef;
  return o;
}
/// verl `reinforce_plus_plus_baseline`: a_i = Σ_t r_t − group mean (μ = 0 for groups of one), tiled, whitened as
/// verl_reinforce_pp.
inline reinforce_pp_options verl_reinforce_pp_baseline(double kl_coef = 0.0) {
  reinforce_pp_options o = verl_reinforce_pp(kl_coef);
  o.baseline = reinforce_baseline::group_mean_of_return;
  o.singleton = singleton_policy::raw_score;
  return o;
}
/// OpenRLHF `reinforce`: KL in the reward (init_kl_coef default 0.01), k1 with every estimator clamped to ±10,
/// returns with γ, whitening with biased variance and rsqrt(max(σ², 1e-8)). OpenRLHF also clips the score to
/// (−10, 10) before placing it (reward.clip_range); clip scores beforehand if they can leave that range.
inline reinforce_pp_options openrlhf_reinforce(double kl_coef = 0.01) {
  reinforce_pp_options o;
  o.kl_coef = kl_coef;
  o.kl_clamp_every_estimator = true;
  o.std = std_kind::biased;
  o.epsilon_kind = whitening_epsilon::max_with_variance;
  return o;
}
/// OpenRLHF `reinforce_baseline`: score − group mean first (groups of one are an error: OpenRLHF asserts
/// n_samples_per_prompt > 1), then as openrlhf_reinforce with γ = 1.
inline reinforce_pp_options openrlhf_reinforce_baseline(double kl_coef = 0.01) {
  reinforce_pp_options o = openrlhf_reinforce(kl_coef);
  o.baseline = reinforce_baseline::group_mean_of_score;
  o.singleton = singleton_policy::error;
  return o;
}
/// The HiR authors' training code (hir-algorithm.md §4, built on verl): k1 KL in the reward with β = 0.001, γ = 1,
/// no group baseline, whitening over all valid tokens of the batch (unbiased, rsqrt(σ² + 1e-8)). Pairs with
/// presets::hir_paper_code() (hindsight) and presets::hir_paper_code_loss() (policy loss).
inline reinforce_pp_options hir_paper_code_advantages() {
  return verl_reinforce_pp(0.001);
}
} // namespace presets

namespace detail {
inline void check_reinforce_pp_options(const char* fn, reinforce_pp_options const& o) {
  auto finite = [](double v) { return v == v && v < 1e300 && v > -1e300; };
  if (!(o.gamma >= 0.0 && o.gamma <= 1.0))
    fail(fn, "gamma = ", o.gamma, " must be in [0, 1]");
  if (!(o.kl_coef >= 0.0) || !finite(o.kl_coef))
    fail(fn, "kl_coef = ", o.kl_coef, " must be finite and >= 0");
  if (static_cast<unsigned>(o.kl) > static_cast<unsigned>(kl_estimator::k3_st))
    fail(fn, "kl = ", static_cast<int>(o.kl), " is not a kl_estimator");
  if (!(o.kl_log_ratio_clamp > 0.0 && o.kl_log_ratio_clamp <= 80.0))
    fail(fn, "kl_log_ratio_clamp = ", o.kl_log_ratio_clamp, " must be in (0, 80]");
  if (!(o.kl_value_clamp >= 0.0) || !finite(o.kl_value_clamp))
    fail(fn, "kl_value_clamp = ", o.kl_value_clamp, " must be finite and >= 0 (0 = no clamp)");
  if (o.kl_clamp_every_estimator && !(o.kl_value_clamp > 0.0))
    fail(fn, "kl_clamp_every_estimator needs kl_value_clamp > 0 (it is ", o.kl_value_clamp, ")");
  if (static_cast<unsigned>(o.baseline) > static_cast<unsigned>(reinforce_baseline::group_mean_of_return))
    fail(fn, "baseline = ", static_cast<int>(o.baseline), " is not a reinforce_baseline");
  if (static_cast<unsigned>(o.singleton) > static_cast<unsigned>(singleton_policy::error))
    fail(fn, "singleton = ", static_cast<int>(o.singleton), " is not a singleton_policy");
  if (static_cast<unsigned>(o.whiten) > static_cast<unsigned>(whitening::keep_mean))
    fail(fn, "whiten = ", static_cast<int>(o.whiten), " is not a whitening");
  if (static_cast<unsigned>(o.epsilon_kind) > static_cast<unsigned>(whitening_epsilon::max_with_variance))
    fail(fn, "epsilon_kind = ", static_cast<int>(o.epsilon_kind), " is not a whitening_epsilon");
  if (!(o.epsilon > 0.0) || !finite(o.epsilon))
    fail(fn, "epsilon = ", o.epsilon, " must be finite and > 0");
}
} // namespace detail

/// REINFORCE++ token-level advantages (see the file comment for the formulas).
/// \param be      backend tag (hir::cpu)
/// \param scores  one finite score per row (B values): the outcome reward placed on the row's last valid token
/// \param tokens  the padded batch [B, L]: mask always (each entry 0 or 1, every row with at least one valid
///                token); old_logp and ref_logp when kl_coef > 0 (finite at valid positions; padding may hold
///                anything); logp is not read
/// \param groups  the rows' groups (num_samples = B) for the group_mean_* baselines; not read for baseline none
/// \param out     [B, L] advantages, row-major; 0 at masked positions; must not overlap the inputs
/// \param opt     estimator, baseline and whitening options (presets:: for verl, OpenRLHF and the HiR authors)
/// \throws hir::invalid_argument on a bad option, mismatched sizes, overlapping output, a mask entry other than
///         0 or 1, a row without valid tokens (rows of empty responses must be dropped or given their EOS
///         token), a non-finite score or log-prob at a valid position, a group of one under
///         singleton_policy::error, or scaled whitening with unbiased variance over fewer than 2 valid tokens.
///         Everything is checked before `out` is written, so `out` is untouched then. B = 0 is not an error.
template <class Backend, class T>
void reinforce_pp_advantages(Backend const& be, span<const T, memory_space_t<Backend>> scores,
                             token_batch_ref<T, memory_space_t<Backend>> tokens,
                             group_ref<memory_space_t<Backend>> groups, span<T, memory_space_t<Backend>> out,
                             reinforce_pp_options const& opt = {}) {
  detail::check_backend<Backend>();
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "hir::reinforce_pp_advantages: T must be float or double");
  constexpr const char* fn = "reinforce_pp_advantages";
  detail::check_reinforce_pp_options(fn, opt);
  const bool kl = opt.kl_coef > 0.0 && opt.kl != kl_estimator::none;
  detail::check_token_batch(fn, tokens, kl ? "or" : "");
  detail::check_size(fn, "scores.size()", scores.size(), "batch", tokens.batch);
  detail::check_size(fn, "out.size()", out.size(), "batch * length", tokens.batch * tokens.length);
  if (opt.baseline != reinforce_baseline::none)
    detail::check_size(fn, "groups.num_samples", groups.num_samples, "batch", tokens.batch);
  const std::size_t n = out.size();
  auto overlaps = [&](const void* p, std::size_t bytes) {
    const auto a = reinterpret_cast<std::uintptr_t>(p), o = reinterpret_cast<std::uintptr_t>(out.data());
    return bytes > 0 && n > 0 && a < o + n * sizeof(T) && o < a + bytes;
  };
  if (overlaps(scores.data(), scores.size() * sizeof(T)) || overlaps(tokens.mask.data(), tokens.mask.size()) ||
      (kl && (overlaps(tokens.old_logp.data(), tokens.old_logp.size() * sizeof(T)) ||
              overlaps(tokens.ref_logp.data(), tokens.ref_logp.size() * sizeof(T)))))
    detail::fail(fn, "out overlaps an input array");
  reinforce_pp_advantages_impl(be, scores, tokens, groups, out, opt);
}

} // namespace hir
