// SPDX-License-Identifier: Apache-2.0
// AVX-512 token loop of the CPU policy_loss for its most used case: float arrays, PPO clip (with or without dual
// clip) and no KL term or the k3 estimator; and AVX-512 bodies of the mask-counting and validation passes. Same
// contract and the same per-token formulas as the portable loss_chunk_loop in policy_loss.hpp
// (hir::detail::policy_pg_token and kl_token), written with intrinsics because g++ spends ≈ 85 vector operations per
// 16 tokens on the portable loop at -march=native (1.5 ns per token; 5.1 for the default x86-64 target) while this one
// needs ≈ 61 as g++ compiles it (1.1 ns): the mask bytes become a lane mask directly (masked loads zero the masked
// positions), e^x rounds n with the 1.5·2^23 shift inside the FMA that scales x and builds 2^n with one shift, the clip
// flags are popcounts of compare masks, the gradient's selects are masked FMAs, and the non-finite checks of
// input_validation::fused are compiled only into the fused instantiation (validation before writing has already read
// every input). The functions carry their own target attribute, so they are compiled whatever -march says, and
// policy_loss takes them when cpu_has_avx512(). Results agree with the portable loop to float rounding (its
// FMAs and rounding of n differ), which tests/losses/test_policy_loss_paths.cpp checks.
#pragma once

#include <hir/backend/cpu/simd.hpp>
#include <hir/detail/policy_loss_kernels.hpp>
#include <hir/losses/policy_loss.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace hir {
namespace backend {
namespace cpu {
namespace detail {

/// Lanes and chunk of the token loop: 16 lanes of float partial sums, flushed into double every 256 tokens.
constexpr std::size_t loss_lanes = 16, loss_chunk = 256;
/// Float terms summed per token (into 16 lanes per chunk).
enum loss_sum_index { q_pg, q_kl, q_ratio, q_log_ratio, q_count };
/// Clip flags are summed exactly as one integer per chunk: low + 2^10·high + 2^20·dual (≤ 256 each per chunk).
constexpr std::int32_t code_high = 1 << 10, code_dual = 1 << 20;

/// Whether the AVX-512 token loop handles (K, F, T) (when cpu_has_avx512()).
template <policy_loss_kind K, hir::detail::kl_family F, class T>
inline constexpr bool policy_loss_avx512_v = HIR_CPU_AVX512 != 0 &&
                                             std::is_same_v<T, float>&& K == policy_loss_kind::ppo_clip &&
                                             (F == hir::detail::kl_family::none || F == hir::detail::kl_family::k3);

#if HIR_CPU_AVX512

/// Float operations on 16 lanes that the compiler may not contract into FMAs: GCC's _mm512_add_ps and friends
/// are C vector arithmetic, which -ffp-contract=fast (GCC's default) fuses differently in each instantiation, so
/// input_validation::fused and before_writing would round differently. The masked builtins (mask all ones, the plain
/// instruction) are never contracted; every FMA below is written out.
HIR_CPU_AVX512_FN inline __m512 add16(__m512 a, __m512 b) {
  return _mm512_maskz_add_ps(0xFFFF, a, b);
}
HIR_CPU_AVX512_FN inline __m512 sub16(__m512 a, __m512 b) {
  return _mm512_maskz_sub_ps(0xFFFF, a, b);
}
HIR_CPU_AVX512_FN inline __m512 mul16(__m512 a, __m512 b) {
  return _mm512_maskz_mul_ps(0xFFFF, a, b);
}
// min, max and the shift in their maskz_ forms too: the plain ones pass an "undefined" operand that trips GCC 12's
// -Wmaybe-uninitialized (GCC bug 105593).
/// min(a, b) per lane; b where a is NaN.
HIR_CPU_AVX512_FN inline __m512 min16(__m512 a, __m512 b) {
  return _mm512_maskz_min_ps(0xFFFF, a, b);
}
/// max(a, b) per lane; b where a is NaN.
HIR_CPU_AVX512_FN inline __m512 max16(__m512 a, __m512 b) {
  return _mm512_maskz_max_ps(0xFFFF, a, b);
}

/// hir::detail::exp_split_in_range on 16 lanes, x finite in [−87.3, 88.3]: e^x = s·(1 + r + r²·P(r)). n =
/// round(x·log2 e) comes from adding 1.5·2^23 + 127 (the sum's low mantissa bits are then n + 127, so s = 2^n is that
/// field shifted into the exponent).
struct exp_parts16 {
  __m512 s, n, r, r2, p; ///< 2^n, n, the reduced argument, r², P(r)
};
HIR_CPU_AVX512_FN inline exp_parts16 exp_parts_avx512(__m512 x) {
  const __m512 shift = _mm512_set1_ps(12583039.0f); // 1.5·2^23 + 127
  const __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), shift);
  const __m512 n = sub16(t, shift);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.390142832e-3f), r, _mm512_set1_ps(8.363486268e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.166685790e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.666657478e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  const __m512 s = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, _mm512_castps_si512(t), 23));
  return {s, n, r, mul16(r, r), p};
}
/// e^x (hir::detail::exp_in_range): s + s·(r + r²·P).
HIR_CPU_AVX512_FN inline __m512 exp_avx512(__m512 x) {
  const exp_parts16 e = exp_parts_avx512(x);
  return _mm512_fmadd_ps(e.s, _mm512_fmadd_ps(e.r2, e.p, e.r), e.s);
}

/// 16 tokens of the PPO-clip token loop with kl_family F ∈ {none, k3}, float: the per-chunk constants and the
/// lane sums of one loss_chunk_ppo_avx512 call.
template <hir::detail::kl_family F, bool NanCheck, bool TokenAdv>
struct ppo_block_avx512 {
  static constexpr bool has_kl = F == hir::detail::kl_family::k3;
  __m512 zero, one, c, neg_c, ratio_low, ratio_high, dual_clip, a_seq, ck, neg_ck, kl_max, beta, neg_w;
  __m512 s_pg, s_kl, s_ratio, s_lr;
  std::uint32_t low = 0, high = 0, dual = 0;

  HIR_CPU_AVX512_FN ppo_block_avx512(float a_row, float w, const hir::detail::policy_token_params<float>& p)
      : zero(_mm512_setzero_ps()), one(_mm512_set1_ps(1.0f)), c(_mm512_set1_ps(p.log_ratio_clamp)),
        neg_c(_mm512_set1_ps(-p.log_ratio_clamp)), ratio_low(_mm512_set1_ps(p.ratio_low)),
        ratio_high(_mm512_set1_ps(p.ratio_high)), dual_clip(_mm512_set1_ps(p.dual_clip)), a_seq(_mm512_set1_ps(a_row)),
        ck(_mm512_set1_ps(p.kl_log_ratio_clamp)), neg_ck(_mm512_set1_ps(-p.kl_log_ratio_clamp)),
        kl_max(_mm512_set1_ps(p.kl_value_clamp)), beta(_mm512_set1_ps(p.kl_coef)), neg_w(_mm512_set1_ps(-w)),
        s_pg(zero), s_kl(zero), s_ratio(zero), s_lr(zero) {}

  /// The 16 tokens at x, o, rf, adv, m, g (lanes outside `lanes` lie past the chunk: not read, not written).
  HIR_CPU_AVX512_FN __attribute__((always_inline)) inline void run(const float* x, const float* o, const float* rf,
                                                                   const float* adv, const std::uint8_t* m, float* g,
                                                                   __mmask16 lanes) {
    const __m128i mb = _mm_maskz_loadu_epi8(lanes, m);
    const __mmask16 valid = _mm_test_epi8_mask(mb, mb);
    const __m512 xv = _mm512_maskz_loadu_ps(valid, x), ov = _mm512_maskz_loadu_ps(valid, o);
    __m512 av;
    if constexpr (TokenAdv)
      av = _mm512_maskz_loadu_ps(valid, adv);
    else
      av = _mm512_maskz_mov_ps(valid, a_seq);
    // ℓ = x − o clamped to [−C, C]; ρ = e^ℓc; the gradient passes where the clamp is inactive
    const __m512 l = sub16(xv, ov);
    const __m512 lc = min16(max16(l, neg_c), c);
    const __mmask16 pass = _mm512_cmp_ps_mask(lc, l, _CMP_EQ_OQ);
    const __m512 rho = exp_avx512(lc);
    // PPO clip: A ≥ 0: q = min(ρ, 1 + ε_hi); A < 0: q = min(max(ρ, 1 − ε_lo), c); L = −A·q; ∂L/∂logp = −A·ρ where ρ
    // is inside the bounds
    const __mmask16 neg = _mm512_cmp_ps_mask(av, zero, _CMP_LT_OQ), pos = _mm512_cmp_ps_mask(av, zero, _CMP_GT_OQ);
    const __m512 lower = _mm512_mask_max_ps(rho, neg, rho, ratio_low); // max(ρ, 1 − ε_lo) where A < 0
    const __m512 q = min16(lower, _mm512_mask_blend_ps(neg, ratio_high, dual_clip));
    s_pg = _mm512_fnmadd_ps(av, q, s_pg);
    const __mmask16 unclipped = _mm512_mask_cmp_ps_mask(pass, q, rho, _CMP_EQ_OQ);
    __m512 a_rho = _mm512_maskz_mul_ps(unclipped, av, rho); // −∂L_pg/∂logp
    low += static_cast<std::uint32_t>(__builtin_popcount(_mm512_mask_cmp_ps_mask(neg, rho, ratio_low, _CMP_LT_OQ)));
    high += static_cast<std::uint32_t>(__builtin_popcount(_mm512_mask_cmp_ps_mask(pos, rho, ratio_high, _CMP_GT_OQ)));
    dual += static_cast<std::uint32_t>(__builtin_popcount(_mm512_mask_cmp_ps_mask(neg, rho, dual_clip, _CMP_GT_OQ)));
    s_ratio = add16(s_ratio, sub16(rho, one));
    s_lr = add16(s_lr, lc);
    if constexpr (has_kl) {
      // d = clamp(r − x, ±C_k); k3 = e^d − 1 − d (min V); ∂k3/∂logp = −(e^d − 1) where neither clamp is active
      const __m512 rv = _mm512_maskz_loadu_ps(valid, rf);
      const __m512 dr = sub16(rv, xv);
      const __m512 d = min16(max16(dr, neg_ck), ck);
      // hir::detail::exp_minus_one_k3: e^d − 1 = (s − 1) + s·q and e^d − 1 − d = head + (s − 1)·r + s·zp, with
      // zp = r²·P, q = r + zp and head = s − 1 − n·ln2
      const exp_parts16 k = exp_parts_avx512(d);
      const __m512 sm1 = sub16(k.s, one), zp = mul16(k.r2, k.p);
      __m512 head = _mm512_fnmadd_ps(k.n, _mm512_set1_ps(0.693359375f), sm1);
      head = _mm512_fnmadd_ps(k.n, _mm512_set1_ps(-2.12194440e-4f), head);
      const __m512 em1 = _mm512_fmadd_ps(k.s, add16(k.r, zp), sm1);
      const __m512 k3 = _mm512_fmadd_ps(k.s, zp, _mm512_fmadd_ps(sm1, k.r, head));
      s_kl = add16(s_kl, min16(k3, kl_max));
      const __mmask16 kl_pass = _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(d, dr, _CMP_EQ_OQ), k3, kl_max, _CMP_LE_OQ);
      a_rho = _mm512_mask3_fmadd_ps(em1, beta, a_rho, kl_pass); // −∂(L_pg + β·k3)/∂logp
      if constexpr (NanCheck)
        s_lr = _mm512_fmadd_ps(sub16(l, dr), zero, s_lr);
    } else if constexpr (NanCheck) {
      s_lr = _mm512_fmadd_ps(l, zero, s_lr);
    }
    _mm512_mask_storeu_ps(g, lanes, _mm512_maskz_mul_ps(valid, a_rho, neg_w));
  }
};

/// The token loop of one chunk (n ≤ loss_chunk tokens of one row) for PPO clip and kl_family F ∈ {none, k3}, float:
/// the contract of loss_chunk_loop, except that the mask is read as bytes (m) and per-sequence advantages come as
/// one value (TokenAdv false: a_row). NanCheck adds ℓ·0 (with k3: (ℓ − (r − x))·0) to the log-ratio lanes: NaN iff
/// logp, old_logp or ref_logp at a valid position is not finite (a non-finite advantage already makes L_pg's lanes
/// non-finite); input_validation::fused checks the sums after the pass.
template <hir::detail::kl_family F, bool NanCheck, bool TokenAdv>
HIR_CPU_AVX512_FN std::int32_t loss_chunk_ppo_avx512(const float* x, const float* o, const float* rf, const float* adv,
                                                     float a_row, const std::uint8_t* m, float* g, std::size_t n,
                                                     float w, const hir::detail::policy_token_params<float>& p,
                                                     float (*f)[16]) {
  ppo_block_avx512<F, NanCheck, TokenAdv> b(a_row, w, p);
  constexpr bool has_kl = F == hir::detail::kl_family::k3;
  std::size_t t = 0;
  for (; t + 16 <= n; t += 16)
    b.run(x + t, o + t, has_kl ? rf + t : nullptr, TokenAdv ? adv + t : nullptr, m + t, g + t, 0xFFFF);
  if (t < n)
    b.run(x + t, o + t, has_kl ? rf + t : nullptr, TokenAdv ? adv + t : nullptr, m + t, g + t,
          static_cast<__mmask16>((1u << (n - t)) - 1u));
  _mm512_storeu_ps(f[q_pg], b.s_pg);
  _mm512_storeu_ps(f[q_kl], b.s_kl);
  _mm512_storeu_ps(f[q_ratio], b.s_ratio);
  _mm512_storeu_ps(f[q_log_ratio], b.s_lr);
  return static_cast<std::int32_t>(b.low + b.high * code_high + b.dual * code_dual);
}

/// The vector part of count_row: valid tokens among the first n − n % 64 mask bytes (added to count) and whether one
/// of them is above 1 (ORed into big), 64 bytes per step (a test and a compare into mask registers, one popcount;
/// g++ widens the bytes to dwords for the plain loop: ≈ 3× the work). Returns the bytes consumed.
HIR_CPU_AVX512_FN inline std::size_t count_row_avx512(const std::uint8_t* m, std::size_t n, std::uint32_t& count,
                                                      std::uint32_t& big) {
  std::size_t t = 0;
  std::uint64_t c = 0, b = 0;
  for (; t + 64 <= n; t += 64) {
    const __m512i v = _mm512_loadu_si512(m + t);
    c += static_cast<std::uint64_t>(_mm_popcnt_u64(_mm512_test_epi8_mask(v, v)));
    b |= _mm512_cmpgt_epu8_mask(v, _mm512_set1_epi8(1));
  }
  count += static_cast<std::uint32_t>(c);
  big |= b != 0;
  return t;
}

/// Lanes of v[0, 16) in k that hold NaN or ±inf.
HIR_CPU_AVX512_FN inline __mmask16 non_finite16(__mmask16 k, const float* v) {
  return _mm512_mask_fpclass_ps_mask(k, _mm512_loadu_ps(v), 0x99); // QNaN | +inf | −inf | SNaN
}

/// The vector part of check_and_count for one row of float arrays (old, ref, adv may be null: not checked): 16
/// tokens per step, the mask bytes tested into a lane mask and each array classified (NaN or ±inf) in the valid
/// lanes, about 10 vector operations per 16 tokens, so the pass runs at read bandwidth. Adds the valid tokens to
/// count, ORs "a mask value above 1" into big and "a non-finite value at a valid position" into bad; returns the
/// tokens consumed (L − L % 16).
HIR_CPU_AVX512_FN inline std::size_t check_row_avx512(const float* x, const float* o, const float* r, const float* a,
                                                      const std::uint8_t* m, std::size_t L, std::uint32_t& count,
                                                      std::uint32_t& big, std::uint32_t& bad) {
  std::size_t t = 0;
  std::uint32_t c = 0;
  __mmask16 b = 0, nf = 0;
  for (; t + 16 <= L; t += 16) {
    const __m128i mb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(m + t));
    const __mmask16 valid = _mm_test_epi8_mask(mb, mb);
    b |= _mm_cmpgt_epu8_mask(mb, _mm_set1_epi8(1));
    c += static_cast<std::uint32_t>(_mm_popcnt_u32(valid));
    nf |= non_finite16(valid, x + t);
    if (o)
      nf |= non_finite16(valid, o + t);
    if (r)
      nf |= non_finite16(valid, r + t);
    if (a)
      nf |= non_finite16(valid, a + t);
  }
  count += c;
  big |= b != 0;
  bad |= nf != 0;
  return t;
}

#endif // HIR_CPU_AVX512

} // namespace detail
} // namespace cpu
} // namespace backend
} // namespace hir
