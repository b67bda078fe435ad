// SPDX-License-Identifier: Apache-2.0
// Per-group kernels shared by the CPU loop and the device backend's Thrust functors (host/device code).
#pragma once

#include <hir/advantages/group_advantages.hpp>
#include <hir/config.hpp>

#include <cmath>
#include <cstddef>

namespace hir {
namespace detail {

/// Advantages of group g (see group_advantages.hpp). `Ref` is a group_ref of any space; `Contiguous` says that
/// members are the identity order, so the hot loop has no indirection.
template <bool Contiguous, class Ref, class T>
HIR_HOST_DEVICE void group_advantages_one(const T* s, const Ref& groups, std::size_t g, T* out,
                                          const group_advantage_options& opt, double batch_denominator) {
  auto at = [&](std::size_t k) { return Contiguous ? k : static_cast<std::size_t>(groups.members[k]); };
  const bool loo = opt.baseline == baseline_kind::leave_one_out;
  const std::size_t b = groups.begin(g), e = groups.end(g), n = e - b;
  if (n == 1) {
    const std::size_t i = at(b);
    double a = 0.0;
    if (opt.singleton == singleton_policy::raw_score) { // verl: μ = 0, σ = 1 (leave-one-out baseline 0 too)
      a = s[i];
      if (!loo && opt.scale == scale_kind::group_std)
        a /= 1.0 + opt.epsilon;
      else if (!loo && opt.scale == scale_kind::batch_std)
        a = a / batch_denominator;
    }
    out[i] = static_cast<T>(a);
    return;
  }
  double sum = 0, lo = s[at(b)], hi = lo;
  for (std::size_t k = b; k < e; ++k) {
    const double v = s[at(k)];
    sum += v;
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
  }
  if (lo == hi) { // constant group: exact zeros (every baseline equals the common value)
    for (std::size_t k = b; k < e; ++k)
      out[at(k)] = T(0);
    return;
  }
  const double dn = static_cast<double>(n);
  const double mean = sum / dn;
  double inv = 1.0;
  if (opt.scale == scale_kind::group_std) {
    double ss = 0;
    for (std::size_t k = b; k < e; ++k) {
      const double d = s[at(k)] - mean;
      ss += d * d;
    }
    double var = ss / (opt.std == std_kind::unbiased ? dn - 1.0 : dn);
    var = var < opt.variance_floor ? opt.variance_floor : var;
    inv = 1.0 / (::sqrt(var) + opt.epsilon);
  } else if (opt.scale == scale_kind::batch_std) {
    inv = 1.0 / batch_denominator;
  }
  if (opt.baseline == baseline_kind::none) {
    for (std::size_t k = b; k < e; ++k)
      out[at(k)] = static_cast<T>(s[at(k)] * inv);
    return;
  }
  // leave-one-out: s_i − (Σ − s_i)/(n − 1) = n/(n − 1) · (s_i − μ)
  const double f = loo ? dn / (dn - 1.0) * inv : inv;
  for (std::size_t k = b; k < e; ++k)
    out[at(k)] = static_cast<T>((s[at(k)] - mean) * f);
}

/// The batch denominator for scale_kind::batch_std from the batch std `sd` (NaN when undefined).
inline double batch_denominator(double sd, double epsilon) {
  if (sd != sd) // undefined (one sample, unbiased): TRL's NaN → advantage 0
    return HUGE_VAL;
  const double d = sd + epsilon;
  return d == 0.0 ? 1.0 : d; // every score equal and ε = 0: every numerator is 0 too
}

} // namespace detail
} // namespace hir
