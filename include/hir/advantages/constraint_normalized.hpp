// SPDX-License-Identifier: Apache-2.0
// Per-constraint normalized advantages (GDPO; TRL multi_objective_aggregation="normalize_then_sum"). Each constraint
// c of sample i is a reward v_ic ∈ {0, 1} (its verdict); within group g, with k_gc members meeting c out of n_g:
//
//   per-constraint z-score   z_ic = (v_ic − μ_gc) / (σ_gc + ε),  μ_gc = k_gc / n_g,
//                            σ_gc² = k_gc (n_g − k_gc) / n_g / (n_g − 1)   (unbiased; / n_g when biased)
//                            z_ic = 0 exactly when the column is constant (k_gc = 0 or n_g)
//   combined                 r_i = Σ_{c < n_i} w_c z_ic               (w = 1 when no weights are given)
//   batch normalization      A_i = (r_i − mean(r)) / (std(r) + ε_b)   (optional; std over the whole batch)
//                            A_i = 0 exactly when every r_i is equal or the std is undefined (one sample, unbiased)
//
// Summing before normalizing (GRPO on the constraint count) maps groups (0, 1) and (0, 2) met constraints to the
// same advantages; normalizing each constraint first keeps "two more constraints met" worth more than one
// (rl-reference.md §2.4). Groups of one follow `singleton`: z = 0, z = v/(1 + ε) (μ = 0, σ = 1), or an error.
#pragma once

#include <hir/advantages/group_advantages.hpp>
#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/groups.hpp>
#include <hir/rewards/reward_vector.hpp>

#include <cstddef>
#include <type_traits>

namespace hir {

/// Options of constraint_normalized_advantages. The defaults are TRL's GDPO (normalize_then_sum).
struct constraint_normalized_options {
  double epsilon = 1e-4;             ///< ε ≥ 0 added to each per-constraint group std (TRL: 1e-4)
  std_kind std = std_kind::unbiased; ///< per-constraint group std
  singleton_policy singleton = singleton_policy::zero;
  bool batch_normalize = true;             ///< then A = (r − mean)/(std + ε_b) over the batch (TRL)
  double batch_epsilon = 1e-4;             ///< ε_b ≥ 0
  std_kind batch_std = std_kind::unbiased; ///< std of the batch normalization (torch.std: unbiased)
};

namespace presets {
/// TRL GRPOTrainer with multi_objective_aggregation="normalize_then_sum" (GDPO): ε = 1e-4, unbiased stds,
/// batch normalization; groups of one give z = 0 (TRL: NaN std → 0).
inline constraint_normalized_options trl_gdpo() {
  return {};
}
} // namespace presets

namespace detail {
inline void check_constraint_normalized_options(const char* fn, constraint_normalized_options const& o) {
  auto finite = [](double v) { return v == v && v < 1e300 && v > -1e300; };
  if (!(o.epsilon >= 0.0) || !finite(o.epsilon))
    fail(fn, "epsilon = ", o.epsilon, " must be finite and >= 0");
  if (!(o.batch_epsilon >= 0.0) || !finite(o.batch_epsilon))
    fail(fn, "batch_epsilon = ", o.batch_epsilon, " must be finite and >= 0");
  if (static_cast<unsigned>(o.std) > static_cast<unsigned>(std_kind::biased) ||
      static_cast<unsigned>(o.batch_std) > static_cast<unsigned>(std_kind::biased))
    fail(fn, "std / batch_std is not a std_kind");
  if (static_cast<unsigned>(o.singleton) > static_cast<unsigned>(singleton_policy::error))
    fail(fn, "singleton = ", static_cast<int>(o.singleton), " is not a singleton_policy");
}
} // namespace detail

/// Per-constraint normalized advantages with per-slot weights (see the file comment).
/// \param verdicts  one verdict vector per sample (validated as by validate_verdicts)
/// \param groups    the samples' groups (num_samples = verdicts.size()); every member of a group must have the
///                  same constraint count
/// \param weights   w_c for constraint slot c; its size must cover every sample's constraint count; finite
/// \param out       one advantage per sample
/// \throws hir::invalid_argument on invalid verdicts, mismatched sizes, a group whose members have different
///         constraint counts, a sample with more constraints than weights, a non-finite weight, a bad option or
///         a group of one under singleton_policy::error; `out` is untouched then.
template <class Backend, class T, class W>
void constraint_normalized_advantages(Backend const& be, verdict_ref<memory_space_t<Backend>> verdicts,
                                      group_ref<memory_space_t<Backend>> groups,
                                      span<const W, memory_space_t<Backend>> weights,
                                      span<T, memory_space_t<Backend>> out,
                                      constraint_normalized_options const& opt = {}) {
  detail::check_backend<Backend>();
  static_assert(std::is_floating_point_v<T> && std::is_floating_point_v<W>,
                "hir::constraint_normalized_advantages: T and W must be floating-point types");
  constexpr const char* fn = "constraint_normalized_advantages";
  detail::check_constraint_normalized_options(fn, opt);
  validate_verdicts(be, fn, verdicts);
  detail::check_size(fn, "verdicts.size()", verdicts.size(), "groups.num_samples", groups.num_samples);
  detail::check_size(fn, "out.size()", out.size(), "verdicts.size()", verdicts.size());
  constraint_normalized_advantages_impl(be, verdicts, groups, weights, true, out, opt);
}

/// Per-constraint normalized advantages with unit weights (r_i = Σ_c z_ic).
template <class Backend, class T>
void constraint_normalized_advantages(Backend const& be, verdict_ref<memory_space_t<Backend>> verdicts,
                                      group_ref<memory_space_t<Backend>> groups, span<T, memory_space_t<Backend>> out,
                                      constraint_normalized_options const& opt = {}) {
  detail::check_backend<Backend>();
  static_assert(std::is_floating_point_v<T>, "hir::constraint_normalized_advantages: T must be a floating-point type");
  constexpr const char* fn = "constraint_normalized_advantages";
  detail::check_constraint_normalized_options(fn, opt);
  validate_verdicts(be, fn, verdicts);
  detail::check_size(fn, "verdicts.size()", verdicts.size(), "groups.num_samples", groups.num_samples);
  detail::check_size(fn, "out.size()", out.size(), "verdicts.size()", verdicts.size());
  constraint_normalized_advantages_impl(be, verdicts, groups, span<const T, memory_space_t<Backend>>(), false, out,
                                        opt);
}

} // namespace hir
