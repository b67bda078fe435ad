// SPDX-License-Identifier: Apache-2.0
// Backend tags and traits. Every hir algorithm takes a backend tag as its first argument (hir::cpu or
// hir::device) and dispatches by overload on the tag's type, found by argument-dependent lookup (Thrust's
// execution-policy model without CRTP). Per-backend types (memory space, owning vector) come from traits.
#pragma once

#include <hir/core/span.hpp>

#include <type_traits>

namespace hir {
namespace backend {

/// Base of every backend tag; generic fallbacks take `base_t const&` so a backend's exact overload outranks them.
struct base_t {};

/// Per-backend types: `memory_space` and `template <class T> using vector`. Specialized by each backend's tag.hpp.
template <class Backend>
struct traits;

/// True for hir::backend::cpu::tag_t, hir::backend::device::tag_t and user backends derived from base_t.
template <class B>
inline constexpr bool is_backend_v = std::is_base_of_v<base_t, B> && !std::is_same_v<base_t, B>;

} // namespace backend

/// The memory space a backend's data lives in (host_space or device_space).
template <class Backend>
using memory_space_t = typename backend::traits<Backend>::memory_space;

/// The owning vector type of a backend (std::vector for hir::cpu, thrust::device_vector for hir::device).
template <class T, class Backend>
using vector = typename backend::traits<Backend>::template vector<T>;

/// A span of T in the memory space of Backend: what hir's algorithms take and write.
template <class T, class Backend>
using span_for = span<T, memory_space_t<Backend>>;

namespace detail {
template <class Backend>
constexpr void check_backend() {
  static_assert(backend::is_backend_v<Backend>,
                "hir: the first argument must be a backend tag: hir::cpu or hir::device");
}
} // namespace detail
} // namespace hir
