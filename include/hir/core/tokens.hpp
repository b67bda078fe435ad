// SPDX-License-Identifier: Apache-2.0
// Padded token batches: row-major [B, L] arrays (B sequences × L positions) with a uint8 mask (1 = valid token).
// Per-token quantities are log-probabilities of the sampled tokens under the current policy (logp), the behaviour
// policy that sampled them (old_logp) and a frozen reference policy (ref_logp).
#pragma once

#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/span.hpp>

#include <cstddef>
#include <cstdint>

namespace hir {

/// A view of a padded token batch in memory space `Space`. Arrays that an algorithm does not use may be empty;
/// every non-empty array has batch·length elements.
template <class T, class Space = host_space>
struct token_batch_ref {
  std::size_t batch = 0;                ///< B, number of sequences
  std::size_t length = 0;               ///< L, padded length
  span<const std::uint8_t, Space> mask; ///< [B, L], 1 = valid (loss) token, 0 = padding or prompt
  span<const T, Space> logp;            ///< [B, L] log π_θ(y_t | ·), the policy being optimized
  span<const T, Space> old_logp;        ///< [B, L] log π_old(y_t | ·), the policy that sampled y
  span<const T, Space> ref_logp;        ///< [B, L] log π_ref(y_t | ·), the KL anchor (empty: none)

  HIR_HOST_DEVICE std::size_t size() const { return batch * length; }
};

namespace detail {
/// Checks the shapes of a token batch: mask has B·L entries and every array named in `need` (a string of the
/// letters l, o, r for logp, old_logp, ref_logp) has B·L entries too.
template <class T, class Space>
void check_token_batch(const char* fn, const token_batch_ref<T, Space>& tb, const char* need) {
  const std::size_t n = tb.batch * tb.length;
  check_size(fn, "mask.size()", tb.mask.size(), "batch * length", n);
  for (const char* c = need; *c; ++c) {
    if (*c == 'l')
      check_size(fn, "logp.size()", tb.logp.size(), "batch * length", n);
    if (*c == 'o')
      check_size(fn, "old_logp.size()", tb.old_logp.size(), "batch * length", n);
    if (*c == 'r')
      check_size(fn, "ref_logp.size()", tb.ref_logp.size(), "batch * length", n);
  }
}
} // namespace detail
} // namespace hir
