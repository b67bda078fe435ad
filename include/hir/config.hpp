// SPDX-License-Identifier: Apache-2.0
// Compiler and device-system configuration: host/device annotations, the CUDA switch and assertions.
#pragma once

#include <hir/version.hpp>

/// `__host__ __device__` under a CUDA compiler, nothing under a host compiler (g++ does not know the keywords).
#if defined(__CUDACC__)
#  define HIR_HOST_DEVICE __host__ __device__
#  define HIR_DEVICE __device__
#else
#  define HIR_HOST_DEVICE
#  define HIR_DEVICE
#endif

/// `__noinline__` in nvcc's device pass only: for per-group / per-row kernels called from Thrust's for_each, whose
/// CUDA kernel handles several items per thread; inlined into each item's copy (and unswitched on the options), one
/// such body grew to ~10^5 PTX lines per instantiation and minutes of ptxas. Host code is unaffected.
#if defined(__CUDA_ARCH__)
#  define HIR_DEVICE_NOINLINE __noinline__
#else
#  define HIR_DEVICE_NOINLINE
#endif

/// 1 when the device backend is compiled for CUDA (Thrust's device system is CUDA and nvcc compiles), else 0.
/// Decided from THRUST_DEVICE_SYSTEM, so it is only meaningful once Thrust's config is included (device.hpp does).
#if defined(THRUST_DEVICE_SYSTEM) && defined(THRUST_DEVICE_SYSTEM_CUDA) && defined(__CUDACC__)
#  if THRUST_DEVICE_SYSTEM == THRUST_DEVICE_SYSTEM_CUDA
#    define HIR_DEVICE_IS_CUDA 1
#  endif
#endif
#ifndef HIR_DEVICE_IS_CUDA
#  define HIR_DEVICE_IS_CUDA 0
#endif

/// CUB fast paths on CUDA (OFF keeps the portable Thrust path on CUDA too, so it can be tested there).
#ifndef HIR_ENABLE_CUB
#  define HIR_ENABLE_CUB 1
#endif

#define HIR_NODISCARD [[nodiscard]]

/// Hot-path invariant: active unless NDEBUG, never throws (usable in device code).
#if defined(NDEBUG)
#  define HIR_ASSERT(cond, msg) ((void)0)
#else
#  include <cassert>
#  define HIR_ASSERT(cond, msg) assert((cond) && msg)
#endif
