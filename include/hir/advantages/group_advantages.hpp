// SPDX-License-Identifier: Apache-2.0
// Group-relative advantage estimators over ragged groups: GRPO (group mean and std), Dr.GRPO (group mean only),
// group mean with batch std (TRL "batch"), RLOO (leave-one-out mean). Per sample i in group g with score s_i:
//
//   baseline  b_i = μ_g = (1/n_g) Σ_{j∈g} s_j                          (baseline_kind::group_mean)
//             b_i = (Σ_{j∈g, j≠i} s_j) / (n_g − 1)                     (baseline_kind::leave_one_out)
//             b_i = 0                                                  (baseline_kind::none)
//   scale     d_g = σ_g + ε  or  sqrt(max(σ_g², v_floor)) + ε         (scale_kind::group_std)
//             d   = σ_batch + ε  (std of every score in the batch)    (scale_kind::batch_std)
//             d   = 1                                                  (scale_kind::none)
//   A_i = (s_i − b_i) / d
//
// σ is the unbiased (n − 1) or biased (n) standard deviation, computed two-pass in double. A group whose scores
// are all equal gets exactly 0 (detected as max == min, not left to float residue). Singletons (n_g = 1) follow
// `singleton`: zero advantage, verl's μ = 0, σ = 1 convention (the raw score), or an error. Scores must be finite.
// presets:: gives the exact conventions of verl, TRL and OpenRLHF (see docs/advantages.md).
#pragma once

#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/groups.hpp>
#include <hir/core/validation.hpp>

#include <cstddef>

namespace hir {

enum class baseline_kind { group_mean, leave_one_out, none };
enum class scale_kind { group_std, batch_std, none };
enum class std_kind { unbiased, biased };
enum class singleton_policy {
  zero,      ///< A = 0 (TRL: NaN std → 0; verl vectorized RLOO)
  raw_score, ///< μ = 0, σ = 1, so A = s / (1 + ε) (verl's loop GRPO and RLOO)
  error      ///< throw hir::invalid_argument (OpenRLHF asserts n > 1)
};

/// Options of group_advantages. The defaults are GRPO as verl computes it, with exact zeros for constant groups
/// and zero advantage for singletons.
struct group_advantage_options {
  baseline_kind baseline = baseline_kind::group_mean;
  scale_kind scale = scale_kind::group_std;
  std_kind std = std_kind::unbiased;
  double epsilon = 1e-6;       ///< added to the std (d = σ + ε)
  double variance_floor = 0.0; ///< σ² is raised to at least this before the sqrt (verl vectorized: 1e-6)
  singleton_policy singleton = singleton_policy::zero;
  /// before_writing (default): every score is checked before anything is written, so `out` is untouched on error.
  /// fused: each block is checked just before it is computed (faster on the CPU fast path); on error, blocks before
  /// the bad score have been written. Either way a non-finite score is reported, never propagated.
  input_validation validation = input_validation::before_writing;
};

namespace presets {
/// verl `grpo` (loop): unbiased std, A = (s − μ)/(σ + 1e-6), singleton → raw score.
inline group_advantage_options verl_grpo() {
  return {baseline_kind::group_mean, scale_kind::group_std, std_kind::unbiased, 1e-6, 0.0, singleton_policy::raw_score};
}
/// verl `grpo_vectorized`: σ = sqrt(max(var, 1e-6)), then + 1e-6; singleton → raw score.
inline group_advantage_options verl_grpo_vectorized() {
  return {baseline_kind::group_mean,  scale_kind::group_std, std_kind::unbiased, 1e-6, 1e-6,
          singleton_policy::raw_score};
}
/// verl `grpo` with norm_adv_by_std_in_grpo = False (Dr.GRPO): A = s − μ; singleton → raw score.
inline group_advantage_options verl_dr_grpo() {
  return {baseline_kind::group_mean, scale_kind::none, std_kind::unbiased, 0.0, 0.0, singleton_policy::raw_score};
}
/// verl `rloo` (loop): singleton → raw score.
inline group_advantage_options verl_rloo() {
  return {baseline_kind::leave_one_out, scale_kind::none, std_kind::unbiased, 0.0, 0.0, singleton_policy::raw_score};
}
/// verl `rloo_vectorized`: singleton → 0.
inline group_advantage_options verl_rloo_vectorized() {
  return {baseline_kind::leave_one_out, scale_kind::none, std_kind::unbiased, 0.0, 0.0, singleton_policy::zero};
}
/// TRL GRPOTrainer, scale_rewards="group": A = (s − μ)/(σ + 1e-4); singleton → 0 (NaN std → NaN → 0).
inline group_advantage_options trl_grpo() {
  return {baseline_kind::group_mean, scale_kind::group_std, std_kind::unbiased, 1e-4, 0.0, singleton_policy::zero};
}
/// TRL GRPOTrainer, scale_rewards="batch": A = (s − μ_g)/(σ_batch + 1e-4).
inline group_advantage_options trl_grpo_batch() {
  return {baseline_kind::group_mean, scale_kind::batch_std, std_kind::unbiased, 1e-4, 0.0, singleton_policy::zero};
}
/// TRL GRPOTrainer, scale_rewards="none" (Dr.GRPO).
inline group_advantage_options trl_dr_grpo() {
  return {baseline_kind::group_mean, scale_kind::none, std_kind::unbiased, 0.0, 0.0, singleton_policy::zero};
}
/// OpenRLHF `group_norm`: A = (s − μ)/(σ + 1e-9); groups of one are an error.
inline group_advantage_options openrlhf_group_norm() {
  return {baseline_kind::group_mean, scale_kind::group_std, std_kind::unbiased, 1e-9, 0.0, singleton_policy::error};
}
/// OpenRLHF `dr_grpo` (and `reinforce_baseline` before its whitening): A = s − μ; groups of one are an error.
inline group_advantage_options openrlhf_dr_grpo() {
  return {baseline_kind::group_mean, scale_kind::none, std_kind::unbiased, 0.0, 0.0, singleton_policy::error};
}
/// OpenRLHF `rloo`; groups of one are an error.
inline group_advantage_options openrlhf_rloo() {
  return {baseline_kind::leave_one_out, scale_kind::none, std_kind::unbiased, 0.0, 0.0, singleton_policy::error};
}
} // namespace presets

namespace detail {
inline void check_group_advantage_options(const char* fn, group_advantage_options const& o) {
  if (!(o.epsilon >= 0.0) || !(o.epsilon < 1e300))
    fail(fn, "epsilon = ", o.epsilon, " must be finite and >= 0");
  if (!(o.variance_floor >= 0.0) || !(o.variance_floor < 1e300))
    fail(fn, "variance_floor = ", o.variance_floor, " must be finite and >= 0");
  // ε = 0 is allowed: constant groups are exact zeros, so σ = 0 never divides.
}
} // namespace detail

/// Group-relative advantages: out[i] = (s_i − b_i)/d for every sample (see the file comment for b and d).
/// \param scores  one finite score per sample (Backend's memory)
/// \param groups  the layout (group_layout on hir::cpu, group_storage on hir::device); num_samples = scores.size()
/// \param out     one advantage per sample; may alias `scores`
/// \throws hir::invalid_argument on mismatched sizes, a non-finite score (naming the sample and value), a bad
///         option, or a singleton under singleton_policy::error; `out` is untouched then.
template <class Backend, class T>
void group_advantages(Backend const& be, span<const T, memory_space_t<Backend>> scores,
                      group_ref<memory_space_t<Backend>> groups, span<T, memory_space_t<Backend>> out,
                      group_advantage_options const& opt = {}) {
  detail::check_backend<Backend>();
  constexpr const char* fn = "group_advantages";
  detail::check_group_advantage_options(fn, opt);
  detail::check_size(fn, "scores.size()", scores.size(), "groups.num_samples", groups.num_samples);
  detail::check_size(fn, "out.size()", out.size(), "scores.size()", scores.size());
  group_advantages_impl(be, scores, groups, out, opt);
}

} // namespace hir
