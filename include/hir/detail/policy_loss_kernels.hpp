// SPDX-License-Identifier: Apache-2.0
// Per-token math of hir::policy_loss, shared by the CPU loops and the device backend's Thrust functors: an accurate
// branch-free float exp (with e^d − 1 and e^d − 1 − d without cancellation, for k3), the clipped policy-gradient
// terms and the KL estimators with their analytic gradients; and the host-side pieces both backends share: the
// arrays of a call, the normalizer and the result. Everything is written with selects
// (no branches, no calls into libm for float) so g++ -O3 vectorizes the loops that call it.
#pragma once

#include <hir/config.hpp>
#include <hir/core/span.hpp>
#include <hir/core/tokens.hpp>
#include <hir/losses/policy_loss.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace hir {
namespace detail {

// Selects are written so that every ordered comparison (<, >) is evaluated unconditionally and "is a clamp active"
// is tested by equality with the clamped value: with -ftrapping-math (the default) g++ will not if-convert an
// ordered comparison that runs on one side of a ?: or && only, and the loop would not vectorize.
/// The arrays of one policy_loss call as raw pointers into memory space `Space` (host_space for the CPU loops,
/// device_space for the Thrust functors). `old` is logp when old_logp is absent (reinforce), so ℓ = 0.
template <class T, class Space>
struct policy_loss_arrays {
  const T* logp;
  const T* old;
  const T* ref; ///< nullptr when no KL term
  const std::uint8_t* mask;
  const T* adv;
  bool token_adv; ///< advantages per token (B·L) rather than per sequence (B)
  bool has_old;   ///< old_logp was given
  std::size_t batch, length;
};

template <class T, class Space>
policy_loss_arrays<T, Space> make_policy_loss_arrays(const token_batch_ref<T, Space>& tokens,
                                                     span<const T, Space> advantages, const policy_loss_options& opt) {
  const std::size_t n = tokens.batch * tokens.length;
  policy_loss_arrays<T, Space> in{};
  in.logp = tokens.logp.data();
  in.has_old = !tokens.old_logp.empty();
  in.old = in.has_old ? tokens.old_logp.data() : tokens.logp.data();
  in.ref = opt.kl != kl_estimator::none ? tokens.ref_logp.data() : nullptr;
  in.mask = tokens.mask.data();
  in.adv = advantages.data();
  in.token_adv = advantages.size() == n && n != tokens.batch; // L == 1: both layouts are the same array
  in.batch = tokens.batch;
  in.length = tokens.length;
  return in;
}

/// The loss normalizer: opt.normalizer when set, else the valid tokens, valid sequences or L by the aggregation.
inline double policy_loss_normalizer(const policy_loss_options& opt, std::size_t valid_tokens,
                                     std::size_t valid_sequences, std::size_t length) {
  if (opt.normalizer != 0.0)
    return opt.normalizer;
  switch (opt.aggregation) {
  case loss_aggregation::token_mean:
    return static_cast<double>(valid_tokens);
  case loss_aggregation::seq_mean_token_mean:
  case loss_aggregation::seq_mean_token_sum:
    return static_cast<double>(valid_sequences);
  case loss_aggregation::seq_sum_constant:
    break;
  }
  return static_cast<double>(length);
}

/// The result from the sums of the token pass (`s` has doubles pg, kl, kl_plain, ratio, log_ratio, low, high, dual).
template <class Sums>
policy_loss_result make_policy_loss_result(const policy_loss_options& opt, const Sums& s, std::size_t valid_tokens,
                                           std::size_t valid_sequences, double normalizer) {
  policy_loss_result res;
  const double nt = static_cast<double>(valid_tokens);
  res.pg_loss = s.pg;
  res.kl_loss = opt.kl != kl_estimator::none ? s.kl : 0.0;
  res.loss = res.pg_loss + opt.kl_coef * res.kl_loss;
  if (valid_tokens > 0) {
    res.clip_fraction_low = s.low / nt;
    res.clip_fraction_high = s.high / nt;
    res.dual_clip_fraction = s.dual / nt;
    res.approx_kl = -s.log_ratio / nt;
    res.mean_ratio = s.ratio / nt;
    res.mean_kl = opt.kl != kl_estimator::none ? s.kl_plain / nt : 0.0;
  }
  res.valid_tokens = valid_tokens;
  res.valid_sequences = valid_sequences;
  res.normalizer = normalizer;
  return res;
}

/// min(a, b); a NaN `a` propagates.
template <class T>
HIR_HOST_DEVICE inline T min_of(T a, T b) {
  return b < a ? b : a;
}
/// max(a, b); a NaN `a` propagates.
template <class T>
HIR_HOST_DEVICE inline T max_of(T a, T b) {
  return a < b ? b : a;
}
/// v clamped to [lo, hi]; a NaN v becomes lo (one maxps and one minps on x86), so what follows is always finite.
template <class T>
HIR_HOST_DEVICE inline T clamp_to(T v, T lo, T hi) {
  v = v > lo ? v : lo;
  return v < hi ? v : hi;
}

/// Unsigned integer of T's width: lane masks (all ones = valid) that select by bitwise AND.
template <class T>
using lane_bits_t = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

/// v where the lane mask is all ones, +0 where it is zero (also for NaN/inf v): a select that vectorizes.
template <class T>
HIR_HOST_DEVICE inline T keep_if(T v, lane_bits_t<T> bits) {
  lane_bits_t<T> b;
  std::memcpy(&b, &v, sizeof b);
  b &= bits;
  std::memcpy(&v, &b, sizeof v);
  return v;
}

/// v where c holds, +0 elsewhere (keep_if with the mask of c). Not `c ? v : 0`: the compiler sinks the arithmetic that
/// makes v into the taken arm, and with -ftrapping-math (the default) an arm holding arithmetic is not if-converted,
/// so the token loops stayed scalar without AVX-512's masked operations (about 19 ns per token at -mavx2).
template <class T>
HIR_HOST_DEVICE inline T zero_unless(bool c, T v) {
  return keep_if(v, lane_bits_t<T>(0) - static_cast<lane_bits_t<T>>(c));
}

/// e^x split for reuse: e^x = s·(1 + q) with s = 2^n, q = e^r − 1, r = x − n·ln2 and zp = q − r (= r²·P(r)).
struct exp_split_f {
  float s;  ///< 2^n
  float q;  ///< e^r − 1, accurate to ~1 ulp relative
  float r;  ///< reduced argument, |r| ≤ ln2/2 (plus rounding)
  float zp; ///< e^r − 1 − r, accurate to ~1 ulp relative (no cancellation)
  float n;  ///< the integer n as a float
};

/// Branch-free float exp split for a finite x in [−87.3, 88.3] (not checked: the callers clamp): Cody–Waite reduction
/// (Cephes' split of ln2), then e^r − 1 − r = r²·P(r) with a degree-4 P fitted (Lawson minimax, float coefficients,
/// P(0) = 1/2 exactly) for the relative error of r²·P itself: ≤ 1.5e-7 on |r| ≤ ln2/2, so e^r and e^r − 1 − r are both
/// accurate to about 1 ulp.
HIR_HOST_DEVICE inline exp_split_f exp_split_in_range(float x) {
  // n = round(x·log2 e) by adding and subtracting 1.5·2^23 (exact for |x·log2 e| < 2^22): plain arithmetic, where
  // rintf is a libm call for targets without SSE4.1 and kept the token loops scalar there. Where the compiler fuses
  // the product into the addition it rounds the exact product, which can differ from rintf(x·log2 e) by one at
  // halfway points; |r| then exceeds ln2/2 by at most an ulp, inside the polynomial's accuracy (the tests sweep it).
  constexpr float shift = 12582912.0f;
  const float n = (x * 1.44269504088896341f + shift) - shift;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f; // ln2 = C1 + C2, n·C1 exact for |n| < 2^15
  float p = 1.390142832e-3f;
  p = p * r + 8.363486268e-3f;
  p = p * r + 4.166685790e-2f;
  p = p * r + 1.666657478e-1f;
  p = p * r + 0.5f;
  const float zp = (r * r) * p;
  const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) * (std::int32_t(1) << 23);
  float s;
  std::memcpy(&s, &bits, sizeof s);
  return {s, r + zp, r, zp, n};
}

/// exp_split_in_range for any x: x is clamped to [−87.3, 88.3] first (a NaN x becomes −87.3).
HIR_HOST_DEVICE inline exp_split_f exp_split(float x) {
  return exp_split_in_range(clamp_to(x, -87.3f, 88.3f));
}

/// e^x in float, within 2 ulp of the exact value for x in [−87.3, 88.3] (tested); vectorizable. Outside that
/// range x is clamped to it.
HIR_HOST_DEVICE inline float exp_accurate(float x) {
  const exp_split_f e = exp_split(x);
  return e.s + e.s * e.q;
}
/// e^x in double (libm).
HIR_HOST_DEVICE inline double exp_accurate(double x) {
  return ::exp(x);
}

/// e^x for a finite x in [−87.3, 88.3] (the token kernel clamps its arguments to ±80 first).
HIR_HOST_DEVICE inline float exp_in_range(float x) {
  const exp_split_f e = exp_split_in_range(x);
  return e.s + e.s * e.q;
}
HIR_HOST_DEVICE inline double exp_in_range(double x) {
  return ::exp(x);
}

/// e^d − 1 and e^d − 1 − d (the k3 estimator) without cancellation for small |d|.
template <class T>
struct expm1_k3 {
  T em1; ///< e^d − 1
  T k3;  ///< e^d − 1 − d ≥ 0
};
/// (d must be finite and in [−87.3, 88.3]; the callers clamp it to ±80.)
HIR_HOST_DEVICE inline expm1_k3<float> exp_minus_one_k3(float d) {
  const exp_split_f e = exp_split_in_range(d);
  const float sm1 = e.s - 1.0f;
  // d = n·ln2 + r  ⇒  e^d − 1 − d = (s − 1 − n·ln2) + (s − 1)·r + s·zp; exactly zp when n = 0.
  const float head = (sm1 - e.n * 0.693359375f) - e.n * -2.12194440e-4f;
  return {sm1 + e.s * e.q, head + sm1 * e.r + e.s * e.zp};
}
HIR_HOST_DEVICE inline expm1_k3<double> exp_minus_one_k3(double d) {
  const double em1 = ::expm1(d);
  return {em1, em1 - d}; // relative error ≈ 2^-52/|d|: fine in double
}

/// The code paths of the KL term: the cheap estimators share one (k1, abs, k2, k1_st with runtime coefficients),
/// so a backend instantiates 4, not 7.
enum class kl_family { none, polynomial, k3, k3_st };
constexpr kl_family kl_family_of(kl_estimator e) {
  return e == kl_estimator::none    ? kl_family::none
         : e == kl_estimator::k3    ? kl_family::k3
         : e == kl_estimator::k3_st ? kl_family::k3_st
                                    : kl_family::polynomial;
}

/// Per-call constants of the token kernel, in the arrays' precision (built by make_policy_token_params).
template <class T>
struct policy_token_params {
  T log_ratio_clamp;    ///< C: ℓ is clamped to [−C, C] before exp
  T ratio_low;          ///< PPO/GSPO: 1 − ε_lo; CISPO: lower bound of the weight (1 − ε_lo, or 0 for upper_cap)
  T ratio_high;         ///< PPO/GSPO: 1 + ε_hi; CISPO: upper bound of the weight (1 + ε_hi, or the cap)
  T dual_clip;          ///< c (cap of ρ where A < 0), or the largest finite T when dual clip is off
  T kl_log_ratio_clamp; ///< C_k: −κ is clamped to [−C_k, C_k] before exp (k3)
  T kl_value_clamp;     ///< V: the k3 value is clamped to at most V (largest finite T when off)
  T kl_coef;            ///< β: the KL term's weight in the loss
  // Coefficients of kl_family::polynomial: value = v1·κ + v2·κ² + v_abs·|κ|, gradient = g0 + g1·κ + g_abs·sign(κ).
  // Products with 0 and 1 are exact, so each estimator is computed exactly as written.
  T kl_v1, kl_v2, kl_v_abs, kl_g0, kl_g1, kl_g_abs;
};

template <class T>
policy_token_params<T> make_policy_token_params(const policy_loss_options& o) {
  const T big = std::numeric_limits<T>::max();
  policy_token_params<T> p{};
  p.log_ratio_clamp = static_cast<T>(o.log_ratio_clamp);
  p.ratio_low = static_cast<T>(1.0 - o.clip_low);
  p.ratio_high = static_cast<T>(1.0 + o.clip_high);
  if (o.kind == policy_loss_kind::cispo && o.cispo == cispo_clip::upper_cap) {
    p.ratio_low = T(0);
    p.ratio_high = static_cast<T>(o.cispo_cap);
  }
  p.dual_clip = o.dual_clip > 0.0 ? static_cast<T>(o.dual_clip) : big;
  p.kl_log_ratio_clamp = static_cast<T>(o.kl_log_ratio_clamp);
  p.kl_value_clamp = o.kl_value_clamp > 0.0 ? static_cast<T>(o.kl_value_clamp) : big;
  p.kl_coef = static_cast<T>(o.kl_coef);
  p.kl_v1 = p.kl_v2 = p.kl_v_abs = p.kl_g0 = p.kl_g1 = p.kl_g_abs = T(0);
  switch (o.kl) {
  case kl_estimator::k1: // κ, gradient 1
    p.kl_v1 = p.kl_g0 = T(1);
    break;
  case kl_estimator::k1_st: // κ, gradient κ
    p.kl_v1 = p.kl_g1 = T(1);
    break;
  case kl_estimator::abs: // |κ|, gradient sign(κ)
    p.kl_v_abs = p.kl_g_abs = T(1);
    break;
  case kl_estimator::k2: // κ²/2, gradient κ
    p.kl_v2 = T(0.5);
    p.kl_g1 = T(1);
    break;
  case kl_estimator::k3:
  case kl_estimator::k3_st:
  case kl_estimator::none:
    break;
  }
  return p;
}

/// What the policy-gradient term of one valid token contributes (before the aggregation weight and the mask).
template <class T>
struct policy_pg_terms {
  T pg;        ///< policy-gradient loss term L_pg
  T grad;      ///< ∂L_pg/∂logp
  T ratio;     ///< ρ (the sequence ratio ρ_i for GSPO)
  T log_ratio; ///< ℓ clamped to [−C, C]
  bool low;    ///< the lower clip is active (PPO/GSPO: A < 0 and ρ < 1 − ε_lo; CISPO: ρ below the bound)
  bool high;   ///< the upper clip is active (PPO/GSPO: A > 0 and ρ > 1 + ε_hi; CISPO: ρ above the bound)
  bool dual;   ///< dual clip caps the loss (A < 0 and ρ > c)
};

/// The policy-gradient term of one token. x = logp, o = old_logp, a = advantage. For GSPO, `row_ratio` is ρ_i =
/// exp(clamped sequence log-ratio) and `row_pass` is 1 where that clamp is inactive (0 kills the gradient); other
/// kinds ignore them. Gradients follow PyTorch autograd on verl's formulation: zero where a clamp is active.
/// Inputs must be finite (callers zero the masked positions); a non-finite input gives meaningless (but defined)
/// outputs.
template <policy_loss_kind K, class T>
HIR_HOST_DEVICE inline policy_pg_terms<T> policy_pg_token(T x, T o, T a, T row_ratio, T row_pass,
                                                          const policy_token_params<T>& p) {
  policy_pg_terms<T> out{};
  const T c = p.log_ratio_clamp;
  const T l = x - o;
  const T lc = clamp_to(l, -c, c);
  out.log_ratio = lc;
  T rho = row_ratio;
  bool pass = row_pass != T(0);
  if constexpr (K != policy_loss_kind::gspo) {
    rho = exp_in_range(lc);
    pass = lc == l; // torch.clamp passes the gradient where −C ≤ ℓ ≤ C (and lc is finite even for a NaN ℓ)
  }
  out.ratio = rho;
  if constexpr (K == policy_loss_kind::ppo_clip || K == policy_loss_kind::gspo) {
    // A ≥ 0: L = −A·min(ρ, 1 + ε_hi); A < 0: L = −A·min(max(ρ, 1 − ε_lo), c). The gradient −A·ρ flows only where
    // ρ is inside the bounds (torch.maximum/minimum pick the unclipped branch) and ℓ was not clamped.
    const bool neg = a < T(0);
    const T an = -a;
    const T lo = neg ? p.ratio_low : T(0);
    const T hi = neg ? p.dual_clip : p.ratio_high;
    const T q = clamp_to(rho, lo, hi);
    out.pg = an * q;
    const T an_pass = pass ? an : T(0);
    out.grad = zero_unless(q == rho, an_pass * rho);
    const bool pos = a > T(0);
    out.low = neg & (rho < p.ratio_low);
    out.high = pos & (rho > p.ratio_high);
    out.dual = neg & (rho > p.dual_clip);
  } else if constexpr (K == policy_loss_kind::cispo) {
    // L = −sg(clip(ρ))·A·logp: the clipped weight is a constant for the gradient.
    const T w = clamp_to(rho, p.ratio_low, p.ratio_high);
    out.pg = -a * w * x;
    out.grad = -a * w;
    out.low = rho < p.ratio_low;
    out.high = rho > p.ratio_high;
  } else { // reinforce: L = −A·logp
    out.pg = -a * x;
    out.grad = -a;
  }
  return out;
}

/// A KL estimator's value and its gradient with respect to logp.
template <class T>
struct kl_terms {
  T value; ///< the estimator of KL(π_θ ‖ π_ref) at this token (0 for kl_estimator::none)
  T grad;  ///< ∂value/∂logp as autograd computes it on verl's formulation (k2's for the straight-through ones)
};

/// The KL estimator selected by p's coefficients, of κ = x − r (x = logp, r = ref_logp; both finite), computed by
/// family F = kl_family_of(estimator).
template <kl_family F, class T>
HIR_HOST_DEVICE inline kl_terms<T> kl_token(T x, T r, const policy_token_params<T>& p) {
  const T kappa = x - r; // κ = logp − ref_logp
  T v = T(0), g = T(0);
  if constexpr (F == kl_family::polynomial) {                                   // k1, abs, k2, k1_st
    const T sign = (kappa > T(0) ? T(1) : T(0)) - (kappa < T(0) ? T(1) : T(0)); // torch.sign: 0 at κ = 0
    v = p.kl_v1 * kappa + (p.kl_v2 * kappa) * kappa + p.kl_v_abs * max_of(kappa, -kappa);
    g = p.kl_g0 + p.kl_g1 * kappa + p.kl_g_abs * sign;
  } else if constexpr (F == kl_family::k3 || F == kl_family::k3_st) {
    // d = clamp(−κ, ±C_k), k3 = e^d − 1 − d, clamped to ≤ V
    const T ck = p.kl_log_ratio_clamp;
    const T dr = r - x;
    const T d = clamp_to(dr, -ck, ck);
    const expm1_k3<T> e = exp_minus_one_k3(d);
    v = min_of(e.k3, p.kl_value_clamp);
    if constexpr (F == kl_family::k3)
      g = zero_unless((d == dr) & (v == e.k3), -e.em1); // ∂k3/∂logp = −(e^d − 1) where no clamp is active
    else
      g = kappa; // straight-through: the value of k3, the gradient of k2
  }
  return {v, g};
}

/// Both terms of one token: L = L_pg + β·KL and ∂L/∂logp (before the aggregation weight and the mask).
template <class T>
struct policy_token_terms {
  policy_pg_terms<T> pg;
  kl_terms<T> kl;
  T grad; ///< ∂(L_pg + β·KL)/∂logp
};
template <policy_loss_kind K, kl_family F, class T>
HIR_HOST_DEVICE inline policy_token_terms<T> policy_token(T x, T o, T r, T a, T row_ratio, T row_pass,
                                                          const policy_token_params<T>& p) {
  const policy_pg_terms<T> pg = policy_pg_token<K>(x, o, a, row_ratio, row_pass, p);
  const kl_terms<T> kl = kl_token<F>(x, r, p);
  return {pg, kl, pg.grad + p.kl_coef * kl.grad};
}

} // namespace detail
} // namespace hir
