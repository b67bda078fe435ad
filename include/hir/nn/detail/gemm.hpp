// SPDX-License-Identifier: Apache-2.0
// The one matrix-product primitive of the CPU transformer: row-major C = alpha·op(A)·op(B) + beta·C on one thread.
// By default Eigen computes it through Eigen::Map (no copies). Define HIR_NN_USE_CBLAS (and link a CBLAS, e.g.
// Debian's OpenBLAS) to hand it to cblas_sgemm / cblas_dgemm instead: OpenBLAS's AVX-512 kernels are faster on the
// transformer's skinny shapes and allocate nothing per call. The callers split work across threads themselves, so the
// BLAS must run single-threaded (hir::nn::detail::blas_single_thread() tells OpenBLAS so when HIR_NN_USE_OPENBLAS).
#pragma once

#include <Eigen/Core>

#include <cstddef>
#include <type_traits>

#if defined(HIR_NN_USE_CBLAS)
#  include <cblas.h>
#endif
#if defined(HIR_NN_USE_OPENBLAS)
extern "C" void openblas_set_num_threads(int num_threads);
#endif

namespace hir::nn::detail {

/// Name of the GEMM in use, for benchmark output.
inline const char* gemm_name() {
#if defined(HIR_NN_USE_CBLAS)
  return "cblas";
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

/// C(M, N) = alpha · op(A) · op(B) + beta · C, row-major with leading dimensions lda/ldb/ldc; op(A) is (M, K), op(B)
/// is (K, N); beta is 0 (overwrite, C may hold garbage) or 1 (accumulate).
template <class T>
void gemm(bool trans_a, bool trans_b, std::size_t M, std::size_t N, std::size_t K, T alpha, const T* A, std::size_t lda,
          const T* B, std::size_t ldb, T beta, T* C, std::size_t ldc) {
  if (M == 0 || N == 0)
    return;
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
