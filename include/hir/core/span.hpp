// SPDX-License-Identifier: Apache-2.0
// hir::span<T, Space>: a pointer and a size tagged with the memory space it lives in, so a host pointer cannot be
// handed to the device backend by accident (Thrust's device_ptr idea, without the iterator machinery).
#pragma once

#include <hir/config.hpp>

#include <cstddef>
#include <type_traits>
#include <vector>

namespace hir {

/// Memory that the host can dereference (the CPU backend's vectors, std::vector, plain arrays).
struct host_space {};
/// Memory owned by the device backend (thrust::device_vector). Under Thrust's CPP/OMP systems it is host memory,
/// but hir still treats it as device memory so that code written for CPU systems also runs on a GPU.
struct device_space {};

/// A non-owning view of `size()` elements of T in memory space `Space`.
template <class T, class Space = host_space>
class span {
public:
  using element_type = T;
  using value_type = std::remove_cv_t<T>;
  using memory_space = Space;

  constexpr span() noexcept = default;
  HIR_HOST_DEVICE constexpr span(T* data, std::size_t size) noexcept : data_(data), size_(size) {}

  /// A span of const T from a span of T.
  template <class U, class = std::enable_if_t<std::is_same_v<const U, T> && !std::is_same_v<U, T>>>
  HIR_HOST_DEVICE constexpr span(span<U, Space> other) noexcept : data_(other.data()), size_(other.size()) {}

  /// Host spans convert from contiguous containers (std::vector, std::array, ...); a span of const T also from
  /// a temporary, which must outlive the call it is passed to.
  template <class V, class S = Space, class C = std::remove_reference_t<V>,
            class = std::enable_if_t<std::is_same_v<S, host_space> && !std::is_same_v<std::decay_t<V>, span> &&
                                     std::is_convertible_v<decltype(std::declval<C&>().data()), T*> &&
                                     (std::is_lvalue_reference_v<V> || std::is_const_v<T>)>,
            class = decltype(std::declval<C&>().size())>
  constexpr span(V&& v) noexcept : data_(v.data()), size_(v.size()) {}

  HIR_HOST_DEVICE constexpr T* data() const noexcept { return data_; }
  HIR_HOST_DEVICE constexpr std::size_t size() const noexcept { return size_; }
  HIR_HOST_DEVICE constexpr bool empty() const noexcept { return size_ == 0; }
  HIR_HOST_DEVICE constexpr T* begin() const noexcept { return data_; }
  HIR_HOST_DEVICE constexpr T* end() const noexcept { return data_ + size_; }
  /// Element access; only meaningful where the caller can dereference `Space` (host code for host_space).
  HIR_HOST_DEVICE constexpr T& operator[](std::size_t i) const noexcept { return data_[i]; }
  HIR_HOST_DEVICE constexpr span subspan(std::size_t offset, std::size_t count) const noexcept {
    return span(data_ + offset, count);
  }

private:
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Host span over a std::vector (deduction helper).
template <class T, class A>
span<T, host_space> host_span(std::vector<T, A>& v) noexcept {
  return {v.data(), v.size()};
}
template <class T, class A>
span<const T, host_space> host_span(const std::vector<T, A>& v) noexcept {
  return {v.data(), v.size()};
}

} // namespace hir
