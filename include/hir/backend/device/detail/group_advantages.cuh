// SPDX-License-Identifier: Apache-2.0
// CUDA fast path of group_advantages for uniform, contiguous groups of G ∈ {2, 4, 8, 16, 32}: one thread per score,
// coalesced loads and stores, the group's sum, min, max and centred sum of squares reduced in double with warp
// shuffles inside G-lane segments. Same semantics as detail::group_advantages_one (exact zeros for constant groups);
// the summation order differs, so results match the portable path within rounding, not bitwise.
#pragma once

#include <hir/advantages/group_advantages.hpp>
#include <hir/config.hpp>
#include <hir/core/error.hpp>

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

namespace hir {
namespace backend {
namespace device {
namespace detail {

template <int G>
__device__ inline double hir_segment_sum(double v) {
#pragma unroll
  for (int off = G / 2; off > 0; off >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, off, G);
  return v;
}
template <int G>
__device__ inline double hir_segment_min(double v) {
#pragma unroll
  for (int off = G / 2; off > 0; off >>= 1) {
    const double o = __shfl_xor_sync(0xffffffffu, v, off, G);
    v = o < v ? o : v;
  }
  return v;
}
template <int G>
__device__ inline double hir_segment_max(double v) {
#pragma unroll
  for (int off = G / 2; off > 0; off >>= 1) {
    const double o = __shfl_xor_sync(0xffffffffu, v, off, G);
    v = o > v ? o : v;
  }
  return v;
}

template <int G, class T>
__global__ void hir_group_advantages_uniform_kernel(const T* __restrict__ s, T* __restrict__ out, std::size_t n,
                                                    group_advantage_options opt, double batch_denominator) {
  const std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  // Every lane takes part in the shuffles; n is a multiple of G, so a segment is entirely valid or entirely not.
  const bool valid = i < n;
  const double v = valid ? static_cast<double>(s[i]) : 0.0;
  const double sum = hir_segment_sum<G>(v);
  const double lo = hir_segment_min<G>(v), hi = hir_segment_max<G>(v);
  const double dn = static_cast<double>(G), mean = sum / dn;
  const double d = v - mean;
  const double ss = hir_segment_sum<G>(d * d);
  if (!valid)
    return;
  if (lo == hi) { // constant group: exact zero
    out[i] = T(0);
    return;
  }
  double inv = 1.0;
  if (opt.scale == scale_kind::group_std) {
    double var = ss / (opt.std == std_kind::unbiased ? dn - 1.0 : dn);
    var = var < opt.variance_floor ? opt.variance_floor : var;
    inv = 1.0 / (sqrt(var) + opt.epsilon);
  } else if (opt.scale == scale_kind::batch_std) {
    inv = 1.0 / batch_denominator;
  }
  if (opt.baseline == baseline_kind::none)
    out[i] = static_cast<T>(v * inv);
  else if (opt.baseline == baseline_kind::leave_one_out)
    out[i] = static_cast<T>(d * (dn / (dn - 1.0)) * inv);
  else
    out[i] = static_cast<T>(d * inv);
}

/// Launches the fast path on `stream` if the layout qualifies; returns false (nothing launched) otherwise.
template <class T>
bool group_advantages_uniform_cuda(const T* s, T* out, std::size_t n, std::size_t group_size,
                                   const group_advantage_options& opt, double batch_denominator, cudaStream_t stream) {
  if (n == 0)
    return true;
  constexpr unsigned threads = 256;
  const unsigned blocks = static_cast<unsigned>((n + threads - 1) / threads);
  switch (group_size) {
  case 2:
    hir_group_advantages_uniform_kernel<2><<<blocks, threads, 0, stream>>>(s, out, n, opt, batch_denominator);
    break;
  case 4:
    hir_group_advantages_uniform_kernel<4><<<blocks, threads, 0, stream>>>(s, out, n, opt, batch_denominator);
    break;
  case 8:
    hir_group_advantages_uniform_kernel<8><<<blocks, threads, 0, stream>>>(s, out, n, opt, batch_denominator);
    break;
  case 16:
    hir_group_advantages_uniform_kernel<16><<<blocks, threads, 0, stream>>>(s, out, n, opt, batch_denominator);
    break;
  case 32:
    hir_group_advantages_uniform_kernel<32><<<blocks, threads, 0, stream>>>(s, out, n, opt, batch_denominator);
    break;
  default:
    return false;
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw hir::cuda_error(static_cast<int>(err),
                          std::string("hir::group_advantages: kernel launch failed: ") + cudaGetErrorString(err));
  return true;
}

} // namespace detail
} // namespace device
} // namespace backend
} // namespace hir
