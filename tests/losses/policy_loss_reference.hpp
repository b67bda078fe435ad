// SPDX-License-Identifier: Apache-2.0
// Independent double-precision reference for the policy-loss tests: verl's PyTorch code (compute_policy_loss_vanilla,
// compute_policy_loss_gspo, compute_policy_loss_cispo, gpg, kl_penalty, agg_loss; see shared/docs/rl-reference.md)
// transcribed op by op onto a forward-mode dual number whose derivative rules are PyTorch's (clamp passes the
// gradient where lo ≤ x ≤ hi, maximum/minimum split it evenly on ties, sign(0) = 0, detach drops it). Each token's
// loss depends on its own logp only (GSPO's sequence term is detached), so seeding one token gives its gradient.
// Nothing here calls hir; plain C++ with std::map-free loops, written for clarity rather than speed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace hir::ref {

/// Value and derivative with respect to the seeded logp.
struct dual {
  double v = 0, d = 0;
};
inline dual constant(double v) {
  return {v, 0.0};
}
inline dual operator+(dual a, dual b) {
  return {a.v + b.v, a.d + b.d};
}
inline dual operator-(dual a, dual b) {
  return {a.v - b.v, a.d - b.d};
}
inline dual operator-(dual a) {
  return {-a.v, -a.d};
}
inline dual operator*(dual a, dual b) {
  return {a.v * b.v, a.d * b.v + a.v * b.d};
}
inline dual exp(dual a) {
  return {std::exp(a.v), std::exp(a.v) * a.d};
}
inline dual detach(dual a) {
  return {a.v, 0.0};
}
/// torch.clamp: derivative passes where lo ≤ x ≤ hi.
inline dual clamp(dual a, double lo, double hi) {
  if (a.v < lo)
    return {lo, 0.0};
  if (a.v > hi)
    return {hi, 0.0};
  return a;
}
inline dual clamp_max(dual a, double hi) {
  return a.v > hi ? dual{hi, 0.0} : a;
}
/// torch.maximum / torch.minimum: the larger (smaller) operand's derivative; on ties the average.
inline dual maximum(dual a, dual b) {
  if (a.v == b.v)
    return {a.v, 0.5 * (a.d + b.d)};
  return a.v > b.v ? a : b;
}
inline dual minimum(dual a, dual b) {
  if (a.v == b.v)
    return {a.v, 0.5 * (a.d + b.d)};
  return a.v < b.v ? a : b;
}
inline dual where(bool c, dual a, dual b) {
  return c ? a : b;
}
inline dual abs(dual a) {
  return {std::fabs(a.v), a.d * (a.v > 0 ? 1.0 : a.v < 0 ? -1.0 : 0.0)};
}
inline dual square(dual a) {
  return a * a;
}

enum class kind { ppo, gspo, cispo, reinforce };
enum class kl_type { none, k1, abs, k2, k3, k1_plus, k3_plus };
enum class agg { token_mean, seq_mean_token_mean, seq_mean_token_sum, seq_sum_constant };

struct loss_config {
  kind loss = kind::ppo;
  double clip_low = 0.2, clip_high = 0.2;
  double clip_ratio_c = 0; ///< 0: no dual clip
  double log_ratio_clamp = 20, gspo_max = 10;
  bool cispo_two_sided = true;
  double cispo_cap = 5;
  kl_type kl = kl_type::none;
  double kl_coef = 0, kl_log_ratio_clamp = 20, kl_value_clamp = 10; ///< value clamp 0 = none
  agg aggregation = agg::token_mean;
  double normalizer = 0; ///< 0: local count (or L for seq_sum_constant)
};

struct loss_result {
  double loss = 0, pg_loss = 0, kl_loss = 0;
  double clip_low = 0, clip_high = 0, dual_clip = 0, approx_kl = 0, mean_ratio = 0, mean_kl = 0;
  std::size_t valid_tokens = 0, valid_sequences = 0;
  std::vector<double> grad; ///< ∂loss/∂logp, 0 at masked positions
};

/// A batch in double: [B, L] arrays, advantages per token (expanded by the caller if per sequence).
struct batch {
  std::size_t B = 0, L = 0;
  std::vector<double> logp, old_logp, ref_logp, adv;
  std::vector<std::uint8_t> mask;
};

/// Per-token policy-gradient loss (verl formulation) with logp seeded or not; `seq_log_ratio` is GSPO's detached
/// Σ ℓ·m / max(|o_i|, 1) of the token's row. Also returns the ratio used (for metrics).
inline dual pg_token(const loss_config& c, dual logp, double old, double adv, double seq_log_ratio, double* ratio_out) {
  const dual A = constant(adv);
  if (c.loss == kind::reinforce) {
    *ratio_out = std::exp(std::clamp(logp.v - old, -c.log_ratio_clamp, c.log_ratio_clamp));
    return -(logp * A); // gpg: -log_prob * advantages
  }
  if (c.loss == kind::cispo) {
    const dual nak = clamp(logp - constant(old), -c.log_ratio_clamp, c.log_ratio_clamp);
    const dual ratio = exp(nak);
    *ratio_out = ratio.v;
    const dual clipped =
        c.cispo_two_sided ? clamp(ratio, 1 - c.clip_low, 1 + c.clip_high) : clamp_max(ratio, c.cispo_cap);
    return -(detach(clipped) * A * logp);
  }
  dual ratio;
  if (c.loss == kind::gspo) {
    // log_prob - log_prob.detach() + seq.detach(), clamped (verl: max 10 only; hir also clamps below at −C)
    dual lsr = logp - detach(logp) + constant(seq_log_ratio);
    lsr = clamp(lsr, -c.log_ratio_clamp, c.gspo_max);
    ratio = exp(lsr);
  } else {
    ratio = exp(clamp(logp - constant(old), -c.log_ratio_clamp, c.log_ratio_clamp));
  }
  *ratio_out = ratio.v;
  const dual pg1 = -A * ratio;
  const dual pg2 = -A * clamp(ratio, 1 - c.clip_low, 1 + c.clip_high);
  const dual clip1 = maximum(pg1, pg2);
  if (c.clip_ratio_c <= 0)
    return clip1;
  const dual pg3 = -A * constant(c.clip_ratio_c);
  const dual clip2 = minimum(pg3, clip1);
  return where(adv < 0, clip2, clip1);
}

/// verl kl_penalty: forward value, and for the "+" variants the k2 gradient (straight-through).
inline dual kl_token(const loss_config& c, dual logp, double ref) {
  const dual r = constant(ref);
  auto forward = [&](kl_type t) -> dual {
    switch (t) {
    case kl_type::k1:
    case kl_type::k1_plus:
      return logp - r;
    case kl_type::abs:
      return abs(logp - r);
    case kl_type::k2:
      return constant(0.5) * square(logp - r);
    case kl_type::k3:
    case kl_type::k3_plus: {
      const dual kl = clamp(r - logp, -c.kl_log_ratio_clamp, c.kl_log_ratio_clamp);
      const dual kld = exp(kl) - kl - constant(1.0);
      return c.kl_value_clamp > 0 ? clamp(kld, -c.kl_value_clamp, c.kl_value_clamp) : kld;
    }
    case kl_type::none:
      break;
    }
    return constant(0.0);
  };
  const dual f = forward(c.kl);
  if (c.kl != kl_type::k1_plus && c.kl != kl_type::k3_plus)
    return f;
  const dual bs = constant(0.5) * square(logp - r);
  return bs - detach(bs) + detach(f);
}

/// The loss, metrics and gradient of a batch. Masked positions never enter (values there may be NaN).
inline loss_result policy_loss(const loss_config& c, const batch& b) {
  loss_result res;
  res.grad.assign(b.B * b.L, 0.0);
  std::vector<std::size_t> len(b.B, 0);
  for (std::size_t i = 0; i < b.B; ++i)
    for (std::size_t t = 0; t < b.L; ++t)
      len[i] += b.mask[i * b.L + t] ? 1 : 0;
  std::size_t N = 0, S = 0;
  for (std::size_t i = 0; i < b.B; ++i) {
    N += len[i];
    S += len[i] > 0 ? 1 : 0;
  }
  res.valid_tokens = N;
  res.valid_sequences = S;
  double norm = c.normalizer;
  if (norm == 0)
    norm = c.aggregation == agg::token_mean         ? double(N)
           : c.aggregation == agg::seq_sum_constant ? double(b.L)
                                                    : double(S);
  double low = 0, high = 0, dual_count = 0, nlr = 0, ratio_sum = 0, kl_sum = 0;
  for (std::size_t i = 0; i < b.B; ++i) {
    if (len[i] == 0)
      continue;
    // aggregation weight of this row's tokens
    double w = 0;
    if (norm > 0) {
      if (c.aggregation == agg::seq_mean_token_mean)
        w = 1.0 / (double(len[i]) * norm);
      else
        w = 1.0 / norm;
    }
    double seq = 0;
    for (std::size_t t = 0; t < b.L; ++t)
      if (b.mask[i * b.L + t])
        seq += b.logp[i * b.L + t] - b.old_logp[i * b.L + t];
    seq /= double(std::max<std::size_t>(len[i], 1));
    for (std::size_t t = 0; t < b.L; ++t) {
      const std::size_t k = i * b.L + t;
      if (!b.mask[k])
        continue;
      const dual x{b.logp[k], 1.0};
      double ratio = 0;
      const dual pg = pg_token(c, x, b.old_logp[k], b.adv[k], seq, &ratio);
      const dual kl = kl_token(c, x, c.kl == kl_type::none ? 0.0 : b.ref_logp[k]);
      res.pg_loss += w * pg.v;
      res.kl_loss += w * kl.v;
      res.grad[k] = w * (pg.d + c.kl_coef * kl.d);
      const double A = b.adv[k];
      if (c.loss == kind::ppo || c.loss == kind::gspo) {
        low += (A < 0 && ratio < 1 - c.clip_low) ? 1 : 0;
        high += (A > 0 && ratio > 1 + c.clip_high) ? 1 : 0;
        dual_count += (c.clip_ratio_c > 0 && A < 0 && ratio > c.clip_ratio_c) ? 1 : 0;
      } else if (c.loss == kind::cispo) {
        const double lo = c.cispo_two_sided ? 1 - c.clip_low : 0.0;
        const double hi = c.cispo_two_sided ? 1 + c.clip_high : c.cispo_cap;
        low += ratio < lo ? 1 : 0;
        high += ratio > hi ? 1 : 0;
      }
      nlr += -std::clamp(b.logp[k] - b.old_logp[k], -c.log_ratio_clamp, c.log_ratio_clamp);
      ratio_sum += ratio;
      kl_sum += kl.v;
    }
  }
  res.loss = res.pg_loss + c.kl_coef * res.kl_loss;
  if (N > 0) {
    res.clip_low = low / double(N);
    res.clip_high = high / double(N);
    res.dual_clip = dual_count / double(N);
    res.approx_kl = nlr / double(N);
    res.mean_ratio = ratio_sum / double(N);
    res.mean_kl = kl_sum / double(N);
  }
  return res;
}

/// The total loss as a function of logp where every detached quantity (GSPO's sequence ratio, CISPO's weight, the
/// straight-through KL value) is frozen at `frozen_logp`: its finite differences are the surrogate's gradient.
inline double surrogate_loss(const loss_config& c, const batch& b, const std::vector<double>& logp,
                             const std::vector<double>& frozen_logp) {
  loss_config cc = c;
  double norm = c.normalizer;
  std::vector<std::size_t> len(b.B, 0);
  std::size_t N = 0, S = 0;
  for (std::size_t i = 0; i < b.B; ++i) {
    for (std::size_t t = 0; t < b.L; ++t)
      len[i] += b.mask[i * b.L + t] ? 1 : 0;
    N += len[i];
    S += len[i] > 0 ? 1 : 0;
  }
  if (norm == 0)
    norm = c.aggregation == agg::token_mean         ? double(N)
           : c.aggregation == agg::seq_sum_constant ? double(b.L)
                                                    : double(S);
  double total = 0;
  for (std::size_t i = 0; i < b.B; ++i) {
    if (len[i] == 0 || norm <= 0)
      continue;
    const double w = c.aggregation == agg::seq_mean_token_mean ? 1.0 / (double(len[i]) * norm) : 1.0 / norm;
    double seq = 0;
    for (std::size_t t = 0; t < b.L; ++t)
      if (b.mask[i * b.L + t])
        seq += frozen_logp[i * b.L + t] - b.old_logp[i * b.L + t];
    seq /= double(len[i]);
    for (std::size_t t = 0; t < b.L; ++t) {
      const std::size_t k = i * b.L + t;
      if (!b.mask[k])
        continue;
      const double x = logp[k], x0 = frozen_logp[k], A = b.adv[k];
      double pg = 0;
      if (c.loss == kind::cispo) {
        const double ratio0 = std::exp(std::clamp(x0 - b.old_logp[k], -c.log_ratio_clamp, c.log_ratio_clamp));
        const double w0 =
            c.cispo_two_sided ? std::clamp(ratio0, 1 - c.clip_low, 1 + c.clip_high) : std::min(ratio0, c.cispo_cap);
        pg = -w0 * A * x;
      } else if (c.loss == kind::gspo) {
        const double lsr = std::clamp(x - x0 + seq, -c.log_ratio_clamp, c.gspo_max);
        const double ratio = std::exp(lsr);
        double l = std::max(-A * ratio, -A * std::clamp(ratio, 1 - c.clip_low, 1 + c.clip_high));
        if (c.clip_ratio_c > 0 && A < 0)
          l = std::min(l, -A * c.clip_ratio_c);
        pg = l;
      } else {
        double dummy = 0;
        pg = pg_token(cc, constant(x), b.old_logp[k], A, 0.0, &dummy).v;
      }
      double kl = 0;
      if (c.kl == kl_type::k1_plus || c.kl == kl_type::k3_plus) {
        const double kappa = x - b.ref_logp[k], kappa0 = x0 - b.ref_logp[k];
        kl = 0.5 * kappa * kappa - 0.5 * kappa0 * kappa0 + kl_token(cc, constant(x0), b.ref_logp[k]).v;
      } else if (c.kl != kl_type::none) {
        kl = kl_token(cc, constant(x), b.ref_logp[k]).v;
      }
      total += w * (pg + c.kl_coef * kl);
    }
  }
  return total;
}

} // namespace hir::ref
