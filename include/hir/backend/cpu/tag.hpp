// SPDX-License-Identifier: Apache-2.0
// The CPU backend's tag (hir::cpu), its traits and host views of std::vector.
#pragma once

#include <hir/core/backend.hpp>

#include <vector>

namespace hir {
namespace backend {
namespace cpu {
/// Tag of the CPU backend: plain loops and Eigen over host memory, double accumulation.
struct tag_t : base_t {};
} // namespace cpu

template <>
struct traits<cpu::tag_t> {
  using memory_space = host_space;
  template <class T>
  using vector = std::vector<T>;
  /// Raw pointer to a vector's elements.
  template <class V>
  static auto raw(V& v) noexcept {
    return v.data();
  }
};
} // namespace backend

/// The CPU backend object passed as the first argument of every algorithm.
inline constexpr backend::cpu::tag_t cpu{};

/// A host span over a whole std::vector.
template <class T, class A>
span<T, host_space> view(std::vector<T, A>& v) noexcept {
  return {v.data(), v.size()};
}
template <class T, class A>
span<const T, host_space> view(const std::vector<T, A>& v) noexcept {
  return {v.data(), v.size()};
}

/// Copies a host vector into the CPU backend's vector type (the identity copy; mirrors the device overload).
template <class T>
std::vector<T> to_backend(backend::cpu::tag_t const&, const std::vector<T>& host) {
  return host;
}
/// Copies a CPU backend span to a host std::vector.
template <class T>
std::vector<std::remove_cv_t<T>> to_host(span<T, host_space> s) {
  return std::vector<std::remove_cv_t<T>>(s.begin(), s.end());
}
template <class T, class A>
std::vector<T> to_host(const std::vector<T, A>& v) {
  return std::vector<T>(v.begin(), v.end());
}

} // namespace hir
