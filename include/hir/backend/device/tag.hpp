// SPDX-License-Identifier: Apache-2.0
// The device backend's tag (hir::device), its traits, device views and host<->device copies. Everything here is
// Thrust and compiles with g++ under THRUST_DEVICE_SYSTEM=CPP/OMP as well as with nvcc for CUDA.
#pragma once

#include <thrust/copy.h>
#include <thrust/device_ptr.h>
#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>

#include <hir/config.hpp> // after Thrust, so HIR_DEVICE_IS_CUDA sees THRUST_DEVICE_SYSTEM
#include <hir/core/backend.hpp>

#if HIR_DEVICE_IS_CUDA
#  include <cuda_runtime_api.h>
#  include <thrust/system/cuda/execution_policy.h>
#endif

#include <vector>

namespace hir {
namespace backend {
namespace device {
/// Tag of the device backend: Thrust algorithms on Thrust's device system (CUDA on a GPU; CPP or OMP on a CPU).
/// On CUDA it carries the stream every entry point runs on (`hir::device.on(stream)`); the default stream is 0.
struct tag_t : base_t {
#if HIR_DEVICE_IS_CUDA
  cudaStream_t stream = nullptr;
  /// The same backend, running on `s`.
  tag_t on(cudaStream_t s) const {
    tag_t t;
    t.stream = s;
    return t;
  }
#endif
};

namespace detail {
/// The Thrust execution policy for a device tag: `thrust::cuda::par.on(stream)` on CUDA, `thrust::device` otherwise.
#if HIR_DEVICE_IS_CUDA
inline auto policy(tag_t const& t) {
  return thrust::cuda::par.on(t.stream);
}
#else
inline auto policy(tag_t const&) {
  return thrust::device;
}
#endif
} // namespace detail
} // namespace device

template <>
struct traits<device::tag_t> {
  using memory_space = device_space;
  template <class T>
  using vector = thrust::device_vector<T>;
  /// Raw (device) pointer to a vector's elements.
  template <class V>
  static auto raw(V& v) noexcept {
    return thrust::raw_pointer_cast(v.data());
  }
};
} // namespace backend

/// The device backend object passed as the first argument of every algorithm.
inline constexpr backend::device::tag_t device{};

/// A device span over a whole thrust::device_vector.
template <class T, class A>
span<T, device_space> view(thrust::device_vector<T, A>& v) noexcept {
  return {thrust::raw_pointer_cast(v.data()), v.size()};
}
template <class T, class A>
span<const T, device_space> view(const thrust::device_vector<T, A>& v) noexcept {
  return {thrust::raw_pointer_cast(v.data()), v.size()};
}

/// Copies a host vector to a new device vector.
template <class T>
thrust::device_vector<T> to_backend(backend::device::tag_t const&, const std::vector<T>& host) {
  return thrust::device_vector<T>(host.begin(), host.end());
}
/// Copies a device span to a host std::vector (one explicit device-to-host transfer).
template <class T>
std::vector<std::remove_cv_t<T>> to_host(span<T, device_space> s) {
  std::vector<std::remove_cv_t<T>> out(s.size());
  auto first = thrust::device_pointer_cast(s.data());
  thrust::copy(first, first + s.size(), out.begin());
  return out;
}
template <class T, class A>
std::vector<T> to_host(const thrust::device_vector<T, A>& v) {
  std::vector<T> out(v.size());
  thrust::copy(v.begin(), v.end(), out.begin());
  return out;
}

} // namespace hir
