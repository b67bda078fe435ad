// SPDX-License-Identifier: Apache-2.0
// CPU implementation of policy_loss. With input_validation::before_writing, pass 1 reads the inputs once to check them
// (integer OR reductions on exponent bits, so it vectorizes) and to count valid tokens and sequences. Pass 2 walks the
// batch row by row and, within a row, in chunks of 256 tokens that stay in L1: the mask is expanded to lane masks,
// and one loop over blocks of 16 tokens computes the policy-gradient term (hir::detail::policy_pg_token) and the KL
// term (hir::detail::kl_token), writes the gradient and adds the summed terms into 16 float lanes (token j of a block
// into lane j), flushed into double per chunk; clip flags are counted exactly as integers. No loop needs a
// reassociated floating-point reduction, so g++ -O3 vectorizes the block loop without -ffast-math. For float, PPO clip
// and no KL or k3, and for the float passes over the mask and inputs, CPUs with AVX-512 take the hand-written loops of
// policy_loss_avx512.hpp instead (chosen at run time; same formulas, same lanes and chunks). Nothing proportional to
// B·L is allocated (a few KiB of stack per call).
#pragma once

#include <hir/backend/cpu/policy_loss_avx512.hpp>
#include <hir/backend/cpu/tag.hpp>
#include <hir/core/tokens.hpp>
#include <hir/detail/policy_loss_kernels.hpp>
#include <hir/losses/policy_loss.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

namespace hir {
namespace backend {
namespace cpu {
namespace detail {

/// The arrays of one call as raw host pointers (shared with the device backend).
template <class T>
using policy_loss_arrays = hir::detail::policy_loss_arrays<T, host_space>;

/// 1 when v is ±inf or NaN (all exponent bits set), as an integer so that OR reductions vectorize.
inline std::uint32_t non_finite_bit(float v) {
  std::uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return (b & 0x7f800000u) == 0x7f800000u;
}
inline std::uint32_t non_finite_bit(double v) {
  std::uint64_t b;
  std::memcpy(&b, &v, sizeof b);
  return (b & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
}

/// Finds the first invalid input in row-major order (a mask value other than 0/1, or a non-finite value at a valid
/// position) and throws naming it; returns normally if every input is valid.
template <class T>
void throw_first_invalid(const char* fn, const policy_loss_arrays<T>& in) {
  const std::size_t L = in.length;
  for (std::size_t i = 0; i < in.batch; ++i) {
    bool seen_valid = false;
    for (std::size_t t = 0; t < L; ++t) {
      const std::size_t k = i * L + t;
      const unsigned m = in.mask[k];
      if (m > 1)
        hir::detail::fail(fn, "mask[", i, ", ", t, "] = ", m, " is not 0 or 1");
      if (!m)
        continue;
      auto check = [&](const char* name, const T* a) {
        if (a && !std::isfinite(a[k]))
          hir::detail::fail(fn, name, "[", i, ", ", t, "] = ", a[k], " is not finite (a valid token)");
      };
      check("logp", in.logp);
      check("old_logp", in.has_old ? in.old : nullptr);
      check("ref_logp", in.ref);
      if (in.token_adv)
        check("advantages", in.adv);
      else if (!seen_valid && !std::isfinite(in.adv[i]))
        hir::detail::fail(fn, "advantages[", i, "] = ", in.adv[i], " is not finite (sequence ", i,
                          " has valid tokens)");
      seen_valid = true;
    }
  }
}

/// Valid tokens and non-empty sequences of the batch.
struct policy_loss_counts {
  std::size_t valid_tokens = 0;
  std::size_t valid_sequences = 0;
};

/// Valid tokens of one row, and whether a mask value is above 1.
inline std::pair<std::size_t, bool> count_row(const std::uint8_t* m, std::size_t n) {
  std::uint32_t count = 0, big = 0;
  std::size_t t = 0;
#if HIR_CPU_AVX512
  if (cpu_has_avx512())
    t = count_row_avx512(m, n, count, big);
#endif
  for (; t < n; ++t) {
    count += m[t] != 0;
    big |= m[t] > 1;
  }
  return {count, big != 0};
}

/// Pass 1 of input_validation::before_writing: checks every input (throws before anything is written) and counts.
template <bool HasOld, bool HasRef, bool TokenAdv, class T>
policy_loss_counts check_and_count(const char* fn, const policy_loss_arrays<T>& in) {
  policy_loss_counts c;
  const std::size_t L = in.length;
  for (std::size_t i = 0; i < in.batch; ++i) {
    const std::size_t base = i * L;
    std::uint32_t count = 0, big = 0, bad = 0;
    std::size_t t = 0;
#if HIR_CPU_AVX512
    if constexpr (std::is_same_v<T, float>)
      if (cpu_has_avx512())
        t = check_row_avx512(in.logp + base, HasOld ? in.old + base : nullptr, HasRef ? in.ref + base : nullptr,
                             TokenAdv ? in.adv + base : nullptr, in.mask + base, L, count, big, bad);
#endif
    for (; t < L; ++t) {
      const std::size_t k = base + t;
      const std::uint32_t m = in.mask[k];
      const std::uint32_t valid = m != 0;
      std::uint32_t nf = non_finite_bit(in.logp[k]);
      if constexpr (HasOld)
        nf |= non_finite_bit(in.old[k]);
      if constexpr (HasRef)
        nf |= non_finite_bit(in.ref[k]);
      if constexpr (TokenAdv)
        nf |= non_finite_bit(in.adv[k]);
      bad |= nf & valid;
      big |= m > 1;
      count += valid;
    }
    if (!TokenAdv && count > 0)
      bad |= non_finite_bit(in.adv[i]);
    if (bad | big)
      throw_first_invalid(fn, in);
    c.valid_tokens += count;
    c.valid_sequences += count > 0;
  }
  return c;
}

/// Counts only (input_validation::fused with a local normalizer); mask values above 1 are reported after the pass.
inline policy_loss_counts count_mask(const std::uint8_t* mask, std::size_t batch, std::size_t length) {
  policy_loss_counts c;
  for (std::size_t i = 0; i < batch; ++i) {
    const std::size_t n = count_row(mask + i * length, length).first;
    c.valid_tokens += n;
    c.valid_sequences += n > 0;
  }
  return c;
}

/// Aggregation weight w_i of a row with n_i valid tokens, given the resolved normalizer (N, S or C; 0 = nothing
/// valid and local, so every weight is 0).
inline double row_weight(loss_aggregation agg, double normalizer, std::size_t n_i) {
  if (!(normalizer > 0.0) || n_i == 0)
    return 0.0;
  if (agg == loss_aggregation::seq_mean_token_mean)
    return 1.0 / (static_cast<double>(n_i) * normalizer);
  return 1.0 / normalizer;
}

/// Sums of pass 2 (double).
struct policy_loss_sums {
  double pg = 0, kl = 0;                         ///< Σ_i w_i Σ_t (·)·m
  double kl_plain = 0, ratio = 0, log_ratio = 0; ///< Σ (·)·m
  double low = 0, high = 0, dual = 0;
  std::size_t valid_tokens = 0, valid_sequences = 0;
  bool mask_above_one = false;
};

/// Σ_t (logp − old)·m of one row in double (GSPO's sequence log-ratio numerator).
template <class T>
double row_log_ratio_sum(const T* x, const T* o, const std::uint8_t* m, std::size_t n) {
  constexpr std::size_t lanes = 8;
  double acc[lanes] = {};
  std::size_t t = 0;
  for (; t + lanes <= n; t += lanes)
    for (std::size_t j = 0; j < lanes; ++j)
      acc[j] += m[t + j] ? static_cast<double>(x[t + j]) - static_cast<double>(o[t + j]) : 0.0;
  double s = 0;
  for (; t < n; ++t)
    s += m[t] ? static_cast<double>(x[t]) - static_cast<double>(o[t]) : 0.0;
  for (std::size_t j = 0; j < lanes; ++j)
    s += acc[j];
  return s;
}

using hir::detail::keep_if; // lane-mask selects, shared with the kernels' zero_unless
using hir::detail::lane_bits_t;

/// The token loop over one chunk (n ≤ loss_chunk tokens of one row, L1-resident): the gradient into g, each summed
/// float term into its 16 lanes f[q][·] (token t into lane t mod 16), and the clip-flag code sum returned. Masked
/// positions are set to 0 on input (logp = old = ref = A = 0), which makes every summed term exactly 0 there (ρ − 1
/// is summed instead of ρ), so only the gradient needs the mask on output. ℓ − ℓ and κ − κ are added to the summed
/// terms: 0 for finite inputs, NaN otherwise (how input_validation::fused detects bad inputs). Blocks of 16 tokens
/// with the lane index as the inner loop, restrict pointers and only lane-wise sums are what g++ vectorizes best
/// (one zmm per lane array, constants hoisted, no alias checks, no reassociation needed); merging the KL term into
/// the same loop saves reloading the inputs and the gradient (≈ 4% over two loops with a buffer).
template <policy_loss_kind K, hir::detail::kl_family F, class T>
inline std::int32_t loss_chunk_loop(const T* __restrict x, const T* __restrict o, const T* __restrict r,
                                    const T* __restrict a, const lane_bits_t<T>* __restrict lane_mask, T* __restrict g,
                                    std::size_t n, T row_ratio, T row_pass, T w,
                                    const hir::detail::policy_token_params<T>& params, T (*__restrict f)[loss_lanes]) {
  constexpr bool has_kl = F != hir::detail::kl_family::none;
  constexpr bool has_clip = K != policy_loss_kind::reinforce;
  constexpr bool token_ratio = K != policy_loss_kind::gspo; // GSPO's ratio is per row
  const hir::detail::policy_token_params<T> p = params;     // a local copy: no aliasing with the outputs
  T s_pg[loss_lanes] = {}, s_kl[loss_lanes] = {}, s_ratio[loss_lanes] = {}, s_lr[loss_lanes] = {};
  std::int32_t codes[loss_lanes] = {};
  const auto token = [&](std::size_t t, std::size_t j) __attribute__((always_inline)) {
    const lane_bits_t<T> b = lane_mask[t];
    const T xv = keep_if(x[t], b), ov = keep_if(o[t], b), av = keep_if(a[t], b);
    const auto e = hir::detail::policy_pg_token<K, T>(xv, ov, av, row_ratio, row_pass, p);
    T grad = e.grad;
    if constexpr (has_kl) {
      const T rv = keep_if(r[t], b);
      const auto k = hir::detail::kl_token<F, T>(xv, rv, p);
      grad += p.kl_coef * k.grad;
      const T kappa = xv - rv; // κ − κ: 0 for finite κ, NaN for a non-finite logp or ref_logp
      s_kl[j] += k.value + (kappa - kappa);
    }
    g[t] = keep_if(w * grad, b);
    s_pg[j] += e.pg;
    const T l_raw = xv - ov; // ℓ − ℓ: 0 for finite ℓ, NaN for a non-finite logp or old_logp
    s_lr[j] += e.log_ratio + (l_raw - l_raw);
    if constexpr (token_ratio)
      s_ratio[j] += e.ratio - T(1); // exact near 1; 0 at masked positions
    if constexpr (has_clip)
      codes[j] += (e.low ? 1 : 0) + (e.high ? code_high : 0) + (e.dual ? code_dual : 0);
  };
  std::size_t t0 = 0;
  for (; t0 + loss_lanes <= n; t0 += loss_lanes)
    for (std::size_t j = 0; j < loss_lanes; ++j)
      token(t0 + j, j);
  for (std::size_t j = 0; t0 + j < n; ++j)
    token(t0 + j, j);
  std::int32_t code = 0;
  for (std::size_t j = 0; j < loss_lanes; ++j) {
    f[q_pg][j] = s_pg[j];
    f[q_kl][j] = s_kl[j];
    f[q_ratio][j] = s_ratio[j];
    f[q_log_ratio][j] = s_lr[j];
    code += codes[j];
  }
  return code;
}

/// Pass 2: gradient, loss and metrics, row by row. K and F are compile-time so the token loop has no branches.
template <policy_loss_kind K, hir::detail::kl_family F, class T>
policy_loss_sums loss_pass(const policy_loss_arrays<T>& in, T* grad, const hir::detail::policy_token_params<T>& p,
                           const policy_loss_options& opt, double normalizer) {
  using bits_t = lane_bits_t<T>;
  constexpr bool has_kl = F != hir::detail::kl_family::none;
  constexpr bool token_ratio = K != policy_loss_kind::gspo;
  const std::size_t L = in.length;
  [[maybe_unused]] const bool nan_check = opt.validation == input_validation::fused;
#if HIR_CPU_AVX512
  [[maybe_unused]] const bool simd = policy_loss_avx512_v<K, F, T> && cpu_has_avx512();
#endif
  double acc[q_count + 1][loss_lanes] = {}; // [q_count]: the unweighted KL sum
  double gspo_ratio_sum = 0;
  std::int64_t low = 0, high = 0, dual = 0;
  policy_loss_sums s;
  bits_t lane_mask[loss_chunk];
  T adv_row[loss_chunk]; // per-sequence advantages broadcast over a chunk
  T f[q_count][loss_lanes];
  for (std::size_t i = 0; i < in.batch; ++i) {
    const std::size_t base = i * L;
    const std::uint8_t* m = in.mask + base;
    const auto [n_i, big] = count_row(m, L);
    s.mask_above_one = s.mask_above_one || big;
    if (n_i == 0) {
      std::fill(grad + base, grad + base + L, T(0));
      continue;
    }
    s.valid_tokens += n_i;
    s.valid_sequences += 1;
    const double w_d = row_weight(opt.aggregation, normalizer, n_i);
    T row_ratio = T(1), row_pass = T(1);
    if constexpr (K == policy_loss_kind::gspo) {
      const double mean = row_log_ratio_sum(in.logp + base, in.old + base, m, L) / static_cast<double>(n_i);
      const double lo = -opt.log_ratio_clamp, hi = opt.gspo_log_ratio_max;
      row_pass = (mean >= lo && mean <= hi) ? T(1) : T(0); // NaN (fused mode) is reported after the pass
      row_ratio = static_cast<T>(std::exp(mean < lo ? lo : (mean > hi ? hi : mean)));
      gspo_ratio_sum += static_cast<double>(row_ratio) * static_cast<double>(n_i);
    }
    if (!in.token_adv)
      std::fill(adv_row, adv_row + std::min(L, loss_chunk), in.adv[i]);
    for (std::size_t c0 = 0; c0 < L; c0 += loss_chunk) {
      const std::size_t n = std::min(L - c0, loss_chunk);
      const std::size_t k = base + c0;
      const auto portable = [&] {
        for (std::size_t t = 0; t < n; ++t)
          lane_mask[t] = bits_t(0) - static_cast<bits_t>(m[c0 + t] != 0);
        return loss_chunk_loop<K, F, T>(in.logp + k, in.old + k, has_kl ? in.ref + k : in.logp + k,
                                        in.token_adv ? in.adv + k : adv_row, lane_mask, grad + k, n, row_ratio,
                                        row_pass, static_cast<T>(w_d), p, f);
      };
      std::int32_t code;
#if HIR_CPU_AVX512
      if constexpr (policy_loss_avx512_v<K, F, T>) {
        if (simd) {
          const T* ref = has_kl ? in.ref + k : nullptr;
          const T* adv = in.token_adv ? in.adv + k : nullptr;
          const T a_row = in.token_adv ? T(0) : in.adv[i];
          const auto chunk =
              nan_check ? (adv ? loss_chunk_ppo_avx512<F, true, true> : loss_chunk_ppo_avx512<F, true, false>)
                        : (adv ? loss_chunk_ppo_avx512<F, false, true> : loss_chunk_ppo_avx512<F, false, false>);
          code = chunk(in.logp + k, in.old + k, ref, adv, a_row, m + c0, grad + k, n, static_cast<T>(w_d), p, f);
        } else {
          code = portable();
        }
      } else
#endif
      {
        code = portable();
      }
      low += code & (code_high - 1);
      high += (code >> 10) & (code_high - 1);
      dual += code >> 20;
      for (std::size_t j = 0; j < loss_lanes; ++j) {
        acc[q_pg][j] += w_d * static_cast<double>(f[q_pg][j]);
        acc[q_kl][j] += w_d * static_cast<double>(f[q_kl][j]);
        acc[q_count][j] += static_cast<double>(f[q_kl][j]);
        acc[q_ratio][j] += static_cast<double>(f[q_ratio][j]);
        acc[q_log_ratio][j] += static_cast<double>(f[q_log_ratio][j]);
      }
    }
  }
  for (std::size_t j = 0; j < loss_lanes; ++j) {
    s.pg += acc[q_pg][j];
    s.kl += acc[q_kl][j];
    s.kl_plain += acc[q_count][j];
    s.ratio += acc[q_ratio][j];
    s.log_ratio += acc[q_log_ratio][j];
  }
  s.low = static_cast<double>(low);
  s.high = static_cast<double>(high);
  s.dual = static_cast<double>(dual);
  s.ratio = token_ratio ? s.ratio + static_cast<double>(s.valid_tokens) : gspo_ratio_sum;
  return s;
}

template <policy_loss_kind K, class T>
policy_loss_sums loss_pass_kl(const policy_loss_arrays<T>& in, T* grad, const hir::detail::policy_token_params<T>& p,
                              const policy_loss_options& opt, double normalizer) {
  using hir::detail::kl_family;
  switch (hir::detail::kl_family_of(opt.kl)) {
  case kl_family::none:
    return loss_pass<K, kl_family::none>(in, grad, p, opt, normalizer);
  case kl_family::polynomial:
    return loss_pass<K, kl_family::polynomial>(in, grad, p, opt, normalizer);
  case kl_family::k3:
    return loss_pass<K, kl_family::k3>(in, grad, p, opt, normalizer);
  case kl_family::k3_st:
    break;
  }
  return loss_pass<K, kl_family::k3_st>(in, grad, p, opt, normalizer);
}

template <bool HasOld, bool HasRef, class T>
policy_loss_counts check_and_count_adv(const char* fn, const policy_loss_arrays<T>& in) {
  return in.token_adv ? check_and_count<HasOld, HasRef, true>(fn, in) : check_and_count<HasOld, HasRef, false>(fn, in);
}

} // namespace detail

template <class T>
policy_loss_result policy_loss_impl(tag_t const&, token_batch_ref<T, host_space> tokens,
                                    span<const T, host_space> advantages, span<T, host_space> grad_logp,
                                    policy_loss_options const& opt) {
  constexpr const char* fn = "policy_loss";
  const std::size_t n = tokens.batch * tokens.length;
  const detail::policy_loss_arrays<T> in = hir::detail::make_policy_loss_arrays(tokens, advantages, opt);
  if (n == 0)
    return {};

  // Counts needed before the weights: pass 1 gives them (and validates); fused mode counts the mask if needed.
  detail::policy_loss_counts counts;
  const bool fused = opt.validation == input_validation::fused;
  if (!fused) {
    const bool has_ref = in.ref != nullptr;
    counts = in.has_old ? (has_ref ? detail::check_and_count_adv<true, true>(fn, in)
                                   : detail::check_and_count_adv<true, false>(fn, in))
                        : (has_ref ? detail::check_and_count_adv<false, true>(fn, in)
                                   : detail::check_and_count_adv<false, false>(fn, in));
  } else if (opt.normalizer == 0.0 && opt.aggregation != loss_aggregation::seq_sum_constant) {
    counts = detail::count_mask(in.mask, in.batch, in.length);
  }
  const double normalizer =
      hir::detail::policy_loss_normalizer(opt, counts.valid_tokens, counts.valid_sequences, tokens.length);

  const auto p = hir::detail::make_policy_token_params<T>(opt);
  T* grad = grad_logp.data();
  detail::policy_loss_sums s;
  switch (opt.kind) {
  case policy_loss_kind::ppo_clip:
    s = detail::loss_pass_kl<policy_loss_kind::ppo_clip>(in, grad, p, opt, normalizer);
    break;
  case policy_loss_kind::gspo:
    s = detail::loss_pass_kl<policy_loss_kind::gspo>(in, grad, p, opt, normalizer);
    break;
  case policy_loss_kind::cispo:
    s = detail::loss_pass_kl<policy_loss_kind::cispo>(in, grad, p, opt, normalizer);
    break;
  case policy_loss_kind::reinforce:
    s = detail::loss_pass_kl<policy_loss_kind::reinforce>(in, grad, p, opt, normalizer);
    break;
  }
  if (fused) {
    // Any non-finite input at a valid position made a sum non-finite (finite inputs can also overflow a sum:
    // then the scan finds nothing and the result stands).
    const double check = s.pg + s.kl_plain + s.log_ratio + s.ratio;
    if (s.mask_above_one || !std::isfinite(check)) {
      try {
        detail::throw_first_invalid(fn, in);
      } catch (...) {
        std::fill(grad, grad + n, T(0));
        throw;
      }
    }
  }

  return hir::detail::make_policy_loss_result(opt, s, s.valid_tokens, s.valid_sequences, normalizer);
}

} // namespace cpu
} // namespace backend
} // namespace hir
