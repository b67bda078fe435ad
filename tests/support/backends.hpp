// SPDX-License-Identifier: Apache-2.0
// The backend a test executable runs: hir::cpu (HIR_TEST_DEVICE=0, <hir/hir.hpp>) or hir::device
// (HIR_TEST_DEVICE=1, <hir/device.hpp>). Test bodies are written once as TEST_CASE_TEMPLATE(..., B, HIR_TEST_BACKEND)
// and read results only through explicit copies to the host (hir::to_host).
#pragma once

#if HIR_TEST_DEVICE
#  include <hir/device.hpp>
#  define HIR_TEST_BACKEND hir::backend::device::tag_t
#  define HIR_TEST_BACKEND_NAME "device"
#else
#  include <hir/hir.hpp>
#  define HIR_TEST_BACKEND hir::backend::cpu::tag_t
#  define HIR_TEST_BACKEND_NAME "cpu"
#endif

#include <vector>

namespace hir::test {

/// Copies a host vector into backend B's memory.
template <class B, class T>
hir::vector<T, B> upload(const std::vector<T>& host) {
  return hir::to_backend(B{}, host);
}

} // namespace hir::test
