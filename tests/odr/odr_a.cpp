// SPDX-License-Identifier: Apache-2.0
// ODR test, first translation unit: both umbrellas, one use of each backend.
#include <hir/hir.hpp>
#if !defined(HIR_ODR_NO_DEVICE)
#  include <hir/device.hpp>
#endif

#include <vector>

float odr_b(); // odr_b.cpp

int main() {
  const std::vector<float> r = {1, 0};
  std::vector<float> a(2);
  hir::group_advantages(hir::cpu, hir::span<const float>(r), hir::group_layout::uniform(2, 2), hir::span<float>(a),
                        hir::presets::verl_dr_grpo());
  return a[0] == 0.5f && odr_b() == 0.5f ? 0 : 1;
}
