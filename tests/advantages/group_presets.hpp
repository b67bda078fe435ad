// SPDX-License-Identifier: Apache-2.0
// The group_advantages option sets the advantage tests run (every library preset plus hand-made combinations of
// baseline, scale, std and singleton policy), and their translation to the naive reference's configuration. One
// list, shared by test_group_advantages.cpp and test_group_advantages_paths.cpp.
#pragma once

#include "support/reference.hpp"

#include <hir/advantages/group_advantages.hpp>

#include <utility>
#include <vector>

namespace hir::test {

inline hir::ref::group_norm_config to_ref(const hir::group_advantage_options& o) {
  hir::ref::group_norm_config c;
  c.baseline = o.baseline == hir::baseline_kind::group_mean      ? hir::ref::group_norm_config::mean
               : o.baseline == hir::baseline_kind::leave_one_out ? hir::ref::group_norm_config::loo
                                                                 : hir::ref::group_norm_config::none;
  c.scale = o.scale == hir::scale_kind::group_std   ? hir::ref::group_norm_config::group
            : o.scale == hir::scale_kind::batch_std ? hir::ref::group_norm_config::batch
                                                    : hir::ref::group_norm_config::unit;
  c.unbiased = o.std == hir::std_kind::unbiased;
  c.eps = o.epsilon;
  c.var_floor = o.variance_floor;
  c.singleton = o.singleton == hir::singleton_policy::raw_score ? hir::ref::group_norm_config::raw
                                                                : hir::ref::group_norm_config::zero;
  return c;
}

/// (label, options): every preset of hir::presets, then combinations no preset covers.
inline const std::vector<std::pair<const char*, hir::group_advantage_options>>& group_presets() {
  static const std::vector<std::pair<const char*, hir::group_advantage_options>> all = {
      {"verl_grpo", hir::presets::verl_grpo()},
      {"verl_grpo_vectorized", hir::presets::verl_grpo_vectorized()},
      {"verl_dr_grpo", hir::presets::verl_dr_grpo()},
      {"verl_rloo", hir::presets::verl_rloo()},
      {"verl_rloo_vectorized", hir::presets::verl_rloo_vectorized()},
      {"trl_grpo", hir::presets::trl_grpo()},
      {"trl_grpo_batch", hir::presets::trl_grpo_batch()},
      {"trl_dr_grpo", hir::presets::trl_dr_grpo()},
      {"openrlhf_group_norm", hir::presets::openrlhf_group_norm()},
      {"openrlhf_dr_grpo", hir::presets::openrlhf_dr_grpo()},
      {"openrlhf_rloo", hir::presets::openrlhf_rloo()},
      {"biased std, eps 1e-3",
       {hir::baseline_kind::group_mean, hir::scale_kind::group_std, hir::std_kind::biased, 1e-3, 0.0,
        hir::singleton_policy::raw_score}},
      {"biased std, eps 0",
       {hir::baseline_kind::group_mean, hir::scale_kind::group_std, hir::std_kind::biased, 0.0, 0.0,
        hir::singleton_policy::zero}},
      {"loo, group std",
       {hir::baseline_kind::leave_one_out, hir::scale_kind::group_std, hir::std_kind::unbiased, 1e-3, 0.0,
        hir::singleton_policy::zero}},
      {"no baseline, group std",
       {hir::baseline_kind::none, hir::scale_kind::group_std, hir::std_kind::unbiased, 1e-6, 0.0,
        hir::singleton_policy::zero}},
      {"no baseline, batch std",
       {hir::baseline_kind::none, hir::scale_kind::batch_std, hir::std_kind::biased, 1e-4, 0.0,
        hir::singleton_policy::zero}},
  };
  return all;
}

} // namespace hir::test
