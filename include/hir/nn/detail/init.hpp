// SPDX-License-Identifier: Apache-2.0
// The per-element draw of GPT-2's weight initialization, shared by the CPU and device models so both backends draw
// the same parameters from the same seed: Box–Muller on two Philox uniforms keyed by (tensor index, element).
#pragma once

#include <hir/config.hpp>
#include <hir/core/random.hpp>

#include <math.h>

#include <cstddef>

namespace hir::nn::detail {

/// N(0, sd) draw for element j of parameter tensor `tensor` (its index in parameter_layout order), in double.
HIR_HOST_DEVICE inline double gpt2_normal(const philox& gen, std::size_t tensor, std::size_t j, double sd) {
  // Box–Muller on two uniforms of the (tensor, element) counter; 1 − u keeps the logarithm's argument in (0, 1].
  const double u1 = 1.0 - gen.uniform(tensor, 2 * j), u2 = gen.uniform(tensor, 2 * j + 1);
  return sd * ::sqrt(-2.0 * ::log(u1)) * ::cos(6.283185307179586 * u2);
}

} // namespace hir::nn::detail
