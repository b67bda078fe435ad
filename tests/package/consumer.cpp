// SPDX-License-Identifier: Apache-2.0
// A user's program: GRPO advantages of two ragged groups on the CPU backend, checked against hand-computed values.
#include <hir/hir.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

#if defined(CONSUMER_WITH_DEVICE)
int device_check(); // device_consumer.cpp, compiled against hir::device in its own library
#endif

int main() {
  const std::vector<float> rewards = {1, 0, 0, 0, 1, 1};
  const std::vector<std::int64_t> sizes = {4, 2};
  const auto groups = hir::group_layout::from_sizes(sizes);
  std::vector<float> adv(rewards.size());
  hir::group_advantages(hir::cpu, hir::span<const float>(rewards), groups, hir::span<float>(adv),
                        hir::presets::verl_dr_grpo());
  const float expected[] = {0.75f, -0.25f, -0.25f, -0.25f, 0.f, 0.f};
  for (std::size_t i = 0; i < adv.size(); ++i)
    if (std::fabs(adv[i] - expected[i]) > 1e-6f) {
      std::printf("consumer: adv[%zu] = %g, expected %g\n", i, adv[i], expected[i]);
      return 1;
    }
#if defined(CONSUMER_WITH_DEVICE)
  if (device_check() != 0) {
    std::printf("consumer: the device backend disagrees\n");
    return 1;
  }
#endif
  std::printf("consumer: hir %d.%d.%d works\n", HIR_VERSION_MAJOR, HIR_VERSION_MINOR, HIR_VERSION_PATCH);
  return 0;
}
