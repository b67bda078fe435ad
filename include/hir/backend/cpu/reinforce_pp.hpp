// SPDX-License-Identifier: Apache-2.0
// CPU implementation of reinforce_pp_advantages. Rows are processed in blocks of 8 so that the backward return
// recursions of 8 rows run interleaved (independent dependency chains); per block a row-major scratch holds the token
// rewards r_t (double) and the carry factors c_t = γ·m_{t+1}. Two passes over the inputs, nothing written before the
// second: (1) validation (mask entries, finite scores and log-probs, non-empty rows) and whitening statistics
// (per-row shifted sums in double, merged across rows in order with Chan's pairwise formula), (2) the output.
// Scratch: 2·8·L doubles, plus B doubles for the group baselines.
#pragma once

#include <hir/advantages/reinforce_pp.hpp>
#include <hir/backend/cpu/group_advantages.hpp>
#include <hir/backend/cpu/simd.hpp>
#include <hir/backend/cpu/tag.hpp>
#include <hir/detail/group_kernels.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace hir {
namespace backend {
namespace cpu {
namespace detail {

/// Count, mean and sum of squared deviations of a set of values, mergeable (Chan, Golub, LeVeque 1979).
struct moments {
  double count = 0.0, mean = 0.0, m2 = 0.0;
  void merge(double n, double mu, double m2_other) {
    if (n == 0.0)
      return;
    const double total = count + n, delta = mu - mean;
    mean += delta * (n / total);
    m2 += m2_other + delta * delta * (count * n / total);
    count = total;
  }
};

inline constexpr std::size_t reinforce_rows = 8; ///< rows per block

/// True if some x[t] with m[t] ≠ 0 is not finite (exponent bits all ones), branch-free so that it vectorizes.
template <class T>
bool any_non_finite_at_valid(const std::uint8_t* m, const T* x, std::size_t length) {
  using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  constexpr U exponent = sizeof(T) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  U bad = 0;
  for (std::size_t t = 0; t < length; ++t) {
    U u;
    std::memcpy(&u, x + t, sizeof(U));
    bad |= static_cast<U>((u & exponent) == exponent) & static_cast<U>(m[t] != 0);
  }
  return bad != 0;
}

/// Token rewards of one row into r[0, L) and carry factors into c[0, L): r_t = (terminal·[t = last] − β·k_t)·m_t,
/// c_t = γ·m_{t+1} (0 at t = L − 1), so that G_t = r_t + c_t·G_{t+1} is verl's recursion (the running return is
/// multiplied by the mask after each step). Returns the last valid position (L if none).
template <class T>
std::size_t reinforce_row_rewards(const std::uint8_t* m, const T* old_lp, const T* ref_lp, std::size_t length,
                                  double terminal, bool kl, const reinforce_pp_options& o, double* r, double* c) {
  if (kl && o.kl == kl_estimator::k1 && !o.kl_clamp_every_estimator) { // the common case
    // A bitwise select on unconditional loads, so that the loop vectorizes (GCC does not if-convert FP arithmetic
    // under -ftrapping-math); padding values that are not finite are discarded, never multiplied by 0.
    const double beta = o.kl_coef;
    for (std::size_t t = 0; t < length; ++t) {
      const double v = -beta * (static_cast<double>(old_lp[t]) - static_cast<double>(ref_lp[t]));
      std::uint64_t u;
      std::memcpy(&u, &v, sizeof u);
      u &= ~std::uint64_t(0) * static_cast<std::uint64_t>(m[t] != 0);
      std::memcpy(r + t, &u, sizeof u);
    }
  } else if (kl) {
    for (std::size_t t = 0; t < length; ++t)
      r[t] = m[t] ? hir::detail::reinforce_kl_reward(old_lp[t], ref_lp[t], o) : 0.0;
  } else {
    for (std::size_t t = 0; t < length; ++t)
      r[t] = 0.0;
  }
  for (std::size_t t = 0; t + 1 < length; ++t)
    c[t] = o.gamma * static_cast<double>(m[t + 1]); // m ∈ {0, 1} (validated)
  if (length > 0)
    c[length - 1] = 0.0;
  std::size_t last = 0, any = 0; // the last valid position, by a vectorizable max
  for (std::size_t t = 0; t < length; ++t) {
    const std::size_t v = m[t] ? t : 0;
    last = v > last ? v : last;
    any |= m[t];
  }
  if (!any)
    return length;
  r[last] += terminal;
  return last;
}

/// Runs the backward recursions of 8 rows whose rewards and carries are r[j·L + t], c[j·L + t] (8 independent
/// dependency chains) and overwrites r with the returns G_t.
inline void reinforce_sweep(double* r, const double* c, std::size_t length) {
  double g[reinforce_rows] = {};
  for (std::size_t t = length; t-- > 0;)
    for (std::size_t j = 0; j < reinforce_rows; ++j) {
      g[j] = r[j * length + t] + c[j * length + t] * g[j];
      r[j * length + t] = g[j];
    }
}

/// Σ m_t (G_t − K) and Σ m_t (G_t − K)² over one row of returns (finite everywhere), with 8 interleaved partial sums
/// combined in a fixed order (deterministic; vectorizes without reassociating).
template <class M>
void reinforce_row_sums(const M* m, const double* g, std::size_t length, double shift, double& s1, double& s2) {
  double a[8] = {}, b[8] = {};
  std::size_t t = 0;
  for (; t + 8 <= length; t += 8)
    for (std::size_t k = 0; k < 8; ++k) {
      const double d = (g[t + k] - shift) * static_cast<double>(m[t + k]);
      a[k] += d;
      b[k] += d * d;
    }
  for (; t < length; ++t) {
    const double d = (g[t] - shift) * static_cast<double>(m[t]);
    a[0] += d;
    b[0] += d * d;
  }
  s1 = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
  s2 = ((b[0] + b[4]) + (b[2] + b[6])) + ((b[1] + b[5]) + (b[3] + b[7]));
}

#if HIR_CPU_AVX512
/// Positions t … t + 7 of a row of `length` that lie inside it, as a lane mask.
inline __mmask8 reinforce_lanes8(std::size_t length, std::size_t t) {
  return t >= length ? __mmask8(0) : length - t >= 8 ? __mmask8(0xFF) : __mmask8((1u << (length - t)) - 1u);
}

/// Σ of the 8 lanes in the order of GCC's _mm512_reduce_add_pd (written out: its "undefined" operands trip
/// -Wmaybe-uninitialized, GCC bug 105593, when the caller is not itself compiled for AVX-512).
HIR_CPU_AVX512_FN inline double reinforce_sum8(__m512d v) {
  alignas(64) double l[8];
  _mm512_store_pd(l, v);
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

/// The returns of one row of float log-probs, 8 positions (one zmm of doubles) at a time from its last valid
/// position down to 0, without scratch: in each chunk the recursion G_t = r_t + c_t·G_{t+1} is a composition of
/// affine maps, scanned in three steps (lane j composes with lanes j + 1, j + 2, j + 4: A ← A + B·A', B ← B·B'), then
/// G = A + B·G_next with G_next the return at the chunk's upper end. r_t = −β·(old − ref)·m_t (k1 in the reward, or
/// none), plus `terminal` at `last`; c_t = γ·m_{t+1}. Calls emit(t0, lanes, valid, G) for every chunk from the top:
/// positions t0 … t0 + 7 (`lanes` of them inside the row), `valid` the mask bits, G the returns (0 above `last`).
/// The inputs must have been validated (finite where valid, mask in {0, 1}). Emit is a function object whose call
/// operator carries HIR_CPU_AVX512_FN (not a lambda: see simd.hpp).
template <class Emit>
HIR_CPU_AVX512_FN __attribute__((always_inline)) inline void
reinforce_row_avx512(const std::uint8_t* m, const float* old_lp, const float* ref_lp, std::size_t length,
                     std::size_t last, double terminal, double beta, double gamma, bool kl, Emit& emit) {
  const __m512d zero = _mm512_setzero_pd(), one = _mm512_set1_pd(1.0), neg_beta = _mm512_set1_pd(-beta);
  const __m512d gam = _mm512_set1_pd(gamma), term = _mm512_set1_pd(terminal);
  const std::size_t top = (length - 1) / 8 * 8, last_chunk = last / 8 * 8;
  for (std::size_t t0 = top; t0 > last_chunk; t0 -= 8) // above the last valid position: G = 0
    emit(t0, reinforce_lanes8(length, t0), __mmask8(0), zero);
  __m512d carry = zero; // G at the upper end of the chunk
  for (std::size_t t0 = last_chunk + 8; t0 > 0;) {
    t0 -= 8;
    const __mmask8 in_row = reinforce_lanes8(length, t0), next_in_row = reinforce_lanes8(length, t0 + 1);
    const __m128i mv = _mm_maskz_loadu_epi8(in_row, m + t0), mn = _mm_maskz_loadu_epi8(next_in_row, m + t0 + 1);
    const __mmask8 valid = static_cast<__mmask8>(_mm_test_epi8_mask(mv, mv));
    const __mmask8 next_valid = static_cast<__mmask8>(_mm_test_epi8_mask(mn, mn));
    __m512d a = zero;
    if (kl) {
      const __m512d o = _mm512_maskz_cvtps_pd(0xFF, _mm256_maskz_loadu_ps(in_row, old_lp + t0));
      const __m512d r = _mm512_maskz_cvtps_pd(0xFF, _mm256_maskz_loadu_ps(in_row, ref_lp + t0));
      a = _mm512_maskz_mul_pd(valid, neg_beta, _mm512_sub_pd(o, r));
    }
    if (t0 == last_chunk)
      a = _mm512_mask_add_pd(a, static_cast<__mmask8>(1u << (last - t0)), a, term);
    __m512d b = _mm512_maskz_mov_pd(next_valid, gam);
    __m512d as =
        _mm512_castsi512_pd(_mm512_maskz_alignr_epi64(0xFF, _mm512_castpd_si512(zero), _mm512_castpd_si512(a), 1));
    __m512d bs =
        _mm512_castsi512_pd(_mm512_maskz_alignr_epi64(0xFF, _mm512_castpd_si512(one), _mm512_castpd_si512(b), 1));
    a = _mm512_fmadd_pd(b, as, a);
    b = _mm512_mul_pd(b, bs);
    as = _mm512_castsi512_pd(_mm512_maskz_alignr_epi64(0xFF, _mm512_castpd_si512(zero), _mm512_castpd_si512(a), 2));
    bs = _mm512_castsi512_pd(_mm512_maskz_alignr_epi64(0xFF, _mm512_castpd_si512(one), _mm512_castpd_si512(b), 2));
    a = _mm512_fmadd_pd(b, as, a);
    b = _mm512_mul_pd(b, bs);
    as = _mm512_castsi512_pd(_mm512_maskz_alignr_epi64(0xFF, _mm512_castpd_si512(zero), _mm512_castpd_si512(a), 4));
    bs = _mm512_castsi512_pd(_mm512_maskz_alignr_epi64(0xFF, _mm512_castpd_si512(one), _mm512_castpd_si512(b), 4));
    a = _mm512_fmadd_pd(b, as, a);
    b = _mm512_mul_pd(b, bs);
    const __m512d g = _mm512_fmadd_pd(b, carry, a);
    emit(t0, in_row, valid, g);
    carry = _mm512_maskz_permutexvar_pd(0xFF, _mm512_setzero_si512(), g); // G_{t0}, for the chunk below
  }
}

/// Whitening statistics of one row's returns: s1 = Σ (G_t − shift), s2 = Σ (G_t − shift)² over its valid positions
/// (8 lanes of double partial sums, reduced in a fixed order).
struct reinforce_stats_emit {
  __m512d sh, s1v, s2v;
  HIR_CPU_AVX512_FN __attribute__((always_inline)) inline void operator()(std::size_t, __mmask8, __mmask8 valid,
                                                                          __m512d g) {
    const __m512d d = _mm512_sub_pd(g, sh);
    s1v = _mm512_mask_add_pd(s1v, valid, s1v, d);
    s2v = _mm512_mask3_fmadd_pd(d, d, s2v, valid);
  }
};
HIR_CPU_AVX512_FN inline void reinforce_row_stats_avx512(const std::uint8_t* m, const float* old_lp,
                                                         const float* ref_lp, std::size_t length, std::size_t last,
                                                         double terminal, double beta, double gamma, bool kl,
                                                         double shift, double& s1, double& s2) {
  reinforce_stats_emit e{_mm512_set1_pd(shift), _mm512_setzero_pd(), _mm512_setzero_pd()};
  reinforce_row_avx512(m, old_lp, ref_lp, length, last, terminal, beta, gamma, kl, e);
  s1 = reinforce_sum8(e.s1v);
  s2 = reinforce_sum8(e.s2v);
}

/// The whitened returns of one row into y: (G − center)·scale + add at valid positions (+0 turns −0 into +0, as the
/// scalar path does), 0 elsewhere.
struct reinforce_write_emit {
  __m512d cv, sv, av;
  float* y;
  HIR_CPU_AVX512_FN __attribute__((always_inline)) inline void operator()(std::size_t t0, __mmask8 in_row,
                                                                          __mmask8 valid, __m512d g) {
    const __m512d w = _mm512_add_pd(_mm512_fmadd_pd(_mm512_sub_pd(g, cv), sv, av), _mm512_setzero_pd());
    _mm256_mask_storeu_ps(y + t0, in_row, _mm512_maskz_cvtpd_ps(valid, w));
  }
};
HIR_CPU_AVX512_FN inline void reinforce_row_write_avx512(const std::uint8_t* m, const float* old_lp,
                                                         const float* ref_lp, std::size_t length, std::size_t last,
                                                         double terminal, double beta, double gamma, bool kl,
                                                         double center, double scale, double add, float* y) {
  reinforce_write_emit e{_mm512_set1_pd(center), _mm512_set1_pd(scale), _mm512_set1_pd(add), y};
  reinforce_row_avx512(m, old_lp, ref_lp, length, last, terminal, beta, gamma, kl, e);
}

/// Σ_t m_t·(−β)·(old_t − ref_t) over one row of float log-probs (8 lanes of double partial sums, reduced in a fixed
/// order); masked positions are ignored whatever they hold.
HIR_CPU_AVX512_FN inline double reinforce_row_k1_sum_avx512(const std::uint8_t* m, const float* old_lp,
                                                            const float* ref_lp, std::size_t length, double beta) {
  __m512d acc = _mm512_setzero_pd();
  const __m512d neg_beta = _mm512_set1_pd(-beta);
  for (std::size_t t0 = 0; t0 < length; t0 += 8) {
    const __mmask8 in_row = length - t0 >= 8 ? __mmask8(0xFF) : __mmask8((1u << (length - t0)) - 1u);
    const __m128i mv = _mm_maskz_loadu_epi8(in_row, m + t0);
    const __mmask8 valid = static_cast<__mmask8>(_mm_test_epi8_mask(mv, mv));
    const __m512d d = _mm512_sub_pd(_mm512_maskz_cvtps_pd(0xFF, _mm256_maskz_loadu_ps(in_row, old_lp + t0)),
                                    _mm512_maskz_cvtps_pd(0xFF, _mm256_maskz_loadu_ps(in_row, ref_lp + t0)));
    acc = _mm512_mask3_fmadd_pd(neg_beta, d, acc, valid);
  }
  return reinforce_sum8(acc);
}

/// y[t] = m_t ? a : 0 over one row.
HIR_CPU_AVX512_FN inline void reinforce_row_fill_avx512(const std::uint8_t* m, float a, std::size_t length, float* y) {
  const __m512 av = _mm512_set1_ps(a);
  for (std::size_t t0 = 0; t0 < length; t0 += 16) {
    const __mmask16 in_row = length - t0 >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (length - t0)) - 1u);
    const __m128i mv = _mm_maskz_loadu_epi8(in_row, m + t0);
    _mm512_mask_storeu_ps(y + t0, in_row, _mm512_maskz_mov_ps(_mm_test_epi8_mask(mv, mv), av));
  }
}
#endif

} // namespace detail

template <class T>
void reinforce_pp_advantages_impl(tag_t const&, span<const T, host_space> scores, token_batch_ref<T, host_space> tb,
                                  group_ref<host_space> groups, span<T, host_space> out,
                                  reinforce_pp_options const& o) {
  constexpr const char* fn = "reinforce_pp_advantages";
  constexpr std::size_t R = detail::reinforce_rows;
  const std::size_t B = tb.batch, L = tb.length;
  if (B == 0)
    return;
  const bool kl = o.kl_coef > 0.0 && o.kl != kl_estimator::none;
  const std::uint8_t* mask = tb.mask.data();
  const T* old_lp = kl ? tb.old_logp.data() : nullptr;
  const T* ref_lp = kl ? tb.ref_logp.data() : nullptr;

  // Scores and group sizes first (the group baselines need every score).
  for (std::size_t i = 0; i < B; ++i)
    if (!std::isfinite(static_cast<double>(scores[i])))
      hir::detail::fail(fn, "scores[", i, "] = ", scores[i], " is not finite");
  const bool grouped = o.baseline != reinforce_baseline::none;
  if (grouped && o.singleton == singleton_policy::error)
    for (std::size_t g = 0; g < groups.num_groups; ++g)
      if (groups.size(g) == 1)
        hir::detail::fail(fn, "group ", g, " (row ", groups.sample(groups.begin(g)),
                          ") has one row and singleton_policy::error is set");
  const bool tiled = o.baseline == reinforce_baseline::group_mean_of_return;
  // Per-row value: the terminal reward (none, group_mean_of_score) or the tiled a_i (group_mean_of_return, filled
  // after pass 1 from the row sums of r).
  std::vector<double> row_value(B);
  for (std::size_t i = 0; i < B; ++i)
    row_value[i] = static_cast<double>(scores[i]);
  auto subtract_group_means = [&] {
    for (std::size_t g = 0; g < groups.num_groups; ++g)
      hir::detail::reinforce_subtract_group_mean(groups, g, row_value.data(), o.singleton);
  };
  if (o.baseline == reinforce_baseline::group_mean_of_score)
    subtract_group_means();

  // Validates row i (mask entries, a valid token, finite log-probs where valid); returns its valid tokens.
  auto validate_row = [&](std::size_t i) {
    const std::uint8_t* m = mask + i * L;
    std::size_t n = 0;
    std::uint8_t bad = 0;
    for (std::size_t t = 0; t < L; ++t) {
      n += m[t];
      bad |= static_cast<std::uint8_t>(m[t] & 0xFE);
    }
    if (bad)
      for (std::size_t t = 0; t < L; ++t)
        if (m[t] > 1)
          hir::detail::fail(fn, "mask[", i, ", ", t, "] = ", static_cast<int>(m[t]), " is neither 0 nor 1");
    if (n == 0)
      hir::detail::fail(fn, "row ", i,
                        " has no valid token (its mask is all 0); drop empty responses or keep "
                        "their end-of-sequence token");
    if (kl && (detail::any_non_finite_at_valid(m, old_lp + i * L, L) ||
               detail::any_non_finite_at_valid(m, ref_lp + i * L, L)))
      for (std::size_t t = 0; t < L; ++t) {
        if (!m[t])
          continue;
        if (!std::isfinite(static_cast<double>(old_lp[i * L + t])))
          hir::detail::fail(fn, "old_logp[", i, ", ", t, "] = ", old_lp[i * L + t], " is not finite");
        if (!std::isfinite(static_cast<double>(ref_lp[i * L + t])))
          hir::detail::fail(fn, "ref_logp[", i, ", ", t, "] = ", ref_lp[i * L + t], " is not finite");
      }
    return n;
  };
  const bool scaled = o.whiten == whitening::standard || o.whiten == whitening::keep_mean;
  // whiten(a) = (a − center)·scale + add: standard (μ, r, 0), center_only (μ, 1, 0), keep_mean (μ, r, μ), none.
  auto whitening_of = [&](const detail::moments& all, std::size_t total_valid, double& center, double& scale,
                          double& add) {
    if (scaled && o.std == std_kind::unbiased && total_valid < 2)
      hir::detail::fail(fn, "whitening with unbiased variance needs at least 2 valid tokens in the batch (it has ",
                        total_valid, ")");
    center = 0.0;
    scale = 1.0;
    if (o.whiten != whitening::none) {
      center = all.mean;
      if (scaled)
        scale = hir::detail::reinforce_whiten_scale(
            all.m2 / (o.std == std_kind::unbiased ? all.count - 1.0 : all.count), o);
    }
    add = o.whiten == whitening::keep_mean ? center : 0.0;
  };

#if HIR_CPU_AVX512
  // Float log-probs with k1 in the reward (or no KL), on a CPU with AVX-512: vectorized row kernels, row by row, two
  // passes (validation and statistics, then the output), no scratch: per-token returns by reinforce_row_avx512, or
  // (group mean of the return) one masked sum per row.
  if constexpr (std::is_same_v<T, float>) {
    const bool fast = detail::cpu_has_avx512() && (!kl || (o.kl == kl_estimator::k1 && !o.kl_clamp_every_estimator));
    if (tiled && fast) { // one value per row: a_i = score_i − β Σ_t k_t m_t − group mean, tiled over the row
      detail::moments all;
      std::size_t total_valid = 0;
      std::vector<double> count(B);
      for (std::size_t i = 0; i < B; ++i) {
        count[i] = static_cast<double>(validate_row(i));
        total_valid += static_cast<std::size_t>(count[i]);
        if (kl)
          row_value[i] +=
              detail::reinforce_row_k1_sum_avx512(mask + i * L, old_lp + i * L, ref_lp + i * L, L, o.kl_coef);
      }
      subtract_group_means();
      if (o.whiten != whitening::none)
        for (std::size_t i = 0; i < B; ++i)
          all.merge(count[i], row_value[i], 0.0);
      double center, scale, add;
      whitening_of(all, total_valid, center, scale, add);
      for (std::size_t i = 0; i < B; ++i)
        detail::reinforce_row_fill_avx512(mask + i * L, static_cast<float>((row_value[i] - center) * scale + add + 0.0),
                                          L, out.data() + i * L);
      return;
    }
    if (!tiled && fast) {
      const auto last_valid = [&](std::size_t i) {
        const std::uint8_t* m = mask + i * L;
        std::size_t t = L - 1;
        while (!m[t])
          --t; // a valid token exists (validated)
        return t;
      };
      detail::moments all;
      std::size_t total_valid = 0;
      for (std::size_t i = 0; i < B; ++i) {
        const std::size_t n = validate_row(i);
        total_valid += n;
        if (o.whiten == whitening::none)
          continue;
        const std::size_t last = last_valid(i);
        const double shift = // G at the last valid position (its sums about it lose at most log2(2L) bits)
            (kl ? -o.kl_coef * (static_cast<double>(old_lp[i * L + last]) - static_cast<double>(ref_lp[i * L + last]))
                : 0.0) +
            row_value[i];
        double s1 = 0.0, s2 = 0.0;
        detail::reinforce_row_stats_avx512(mask + i * L, kl ? old_lp + i * L : nullptr, kl ? ref_lp + i * L : nullptr,
                                           L, last, row_value[i], o.kl_coef, o.gamma, kl, shift, s1, s2);
        const double nn = static_cast<double>(n);
        const double m2 = s2 - s1 * s1 / nn;
        all.merge(nn, shift + s1 / nn, m2 > 0.0 ? m2 : 0.0);
      }
      double center, scale, add;
      whitening_of(all, total_valid, center, scale, add);
      for (std::size_t i = 0; i < B; ++i)
        detail::reinforce_row_write_avx512(mask + i * L, kl ? old_lp + i * L : nullptr, kl ? ref_lp + i * L : nullptr,
                                           L, last_valid(i), row_value[i], o.kl_coef, o.gamma, kl, center, scale, add,
                                           out.data() + i * L);
      return;
    }
  }
#endif

  std::vector<double> work(2 * R * L);
  double* r = work.data();
  double* c = work.data() + R * L;
  std::size_t last[R];
  // Fills the rewards and carries of rows [i0, i0 + rows); with `check`, validates them first.
  auto fill = [&](std::size_t i0, std::size_t rows, bool check, std::size_t* valid) {
    for (std::size_t j = rows; j < R; ++j) // padding rows: no tokens, G = 0
      for (std::size_t t = 0; t < L; ++t)
        r[j * L + t] = c[j * L + t] = 0.0;
    for (std::size_t j = 0; j < rows; ++j) {
      const std::size_t i = i0 + j;
      const std::uint8_t* m = mask + i * L;
      if (check)
        valid[j] = validate_row(i);
      last[j] = detail::reinforce_row_rewards(m, kl ? old_lp + i * L : nullptr, kl ? ref_lp + i * L : nullptr, L,
                                              tiled ? 0.0 : row_value[i], kl, o, r + j * L, c + j * L);
    }
  };

  // (1) Validation and statistics. Whitening statistics of the returns (per-row sums about the row's last return,
  // which lies inside the row's range, so the one-pass variance loses at most log2(2L) bits), or, for the tiled
  // baseline, the row sums Σ_t r_t that make a_i.
  detail::moments all;
  std::size_t total_valid = 0;
  std::vector<double> row_count(tiled ? B : 0);
  for (std::size_t i0 = 0; i0 < B; i0 += R) {
    const std::size_t rows = B - i0 < R ? B - i0 : R;
    std::size_t valid[R];
    fill(i0, rows, true, valid);
    for (std::size_t j = 0; j < rows; ++j)
      total_valid += valid[j];
    if (tiled) {
      for (std::size_t j = 0; j < rows; ++j) {
        double s = 0.0; // score − β Σ k_t m_t, verl's token_level_rewards.sum(-1)
        for (std::size_t t = 0; t < L; ++t)
          s += r[j * L + t];
        row_value[i0 + j] += s;
        row_count[i0 + j] = static_cast<double>(valid[j]);
      }
      continue;
    }
    if (o.whiten == whitening::none)
      continue;
    detail::reinforce_sweep(r, c, L);
    for (std::size_t j = 0; j < rows; ++j) {
      // Sums about the row's last return (G = r there), which lies inside the row's range: the one-pass variance
      // then loses at most log2(2L) bits.
      const double n = static_cast<double>(valid[j]), shift = r[j * L + last[j]];
      double s1 = 0.0, s2 = 0.0;
      detail::reinforce_row_sums(mask + (i0 + j) * L, r + j * L, L, shift, s1, s2);
      const double m2 = s2 - s1 * s1 / n;
      all.merge(n, shift + s1 / n, m2 > 0.0 ? m2 : 0.0);
    }
  }
  if (tiled) {
    subtract_group_means();
    if (o.whiten != whitening::none)
      for (std::size_t i = 0; i < B; ++i)
        all.merge(row_count[i], row_value[i], 0.0);
  }
  double center, scale, add;
  whitening_of(all, total_valid, center, scale, add);
  auto whiten = [&](double a) { return (a - center) * scale + add; };

  // (2) Output: 0 at masked positions.
  if (tiled) {
    for (std::size_t i = 0; i < B; ++i) {
      const T a = static_cast<T>(whiten(row_value[i]));
      const std::uint8_t* m = mask + i * L;
      T* y = out.data() + i * L;
      for (std::size_t t = 0; t < L; ++t)
        y[t] = m[t] ? a : T(0);
    }
    return;
  }
  for (std::size_t i0 = 0; i0 < B; i0 += R) {
    const std::size_t rows = B - i0 < R ? B - i0 : R;
    fill(i0, rows, false, nullptr);
    detail::reinforce_sweep(r, c, L);
    for (std::size_t j = 0; j < rows; ++j) {
      const std::uint8_t* m = mask + (i0 + j) * L;
      const double* g = r + j * L;
      T* y = out.data() + (i0 + j) * L;
      for (std::size_t t = 0; t < L; ++t) // G is finite everywhere: · m selects; + 0.0 turns −0 into +0
        y[t] = static_cast<T>(whiten(g[t]) * static_cast<double>(m[t]) + 0.0);
    }
  }
}

} // namespace cpu
} // namespace backend
} // namespace hir
