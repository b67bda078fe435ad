// SPDX-License-Identifier: Apache-2.0
// CPU implementation of group_advantages. Two passes: (1) validation of every score (finite) and group size
// (singleton policy) before anything is written, (2) the advantages. (detail::group_advantages_cpu also offers a
// fused validation, one read pass fewer, for the fast path below.) Pass 2 has two paths:
//
//   uniform fast path   float scores, contiguous groups of G ∈ {2, 4, 8, 16, 32}, a CPU with AVX-512 (simd.hpp: the
//                       code is compiled whatever -march says and chosen at run time): blocks of 8 groups are
//                       transposed in registers so that each double lane holds one group, then the shifted sums
//                       (pairwise in double), the scale (Newton-refined reciprocal square root and reciprocal, within
//                       2⁻²⁵ of factor/(sqrt(var) + ε)) and the baseline are computed for 8 groups at once, and the
//                       output is written in float from the scores in their own layout; three blocks are in flight at
//                       a time (software pipelining). Constant groups are exact zeros.
//   generic path        any layout and type: hir::detail::group_advantages_one per group (shared with the device
//                       backend), sequential sums in double.
//
// Compiled with OpenMP, inputs of at least 2^18 samples are split over the threads in chunks (dynamic schedule);
// each group is computed by one thread with the same arithmetic, so the result does not depend on the thread count.
// No heap allocation.
#pragma once

#include <hir/advantages/group_advantages.hpp>
#include <hir/backend/cpu/simd.hpp>
#include <hir/backend/cpu/tag.hpp>
#include <hir/core/validation.hpp>
#include <hir/detail/group_kernels.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

namespace hir {
namespace backend {
namespace cpu {
namespace detail {

/// Inputs of at least this many samples are split over OpenMP threads (when compiled with OpenMP).
inline constexpr std::size_t group_advantages_parallel_min = std::size_t(1) << 18;
/// Samples per OpenMP work chunk (a multiple of 8·32, so chunks hold whole blocks of 8 groups for every G).
inline constexpr std::size_t group_advantages_chunk = std::size_t(1) << 15;

#if HIR_CPU_AVX512
/// The largest |x| bit pattern of x[0, n − n % 16) into hi (max of hi and it), 16 floats per step; returns the floats
/// consumed. (At the default x86-64 target the plain loop below is SSE2 and about 2.5× slower.)
HIR_CPU_AVX512_FN inline std::size_t max_abs_bits_avx512(const float* x, std::size_t n, std::uint32_t& hi) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
  __m512i m = _mm512_setzero_si512();
  std::size_t i = 0;
  for (; i + 16 <= n; i += 16)
    m = _mm512_maskz_max_epu32(0xFFFF, m, _mm512_and_si512(_mm512_loadu_si512(x + i), abs_mask)); // GCC bug 105593
  alignas(64) std::uint32_t lanes[16];
  _mm512_store_si512(lanes, m);
  for (const std::uint32_t v : lanes)
    hi = v > hi ? v : hi;
  return i;
}
#endif

/// Index of the first non-finite value of x[begin, end), or -1. Tests the exponent bits with integer operations,
/// a block at a time, so it vectorizes and runs at read bandwidth.
template <class T>
long long first_non_finite(const T* x, std::size_t begin, std::size_t end) {
  using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  constexpr U abs_mask = static_cast<U>(~U(0) >> 1);
  constexpr U inf_bits = sizeof(T) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  constexpr std::size_t block = 2048;
  for (std::size_t start = begin; start < end; start += block) {
    const std::size_t stop = std::min(end, start + block);
    U hi = 0;
    std::size_t i = start;
#if HIR_CPU_AVX512
    if constexpr (std::is_same_v<T, float>)
      if (cpu_has_avx512())
        i += max_abs_bits_avx512(x + start, stop - start, hi);
#endif
    for (; i < stop; ++i) {
      U u;
      std::memcpy(&u, x + i, sizeof(U));
      u &= abs_mask;
      hi = u > hi ? u : hi;
    }
    if (hi >= inf_bits) // some |x| is inf or NaN
      for (std::size_t k = start; k < stop; ++k)
        if (!std::isfinite(x[k]))
          return static_cast<long long>(k);
  }
  return -1;
}

/// first_non_finite over [0, n), split over OpenMP threads for large n (the smallest bad index wins).
template <class T>
long long first_non_finite_parallel(const T* x, std::size_t n) {
#if defined(_OPENMP)
  if (n >= group_advantages_parallel_min) {
    const long long chunks = static_cast<long long>((n + group_advantages_chunk - 1) / group_advantages_chunk);
    long long first = std::numeric_limits<long long>::max();
#  pragma omp parallel for schedule(dynamic, 1) reduction(min : first)
    for (long long c = 0; c < chunks; ++c) {
      const std::size_t b = static_cast<std::size_t>(c) * group_advantages_chunk;
      const long long bad = first_non_finite(x, b, std::min(n, b + group_advantages_chunk));
      if (bad >= 0 && bad < first)
        first = bad;
    }
    return first == std::numeric_limits<long long>::max() ? -1 : first;
  }
#endif
  return first_non_finite(x, 0, n);
}

/// Throws naming scores[bad].
template <class T>
[[noreturn]] void fail_non_finite(const char* fn, span<const T, host_space> scores, long long bad) {
  hir::detail::fail(fn, "scores[", bad, "] = ", scores[static_cast<std::size_t>(bad)], " is not finite");
}

/// Checks the singleton policy (reads group sizes only).
inline void validate_group_sizes(const char* fn, group_ref<host_space> groups, singleton_policy singleton) {
  if (singleton == singleton_policy::error) {
    if (groups.uniform_size) {
      if (groups.uniform_size == 1 && groups.num_groups > 0)
        hir::detail::fail(fn, "group 0 (sample 0) has one sample and singleton_policy::error is set");
      return;
    }
    for (std::size_t g = 0; g < groups.num_groups; ++g)
      if (groups.size(g) == 1)
        hir::detail::fail(fn, "group ", g, " (sample ", groups.sample(groups.begin(g)),
                          ") has one sample and singleton_policy::error is set");
  }
}

/// Validates scores and group sizes for group-relative estimators; throws before anything is written.
template <class T>
void validate_group_scores(const char* fn, span<const T, host_space> scores, group_ref<host_space> groups,
                           singleton_policy singleton) {
  const long long bad = first_non_finite_parallel(scores.data(), scores.size());
  if (bad >= 0)
    fail_non_finite(fn, scores, bad);
  validate_group_sizes(fn, groups, singleton);
}

/// Standard deviation of all scores (two-pass, double).
template <class T>
double batch_std(span<const T, host_space> s, std_kind kind) {
  const std::size_t n = s.size();
  if (n == 0)
    return 0.0;
  double sum = 0;
  for (std::size_t i = 0; i < n; ++i)
    sum += s[i];
  const double mean = sum / static_cast<double>(n);
  double ss = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double d = s[i] - mean;
    ss += d * d;
  }
  const double denom = kind == std_kind::unbiased ? static_cast<double>(n) - 1.0 : static_cast<double>(n);
  return denom > 0 ? std::sqrt(ss / denom) : std::numeric_limits<double>::quiet_NaN();
}

/// Per-call constants of the uniform fast path: out = (s − center·μ)·f with f = factor/(sqrt(max(ss/var_div,
/// floor)) + ε) (group_std) or f = fixed, and f = 0 for constant groups.
struct uniform_params {
  double center;      ///< 1: subtract the group mean; 0: no baseline
  bool group_std;     ///< scale by the group std
  double inv_var_div; ///< 1/(n − 1) or 1/n
  double floor;       ///< variance floor
  double epsilon;     ///< added to the std
  double factor;      ///< n/(n − 1) for leave-one-out, else 1
  double fixed;       ///< f without group_std: factor/batch_denominator or factor
};

#if HIR_CPU_AVX512

constexpr int ga_log2(int g) {
  int m = 0;
  while ((1 << m) < g)
    ++m;
  return m;
}

/// Permutation tables that transpose a block of 8 groups × G floats (G/2 zmm registers, row-major by group) into
/// rows: row k holds element k of the 8 groups, as one half (8 floats) of a register. An element's index bits are
/// (g2 g1 g0 | k_{m−1} … k0); a register's lane is the low 4 bits and its number the rest. Each stage pairs the
/// registers that differ in one register bit and swaps that bit with a lane bit holding a k bit (one vpermt2ps
/// per output register), until every g bit is a lane bit; the last stage also orders the lanes as (g0 g1 g2 k0).
/// G = 2 has no register bits: a single-source vpermps orders the lanes.
template <int G>
struct ga_transpose_plan {
  static constexpr int m = ga_log2(G);
  static constexpr int vectors = G / 2;
  static constexpr int bits = m + 3;
  struct tables_t {
    int stages = 0;
    int pair_bit[4] = {};                         ///< register bit paired at each stage (−1: single source)
    alignas(64) std::int32_t fwd[4][16][16] = {}; ///< [stage][output register][lane] vpermt2ps indices
    int row_vector[32] = {};                      ///< register holding row k after the forward stages
    int row_half[32] = {};                        ///< and its half
  };
  /// Physical position (register·16 + lane) of element f under layout L (L[p] = element bit stored at bit p).
  static constexpr int position(const int* layout, int f) {
    int r = 0;
    for (int p = 0; p < bits; ++p)
      r |= ((f >> layout[p]) & 1) << p;
    return r;
  }
  static constexpr void fill(std::int32_t (*idx)[16], const int* from, const int* to, int pair_bit) {
    for (int f = 0; f < 8 * G; ++f) {
      const int t = position(to, f), s = position(from, f);
      idx[t >> 4][t & 15] = pair_bit < 0 ? (s & 15) : (((s >> 4) >> pair_bit) & 1) * 16 + (s & 15);
    }
  }
  static constexpr tables_t build() {
    tables_t t{};
    int layouts[5][8] = {};
    int cur[8] = {};
    for (int p = 0; p < bits; ++p)
      layouts[0][p] = cur[p] = p;
    int s = 0;
    for (int p = 4; p < bits; ++p) {
      if (cur[p] < m)
        continue; // already a k bit
      for (int q = 0; q < 4; ++q)
        if (cur[q] >= 1 && cur[q] < m) { // a lane holding k1 … k_{m−1}
          const int tmp = cur[p];
          cur[p] = cur[q];
          cur[q] = tmp;
          t.pair_bit[s++] = p - 4;
          for (int r = 0; r < bits; ++r)
            layouts[s][r] = cur[r];
          break;
        }
    }
    int last[8] = {};
    for (int r = 0; r < bits; ++r)
      last[r] = cur[r];
    last[0] = m; // g0, g1, g2, k0 in lanes 0 … 3
    last[1] = m + 1;
    last[2] = m + 2;
    last[3] = 0;
    if (s == 0)
      t.pair_bit[s++] = -1;
    for (int r = 0; r < bits; ++r)
      layouts[s][r] = last[r];
    t.stages = s;
    for (int st = 0; st < s; ++st) {
      fill(t.fwd[st], layouts[st], layouts[st + 1], t.pair_bit[st]);
    }
    for (int k = 0; k < G; ++k) {
      const int p = position(last, k); // element (g = 0, k)
      t.row_vector[k] = p >> 4;
      t.row_half[k] = (p >> 3) & 1;
    }
    return t;
  }
  static constexpr tables_t tables = build();
};

// The maskz_ forms with all-ones masks below are the plain intrinsics; GCC 12 warns (-Wmaybe-uninitialized, GCC
// bug 105593) about the "undefined" pass-through operand the plain forms use.
template <int G>
HIR_CPU_AVX512_FN __attribute__((always_inline)) inline void ga_permute(__m512* z, const std::int32_t (*idx)[16],
                                                                        int pair_bit) {
  constexpr int n = G / 2;
  if (pair_bit < 0) {
    z[0] = _mm512_maskz_permutexvar_ps(0xFFFF, _mm512_load_si512(idx[0]), z[0]);
    return;
  }
  __m512 o[n];
  for (int v = 0; v < n; ++v) {
    const int a = v & ~(1 << pair_bit), b = v | (1 << pair_bit);
    o[v] = _mm512_permutex2var_ps(z[a], _mm512_load_si512(idx[v]), z[b]);
  }
  for (int v = 0; v < n; ++v)
    z[v] = o[v];
}

/// v in the low half, zeros above: _mm512_zextps256_ps512 without its "undefined" operand (GCC bug 105593).
HIR_CPU_AVX512_FN __attribute__((always_inline)) inline __m512 ga_zext(__m256 v) {
  return _mm512_castpd_ps(_mm512_maskz_insertf64x4(0xFF, _mm512_setzero_pd(), _mm256_castps_pd(v), 0));
}

/// y = (x − c_hi[g])·f[g] − clf[g] for the 8 groups of a block (8·G floats at x and y, G ≤ 4), the per-group
/// values given as 8 floats and expanded to the lanes of each 16-float register by a vpermps.
template <int G>
HIR_CPU_AVX512_FN __attribute__((always_inline)) inline void ga_store_output(const float* x, float* y, __m256 c_hi,
                                                                             __m256 f_f, __m256 clf) {
  static_assert(G <= 4, "larger groups take ga_store_output_bcast");
  constexpr int nv = G / 2;
  const __m512 ch = ga_zext(c_hi), ff = ga_zext(f_f), cl = ga_zext(clf);
  for (int v = 0; v < nv; ++v) {
    alignas(64) std::int32_t lanes[16];
    for (int l = 0; l < 16; ++l)
      lanes[l] = (16 * v + l) / G;
    const __m512i idx = _mm512_load_si512(lanes);
    const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + 16 * v), _mm512_maskz_permutexvar_ps(0xFFFF, idx, ch));
    _mm512_storeu_ps(y + 16 * v, _mm512_fmsub_ps(d, _mm512_maskz_permutexvar_ps(0xFFFF, idx, ff),
                                                 _mm512_maskz_permutexvar_ps(0xFFFF, idx, cl)));
  }
}

/// y = (x − c_hi[g])·f[g] − clf[g] for the 8 groups of a block of G ≥ 8 (8·G floats at x and y), a group taking
/// whole registers (one ymm for G = 8, G/16 zmm above): the per-group values are broadcast from memory, a load-port
/// operation, instead of permuted on port 5 (G = 8 in L2: 0.348 → 0.330 ns per reward).
template <int G>
HIR_CPU_AVX512_FN __attribute__((always_inline)) inline void
ga_store_output_bcast(const float* x, float* y, __m256 c_hi, __m256 f_f, __m256 clf) {
  static_assert(G >= 8, "smaller groups share a ymm register");
  alignas(32) float v[3][8];
  _mm256_store_ps(v[0], c_hi);
  _mm256_store_ps(v[1], f_f);
  _mm256_store_ps(v[2], clf);
  asm("" : "+m"(v)); // v is reloaded from memory: keeps the compiler from broadcasting out of registers
  for (int g = 0; g < 8; ++g) {
    if constexpr (G == 8) {
      const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(x + 8 * g), _mm256_set1_ps(v[0][g]));
      _mm256_storeu_ps(y + 8 * g, _mm256_fmsub_ps(d, _mm256_set1_ps(v[1][g]), _mm256_set1_ps(v[2][g])));
    } else {
      for (int r = 0; r < G / 16; ++r) {
        const int i = g * G + 16 * r;
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(x + i), _mm512_set1_ps(v[0][g]));
        _mm512_storeu_ps(y + i, _mm512_fmsub_ps(d, _mm512_set1_ps(v[1][g]), _mm512_set1_ps(v[2][g])));
      }
    }
  }
}

/// The block computed in double, group by group, with exact sqrt and division: the fast path's fallback for scales
/// beyond the float range (groups of subnormal scores with ε = 0, scores near ±3.4e38). Same formula, same
/// constant-group rule. x holds the block's 8 groups of G finite floats.
HIR_CPU_AVX512_FN inline void ga_block_double(const float* x, float* y, int G, const uniform_params& p) {
  for (int g = 0; g < 8; ++g) {
    const float* v = x + g * G;
    const double r0 = v[0];
    double s1 = 0, s2 = 0;
    for (int k = 1; k < G; ++k) {
      const double d = static_cast<double>(v[k]) - r0;
      s1 += d;
      s2 += d * d;
    }
    const double mean = r0 + s1 / G, ss = s2 - s1 * s1 / G;
    double f = p.group_std ? p.factor / (std::sqrt(std::max(ss * p.inv_var_div, p.floor)) + p.epsilon) : p.fixed;
    if (ss == 0)
      f = 0;
    const double c = mean * p.center;
    float* out = y + g * G;
    for (int k = 0; k < G; ++k)
      out[k] = static_cast<float>((static_cast<double>(v[k]) - c) * f);
  }
}

/// Shifted sums of 8 consecutive groups of G floats at x (8·G values), one group per double lane: r0 = the group's
/// first value, s1 = Σ_k d_k and s2 = Σ_k d_k² with d_k = x_k − r0, pairwise (short dependency chains).
template <int G>
HIR_CPU_AVX512_FN __attribute__((always_inline)) inline void ga_sums8(const float* x, __m512d& r0, __m512d& s1,
                                                                      __m512d& s2) {
  constexpr auto& plan = ga_transpose_plan<G>::tables;
  constexpr int nv = G / 2;
  __m512 z[nv];
  for (int v = 0; v < nv; ++v)
    z[v] = _mm512_loadu_ps(x + 16 * v);
  for (int st = 0; st < plan.stages; ++st)
    ga_permute<G>(z, plan.fwd[st], plan.pair_bit[st]);
  __m512d r[G], t[G], q[G];
  for (int k = 0; k < G; ++k) {
    const __m512 h = z[plan.row_vector[k]];
    r[k] =
        plan.row_half[k]
            ? _mm512_maskz_cvtps_pd(0xFF, _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(h), 1)))
            : _mm512_maskz_cvtps_pd(0xFF, _mm256_castpd_ps(_mm512_maskz_extractf64x4_pd(0xF, _mm512_castps_pd(h), 0)));
  }
  for (int k = 1; k < G; ++k) {
    t[k] = _mm512_sub_pd(r[k], r[0]);
    q[k] = _mm512_mul_pd(t[k], t[k]);
  }
  for (int w = G / 2; w >= 1; w /= 2) // pairwise over k = 1 … G − 1 (d_0 = 0 is never formed)
    for (int k = 0; k < w; ++k) {
      if (w == G / 2 && k == 0) {
        t[0] = t[w];
        q[0] = q[w];
      } else {
        t[k] = _mm512_add_pd(t[k], t[k + w]);
        q[k] = _mm512_add_pd(q[k], q[k + w]);
      }
    }
  r0 = r[0];
  s1 = t[0];
  s2 = q[0];
}

/// Merges the shifted sums of 16 runs of n values (lanes 0–7 of a: runs 0–7; of b: runs 8–15) into the sums of 8
/// runs of 2n, in order: run j of the result is runs 2j and 2j + 1. With E the even runs and O the odd ones
/// (two-source permutes), δ = r0_O − r0_E (exact: a difference of two floats), S1 = s1_E + s1_O + n·δ and
/// S2 = s2_E + s2_O + 2δ·s1_O + n·δ² (Σ (d' + δ)² expanded), about r0_E.
HIR_CPU_AVX512_FN __attribute__((always_inline)) inline void
ga_merge_runs(__m512d& r0, __m512d& s1, __m512d& s2, __m512d r0b, __m512d s1b, __m512d s2b, double n) {
  const __m512i even = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0), odd = _mm512_set_epi64(15, 13, 11, 9, 7, 5, 3, 1);
  const __m512d r0_e = _mm512_permutex2var_pd(r0, even, r0b), r0_o = _mm512_permutex2var_pd(r0, odd, r0b);
  const __m512d s1_e = _mm512_permutex2var_pd(s1, even, s1b), s1_o = _mm512_permutex2var_pd(s1, odd, s1b);
  const __m512d s2_e = _mm512_permutex2var_pd(s2, even, s2b), s2_o = _mm512_permutex2var_pd(s2, odd, s2b);
  const __m512d nv = _mm512_set1_pd(n), delta = _mm512_sub_pd(r0_o, r0_e);
  const __m512d cross =
      _mm512_fmadd_pd(_mm512_add_pd(s1_o, s1_o), delta, _mm512_mul_pd(nv, _mm512_mul_pd(delta, delta)));
  r0 = r0_e;
  s1 = _mm512_fmadd_pd(nv, delta, _mm512_add_pd(s1_e, s1_o));
  s2 = _mm512_add_pd(_mm512_add_pd(s2_e, s2_o), cross);
}

/// Shifted sums of 8 consecutive runs of N values at x (8·N values, N a power of two ≥ 2), one run per double lane:
/// ga_sums8 for N ≤ 8; above, the two halves' runs of N/2 merged pairwise (ga_merge_runs).
template <int N>
HIR_CPU_AVX512_FN __attribute__((always_inline)) inline void ga_run_sums(const float* x, __m512d& r0, __m512d& s1,
                                                                         __m512d& s2) {
  if constexpr (N <= 8) {
    ga_sums8<N>(x, r0, s1, s2);
  } else {
    __m512d r0b, s1b, s2b;
    ga_run_sums<N / 2>(x, r0, s1, s2);
    ga_run_sums<N / 2>(x + 4 * N, r0b, s1b, s2b);
    ga_merge_runs(r0, s1, s2, r0b, s1b, s2b, N / 2);
  }
}

/// The per-call constants of the fast path as vectors, built once per call outside the block loop (the kernel's
/// vector stores may alias anything, so constants read through a reference would be reloaded in every block), and
/// the range rule that lets a block take the float output.
///
/// The float output can neither overflow nor lose precision when every score of the block has |x| < 2¹²⁶ and the
/// scale f is 0 or within [2⁻¹⁰⁰, 2¹⁰⁰] (see ga_scales8). The scores' side is checked as r0² + S2 < x_bound ≤ 2²⁵⁰
/// (so |r0| < 2¹²⁵ and |x − r0| ≤ √S2 < 2¹²⁵): one FMA and one compare per block, false for NaN or ±inf. The scale's
/// side is proven once per call where the options allow it (check_f false): f = factor/(√max(ss/div, floor) + ε)
/// with ss ≤ S2 < x_bound is at most |factor|/(√floor + ε) and at least |factor|/(√max(x_bound/div, floor) + ε), so
/// x_bound is lowered (by 2¹⁰ at a time, not below 2⁴⁰) until that lower bound is 2⁻⁹⁹ or more. Otherwise (ε = 0
/// with no floor, extreme factors) every block checks f too.
struct ga_consts {
  __m512d inv_var_div, floor, epsilon, factor, fixed, center, x_bound;
  bool group_std; ///< f from the group std (else f = fixed)
  bool check_f;   ///< f's range is checked in every block
};

HIR_CPU_AVX512_FN inline ga_consts ga_make_consts(const uniform_params& p) {
  ga_consts c;
  c.inv_var_div = _mm512_set1_pd(p.inv_var_div);
  c.floor = _mm512_set1_pd(p.floor);
  c.epsilon = _mm512_set1_pd(p.epsilon);
  c.factor = _mm512_set1_pd(p.factor);
  c.fixed = _mm512_set1_pd(p.fixed);
  c.center = _mm512_set1_pd(p.center);
  c.group_std = p.group_std;
  double bound = 0x1p250;
  bool check = true;
  if (!p.group_std) {
    const double a = std::fabs(p.fixed);
    check = !(a == 0 || (a >= 0x1p-100 && a <= 0x1p100));
  } else {
    const double a = std::fabs(p.factor);
    const double den_min = std::sqrt(p.floor) + p.epsilon; // NaN options leave check set
    if (a == 0) {
      check = false;
    } else if (den_min > 0 && a / den_min <= 0x1p99) {
      for (double t = 0x1p250; t >= 0x1p40; t *= 0x1p-10)
        if (a / (std::sqrt(std::max(t * p.inv_var_div, p.floor)) + p.epsilon) >= 0x1p-99) {
          bound = t;
          check = false;
          break;
        }
    }
  }
  c.x_bound = _mm512_set1_pd(check ? 0x1p250 : bound);
  c.check_f = check;
  return c;
}

/// What ga_scales8 found for a block.
enum class ga_status { fast, fallback, non_finite };

/// Scales and baselines of 8 groups of G values, one per lane, from their shifted sums. ss = S2 − S1²/G: r0 lies inside
/// the group's range, so S2 ≤ G·range² ≤ 2G·ss and the subtraction loses at most log2(2G) bits: ss keeps ≥ 46 correct
/// bits, and is exactly 0 iff the group is constant (d_0 = 0, so S1² ≤ (G − 1)·S2 and ss ≥ S2/G otherwise). G is a
/// power of two, so · (1/G) is the exact division.
///
/// On `fast`, the output y = (x − c_hi)·f − clf is ready for ga_output, the baseline c = center·μ split into
/// c_hi = float(c) and c_lo = float(c − c_hi), clf = c_lo·f: x − c_hi is exact when x is within a factor 2 of c_hi
/// (Sterbenz) and else rounds relative to a result of about |x|; the fused multiply-subtract rounds once more, so the
/// error relative to the result stays within a few 2⁻²⁴ even for groups whose values differ in their last float bit.
/// `fallback`: a block outside ga_consts' range rule (scores near ±FLT_MAX, groups of subnormal scores with ε = 0),
/// computed by ga_block_double instead. `non_finite`: a score is NaN or ±inf (ss is then NaN or inf: finite floats
/// cannot overflow the sums in double); nothing of the block may be written.
template <int G>
HIR_CPU_AVX512_FN __attribute__((always_inline)) inline ga_status
ga_scales8(__m512d r0, __m512d s1, __m512d s2, const ga_consts& k, __m256& c_hi, __m256& f_f, __m256& clf) {
  const __m512d inv_g = _mm512_set1_pd(1.0 / G);
  const __m512d mean = _mm512_fmadd_pd(s1, inv_g, r0);
  const __m512d ss = _mm512_fnmadd_pd(_mm512_mul_pd(s1, s1), inv_g, s2);
  __m512d f;
  if (k.group_std) {
    // var > 0 unless the group is constant (· 1/(n − 1) is within an ulp of the division)
    const __m512d var = _mm512_maskz_max_pd(0xFF, _mm512_mul_pd(ss, k.inv_var_div), k.floor);
    // sqrt(var) = var · rsqrt(var) and 1/(sqrt(var) + ε), each from a 14-bit estimate and one Newton step (relative
    // error below 2⁻²⁶ each, so f is within 2⁻²⁵ of its exact value: finer than the float output's rounding);
    // constant groups (var = 0 → NaN here) are masked to f = 0 below. (An exact sqrt and division measured slower.)
    const __m512d half_var = _mm512_mul_pd(var, _mm512_set1_pd(0.5)), three_halves = _mm512_set1_pd(1.5);
    __m512d rs = _mm512_maskz_rsqrt14_pd(0xFF, var);
    rs = _mm512_mul_pd(rs, _mm512_fnmadd_pd(_mm512_mul_pd(half_var, rs), rs, three_halves));
    const __m512d den = _mm512_fmadd_pd(var, rs, k.epsilon);
    __m512d inv = _mm512_maskz_rcp14_pd(0xFF, den);
    inv = _mm512_fmadd_pd(inv, _mm512_fnmadd_pd(den, inv, _mm512_set1_pd(1.0)), inv);
    f = _mm512_mul_pd(inv, k.factor);
  } else {
    f = k.fixed;
  }
  f = _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(ss, _mm512_setzero_pd(), _CMP_NEQ_OQ), f); // constant group: 0
  __mmask8 ok = _mm512_cmp_pd_mask(_mm512_fmadd_pd(r0, r0, s2), k.x_bound, _CMP_LT_OQ);
  if (k.check_f) {
    const __m512d af = _mm512_abs_pd(f);
    const __mmask8 f_normal = _mm512_mask_cmp_pd_mask(_mm512_cmp_pd_mask(af, _mm512_set1_pd(0x1p-100), _CMP_GE_OQ), af,
                                                      _mm512_set1_pd(0x1p100), _CMP_LE_OQ);
    ok &= f_normal | _mm512_cmp_pd_mask(af, _mm512_setzero_pd(), _CMP_EQ_OQ);
  }
  if (ok != 0xFF) // rare: tell a non-finite score from a range the float output cannot take
    return _mm512_cmp_pd_mask(_mm512_sub_pd(ss, ss), _mm512_setzero_pd(), _CMP_NEQ_UQ) ? ga_status::non_finite
                                                                                       : ga_status::fallback;
  const __m512d c = _mm512_mul_pd(mean, k.center);
  c_hi = _mm512_maskz_cvtpd_ps(0xFF, c);
  const __m256 c_lo = _mm512_maskz_cvtpd_ps(0xFF, _mm512_sub_pd(c, _mm512_maskz_cvtps_pd(0xFF, c_hi)));
  f_f = _mm512_maskz_cvtpd_ps(0xFF, f);
  clf = _mm256_mul_ps(c_lo, f_f);
  return ga_status::fast;
}

/// The output of a block (see ga_scales8): G ≤ 4 share a register between groups (permuted values), G ≥ 8 take one
/// register per group (broadcast values).
template <int G>
HIR_CPU_AVX512_FN __attribute__((always_inline)) inline void ga_output(const float* x, float* y, __m256 c_hi,
                                                                       __m256 f_f, __m256 clf) {
  if constexpr (G <= 4)
    ga_store_output<G>(x, y, c_hi, f_f, clf);
  else
    ga_store_output_bcast<G>(x, y, c_hi, f_f, clf);
}

/// How far ahead ga_uniform_blocks prefetches (floats): 2 KiB, 8 blocks of G = 8.
inline constexpr std::size_t ga_prefetch_floats = 512;

/// Groups [g_begin, g_end) (g_end − g_begin a multiple of 8) of a uniform float layout; returns the first group of
/// a block holding a non-finite score (that block and the ones after it are not written; the ones before it are),
/// or -1.
///
/// Software-pipelined over three blocks: one iteration forms the sums of block b + 1, the scales of block b and
/// stores the output of block b − 1. A block's dependency chain (transpose, conversions, sums, two Newton-refined
/// estimates, conversions, permutes: ≈ 100 cycles) is longer than the ≈ 60 cycles of issue its ≈ 100 vector µops
/// need, and the scheduler cannot hold enough of the next block to cover it; with the stages of three blocks in one
/// iteration every stage's inputs are ready a block early (G = 8 in L2: 0.39 → 0.34 ns per reward).
template <int G>
HIR_CPU_AVX512_FN long long ga_uniform_blocks(const float* s, float* out, std::size_t g_begin, std::size_t g_end,
                                              const uniform_params& p) {
  constexpr std::size_t per_block = 8; // groups per block
  if (g_begin == g_end)
    return -1;
  const ga_consts k = ga_make_consts(p);
  __m512d r0, s1, s2; // sums of block `cur`
  std::size_t cur = g_begin;
  ga_run_sums<G>(s + cur * G, r0, s1, s2);
  bool pending = false; // block `prev` has scales awaiting its store
  std::size_t prev = 0;
  __m256 p_hi = _mm256_setzero_ps(), p_f = p_hi, p_lf = p_hi;
  for (;;) {
    const std::size_t next = cur + per_block;
    const bool more = next < g_end;
    __m512d n_r0 = r0, n_s1 = s1, n_s2 = s2;
    if (more) {
      // Software prefetch of both streams, ga_prefetch_floats ahead (a hint: an address past the end is dropped,
      // never faults; formed as an integer, not by pointer arithmetic): out of cache the hardware prefetchers alone
      // left the kernel at about half the triad's bandwidth.
      for (std::size_t i = 0; i < per_block * G; i += 16) {
        constexpr std::uintptr_t ahead = ga_prefetch_floats * sizeof(float);
        _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(s + next * G + i) + ahead),
                     _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(out + next * G + i) + ahead),
                     _MM_HINT_T0);
      }
      ga_run_sums<G>(s + next * G, n_r0, n_s1, n_s2);
    }
    __m256 c_hi = _mm256_setzero_ps(), f_f = c_hi, clf = c_hi;
    const ga_status status = ga_scales8<G>(r0, s1, s2, k, c_hi, f_f, clf);
    if (pending)
      ga_output<G>(s + prev * G, out + prev * G, p_hi, p_f, p_lf);
    pending = status == ga_status::fast;
    if (status == ga_status::non_finite)
      return static_cast<long long>(cur);
    if (status == ga_status::fallback)
      ga_block_double(s + cur * G, out + cur * G, G, p);
    p_hi = c_hi, p_f = f_f, p_lf = clf, prev = cur;
    if (!more)
      break;
    r0 = n_r0, s1 = n_s1, s2 = n_s2, cur = next;
  }
  if (pending)
    ga_output<G>(s + prev * G, out + prev * G, p_hi, p_f, p_lf);
  return -1;
}

#endif // HIR_CPU_AVX512

/// Uniform layout of G floats per group, groups [g_begin, g_end): blocks of 8 groups on the fast path (each block
/// checked for non-finite scores just before it is written), the rest group by group (checked first). Returns the
/// first group of the block (or the tail) holding a non-finite score, which is not written, nor anything after it
/// in the range; or -1.
template <int G>
long long uniform_range(const float* s, float* out, group_ref<host_space> groups, std::size_t g_begin,
                        std::size_t g_end, const group_advantage_options& opt, const uniform_params& p,
                        double batch_denominator) {
#if HIR_CPU_AVX512
  const std::size_t full = g_begin + (g_end - g_begin) / 8 * 8;
  const long long bad = ga_uniform_blocks<G>(s, out, g_begin, full, p); // callers checked cpu_has_avx512()
  if (bad >= 0)
    return bad;
  g_begin = full;
#else
  (void)p;
#endif
  if (first_non_finite(s, g_begin * G, g_end * G) >= 0)
    return static_cast<long long>(g_begin);
  for (std::size_t g = g_begin; g < g_end; ++g)
    hir::detail::group_advantages_one<true>(s, groups, g, out, opt, batch_denominator);
  return -1;
}

/// All groups of a uniform float layout; returns the smallest group index uniform_range reported, or -1 (the
/// smallest over all chunks when threaded, so the result does not depend on the thread count).
template <int G>
long long uniform_all(const float* s, float* out, group_ref<host_space> groups, const group_advantage_options& opt,
                      const uniform_params& p, double batch_denominator) {
  const std::size_t ng = groups.num_groups;
#if defined(_OPENMP)
  if (ng * G >= group_advantages_parallel_min) {
    constexpr std::size_t per_chunk = group_advantages_chunk / G; // a multiple of 8
    const long long chunks = static_cast<long long>((ng + per_chunk - 1) / per_chunk);
    long long first = std::numeric_limits<long long>::max();
#  pragma omp parallel for schedule(dynamic, 1) reduction(min : first)
    for (long long c = 0; c < chunks; ++c) {
      const std::size_t b = static_cast<std::size_t>(c) * per_chunk;
      const long long bad = uniform_range<G>(s, out, groups, b, std::min(ng, b + per_chunk), opt, p, batch_denominator);
      if (bad >= 0 && bad < first)
        first = bad;
    }
    return first == std::numeric_limits<long long>::max() ? -1 : first;
  }
#endif
  return uniform_range<G>(s, out, groups, 0, ng, opt, p, batch_denominator);
}

/// Whether the uniform fast path applies: float scores, a CPU with AVX-512 (cpu_has_avx512()), contiguous groups of
/// 2, 4, 8, 16 or 32.
template <class T>
bool uniform_path_applies(group_ref<host_space> groups) {
  const std::size_t G = groups.uniform_size;
  return std::is_same_v<T, float> && cpu_has_avx512() && groups.contiguous() &&
         (G == 2 || G == 4 || G == 8 || G == 16 || G == 32);
}

/// The uniform fast path (uniform_path_applies<T> must hold). Returns the first group of the first block holding a
/// non-finite score (see uniform_range), or -1; with validated scores always -1.
template <class T>
long long group_advantages_uniform(span<const T, host_space> scores, group_ref<host_space> groups,
                                   span<T, host_space> out, const group_advantage_options& opt,
                                   double batch_denominator) {
  if constexpr (!std::is_same_v<T, float> || !HIR_CPU_AVX512) {
    (void)scores, (void)groups, (void)out, (void)opt, (void)batch_denominator;
    return -1;
  } else {
    const std::size_t G = groups.uniform_size;
    const double dn = static_cast<double>(G);
    const bool loo = opt.baseline == baseline_kind::leave_one_out;
    uniform_params p{};
    p.center = opt.baseline == baseline_kind::none ? 0.0 : 1.0;
    p.group_std = opt.scale == scale_kind::group_std;
    p.inv_var_div = 1.0 / (opt.std == std_kind::unbiased ? dn - 1.0 : dn);
    p.floor = opt.variance_floor;
    p.epsilon = opt.epsilon;
    p.factor = loo ? dn / (dn - 1.0) : 1.0;
    p.fixed = p.factor * (opt.scale == scale_kind::batch_std ? 1.0 / batch_denominator : 1.0);
    const float* s = scores.data();
    float* y = out.data();
    switch (G) {
    case 2:
      return uniform_all<2>(s, y, groups, opt, p, batch_denominator);
    case 4:
      return uniform_all<4>(s, y, groups, opt, p, batch_denominator);
    case 8:
      return uniform_all<8>(s, y, groups, opt, p, batch_denominator);
    case 16:
      return uniform_all<16>(s, y, groups, opt, p, batch_denominator);
    default:
      return uniform_all<32>(s, y, groups, opt, p, batch_denominator);
    }
  }
}

/// The generic path: one group at a time through the kernel shared with the device backend.
template <class T>
void group_advantages_generic(span<const T, host_space> scores, group_ref<host_space> groups, span<T, host_space> out,
                              const group_advantage_options& opt, double batch_denominator) {
  const std::size_t ng = groups.num_groups;
#if defined(_OPENMP)
  if (scores.size() >= group_advantages_parallel_min && ng > 1) {
    const long long n = static_cast<long long>(ng);
    if (groups.contiguous()) {
#  pragma omp parallel for schedule(dynamic, 4096)
      for (long long g = 0; g < n; ++g)
        hir::detail::group_advantages_one<true>(scores.data(), groups, static_cast<std::size_t>(g), out.data(), opt,
                                                batch_denominator);
    } else {
#  pragma omp parallel for schedule(dynamic, 4096)
      for (long long g = 0; g < n; ++g)
        hir::detail::group_advantages_one<false>(scores.data(), groups, static_cast<std::size_t>(g), out.data(), opt,
                                                 batch_denominator);
    }
    return;
  }
#endif
  if (groups.contiguous())
    for (std::size_t g = 0; g < ng; ++g)
      hir::detail::group_advantages_one<true>(scores.data(), groups, g, out.data(), opt, batch_denominator);
  else
    for (std::size_t g = 0; g < ng; ++g)
      hir::detail::group_advantages_one<false>(scores.data(), groups, g, out.data(), opt, batch_denominator);
}

/// The CPU computation with a choice of validation (as policy_loss's input_validation):
///   before_writing  every score is checked by a read-only pass first; on a non-finite score `out` is untouched
///   fused           on the uniform fast path each block of 8 groups is checked just before it is written (one read
///                   pass fewer); on a non-finite score, groups of earlier blocks (of other chunks too, when
///                   threaded) may already hold their advantages. Elsewhere it is before_writing.
/// Either way the exception names the first non-finite score. group_advantages uses before_writing.
template <class T>
void group_advantages_cpu(span<const T, host_space> scores, group_ref<host_space> groups, span<T, host_space> out,
                          group_advantage_options const& opt, input_validation validation) {
  constexpr const char* fn = "group_advantages";
  const bool fast = uniform_path_applies<T>(groups);
  // batch_std reads every score before writing anyway, so it validates first in both modes.
  const bool fused = validation == input_validation::fused && fast && opt.scale != scale_kind::batch_std;
  if (fused)
    validate_group_sizes(fn, groups, opt.singleton);
  else
    validate_group_scores(fn, scores, groups, opt.singleton);
  double batch_denominator = 1.0;
  if (opt.scale == scale_kind::batch_std)
    batch_denominator = hir::detail::batch_denominator(batch_std(scores, opt.std), opt.epsilon);
  if (!fast) {
    group_advantages_generic(scores, groups, out, opt, batch_denominator);
    return;
  }
  const long long bad_group = group_advantages_uniform(scores, groups, out, opt, batch_denominator);
  if (bad_group >= 0) { // fused only: the first non-finite score lies in the reported block or after it
    const std::size_t from = static_cast<std::size_t>(bad_group) * groups.uniform_size;
    fail_non_finite(fn, scores, first_non_finite(scores.data(), from, scores.size()));
  }
}

} // namespace detail

template <class T>
void group_advantages_impl(tag_t const&, span<const T, host_space> scores, group_ref<host_space> groups,
                           span<T, host_space> out, group_advantage_options const& opt) {
  detail::group_advantages_cpu(scores, groups, out, opt, opt.validation);
}

} // namespace cpu
} // namespace backend
} // namespace hir
