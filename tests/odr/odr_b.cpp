// SPDX-License-Identifier: Apache-2.0
// ODR test, second translation unit: the same headers again; the device backend when it is built.
#include <hir/hir.hpp>
#if !defined(HIR_ODR_NO_DEVICE)
#  include <hir/device.hpp>
#endif

#include <vector>

float odr_b() {
  const std::vector<float> r = {1, 0};
#if !defined(HIR_ODR_NO_DEVICE)
  auto d = hir::to_backend(hir::device, r);
  thrust::device_vector<float> out(2);
  hir::group_storage<hir::backend::device::tag_t> g(hir::device, hir::group_layout::uniform(2, 2));
  hir::group_advantages(hir::device, hir::span<const float, hir::device_space>(hir::view(d)), g.ref(), hir::view(out),
                        hir::presets::verl_dr_grpo());
  return hir::to_host(out)[0];
#else
  std::vector<float> a(2);
  hir::group_advantages(hir::cpu, hir::span<const float>(r), hir::group_layout::uniform(2, 2), hir::span<float>(a),
                        hir::presets::verl_dr_grpo());
  return a[0];
#endif
}
