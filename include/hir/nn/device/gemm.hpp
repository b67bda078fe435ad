// SPDX-License-Identifier: Apache-2.0
// Matrix products of the device transformer: a row-major (strided-batched) GEMM C = α·op(A)·op(B) + β·C on the device
// backend. On CUDA it calls cuBLAS (cublasSgemm/cublasDgemm and their StridedBatched forms, operands swapped for row
// major) on the tag's stream with one handle per host thread and device, created on first use; link CUDA::cublas
// (the hir::nn_cuda CMake target does). Elsewhere — Thrust's CPP/OMP systems, or CUDA with HIR_NN_USE_CUBLAS=0 — a
// portable Thrust GEMM computes one output element per functor call (slow, but it runs in the CPU CI and serves as
// the reference on a GPU). Also the CUDA/cuBLAS error checks and the host<->device scalar transfers the layers use.
#pragma once

#include <hir/backend/device/tag.hpp> // first: Thrust's config decides HIR_DEVICE_IS_CUDA

#include <hir/config.hpp>
#include <hir/core/error.hpp>

#include <thrust/copy.h>
#include <thrust/device_ptr.h>
#include <thrust/for_each.h>
#include <thrust/iterator/counting_iterator.h>

#include <climits>
#include <cstddef>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

/// 1: the device transformer's GEMMs call cuBLAS (CUDA only; link CUDA::cublas, e.g. through hir::nn_cuda).
/// 0: the portable Thrust GEMM everywhere. Defaults to HIR_DEVICE_IS_CUDA.
#ifndef HIR_NN_USE_CUBLAS
#  define HIR_NN_USE_CUBLAS HIR_DEVICE_IS_CUDA
#endif
#if HIR_NN_USE_CUBLAS && !HIR_DEVICE_IS_CUDA
#  error "HIR_NN_USE_CUBLAS=1 needs the CUDA device system and nvcc"
#endif
#if HIR_NN_USE_CUBLAS
#  include <cublas_v2.h>
#endif

namespace hir {
namespace backend {
namespace device {
namespace detail {

#if HIR_DEVICE_IS_CUDA
/// Throws hir::cuda_error "hir::<fn>: <what>: <CUDA's message>" unless err is cudaSuccess.
inline void nn_cuda_check(cudaError_t err, const char* fn, const char* what) {
  if (err != cudaSuccess)
    throw hir::cuda_error(static_cast<int>(err), hir::detail::message(fn, what, ": ", cudaGetErrorString(err)));
}
#endif

#if HIR_NN_USE_CUBLAS
/// Throws hir::cuda_error (code() = the cublasStatus_t) "hir::<fn>: <what> failed: <status>" unless st is success.
inline void nn_cublas_check(cublasStatus_t st, const char* fn, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw hir::cuda_error(static_cast<int>(st), hir::detail::message(fn, what, " failed: ", cublasGetStatusString(st),
                                                                     " (cublasStatus_t ", static_cast<int>(st), ")"));
}

/// The cuBLAS handle of the calling host thread for the current device, created on first use and destroyed when
/// the thread exits (cuBLAS handles are not meant to be shared between threads that use them concurrently).
inline cublasHandle_t nn_cublas_handle(const char* fn) {
  struct cache {
    std::vector<std::pair<int, cublasHandle_t>> handles;
    ~cache() {
      for (auto& h : handles)
        cublasDestroy(h.second); // errors ignored: a destructor must not throw
    }
  };
  thread_local cache c;
  int dev = 0;
  nn_cuda_check(cudaGetDevice(&dev), fn, "cudaGetDevice");
  for (const auto& h : c.handles)
    if (h.first == dev)
      return h.second;
  cublasHandle_t h = nullptr;
  nn_cublas_check(cublasCreate(&h), fn, "cublasCreate");
  c.handles.emplace_back(dev, h);
  return h;
}

inline int nn_cublas_int(std::size_t v, const char* fn) {
  if (v > static_cast<std::size_t>(INT_MAX))
    hir::detail::fail(fn, "a GEMM dimension of ", v, " exceeds cuBLAS's int range");
  return static_cast<int>(v);
}

inline cublasStatus_t nn_cublas_gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                     const float* alpha, const float* A, int lda, long long sA, const float* B, int ldb,
                                     long long sB, const float* beta, float* C, int ldc, long long sC, int batch) {
  if (batch == 1)
    return cublasSgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  return cublasSgemmStridedBatched(h, ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch);
}
inline cublasStatus_t nn_cublas_gemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                     const double* alpha, const double* A, int lda, long long sA, const double* B,
                                     int ldb, long long sB, const double* beta, double* C, int ldc, long long sC,
                                     int batch) {
  if (batch == 1)
    return cublasDgemm(h, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, ldc);
  return cublasDgemmStridedBatched(h, ta, tb, m, n, k, alpha, A, lda, sA, B, ldb, sB, beta, C, ldc, sC, batch);
}
#endif

/// One output element of the portable row-major batched GEMM per call: e = (b·M + i)·N + j.
template <class T>
struct hir_nn_gemm_element {
  bool ta, tb;
  std::size_t M, N, K;
  T alpha, beta;
  const T* A;
  std::size_t lda, sA;
  const T* B;
  std::size_t ldb, sB;
  T* C;
  std::size_t ldc, sC;
  HIR_HOST_DEVICE void operator()(std::size_t e) const {
    const std::size_t b = e / (M * N), r = e % (M * N), i = r / N, j = r % N;
    const T* a = A + b * sA;
    const T* bb = B + b * sB;
    // op(A)(i, k) and op(B)(k, j): steps along k in each operand.
    const T* ap = ta ? a + i : a + i * lda;
    const std::size_t as = ta ? lda : 1;
    const T* bp = tb ? bb + j * ldb : bb + j;
    const std::size_t bs = tb ? 1 : ldb;
    T s = T(0);
    for (std::size_t k = 0; k < K; ++k)
      s += ap[k * as] * bp[k * bs];
    T* c = C + b * sC + i * ldc + j;
    *c = beta == T(0) ? alpha * s : alpha * s + beta * *c; // β = 0 never reads C (it may hold garbage)
  }
};

/// Row-major batched GEMM on the device backend: for b < batch, C_b (M×N, leading dimension ldc) =
/// α·op(A_b)·op(B_b) + β·C_b with op(X) = Xᵀ when the flag is set, X_b = X + b·stride. op(A) is M×K, op(B) K×N.
/// `fn` names the calling layer in errors. β = 0 does not read C. cuBLAS on CUDA (see the file comment), the
/// portable Thrust functor otherwise.
template <class T>
void nn_gemm(tag_t const& be, const char* fn, bool ta, bool tb, std::size_t M, std::size_t N, std::size_t K, T alpha,
             const T* A, std::size_t lda, std::size_t sA, const T* B, std::size_t ldb, std::size_t sB, T beta, T* C,
             std::size_t ldc, std::size_t sC, std::size_t batch = 1) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "hir::nn: device GEMMs are float or double");
  if (M == 0 || N == 0 || batch == 0)
    return;
#if HIR_NN_USE_CUBLAS
  // Row major C = op(A)·op(B) is column major Cᵀ = op(B)ᵀ·op(A)ᵀ: swap the operands and their roles.
  const cublasHandle_t h = nn_cublas_handle(fn);
  nn_cublas_check(cublasSetStream(h, be.stream), fn, "cublasSetStream");
  const cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  nn_cublas_check(nn_cublas_gemm(h, opb, opa, nn_cublas_int(N, fn), nn_cublas_int(M, fn), nn_cublas_int(K, fn), &alpha,
                                 B, nn_cublas_int(ldb, fn), static_cast<long long>(sB), A, nn_cublas_int(lda, fn),
                                 static_cast<long long>(sA), &beta, C, nn_cublas_int(ldc, fn),
                                 static_cast<long long>(sC), nn_cublas_int(batch, fn)),
                  fn,
                  std::is_same_v<T, float> ? (batch == 1 ? "cublasSgemm" : "cublasSgemmStridedBatched")
                                           : (batch == 1 ? "cublasDgemm" : "cublasDgemmStridedBatched"));
#else
  (void)fn;
  thrust::for_each_n(policy(be), thrust::counting_iterator<std::size_t>(0), batch * M * N,
                     hir_nn_gemm_element<T>{ta, tb, M, N, K, alpha, beta, A, lda, sA, B, ldb, sB, C, ldc, sC});
#endif
}

/// Copies n host values to device memory on the tag's stream (cudaMemcpyAsync; the host buffer may be reused as soon
/// as this returns, pageable memory being staged by the call). CPP/OMP: a plain copy.
template <class T>
void nn_copy_to_device(tag_t const& be, T* dst, const T* src, std::size_t n, const char* fn) {
  if (n == 0)
    return;
#if HIR_DEVICE_IS_CUDA
  nn_cuda_check(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyHostToDevice, be.stream), fn,
                "cudaMemcpyAsync (host to device)");
#else
  (void)be;
  (void)fn;
  thrust::copy(src, src + n, thrust::device_pointer_cast(dst));
#endif
}

/// Copies n device values to host memory after the work queued on the tag's stream (synchronizes that stream).
template <class T>
void nn_copy_to_host(tag_t const& be, T* dst, const T* src, std::size_t n, const char* fn) {
  if (n == 0)
    return;
#if HIR_DEVICE_IS_CUDA
  nn_cuda_check(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDeviceToHost, be.stream), fn,
                "cudaMemcpyAsync (device to host)");
  nn_cuda_check(cudaStreamSynchronize(be.stream), fn, "cudaStreamSynchronize");
#else
  (void)be;
  (void)fn;
  thrust::copy(thrust::device_pointer_cast(src), thrust::device_pointer_cast(src) + n, dst);
#endif
}

/// Reads one value from device memory after the work queued on the tag's stream (synchronizes that stream).
template <class T>
T nn_read_scalar(tag_t const& be, const T* src, const char* fn) {
  T v{};
  nn_copy_to_host(be, &v, src, 1, fn);
  return v;
}

} // namespace detail
} // namespace device
} // namespace backend
} // namespace hir
