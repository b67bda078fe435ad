// SPDX-License-Identifier: Apache-2.0
// Reward vectors: per-sample, per-constraint verdicts stored as a 64-bit mask plus the sample's constraint count,
// and the rewards derived from them.
//
//   instruction-level reward (ILA)   R_i = 1 if every constraint of sample i is met, else 0
//   constraint-level reward (CLA)    R_i = popcount(v_i) / n_i
//   weighted CLA                     R_i = Σ_c w_ic v_ic / Σ_c w_ic
//   soft instruction reward          R_i = 1 if Σ_c w_ic v_ic ≥ τ Σ_c w_ic, else 0   (τ = 1: weighted "all met")
//   satisfaction rate                p_gc = (1/|g|) Σ_{i∈g} v_ic  (per group g and constraint slot c)
//
// Bit c of mask i is the verdict on constraint c (in the instruction's order) of sample i; n_i ≤ 64. Bits at or
// above n_i must be zero. A sample with n_i = 0 (no constraints) has ILA = CLA = 1 (vacuous truth).
#pragma once

#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/groups.hpp>

#include <cstdint>
#include <initializer_list>
#include <vector>

namespace hir {

/// The largest number of constraints one sample can carry (bits of a verdict mask).
inline constexpr std::size_t max_constraints = 64;

/// Non-owning view of a batch of verdict vectors in memory space `Space`.
template <class Space = host_space>
struct verdict_ref {
  span<const std::uint64_t, Space> masks; ///< bit c = constraint c met
  span<const std::uint8_t, Space> counts; ///< number of constraints of each sample (≤ 64)
  HIR_HOST_DEVICE std::size_t size() const { return masks.size(); }
};

/// A host-side batch of verdict vectors, built sample by sample.
class verdict_batch {
public:
  verdict_batch() = default;

  /// Appends one sample's verdicts (one bool per constraint, in order). More than 64 is an error.
  void push_back(span<const bool> verdicts) {
    if (verdicts.size() > max_constraints)
      detail::fail("verdict_batch::push_back", "a sample has ", verdicts.size(), " constraints; at most ",
                   max_constraints, " are supported");
    std::uint64_t m = 0;
    for (std::size_t c = 0; c < verdicts.size(); ++c)
      m |= static_cast<std::uint64_t>(verdicts[c] ? 1 : 0) << c;
    masks_.push_back(m);
    counts_.push_back(static_cast<std::uint8_t>(verdicts.size()));
  }
  void push_back(std::initializer_list<bool> verdicts) {
    const std::vector<bool> tmp(verdicts);
    std::vector<char> bytes(tmp.begin(), tmp.end());
    push_back(span<const bool>(reinterpret_cast<const bool*>(bytes.data()), bytes.size()));
  }
  /// Appends a sample from a mask and a count (validated like verdict_ref).
  void push_back(std::uint64_t mask, std::size_t count) {
    if (count > max_constraints)
      detail::fail("verdict_batch::push_back", "count = ", count, " exceeds ", max_constraints, " constraints");
    if (count < max_constraints && (mask >> count) != 0)
      detail::fail("verdict_batch::push_back", "mask has bits set at or above count = ", count);
    masks_.push_back(mask);
    counts_.push_back(static_cast<std::uint8_t>(count));
  }

  std::size_t size() const noexcept { return masks_.size(); }
  bool met(std::size_t i, std::size_t c) const { return (masks_[i] >> c) & 1u; }
  const std::vector<std::uint64_t>& masks() const noexcept { return masks_; }
  const std::vector<std::uint8_t>& counts() const noexcept { return counts_; }
  verdict_ref<host_space> ref() const noexcept {
    return {{masks_.data(), masks_.size()}, {counts_.data(), counts_.size()}};
  }
  operator verdict_ref<host_space>() const noexcept { return ref(); }

private:
  std::vector<std::uint64_t> masks_;
  std::vector<std::uint8_t> counts_;
};

namespace detail {
/// Mask with the low n bits set (n ≤ 64).
HIR_HOST_DEVICE inline std::uint64_t low_bits(unsigned n) {
  return n >= 64 ? ~std::uint64_t(0) : ((std::uint64_t(1) << n) - 1);
}

HIR_HOST_DEVICE inline int popcount64(std::uint64_t x) {
#if defined(__CUDA_ARCH__)
  return __popcll(x);
#elif defined(__GNUC__)
  return __builtin_popcountll(x);
#else
  int n = 0;
  for (; x; x &= x - 1)
    ++n;
  return n;
#endif
}
} // namespace detail

/// Checks a verdict batch: masks and counts of equal size, counts ≤ 64, no mask bit at or above its count.
/// Throws hir::invalid_argument naming `fn`, the sample and the values. On hir::device this reads one flag back.
template <class Backend>
void validate_verdicts(Backend const& be, const char* fn, verdict_ref<memory_space_t<Backend>> v) {
  detail::check_backend<Backend>();
  detail::check_size(fn, "verdicts.masks.size()", v.masks.size(), "verdicts.counts.size()", v.counts.size());
  const long long bad = first_invalid_verdict_impl(be, v);
  if (bad >= 0) {
    const auto i = static_cast<std::size_t>(bad);
    const std::uint64_t mask = to_host(v.masks.subspan(i, 1))[0];
    const unsigned count = to_host(v.counts.subspan(i, 1))[0];
    if (count > max_constraints)
      detail::fail(fn, "sample ", i, " has ", count, " constraints; at most ", max_constraints, " are supported");
    detail::fail(fn, "sample ", i, " has verdict bits set at or above its constraint count ", count, " (mask = 0x",
                 std::hex, mask, ")");
  }
}

/// Instruction-level reward: out[i] = 1 if sample i meets every one of its constraints, else 0.
template <class Backend, class T>
void instruction_rewards(Backend const& be, verdict_ref<memory_space_t<Backend>> verdicts,
                         span<T, memory_space_t<Backend>> out) {
  validate_verdicts(be, "instruction_rewards", verdicts);
  detail::check_size("instruction_rewards", "verdicts.size()", verdicts.size(), "out.size()", out.size());
  instruction_rewards_impl(be, verdicts, out);
}

/// Constraint-level reward: out[i] = (number of constraints met) / n_i (1 when n_i = 0).
template <class Backend, class T>
void constraint_rewards(Backend const& be, verdict_ref<memory_space_t<Backend>> verdicts,
                        span<T, memory_space_t<Backend>> out) {
  validate_verdicts(be, "constraint_rewards", verdicts);
  detail::check_size("constraint_rewards", "verdicts.size()", verdicts.size(), "out.size()", out.size());
  constraint_rewards_impl(be, verdicts, out);
}

/// Weighted rewards. `weights` is row-major [num_samples × stride]; row i's first n_i entries weigh sample i's
/// constraints (entries beyond n_i are ignored). Weights must be finite and ≥ 0 with a positive sum per sample
/// that has constraints.
///   kind::constraint_level:  out[i] = Σ_c w_ic v_ic / Σ_c w_ic
///   kind::instruction_level: out[i] = 1 if Σ_c w_ic v_ic ≥ threshold · Σ_c w_ic (threshold in (0, 1]), else 0
struct weighted_reward_options {
  enum class kind { constraint_level, instruction_level };
  kind level = kind::constraint_level;
  double threshold = 1.0;
};

template <class Backend, class T, class W>
void weighted_rewards(Backend const& be, verdict_ref<memory_space_t<Backend>> verdicts,
                      span<const W, memory_space_t<Backend>> weights, std::size_t stride,
                      span<T, memory_space_t<Backend>> out, weighted_reward_options const& opt = {}) {
  constexpr const char* fn = "weighted_rewards";
  validate_verdicts(be, fn, verdicts);
  detail::check_size(fn, "verdicts.size()", verdicts.size(), "out.size()", out.size());
  if (stride > max_constraints)
    detail::fail(fn, "stride = ", stride, " exceeds ", max_constraints);
  detail::check_size(fn, "weights.size()", weights.size(), "verdicts.size() * stride", verdicts.size() * stride);
  if (!(opt.threshold > 0.0 && opt.threshold <= 1.0))
    detail::fail(fn, "threshold = ", opt.threshold, " is outside (0, 1]");
  const long long bad = weighted_rewards_impl(be, verdicts, weights, stride, out, opt);
  if (bad >= 0)
    detail::fail(fn, "sample ", bad,
                 " has a negative or non-finite weight, a zero weight sum, or more constraints than stride = ", stride);
}

/// Per-group, per-constraint satisfaction rates: out[g·stride + c] = mean over members of group g of v_ic, for
/// c < n (the group's constraint count; every member of a group must have the same count), 0 for c ≥ n.
template <class Backend, class T>
void satisfaction_rates(Backend const& be, verdict_ref<memory_space_t<Backend>> verdicts,
                        group_ref<memory_space_t<Backend>> groups, std::size_t stride,
                        span<T, memory_space_t<Backend>> out) {
  constexpr const char* fn = "satisfaction_rates";
  validate_verdicts(be, fn, verdicts);
  detail::check_size(fn, "verdicts.size()", verdicts.size(), "groups.num_samples", groups.num_samples);
  if (stride > max_constraints)
    detail::fail(fn, "stride = ", stride, " exceeds ", max_constraints);
  detail::check_size(fn, "out.size()", out.size(), "groups.num_groups * stride", groups.num_groups * stride);
  const long long bad = satisfaction_rates_impl(be, verdicts, groups, stride, out);
  if (bad >= 0)
    detail::fail(fn, "group ", bad, " has members with different constraint counts, or more than stride = ", stride);
}

} // namespace hir
