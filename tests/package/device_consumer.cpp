// SPDX-License-Identifier: Apache-2.0
// A user's device-backend program (Thrust CPP/OMP system here): the same advantages through hir::device.
#include <hir/device.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int device_check() {
  const std::vector<float> rewards = {1, 0, 0, 0, 1, 1};
  const std::vector<std::int64_t> sizes = {4, 2};
  auto d_rewards = hir::to_backend(hir::device, rewards);
  thrust::device_vector<float> d_adv(rewards.size());
  hir::group_storage<hir::backend::device::tag_t> groups(hir::device, hir::group_layout::from_sizes(sizes));
  hir::group_advantages(hir::device, hir::span<const float, hir::device_space>(hir::view(d_rewards)), groups.ref(),
                        hir::view(d_adv), hir::presets::verl_dr_grpo());
  const auto adv = hir::to_host(d_adv);
  return std::fabs(adv[0] - 0.75f) < 1e-6f && adv[5] == 0.f ? 0 : 1;
}
