// SPDX-License-Identifier: Apache-2.0
// Per-pair preference losses and their derivatives (host/device code), shared by the CPU loop and a later device
// backend. With h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r)) for a chosen/rejected pair:
//
//   sigmoid (DPO, cDPO)  z = β h,  L = −(1 − ε) log σ(z) − ε log σ(−z),  dL/dh = β (−(1 − ε) σ(−z) + ε σ(z))
//   ipo                  L = (h − 1/(2β))²,                            dL/dh = 2 (h − 1/(2β))
#pragma once

#include <hir/config.hpp>
#include <hir/losses/preference.hpp>

#include <cmath>

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

} // namespace detail
} // namespace hir
