// SPDX-License-Identifier: Apache-2.0
// The device backend's tag (hir::device) with its stream and workspace, the execution policy and scratch buffers
// every device algorithm uses, its traits, device views and host<->device copies. Everything here is Thrust and
// compiles with g++ under THRUST_DEVICE_SYSTEM=CPP/OMP as well as with nvcc for CUDA.
#pragma once

#include <thrust/copy.h>
#include <thrust/device_ptr.h>
#include <thrust/device_vector.h>
#include <thrust/execution_policy.h>
#include <thrust/memory.h>

#include <hir/backend/device/workspace.hpp>
#include <hir/config.hpp> // after Thrust, so HIR_DEVICE_IS_CUDA sees THRUST_DEVICE_SYSTEM
#include <hir/core/backend.hpp>

#if HIR_DEVICE_IS_CUDA
#  include <cuda_runtime_api.h>
#  include <thrust/system/cuda/execution_policy.h>
#endif

#include <cstddef>
#include <type_traits>
#include <vector>

namespace hir {
namespace backend {
namespace device {
/// Tag of the device backend: Thrust algorithms on Thrust's device system (CUDA on a GPU; CPP or OMP on a CPU).
/// It carries the workspace that temporary storage comes from (`hir::device.with(ws)`; none by default: plain Thrust
/// allocation per call) and, on CUDA, the stream every entry point runs on (`hir::device.on(stream)`; default 0).
/// The two combine: `hir::device.on(stream).with(ws)`.
struct tag_t : base_t {
  device_workspace* workspace = nullptr;
#if HIR_DEVICE_IS_CUDA
  cudaStream_t stream = nullptr;
  /// The same backend, running on `s`.
  tag_t on(cudaStream_t s) const {
    tag_t t = *this;
    t.stream = s;
    return t;
  }
#endif
  /// The same backend, taking temporary storage from `ws` (which must outlive every call made with the result).
  tag_t with(device_workspace& ws) const {
    tag_t t = *this;
    t.workspace = &ws;
    return t;
  }
};

namespace detail {
/// Allocator of Thrust's algorithm temporaries and hir's scratch buffers: from the tag's workspace when it has one,
/// else Thrust's own temporary allocation (thrust::get_temporary_buffer on the tag's stream).
struct hir_temp_allocator {
  using value_type = char;
  device_workspace* workspace = nullptr;
#if HIR_DEVICE_IS_CUDA
  cudaStream_t stream = nullptr;
  auto base() const {
    return thrust::cuda::par.on(stream);
  }
#else
  static auto base() {
    return thrust::device;
  }
#endif
  char* allocate(std::ptrdiff_t n) {
    if (workspace)
      return static_cast<char*>(workspace->allocate(static_cast<std::size_t>(n)));
    return thrust::raw_pointer_cast(thrust::get_temporary_buffer<char>(base(), n).first);
  }
  void deallocate(char* p, std::size_t n) {
    if (workspace)
      workspace->deallocate(p);
    else
      thrust::return_temporary_buffer(base(), p, static_cast<std::ptrdiff_t>(n));
  }
};

inline hir_temp_allocator temp_allocator(tag_t const& t) {
  hir_temp_allocator a;
  a.workspace = t.workspace;
#if HIR_DEVICE_IS_CUDA
  a.stream = t.stream;
#endif
  return a;
}

/// The Thrust execution policy of a device tag: `thrust::cuda::par(alloc).on(stream)` on CUDA,
/// `thrust::device(alloc)` otherwise, where `alloc` takes Thrust's temporaries from the tag's workspace (if any).
#if HIR_DEVICE_IS_CUDA
inline auto policy(tag_t const& t) {
  return thrust::cuda::par(temp_allocator(t)).on(t.stream);
}
#else
inline auto policy(tag_t const& t) {
  return thrust::device(temp_allocator(t));
}
#endif

/// A device array of n trivially copyable T for the duration of a call, from the tag's workspace when it has one,
/// else from Thrust's temporary allocation. Not initialized; movable (so a helper can return one), not copyable.
template <class T>
class scratch_buffer {
  static_assert(std::is_trivially_copyable<T>::value && std::is_trivially_destructible<T>::value,
                "hir: scratch_buffer holds trivially copyable, trivially destructible types only");

public:
  scratch_buffer(tag_t const& be, std::size_t n) : alloc_(temp_allocator(be)), n_(n) {
    if (n > 0)
      p_ = reinterpret_cast<T*>(alloc_.allocate(static_cast<std::ptrdiff_t>(n * sizeof(T))));
  }
  scratch_buffer(scratch_buffer&& o) noexcept : alloc_(o.alloc_), p_(o.p_), n_(o.n_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  scratch_buffer(const scratch_buffer&) = delete;
  scratch_buffer& operator=(const scratch_buffer&) = delete;
  scratch_buffer& operator=(scratch_buffer&&) = delete;
  ~scratch_buffer() {
    if (p_)
      alloc_.deallocate(reinterpret_cast<char*>(p_), n_ * sizeof(T));
  }

  T* data() const noexcept { return p_; }
  std::size_t size() const noexcept { return n_; }
  bool empty() const noexcept { return n_ == 0; }
  thrust::device_ptr<T> begin() const noexcept { return thrust::device_pointer_cast(p_); }
  thrust::device_ptr<T> end() const noexcept { return begin() + static_cast<std::ptrdiff_t>(n_); }
  span<T, device_space> view() const noexcept { return {p_, n_}; }

private:
  hir_temp_allocator alloc_;
  T* p_ = nullptr;
  std::size_t n_ = 0;
};
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
