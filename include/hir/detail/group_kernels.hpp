// SPDX-License-Identifier: Apache-2.0
// Per-group and per-token kernels of the advantage estimators, shared by the CPU loops and the device backend's
// Thrust functors (host/device code): group-relative advantages of one group; REINFORCE++'s KL reward of one token,
// group-mean baseline of one group and whitening scale; GDPO's z-scores of one 0/1 constraint column and the
// combined z-scores of a group's members.
#pragma once

#include <hir/advantages/constraint_normalized.hpp>
#include <hir/advantages/group_advantages.hpp>
#include <hir/advantages/reinforce_pp.hpp>
#include <hir/config.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace hir {
namespace detail {

/// Advantages of group g (see group_advantages.hpp). `Ref` is a group_ref of any space; `Contiguous` says that
/// members are the identity order, so the hot loop has no indirection.
template <bool Contiguous, class Ref, class T>
HIR_HOST_DEVICE HIR_DEVICE_NOINLINE void group_advantages_one(const T* s, const Ref& groups, std::size_t g, T* out,
                                                              const group_advantage_options& opt,
                                                              double batch_denominator) {
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

/// The KL penalty k_t of one REINFORCE++ token: the estimator `o.kl` of κ = old_logp − ref_logp (verl's
/// kl_penalty_forward / OpenRLHF's compute_approx_kl on the behaviour policy), clamped as the options say.
HIR_HOST_DEVICE inline double reinforce_kl_penalty(double old_logp, double ref_logp, const reinforce_pp_options& o) {
  const double k = old_logp - ref_logp;
  double v = k; // k1, k1_st
  switch (o.kl) {
  case kl_estimator::none:
    v = 0.0;
    break;
  case kl_estimator::abs:
    v = k < 0 ? -k : k;
    break;
  case kl_estimator::k2:
    v = 0.5 * k * k;
    break;
  case kl_estimator::k3:
  case kl_estimator::k3_st: {
    const double c = o.kl_log_ratio_clamp;
    const double x = -k < -c ? -c : (-k > c ? c : -k);
    v = ::exp(x) - x - 1.0;
    if (o.kl_value_clamp > 0.0 && v > o.kl_value_clamp)
      v = o.kl_value_clamp;
    break;
  }
  default:
    break;
  }
  if (o.kl_clamp_every_estimator)
    v = v < -o.kl_value_clamp ? -o.kl_value_clamp : (v > o.kl_value_clamp ? o.kl_value_clamp : v);
  return v;
}

/// −β·k_t: the KL part of one valid token's REINFORCE++ reward, in double.
template <class T>
HIR_HOST_DEVICE inline double reinforce_kl_reward(T old_logp, T ref_logp, const reinforce_pp_options& o) {
  return -o.kl_coef * reinforce_kl_penalty(static_cast<double>(old_logp), static_cast<double>(ref_logp), o);
}

/// v[i] −= μ_g over the rows i of group g (the REINFORCE++ group-mean baselines); a group of one subtracts 0
/// (singleton_policy::raw_score) or its own value.
template <class Ref>
HIR_HOST_DEVICE void reinforce_subtract_group_mean(const Ref& groups, std::size_t g, double* v,
                                                   singleton_policy singleton) {
  const std::size_t b = groups.begin(g), e = groups.end(g);
  double mu = 0.0;
  if (e - b == 1) {
    mu = singleton == singleton_policy::raw_score ? 0.0 : v[groups.sample(b)];
  } else {
    for (std::size_t k = b; k < e; ++k)
      mu += v[groups.sample(k)];
    mu /= static_cast<double>(e - b);
  }
  for (std::size_t k = b; k < e; ++k)
    v[groups.sample(k)] -= mu;
}

/// The whitening factor 1/sqrt(var + ε) or 1/sqrt(max(var, ε)) (whitening_epsilon), from the variance of the
/// valid tokens' returns.
inline double reinforce_whiten_scale(double var, const reinforce_pp_options& o) {
  return 1.0 / std::sqrt(o.epsilon_kind == whitening_epsilon::add_to_variance ? var + o.epsilon
                                                                              : (var > o.epsilon ? var : o.epsilon));
}

/// z-scores of one constraint column of a group: `k` of `n` members (n ≥ 2) meet it; `met` and `unmet` are
/// (1 − μ)/(σ + ε) and (0 − μ)/(σ + ε). A constant column (k = 0 or k = n) gives exact zeros.
HIR_HOST_DEVICE inline void constraint_column_z(unsigned k, unsigned n, const constraint_normalized_options& o,
                                                double& met, double& unmet) {
  if (k == 0 || k == n) {
    met = unmet = 0.0;
    return;
  }
  const double dn = static_cast<double>(n), dk = static_cast<double>(k);
  const double mu = dk / dn;
  const double ss = dk * (dn - dk) / dn; // Σ_i (v_i − μ)², exact from the counts
  const double sd = ::sqrt(ss / (o.std == std_kind::unbiased ? dn - 1.0 : dn));
  met = (1.0 - mu) / (sd + o.epsilon);
  unmet = (0.0 - mu) / (sd + o.epsilon);
}

/// The z-scores of every constraint column of group g: member i's combined score is
/// r_i = Σ_c w_c·(bit c of masks[i] ? met[c] : unmet[c]) (constraint_member_sum). A group of one gets met = 1/(1 + ε)
/// (singleton_policy::raw_score: μ = 0, σ = 1) or 0, and unmet = 0. Returns the group's constraint count (that of its
/// first member; validated equal for all). `met` and `unmet` hold max_constraints entries. The device backend's
/// per-group step; the CPU backend gets the same counts and constraint_column_z values by its own loops.
template <class Ref>
HIR_HOST_DEVICE unsigned constraint_group_z(const std::uint64_t* masks, const std::uint8_t* counts, const Ref& groups,
                                            std::size_t g, const constraint_normalized_options& o, double* met,
                                            double* unmet) {
  const std::size_t b = groups.begin(g), e = groups.end(g), size = e - b;
  const unsigned n = counts[groups.sample(b)];
  if (size == 1) {
    const double z = o.singleton == singleton_policy::raw_score ? 1.0 / (1.0 + o.epsilon) : 0.0;
    for (unsigned c = 0; c < n; ++c) {
      met[c] = z;
      unmet[c] = 0.0;
    }
    return n;
  }
  unsigned count[max_constraints];
  for (unsigned c = 0; c < n; ++c)
    count[c] = 0;
  for (std::size_t k = b; k < e; ++k) {
    const std::uint64_t m = masks[groups.sample(k)];
    for (unsigned c = 0; c < n; ++c)
      count[c] += static_cast<unsigned>((m >> c) & 1u);
  }
  for (unsigned c = 0; c < n; ++c)
    constraint_column_z(count[c], static_cast<unsigned>(size), o, met[c], unmet[c]);
  return n;
}

/// r = Σ_c w_c·(bit c of `mask` ? met[c] : unmet[c]) over the n constraints, in double (w = nullptr: unit weights),
/// summed in constraint order. The bit selects the array by index, not by a branch (verdict bits are unpredictable).
template <class W>
HIR_HOST_DEVICE double constraint_member_sum(std::uint64_t mask, unsigned n, const W* w, const double* met,
                                             const double* unmet) {
  const double* const z[2] = {unmet, met};
  double r = 0.0;
  for (unsigned c = 0; c < n; ++c)
    r += (w ? static_cast<double>(w[c]) : 1.0) * z[(mask >> c) & 1u][c];
  return r;
}

} // namespace detail
} // namespace hir
