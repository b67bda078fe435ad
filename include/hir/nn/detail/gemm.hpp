// SPDX-License-Identifier: Apache-2.0
// The one matrix-product primitive of the CPU transformer: row-major C = alpha·op(A)·op(B) + beta·C (+ a bias per
// column) on one thread. float products run on hir's own AVX-512 kernel when the CPU has AVX-512F (chosen at run time,
// so a build without -march=native is fast too): op(B) is packed into thread-local panels (allocated once, reused by
// every later call), A is read in place, and an 8 × 32 register-blocked micro-kernel accumulates them; the small,
// skinny shapes of the transformer (K = 96…512, N = 96…512) leave Eigen's and OpenBLAS's per-call costs (blocking
// heuristics, packing buffers) visible, which this path avoids. A weight used by many products (every decode step of
// the generator) can be packed once (pack_weight) and multiplied by gemm_weight without repacking. Everything else
// (double, CPUs without AVX-512) goes to Eigen through Eigen::Map (no copies). The AVX-512 namespace also holds the
// vectorized exp used by the generator's KV-cache attention. Define HIR_NN_USE_CBLAS (and link a CBLAS, e.g.
// Debian's OpenBLAS) to hand every product to cblas_sgemm / cblas_dgemm instead. The callers split work across threads
// themselves, so the BLAS must run single-threaded (hir::nn::detail::blas_single_thread() tells OpenBLAS so when
// HIR_NN_USE_OPENBLAS).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

// HIR_NN_HAVE_AVX512_KERNEL: the AVX-512 code (GEMM, exp, the generator's attention) is compiled (not with
// HIR_NN_NO_AVX512 or HIR_NO_AVX512), and used when the CPU has AVX-512F; HIR_NN_AVX512_GEMM: the float products use it
// (not when a CBLAS takes every product).
#if !defined(HIR_NN_NO_AVX512) && !defined(HIR_NO_AVX512) && (defined(__x86_64__) || defined(__i386__)) &&             \
    (defined(__GNUC__) || defined(__clang__))
#  define HIR_NN_HAVE_AVX512_KERNEL 1
#  include <immintrin.h>
#  if !defined(HIR_NN_USE_CBLAS)
#    define HIR_NN_AVX512_GEMM 1
#  endif
#endif

#if defined(HIR_NN_USE_CBLAS)
#  include <cblas.h>
#endif
#if defined(HIR_NN_USE_OPENBLAS)
extern "C" void openblas_set_num_threads(int num_threads);
#endif

namespace hir::nn::detail {

#if defined(HIR_NN_HAVE_AVX512_KERNEL)
/// True when the CPU (and OS) supports AVX-512F, so the float products take hir's AVX-512 kernel.
inline bool cpu_has_avx512() {
  static const bool v = __builtin_cpu_supports("avx512f") != 0;
  return v;
}

namespace avx512 {
#  define HIR_NN_AVX512_FN __attribute__((target("avx512f,fma")))
// Micro-tile MR × NR; K blocks of KC (a packed B micro-panel, KC × NR floats = 32 KiB, stays in L1), MC-row blocks
// of A (stay in L2), N blocks of NC.
inline constexpr std::size_t MR = 8, NR = 32, KC = 256, NC = 1024, MC = 128;

/// Thread-local packing buffers; they grow to the largest shape seen and are then reused (no per-call allocation).
struct pack_buffers {
  std::vector<float> a, b;
};
inline pack_buffers& buffers() {
  static thread_local pack_buffers bufs;
  return bufs;
}

/// acc(MR × NR) = Σ_k op(A)[r, k] · pb[k·NR + j], reading A in place: TransA: op(A)[r, k] = a[k·lda + r] (MR
/// contiguous values per k); otherwise op(A)[r, k] = a[r'·lda + k] with r' = min(r, mr − 1). Then
/// C[r, j] = alpha·acc + beta·C + bias[j] for r < mr, j < nr (beta is 0 or 1; bias may be null).
template <bool TransA>
HIR_NN_AVX512_FN inline void micro_kernel(std::size_t kc, const float* a, std::size_t lda, const float* pb, float* c,
                                          std::size_t ldc, std::size_t mr, std::size_t nr, float alpha, float beta,
                                          const float* bias) {
  __m512 acc0[MR], acc1[MR];
#  pragma GCC unroll 8
  for (std::size_t r = 0; r < MR; ++r) {
    acc0[r] = _mm512_setzero_ps();
    acc1[r] = _mm512_setzero_ps();
  }
  if constexpr (TransA) {
    for (std::size_t k = 0; k < kc; ++k) {
      const __m512 b0 = _mm512_loadu_ps(pb), b1 = _mm512_loadu_ps(pb + 16);
#  pragma GCC unroll 8
      for (std::size_t r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(a[r]);
        acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
      }
      a += lda;
      pb += NR;
    }
  } else {
    const float* ar[MR];
#  pragma GCC unroll 8
    for (std::size_t r = 0; r < MR; ++r)
      ar[r] = a + std::min(r, mr - 1) * lda;
    for (std::size_t k = 0; k < kc; ++k) {
      const __m512 b0 = _mm512_loadu_ps(pb + k * NR), b1 = _mm512_loadu_ps(pb + k * NR + 16);
#  pragma GCC unroll 8
      for (std::size_t r = 0; r < MR; ++r) {
        const __m512 av = _mm512_set1_ps(ar[r][k]);
        acc0[r] = _mm512_fmadd_ps(av, b0, acc0[r]);
        acc1[r] = _mm512_fmadd_ps(av, b1, acc1[r]);
      }
    }
  }
  const __mmask16 m0 = nr >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << nr) - 1u);
  const __mmask16 m1 = nr >= 32 ? __mmask16(0xFFFF) : nr > 16 ? __mmask16((1u << (nr - 16)) - 1u) : __mmask16(0);
  const __m512 va = _mm512_set1_ps(alpha);
  const __m512 bias0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
  const __m512 bias1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
  const bool accumulate = beta != 0.0f;
#  pragma GCC unroll 8
  for (std::size_t r = 0; r < MR; ++r) {
    if (r < mr) {
      float* cr = c + r * ldc;
      __m512 x0 = _mm512_fmadd_ps(acc0[r], va, bias0), x1 = _mm512_fmadd_ps(acc1[r], va, bias1);
      if (accumulate) {
        x0 = _mm512_add_ps(x0, _mm512_maskz_loadu_ps(m0, cr));
        x1 = _mm512_add_ps(x1, _mm512_maskz_loadu_ps(m1, cr + 16));
      }
      _mm512_mask_storeu_ps(cr, m0, x0);
      _mm512_mask_storeu_ps(cr + 16, m1, x1);
    }
  }
}

/// Packs op(B)[k0 .. k0+kc, j0 .. j0+nc) into NR-wide panels: panel p holds pb[p·kc·NR + k·NR + j], zero-padded.
inline void pack_b(bool trans_b, const float* B, std::size_t ldb, std::size_t k0, std::size_t kc, std::size_t j0,
                   std::size_t nc, float* pb) {
  for (std::size_t jp = 0; jp < nc; jp += NR) {
    const std::size_t nr = std::min(NR, nc - jp);
    float* panel = pb + (jp / NR) * kc * NR;
    if (trans_b) { // B stored (N, K): op(B)[k, j] = B[j·ldb + k]
      for (std::size_t j = 0; j < nr; ++j) {
        const float* src = B + (j0 + jp + j) * ldb + k0;
        for (std::size_t k = 0; k < kc; ++k)
          panel[k * NR + j] = src[k];
      }
      if (nr < NR)
        for (std::size_t k = 0; k < kc; ++k)
          std::fill(panel + k * NR + nr, panel + (k + 1) * NR, 0.0f);
    } else { // B stored (K, N)
      for (std::size_t k = 0; k < kc; ++k) {
        const float* src = B + (k0 + k) * ldb + j0 + jp;
        float* dst = panel + k * NR;
        std::copy(src, src + nr, dst);
        std::fill(dst + nr, dst + NR, 0.0f);
      }
    }
  }
}

/// Elements of op(B) (K, N) packed whole: every K block's panels, one block after the other (see pack_all_b).
inline std::size_t packed_b_elements(std::size_t K, std::size_t N) {
  return K * ((N + NR - 1) / NR * NR);
}

/// Packs all of op(B) (K, N) into `pb` (packed_b_elements(K, N)): K block k0 starts at k0·Npad (Npad = N rounded up to
/// NR) and holds the panels pack_b writes for that block, so gemm can read any (k0, j0) block in place.
inline void pack_all_b(bool trans_b, const float* B, std::size_t ldb, std::size_t K, std::size_t N, float* pb) {
  const std::size_t npad = (N + NR - 1) / NR * NR;
  for (std::size_t k0 = 0; k0 < K; k0 += KC)
    pack_b(trans_b, B, ldb, k0, std::min(KC, K - k0), 0, N, pb + k0 * npad);
}

/// C = alpha·op(A)·op(B) + beta·C + bias (see gemm); float, one thread. op(B) is packed once per K block, or read
/// from `prepacked` (pack_all_b's layout) when it is not null; A is read in place (a transposed A's last, partial row
/// panel is copied into a zero-padded MR-wide panel first). Each row of C is computed the same way whatever M is.
inline void gemm(bool trans_a, bool trans_b, std::size_t M, std::size_t N, std::size_t K, float alpha, const float* A,
                 std::size_t lda, const float* B, std::size_t ldb, float beta, float* C, std::size_t ldc,
                 const float* bias, const float* prepacked = nullptr) {
  pack_buffers& bufs = buffers();
  const std::size_t kc_max = std::min(K, KC), nc_max = std::min(N, NC);
  const std::size_t need_b = kc_max * ((nc_max + NR - 1) / NR) * NR, need_a = kc_max * MR;
  if (!prepacked && bufs.b.size() < need_b)
    bufs.b.resize(need_b);
  if (trans_a && M % MR != 0 && bufs.a.size() < need_a)
    bufs.a.resize(need_a);
  const std::size_t npad = (N + NR - 1) / NR * NR;
  for (std::size_t j0 = 0; j0 < N; j0 += NC) {
    const std::size_t nc = std::min(NC, N - j0);
    for (std::size_t k0 = 0; k0 < K; k0 += KC) {
      const std::size_t kc = std::min(KC, K - k0);
      const bool first = k0 == 0;
      const float beta_k = first ? beta : 1.0f;
      const float* bias_k = first && bias ? bias + j0 : nullptr;
      const float* pb = prepacked ? prepacked + k0 * npad + (j0 / NR) * kc * NR : bufs.b.data();
      if (!prepacked)
        pack_b(trans_b, B, ldb, k0, kc, j0, nc, bufs.b.data());
      // Goto's order: MC-row blocks of A (in L2), then one NR-wide B panel (kc × NR, in L1) against every MR-row
      // panel of the block.
      for (std::size_t ib = 0; ib < M; ib += MC) {
        const std::size_t ie = std::min(M, ib + MC);
        if (trans_a && (ie - ib) % MR != 0) { // A stored (K, M): zero-pad the last, partial row panel once
          const std::size_t i0 = ie - (ie - ib) % MR, mr = ie - i0;
          for (std::size_t k = 0; k < kc; ++k)
            for (std::size_t r = 0; r < MR; ++r)
              bufs.a[k * MR + r] = r < mr ? A[(k0 + k) * lda + i0 + r] : 0.0f;
        }
        for (std::size_t jp = 0; jp < nc; jp += NR) {
          const float* panel = pb + (jp / NR) * kc * NR;
          const std::size_t nr = std::min(NR, nc - jp);
          const float* bias_j = bias_k ? bias_k + jp : nullptr;
          for (std::size_t i0 = ib; i0 < ie; i0 += MR) {
            const std::size_t mr = std::min(MR, ie - i0);
            float* c = C + i0 * ldc + j0 + jp;
            if (!trans_a)
              micro_kernel<false>(kc, A + i0 * lda + k0, lda, panel, c, ldc, mr, nr, alpha, beta_k, bias_j);
            else if (mr == MR)
              micro_kernel<true>(kc, A + k0 * lda + i0, lda, panel, c, ldc, mr, nr, alpha, beta_k, bias_j);
            else
              micro_kernel<true>(kc, bufs.a.data(), MR, panel, c, ldc, mr, nr, alpha, beta_k, bias_j);
          }
        }
      }
    }
  }
}

// Lane-wise min/max, rounding, scaling and horizontal reductions through the masked intrinsics with an explicit
// source operand: GCC 12's unmasked forms pass _mm512_undefined_ps() and trip -Wuninitialized (GCC bug 105593).
HIR_NN_AVX512_FN inline __m512 max_ps(__m512 a, __m512 b) {
  return _mm512_mask_max_ps(a, 0xFFFF, a, b);
}
HIR_NN_AVX512_FN inline __m512 min_ps(__m512 a, __m512 b) {
  return _mm512_mask_min_ps(a, 0xFFFF, a, b);
}
/// The 16 lanes combined by `op` (add, max) in a pairwise tree: halves, quarters, pairs, neighbours.
template <class Op>
HIR_NN_AVX512_FN inline float reduce_lanes_ps(__m512 v, Op op) {
  v = op(v, _mm512_mask_shuffle_f32x4(v, 0xFFFF, v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = op(v, _mm512_mask_shuffle_f32x4(v, 0xFFFF, v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  v = op(v, _mm512_mask_permute_ps(v, 0xFFFF, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = op(v, _mm512_mask_permute_ps(v, 0xFFFF, v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_cvtss_f32(v);
}
struct add_lanes {
  HIR_NN_AVX512_FN __m512 operator()(__m512 a, __m512 b) const { return _mm512_add_ps(a, b); }
};
struct max_lanes {
  HIR_NN_AVX512_FN __m512 operator()(__m512 a, __m512 b) const { return max_ps(a, b); }
};
/// Σ of the 16 lanes (pairwise tree).
HIR_NN_AVX512_FN inline float sum_ps(__m512 v) {
  return reduce_lanes_ps(v, add_lanes{});
}
/// max of the 16 lanes.
HIR_NN_AVX512_FN inline float hmax_ps(__m512 v) {
  return reduce_lanes_ps(v, max_lanes{});
}

/// exp(x) of 16 floats: 2^n · p(r) with n = round(x·log₂e), r = x − n·ln 2 (two-part ln 2) and Cephes' expf
/// polynomial (≈ 1 ulp on [−ln2/2, ln2/2]); 2^n by vscalefps, so large negative x flush smoothly to 0.
/// x is clamped to [−104, 88.7] (exp(88.7) is just below FLT_MAX); NaN is not propagated.
HIR_NN_AVX512_FN inline __m512 exp_ps(__m512 x) {
  x = min_ps(max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(88.7f));
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_mask_roundscale_ps(t, 0xFFFF, t, _MM_FROUND_TO_NEAREST_INT);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_mask_scalef_ps(p, 0xFFFF, p, n);
}
} // namespace avx512
#endif

/// Name of the GEMM in use, for benchmark output.
inline const char* gemm_name() {
#if defined(HIR_NN_USE_CBLAS)
  return "cblas";
#elif defined(HIR_NN_AVX512_GEMM)
  return cpu_has_avx512() ? "hir-avx512" : "eigen";
#else
  return "eigen";
#endif
}

/// Makes the BLAS single-threaded (OpenBLAS only; callers parallelize across their own OpenMP threads).
inline void blas_single_thread() {
#if defined(HIR_NN_USE_OPENBLAS)
  static const bool done = (openblas_set_num_threads(1), true);
  (void)done;
#endif
}

/// C(M, N) = alpha · op(A) · op(B) + beta · C (+ bias[j] on every row when bias is not null), row-major with leading
/// dimensions lda/ldb/ldc; op(A) is (M, K), op(B) is (K, N); beta is 0 (overwrite, C may hold garbage) or 1
/// (accumulate).
template <class T>
void gemm(bool trans_a, bool trans_b, std::size_t M, std::size_t N, std::size_t K, T alpha, const T* A, std::size_t lda,
          const T* B, std::size_t ldb, T beta, T* C, std::size_t ldc, const T* bias = nullptr) {
  if (M == 0 || N == 0)
    return;
#if defined(HIR_NN_AVX512_GEMM)
  if constexpr (std::is_same_v<T, float>) {
    if (K > 0 && cpu_has_avx512()) {
      avx512::gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias);
      return;
    }
  }
#endif
  if (bias) { // C = bias, then accumulate
    for (std::size_t i = 0; i < M; ++i)
      for (std::size_t j = 0; j < N; ++j)
        C[i * ldc + j] = (beta == T(0) ? T(0) : C[i * ldc + j]) + bias[j];
    beta = T(1);
  }
#if defined(HIR_NN_USE_CBLAS)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    const auto ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
    const auto m = static_cast<blasint>(M), n = static_cast<blasint>(N), k = static_cast<blasint>(K);
    if constexpr (std::is_same_v<T, float>)
      cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb),
                  beta, C, static_cast<blasint>(ldc));
    else
      cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, A, static_cast<blasint>(lda), B, static_cast<blasint>(ldb),
                  beta, C, static_cast<blasint>(ldc));
    return;
  }
#endif
  using mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using cmap = Eigen::Map<const mat, 0, Eigen::OuterStride<>>;
  using map = Eigen::Map<mat, 0, Eigen::OuterStride<>>;
  const auto ei = [](std::size_t v) { return static_cast<Eigen::Index>(v); };
  map c(C, ei(M), ei(N), Eigen::OuterStride<>(ei(ldc)));
  if (K == 0) {
    if (beta == T(0))
      c.setZero();
    return;
  }
  // Stored shapes: A is (M, K) or, transposed, (K, M); likewise B.
  const cmap a(A, trans_a ? ei(K) : ei(M), trans_a ? ei(M) : ei(K), Eigen::OuterStride<>(ei(lda)));
  const cmap b(B, trans_b ? ei(N) : ei(K), trans_b ? ei(K) : ei(N), Eigen::OuterStride<>(ei(ldb)));
  const auto run = [&](const auto& x, const auto& y) {
    if (beta == T(0))
      c.noalias() = alpha * x * y;
    else
      c.noalias() += alpha * x * y;
  };
  if (!trans_a && !trans_b)
    run(a, b);
  else if (!trans_a && trans_b)
    run(a, b.transpose());
  else if (trans_a && !trans_b)
    run(a.transpose(), b);
  else
    run(a.transpose(), b.transpose());
}

/// True when products of T use packed panels, i.e. pack_weight does something and gemm_weight reads the packing.
template <class T>
bool weight_packing_used() {
#if defined(HIR_NN_AVX512_GEMM)
  if constexpr (std::is_same_v<T, float>)
    return cpu_has_avx512();
#endif
  return false;
}

/// Elements the packing of a Linear weight W (N, K) (row-major, PyTorch's (out, in)) takes; 0 when T's products do
/// not use packed panels (then gemm_weight reads W itself).
template <class T>
std::size_t packed_weight_elements(std::size_t N, std::size_t K) {
#if defined(HIR_NN_AVX512_GEMM)
  if constexpr (std::is_same_v<T, float>)
    if (weight_packing_used<T>())
      return avx512::packed_b_elements(K, N);
#endif
  (void)N;
  (void)K;
  return 0;
}

/// Packs W (N, K) into `packed` (packed_weight_elements(N, K) elements) for gemm_weight; a no-op when that is 0.
template <class T>
void pack_weight(const T* W, std::size_t N, std::size_t K, T* packed) {
#if defined(HIR_NN_AVX512_GEMM)
  if constexpr (std::is_same_v<T, float>)
    if (weight_packing_used<T>()) {
      avx512::pack_all_b(true, W, K, K, N, packed);
      return;
    }
#endif
  (void)W;
  (void)N;
  (void)K;
  (void)packed;
}

/// C(M, N) = A(M, K) · Wᵀ (+ bias) (+ C when `accumulate`) — gemm(false, true, …) with W packed once by pack_weight
/// (`packed` may be null when packed_weight_elements is 0). Bit-identical to the unpacked product; with the AVX-512
/// kernel, accumulating gives exactly C + (A·Wᵀ + bias), i.e. the product followed by a separate residual add.
template <class T>
void gemm_weight(std::size_t M, std::size_t N, std::size_t K, const T* A, std::size_t lda, const T* W, const T* packed,
                 T* C, std::size_t ldc, const T* bias = nullptr, bool accumulate = false) {
  const T beta = accumulate ? T(1) : T(0);
#if defined(HIR_NN_AVX512_GEMM)
  if constexpr (std::is_same_v<T, float>)
    if (packed && M > 0 && N > 0 && K > 0 && weight_packing_used<T>()) {
      avx512::gemm(false, true, M, N, K, 1.0f, A, lda, W, K, beta, C, ldc, bias, packed);
      return;
    }
#endif
  (void)packed;
  gemm<T>(false, true, M, N, K, T(1), A, lda, W, K, beta, C, ldc, bias);
}

} // namespace hir::nn::detail
