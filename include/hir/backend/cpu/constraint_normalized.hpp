// SPDX-License-Identifier: Apache-2.0
// CPU implementation of constraint_normalized_advantages: the combined per-constraint z-scores r_i group by group,
// recomputed in each pass rather than stored (no heap scratch): with batch normalization, pass 1 validates each group
// before using it and accumulates sum, minimum and maximum of r (nothing is written, so an error leaves `out`
// untouched), pass 2 the centred sum of squares, pass 3 writes the output; without, a validation pass then the output
// pass. Per group the constraint columns' met counts are accumulated eight columns at a time (one table load per
// member and byte of mask); the column z-scores (hir::detail::constraint_column_z, the device's function) depend only
// on the group size and the met count, so they are tabulated once per call and group size up to 16: no square root
// or division per member or per pass. r_i is hir::detail::constraint_member_sum, as on the device, with the loop over
// constraints unrolled for counts up to 8; the same values as the device backend's r_i.
#pragma once

#include <hir/advantages/constraint_normalized.hpp>
#include <hir/backend/cpu/rewards.hpp>
#include <hir/backend/cpu/tag.hpp>
#include <hir/detail/group_kernels.hpp>

#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>

namespace hir {
namespace backend {
namespace cpu {
namespace detail {

/// spread_bits[b]: bit t of the byte b moved to bit 8t (one counter byte per column).
inline constexpr std::array<std::uint64_t, 256> cn_spread_bits = [] {
  std::array<std::uint64_t, 256> t{};
  for (unsigned b = 0; b < 256; ++b)
    for (unsigned c = 0; c < 8; ++c)
      t[b] |= static_cast<std::uint64_t>((b >> c) & 1u) << (8 * c);
  return t;
}();

/// The column z-scores by group size and met count k: tabulated for every k on the first group of each size up to
/// `small` (so once per call for uniform groups), computed per column for larger groups.
class cn_column_scores {
public:
  explicit cn_column_scores(const constraint_normalized_options& o) : o_(o) {}

  /// met[c], unmet[c] for the n columns met by count[c] of the `size` ≥ 2 members.
  void fill(std::size_t size, const unsigned* count, unsigned n, double* met, double* unmet) {
    if (size > small) {
      for (unsigned c = 0; c < n; ++c)
        hir::detail::constraint_column_z(count[c], static_cast<unsigned>(size), o_, met[c], unmet[c]);
      return;
    }
    if (!((ready_ >> size) & 1u)) {
      for (unsigned k = 0; k <= size; ++k)
        hir::detail::constraint_column_z(k, static_cast<unsigned>(size), o_, met_[size][k], unmet_[size][k]);
      ready_ |= 1u << size;
    }
    const double *tm = met_[size], *tu = unmet_[size];
    for (unsigned c = 0; c < n; ++c) {
      met[c] = tm[count[c]];
      unmet[c] = tu[count[c]];
    }
  }

private:
  static constexpr std::size_t small = 16;
  const constraint_normalized_options& o_;
  unsigned ready_ = 0; ///< bit s: the tables of size s are filled
  double met_[small + 1][small + 1], unmet_[small + 1][small + 1];
};

/// Visits groups computing each member's r_i (see the file comment). `Contiguous`: members are the identity order;
/// `Weighted`: w holds the weights (else unit weights, w unused).
template <bool Contiguous, bool Weighted, class W>
class cn_groups {
public:
  cn_groups(verdict_ref<host_space> v, group_ref<host_space> groups, const W* w, const constraint_normalized_options& o)
      : masks_(v.masks.data()), counts_(v.counts.data()), groups_(groups), w_(w), o_(o), scores_(o) {}

  std::size_t at(std::size_t k) const { return Contiguous ? k : static_cast<std::size_t>(groups_.members[k]); }

  /// Calls f(sample, r_sample) for the members of group g; validate(g, b, e, n) first if Validate.
  template <bool Validate, class V, class F>
  void group(std::size_t g, V&& validate, F&& f) {
    const std::size_t b = groups_.begin(g), e = groups_.end(g);
    const unsigned n = counts_[at(b)];
    if (Validate)
      validate(g, b, e, n);
    switch (n) { // the usual constraint counts with the loops over constraints unrolled
    case 1:
      return group_n<1>(b, e, n, f);
    case 2:
      return group_n<2>(b, e, n, f);
    case 3:
      return group_n<3>(b, e, n, f);
    case 4:
      return group_n<4>(b, e, n, f);
    case 5:
      return group_n<5>(b, e, n, f);
    case 6:
      return group_n<6>(b, e, n, f);
    case 7:
      return group_n<7>(b, e, n, f);
    case 8:
      return group_n<8>(b, e, n, f);
    default:
      return group_n<0>(b, e, n, f);
    }
  }

private:
  /// group() for the slots [b, e) with N constraints (0: n, known at run time only).
  template <unsigned N, class F>
  void group_n(std::size_t b, std::size_t e, unsigned n, F& f) {
    const unsigned nc = N ? N : n;
    double met[N ? N : max_constraints], unmet[N ? N : max_constraints];
    if (e - b == 1) {
      const double z = o_.singleton == singleton_policy::raw_score ? 1.0 / (1.0 + o_.epsilon) : 0.0;
      for (unsigned c = 0; c < nc; ++c) {
        met[c] = z;
        unmet[c] = 0.0;
      }
    } else {
      unsigned count[N ? N : max_constraints];
      count_columns<N>(b, e, nc, count);
      scores_.fill(e - b, count, nc, met, unmet);
    }
    const W* w = Weighted ? w_ : nullptr;
    for (std::size_t k = b; k < e; ++k) {
      const std::size_t i = at(k);
      f(i, hir::detail::constraint_member_sum(masks_[i], nc, w, met, unmet));
    }
  }

  /// count[c] = members of slots [b, e) meeting constraint c < n: one byte counter per column in 64-bit words,
  /// flushed every 255 members.
  template <unsigned N>
  void count_columns(std::size_t b, std::size_t e, unsigned n, unsigned* count) const {
    for (unsigned c = 0; c < n; ++c)
      count[c] = 0;
    const unsigned words = (n + 7) / 8;
    for (std::size_t k = b; k < e;) {
      const std::size_t stop = e - k > 255 ? k + 255 : e;
      if (N != 0) { // N ≤ 8: one word
        std::uint64_t acc = 0;
        for (; k < stop; ++k)
          acc += cn_spread_bits[masks_[at(k)] & 0xffu];
        for (unsigned c = 0; c < n; ++c)
          count[c] += static_cast<unsigned>((acc >> (8 * c)) & 0xffu);
      } else {
        std::uint64_t acc[max_constraints / 8] = {};
        for (; k < stop; ++k) {
          const std::uint64_t m = masks_[at(k)];
          for (unsigned j = 0; j < words; ++j)
            acc[j] += cn_spread_bits[(m >> (8 * j)) & 0xffu];
        }
        for (unsigned c = 0; c < n; ++c)
          count[c] += static_cast<unsigned>((acc[c / 8] >> (8 * (c % 8))) & 0xffu);
      }
    }
  }

  const std::uint64_t* masks_;
  const std::uint8_t* counts_;
  group_ref<host_space> groups_;
  const W* w_;
  const constraint_normalized_options& o_;
  cn_column_scores scores_;
};

template <bool Contiguous, bool Weighted, class T, class W>
void constraint_normalized_run(verdict_ref<host_space> v, group_ref<host_space> groups,
                               span<const W, host_space> weights, span<T, host_space> out,
                               constraint_normalized_options const& o) {
  constexpr const char* fn = "constraint_normalized_advantages";
  const std::uint8_t* counts = v.counts.data();
  cn_groups<Contiguous, Weighted, W> walk(v, groups, weights.data(), o);
  // The checks of one group, in the device backend's order (its members' counts, then the weights, then size one).
  auto validate = [&](std::size_t g, std::size_t b, std::size_t e, unsigned n) {
    for (std::size_t k = b + 1; k < e; ++k)
      if (counts[walk.at(k)] != n)
        hir::detail::fail(fn, "group ", g, " has members with different constraint counts (sample ", walk.at(b), ": ",
                          n, ", sample ", walk.at(k), ": ", static_cast<unsigned>(counts[walk.at(k)]), ")");
    if (Weighted && n > weights.size())
      hir::detail::fail(fn, "sample ", walk.at(b), " has ", n, " constraints but weights.size() = ", weights.size());
    if (e - b == 1 && o.singleton == singleton_policy::error)
      hir::detail::fail(fn, "group ", g, " (sample ", walk.at(b),
                        ") has one sample and singleton_policy::error is set");
  };
  auto check_weights = [&] {
    if (Weighted)
      for (std::size_t c = 0; c < weights.size(); ++c)
        if (!std::isfinite(static_cast<double>(weights[c])))
          hir::detail::fail(fn, "weights[", c, "] = ", weights[c], " is not finite");
  };
  auto none = [](std::size_t, std::size_t, std::size_t, unsigned) {};
  const std::size_t num_groups = groups.num_groups;

  if (!o.batch_normalize) {
    for (std::size_t g = 0; g < num_groups; ++g) // validation, before anything is written
      validate(g, groups.begin(g), groups.end(g), counts[walk.at(groups.begin(g))]);
    check_weights();
    for (std::size_t g = 0; g < num_groups; ++g)
      walk.template group<false>(g, none, [&](std::size_t i, double r) { out[i] = static_cast<T>(r); });
    return;
  }
  // Pass 1: validation group by group (nothing is written yet) and the sum and range of r.
  double sum = 0.0, lo = HUGE_VAL, hi = -HUGE_VAL;
  for (std::size_t g = 0; g < num_groups; ++g)
    walk.template group<true>(g, validate, [&](std::size_t, double r) {
      sum += r;
      lo = r < lo ? r : lo;
      hi = r > hi ? r : hi;
    });
  check_weights();
  const std::size_t n = v.size();
  if (n == 0)
    return;
  const double dn = static_cast<double>(n);
  const double denom = o.batch_std == std_kind::unbiased ? dn - 1.0 : dn;
  if (lo == hi || denom <= 0.0) { // every r equal, or the std is undefined (TRL: NaN → 0)
    for (std::size_t i = 0; i < n; ++i)
      out[i] = T(0);
    return;
  }
  const double mean = sum / dn;
  double ss = 0.0;
  for (std::size_t g = 0; g < num_groups; ++g)
    walk.template group<false>(g, none, [&](std::size_t, double r) { ss += (r - mean) * (r - mean); });
  const double inv = 1.0 / (std::sqrt(ss / denom) + o.batch_epsilon);
  for (std::size_t g = 0; g < num_groups; ++g)
    walk.template group<false>(g, none, [&](std::size_t i, double r) { out[i] = static_cast<T>((r - mean) * inv); });
}

} // namespace detail

template <class T, class W>
void constraint_normalized_advantages_impl(tag_t const&, verdict_ref<host_space> v, group_ref<host_space> groups,
                                           span<const W, host_space> weights, bool weighted, span<T, host_space> out,
                                           constraint_normalized_options const& o) {
  if (groups.contiguous())
    weighted ? detail::constraint_normalized_run<true, true>(v, groups, weights, out, o)
             : detail::constraint_normalized_run<true, false>(v, groups, weights, out, o);
  else
    weighted ? detail::constraint_normalized_run<false, true>(v, groups, weights, out, o)
             : detail::constraint_normalized_run<false, false>(v, groups, weights, out, o);
}

} // namespace cpu
} // namespace backend
} // namespace hir
