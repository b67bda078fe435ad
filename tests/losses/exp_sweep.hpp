// SPDX-License-Identifier: Apache-2.0
// The float sweep the exp accuracy tests share (test_policy_loss.cpp for the portable exp, test_policy_loss_paths.cpp
// for the AVX-512 one): every 61st float of [−87.3, 88.3], both signs, about 35 million values; and the error in ulp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace hir::test {

/// Calls f(x) for every 61st float x in [−87.3, 88.3] (by bit pattern, both signs).
template <class F>
void for_each_exp_sweep_float(F&& f) {
  for (std::uint32_t sign : {0u, 0x80000000u}) {
    const float top = sign ? 87.3f : 88.3f;
    std::uint32_t end_bits;
    std::memcpy(&end_bits, &top, 4);
    for (std::uint32_t b = 0; b <= end_bits; b += 61) {
      const std::uint32_t bits = b | sign;
      float x;
      std::memcpy(&x, &bits, 4);
      f(x);
    }
  }
}

/// |got − exact| in units of the float ulp at exact.
inline double ulp_error(float got, double exact) {
  const float e = static_cast<float>(exact);
  const float next = std::nextafter(e, std::numeric_limits<float>::infinity());
  return std::fabs(double(got) - exact) / (double(next) - double(e));
}

} // namespace hir::test
