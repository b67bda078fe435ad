// SPDX-License-Identifier: Apache-2.0
// The one matrix-product primitive of the CPU transformer: row-major C = alpha·op(A)·op(B) + beta·C (+ a bias per
// column) on one thread. float products run on hir's own AVX-512 kernel when the CPU has AVX-512F (chosen at run time,
// so a build without -march=native is fast too): op(A) and op(B) are packed into thread-local panels (allocated once,
// reused by every later call) and a 12 × 32 register-blocked micro-kernel accumulates them; the small, skinny shapes
// of the transformer (K = 96…512, N = 96…512) leave Eigen's and OpenBLAS's per-call costs (blocking heuristics,
// packing buffers) visible, which this path avoids. Everything else (double, CPUs without AVX-512) goes to Eigen
// through Eigen::Map (no copies). Define HIR_NN_USE_CBLAS (and link a CBLAS, e.g. Debian's OpenBLAS) to hand every
// product to cblas_sgemm / cblas_dgemm instead. The callers split work across threads themselves, so the BLAS must
// run single-threaded (hir::nn::detail::blas_single_thread() tells OpenBLAS so when HIR_NN_USE_OPENBLAS).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cstddef>
#include <type_traits>
#include <vector>

#if !defined(HIR_NN_USE_CBLAS) && !defined(HIR_NN_NO_AVX512) && (defined(__x86_64__) || defined(__i386__)) &&          \
    (defined(__GNUC__) || defined(__clang__))
#  define HIR_NN_HAVE_AVX512_KERNEL 1
#  include <immintrin.h>
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
inline constexpr std::size_t MR = 8, NR = 32, KC = 384, NC = 1024;

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

/// C = alpha·op(A)·op(B) + beta·C + bias (see gemm); float, one thread. op(B) is packed (once per K block); A is
/// read in place (a transposed A's last, partial row panel is copied into a zero-padded MR-wide panel first).
inline void gemm(bool trans_a, bool trans_b, std::size_t M, std::size_t N, std::size_t K, float alpha, const float* A,
                 std::size_t lda, const float* B, std::size_t ldb, float beta, float* C, std::size_t ldc,
                 const float* bias) {
  pack_buffers& bufs = buffers();
  const std::size_t kc_max = std::min(K, KC), nc_max = std::min(N, NC);
  const std::size_t need_b = kc_max * ((nc_max + NR - 1) / NR) * NR, need_a = kc_max * MR;
  if (bufs.b.size() < need_b)
    bufs.b.resize(need_b);
  if (trans_a && M % MR != 0 && bufs.a.size() < need_a)
    bufs.a.resize(need_a);
  float* pb = bufs.b.data();
  for (std::size_t j0 = 0; j0 < N; j0 += NC) {
    const std::size_t nc = std::min(NC, N - j0);
    for (std::size_t k0 = 0; k0 < K; k0 += KC) {
      const std::size_t kc = std::min(KC, K - k0);
      const bool first = k0 == 0;
      const float beta_k = first ? beta : 1.0f;
      const float* bias_k = first && bias ? bias + j0 : nullptr;
      pack_b(trans_b, B, ldb, k0, kc, j0, nc, pb);
      for (std::size_t i0 = 0; i0 < M; i0 += MR) {
        const std::size_t mr = std::min(MR, M - i0);
        float* c = C + i0 * ldc + j0;
        if (trans_a) { // A stored (K, M)
          const float* a = A + k0 * lda + i0;
          std::size_t la = lda;
          if (mr < MR) {
            float* pa = bufs.a.data();
            for (std::size_t k = 0; k < kc; ++k)
              for (std::size_t r = 0; r < MR; ++r)
                pa[k * MR + r] = r < mr ? a[k * lda + r] : 0.0f;
            a = pa;
            la = MR;
          }
          for (std::size_t jp = 0; jp < nc; jp += NR)
            micro_kernel<true>(kc, a, la, pb + (jp / NR) * kc * NR, c + jp, ldc, mr, std::min(NR, nc - jp), alpha,
                               beta_k, bias_k ? bias_k + jp : nullptr);
        } else {
          const float* a = A + i0 * lda + k0;
          for (std::size_t jp = 0; jp < nc; jp += NR)
            micro_kernel<false>(kc, a, lda, pb + (jp / NR) * kc * NR, c + jp, ldc, mr, std::min(NR, nc - jp), alpha,
                                beta_k, bias_k ? bias_k + jp : nullptr);
        }
      }
    }
  }
}
#  undef HIR_NN_AVX512_FN
} // namespace avx512
#endif

/// Name of the GEMM in use, for benchmark output.
inline const char* gemm_name() {
#if defined(HIR_NN_USE_CBLAS)
  return "cblas";
#elif defined(HIR_NN_HAVE_AVX512_KERNEL)
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
#if defined(HIR_NN_HAVE_AVX512_KERNEL)
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

} // namespace hir::nn::detail
