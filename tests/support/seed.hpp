// SPDX-License-Identifier: Apache-2.0
// The run's random seed (printed by main; --seed=N or HIR_TEST_SEED=N reproduces a run).
#pragma once

#include <cstdint>

namespace hir::test {
std::uint64_t& seed_storage();
/// The seed of this test run, mixed with a per-test salt so test cases draw independent streams.
inline std::uint64_t seed(std::uint64_t salt = 0) {
  return seed_storage() * 0x9E3779B97F4A7C15ull + salt;
}
} // namespace hir::test
