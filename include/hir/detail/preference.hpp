// SPDX-License-Identifier: Apache-2.0
// Per-pair preference losses and their derivatives (host/device code), shared by the CPU loops and the Thrust device
// backend, with the per-level sums a loss pass accumulates (double) and the result they give. With h = (log π(y_c) −
// log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r)) for a chosen/rejected pair:
//
//   sigmoid (DPO, cDPO)  z = β h,  L = −(1 − ε) log σ(z) − ε log σ(−z),  dL/dh = β (−(1 − ε) σ(−z) + ε σ(z))
//   ipo                  L = (h − 1/(2β))²,                            dL/dh = 2 (h − 1/(2β))
#pragma once

#include <hir/config.hpp>
#include <hir/losses/preference.hpp>

#include <cmath>
#include <cstddef>

namespace hir {
namespace detail {

/// Loss and dL/dh of one pair with log-ratio difference h.
HIR_HOST_DEVICE inline void preference_pair_loss(preference_loss_kind kind, double beta, double smoothing, double h,
                                                 double& loss, double& dloss_dh) {
  if (kind == preference_loss_kind::ipo) {
    const double d = h - 1.0 / (2.0 * beta);
    loss = d * d;
    dloss_dh = 2.0 * d;
    return;
  }
  // One exp and one log1p: with e = exp(−|z|), softplus(±z) = max(±z, 0) + log1p(e) and σ(z) = 1/(1 + e) for z ≥ 0,
  // e/(1 + e) for z < 0 (σ(−z) the other one); −log σ(z) = softplus(−z), −log σ(−z) = softplus(z).
  const double z = beta * h;
  const double e = ::exp(-(z < 0 ? -z : z));
  const double l1p = ::log1p(e);
  const double big = 1.0 / (1.0 + e), small = e / (1.0 + e);
  const double sig_pos = z >= 0 ? big : small, sig_neg = z >= 0 ? small : big; // σ(z), σ(−z)
  loss = (1.0 - smoothing) * ((z < 0 ? -z : 0.0) + l1p) + smoothing * ((z > 0 ? z : 0.0) + l1p);
  dloss_dh = beta * (-(1.0 - smoothing) * sig_neg + smoothing * sig_pos);
}

/// An original row with reward ≥ threshold is a success (response-level pairs).
HIR_HOST_DEVICE inline bool preference_success(double reward, double threshold) {
  return reward >= threshold;
}

/// Sequence log-probability from the masked sum and the valid-token count.
HIR_HOST_DEVICE inline double sequence_value(double sum, std::size_t count, sequence_reduction reduction) {
  return reduction == sequence_reduction::mean ? (count ? sum / static_cast<double>(count) : 0.0) : sum;
}

/// d sequence_value / d token log-probability of a valid token.
HIR_HOST_DEVICE inline double sequence_grad_scale(std::size_t count, sequence_reduction reduction) {
  return reduction == sequence_reduction::mean ? (count ? 1.0 / static_cast<double>(count) : 0.0) : 1.0;
}

/// Per-level sums of a preference loss pass (index 0: response level, 1: instruction level).
struct preference_sums {
  double pairs[2];
  double loss[2];
  double correct[2];
  double margin[2];
};

/// The sums of one pair of level `level` (0/1) with log-ratio difference h; `dloss_dh` receives dL/dh.
HIR_HOST_DEVICE inline preference_sums preference_pair_sums(preference_loss_kind kind, double beta, double smoothing,
                                                            double h, int level, double& dloss_dh) {
  double loss;
  preference_pair_loss(kind, beta, smoothing, h, loss, dloss_dh);
  preference_sums s = {{0, 0}, {0, 0}, {0, 0}, {0, 0}};
  s.pairs[level] = 1;
  s.loss[level] = loss;
  s.correct[level] = h > 0 ? 1.0 : 0.0;
  s.margin[level] = beta * h;
  return s;
}

/// Element-wise sum of two preference_sums (the reduction operator).
struct hir_pref_sums_plus {
  HIR_HOST_DEVICE preference_sums operator()(const preference_sums& a, const preference_sums& b) const {
    preference_sums s;
    for (int l = 0; l < 2; ++l) {
      s.pairs[l] = a.pairs[l] + b.pairs[l];
      s.loss[l] = a.loss[l] + b.loss[l];
      s.correct[l] = a.correct[l] + b.correct[l];
      s.margin[l] = a.margin[l] + b.margin[l];
    }
    return s;
  }
};

/// Gradient scale w_level / (pairs of the level) of each level (0 for a level without pairs).
inline void preference_scales(const preference_sums& s, const preference_loss_options& opt, double scale[2]) {
  scale[0] = s.pairs[0] > 0 ? opt.response_weight / s.pairs[0] : 0.0;
  scale[1] = s.pairs[1] > 0 ? opt.instruction_weight / s.pairs[1] : 0.0;
}

/// The result of a loss pass from its sums: level means (0 for an empty level) and the weighted loss.
inline preference_loss_result preference_result(const preference_sums& s, const preference_loss_options& opt) {
  preference_loss_result res;
  res.response_pairs = static_cast<std::size_t>(s.pairs[0]);
  res.instruction_pairs = static_cast<std::size_t>(s.pairs[1]);
  if (res.response_pairs) {
    res.response_loss = s.loss[0] / s.pairs[0];
    res.response_accuracy = s.correct[0] / s.pairs[0];
    res.response_margin = s.margin[0] / s.pairs[0];
  }
  if (res.instruction_pairs) {
    res.instruction_loss = s.loss[1] / s.pairs[1];
    res.instruction_accuracy = s.correct[1] / s.pairs[1];
    res.instruction_margin = s.margin[1] / s.pairs[1];
  }
  res.loss = opt.response_weight * res.response_loss + opt.instruction_weight * res.instruction_loss;
  return res;
}

} // namespace detail
} // namespace hir
