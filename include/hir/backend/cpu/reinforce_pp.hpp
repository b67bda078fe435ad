// SPDX-License-Identifier: Apache-2.0
// CPU implementation of reinforce_pp_advantages. Rows are processed in blocks of 8 so that the backward return
// recursions of 8 rows run interleaved (independent dependency chains); per block a row-major scratch holds the token
// rewards r_t (double) and the carry factors c_t = γ·m_{t+1}. Two passes over the inputs, nothing written before the
// second: (1) validation (mask entries, finite scores and log-probs, non-empty rows) and whitening statistics
// (per-row shifted sums in double, merged across rows in order with Chan's pairwise formula), (2) the output.
// Scratch: 2·8·L doubles, plus B doubles for the group baselines.
#pragma once

#include <hir/advantages/reinforce_pp.hpp>
#include <hir/backend/cpu/tag.hpp>
#include <hir/detail/group_kernels.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace hir {
namespace backend {
namespace cpu {
namespace detail {

/// Count, mean and sum of squared deviations of a set of values, mergeable (Chan, Golub, LeVeque 1979).
struct moments {
  double count = 0.0, mean = 0.0, m2 = 0.0;
  void merge(double n, double mu, double m2_other) {
    if (n == 0.0)
      return;
    const double total = count + n, delta = mu - mean;
    mean += delta * (n / total);
    m2 += m2_other + delta * delta * (count * n / total);
    count = total;
  }
};

inline constexpr std::size_t reinforce_rows = 8; ///< rows per block

/// True if some x[t] with m[t] ≠ 0 is not finite (exponent bits all ones), branch-free so that it vectorizes.
template <class T>
bool any_non_finite_at_valid(const std::uint8_t* m, const T* x, std::size_t length) {
  using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  constexpr U exponent = sizeof(T) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
  U bad = 0;
  for (std::size_t t = 0; t < length; ++t) {
    U u;
    std::memcpy(&u, x + t, sizeof(U));
    bad |= static_cast<U>((u & exponent) == exponent) & static_cast<U>(m[t] != 0);
  }
  return bad != 0;
}

/// Token rewards of one row into r[0, L) and carry factors into c[0, L): r_t = (terminal·[t = last] − β·k_t)·m_t,
/// c_t = γ·m_{t+1} (0 at t = L − 1), so that G_t = r_t + c_t·G_{t+1} is verl's recursion (the running return is
/// multiplied by the mask after each step). Returns the last valid position (L if none).
template <class T>
std::size_t reinforce_row_rewards(const std::uint8_t* m, const T* old_lp, const T* ref_lp, std::size_t length,
                                  double terminal, bool kl, const reinforce_pp_options& o, double* r, double* c) {
  if (kl && o.kl == kl_estimator::k1 && !o.kl_clamp_every_estimator) { // the common case
    // A bitwise select on unconditional loads, so that the loop vectorizes (GCC does not if-convert FP arithmetic
    // under -ftrapping-math); padding values that are not finite are discarded, never multiplied by 0.
    const double beta = o.kl_coef;
    for (std::size_t t = 0; t < length; ++t) {
      const double v = -beta * (static_cast<double>(old_lp[t]) - static_cast<double>(ref_lp[t]));
      std::uint64_t u;
      std::memcpy(&u, &v, sizeof u);
      u &= ~std::uint64_t(0) * static_cast<std::uint64_t>(m[t] != 0);
      std::memcpy(r + t, &u, sizeof u);
    }
  } else if (kl) {
    for (std::size_t t = 0; t < length; ++t)
      r[t] = m[t] ? hir::detail::reinforce_kl_reward(old_lp[t], ref_lp[t], o) : 0.0;
  } else {
    for (std::size_t t = 0; t < length; ++t)
      r[t] = 0.0;
  }
  for (std::size_t t = 0; t + 1 < length; ++t)
    c[t] = o.gamma * static_cast<double>(m[t + 1]); // m ∈ {0, 1} (validated)
  if (length > 0)
    c[length - 1] = 0.0;
  std::size_t last = 0, any = 0; // the last valid position, by a vectorizable max
  for (std::size_t t = 0; t < length; ++t) {
    const std::size_t v = m[t] ? t : 0;
    last = v > last ? v : last;
    any |= m[t];
  }
  if (!any)
    return length;
  r[last] += terminal;
  return last;
}

/// Runs the backward recursions of 8 rows whose rewards and carries are r[j·L + t], c[j·L + t] (8 independent
/// dependency chains) and overwrites r with the returns G_t.
inline void reinforce_sweep(double* r, const double* c, std::size_t length) {
  double g[reinforce_rows] = {};
  for (std::size_t t = length; t-- > 0;)
    for (std::size_t j = 0; j < reinforce_rows; ++j) {
      g[j] = r[j * length + t] + c[j * length + t] * g[j];
      r[j * length + t] = g[j];
    }
}

/// Σ m_t (G_t − K) and Σ m_t (G_t − K)² over one row of returns (finite everywhere), with 8 interleaved partial sums
/// combined in a fixed order (deterministic; vectorizes without reassociating).
template <class M>
void reinforce_row_sums(const M* m, const double* g, std::size_t length, double shift, double& s1, double& s2) {
  double a[8] = {}, b[8] = {};
  std::size_t t = 0;
  for (; t + 8 <= length; t += 8)
    for (std::size_t k = 0; k < 8; ++k) {
      const double d = (g[t + k] - shift) * static_cast<double>(m[t + k]);
      a[k] += d;
      b[k] += d * d;
    }
  for (; t < length; ++t) {
    const double d = (g[t] - shift) * static_cast<double>(m[t]);
    a[0] += d;
    b[0] += d * d;
  }
  s1 = ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7]));
  s2 = ((b[0] + b[4]) + (b[2] + b[6])) + ((b[1] + b[5]) + (b[3] + b[7]));
}

} // namespace detail

template <class T>
void reinforce_pp_advantages_impl(tag_t const&, span<const T, host_space> scores, token_batch_ref<T, host_space> tb,
                                  group_ref<host_space> groups, span<T, host_space> out,
                                  reinforce_pp_options const& o) {
  constexpr const char* fn = "reinforce_pp_advantages";
  constexpr std::size_t R = detail::reinforce_rows;
  const std::size_t B = tb.batch, L = tb.length;
  if (B == 0)
    return;
  const bool kl = o.kl_coef > 0.0 && o.kl != kl_estimator::none;
  const std::uint8_t* mask = tb.mask.data();
  const T* old_lp = kl ? tb.old_logp.data() : nullptr;
  const T* ref_lp = kl ? tb.ref_logp.data() : nullptr;

  // Scores and group sizes first (the group baselines need every score).
  for (std::size_t i = 0; i < B; ++i)
    if (!std::isfinite(static_cast<double>(scores[i])))
      hir::detail::fail(fn, "scores[", i, "] = ", scores[i], " is not finite");
  const bool grouped = o.baseline != reinforce_baseline::none;
  if (grouped && o.singleton == singleton_policy::error)
    for (std::size_t g = 0; g < groups.num_groups; ++g)
      if (groups.size(g) == 1)
        hir::detail::fail(fn, "group ", g, " (row ", groups.sample(groups.begin(g)),
                          ") has one row and singleton_policy::error is set");
  const bool tiled = o.baseline == reinforce_baseline::group_mean_of_return;
  // Per-row value: the terminal reward (none, group_mean_of_score) or the tiled a_i (group_mean_of_return, filled
  // after pass 1 from the row sums of r).
  std::vector<double> row_value(B);
  for (std::size_t i = 0; i < B; ++i)
    row_value[i] = static_cast<double>(scores[i]);
  auto subtract_group_means = [&] {
    for (std::size_t g = 0; g < groups.num_groups; ++g)
      hir::detail::reinforce_subtract_group_mean(groups, g, row_value.data(), o.singleton);
  };
  if (o.baseline == reinforce_baseline::group_mean_of_score)
    subtract_group_means();

  std::vector<double> work(2 * R * L);
  double* r = work.data();
  double* c = work.data() + R * L;
  std::size_t last[R];
  // Fills the rewards and carries of rows [i0, i0 + rows); with `check`, validates them first.
  auto fill = [&](std::size_t i0, std::size_t rows, bool check, std::size_t* valid) {
    for (std::size_t j = rows; j < R; ++j) // padding rows: no tokens, G = 0
      for (std::size_t t = 0; t < L; ++t)
        r[j * L + t] = c[j * L + t] = 0.0;
    for (std::size_t j = 0; j < rows; ++j) {
      const std::size_t i = i0 + j;
      const std::uint8_t* m = mask + i * L;
      if (check) {
        std::size_t n = 0;
        std::uint8_t bad = 0;
        for (std::size_t t = 0; t < L; ++t) {
          n += m[t];
          bad |= static_cast<std::uint8_t>(m[t] & 0xFE);
        }
        if (bad)
          for (std::size_t t = 0; t < L; ++t)
            if (m[t] > 1)
              hir::detail::fail(fn, "mask[", i, ", ", t, "] = ", static_cast<int>(m[t]), " is neither 0 nor 1");
        if (n == 0)
          hir::detail::fail(fn, "row ", i,
                            " has no valid token (its mask is all 0); drop empty responses or keep "
                            "their end-of-sequence token");
        if (kl && (detail::any_non_finite_at_valid(m, old_lp + i * L, L) ||
                   detail::any_non_finite_at_valid(m, ref_lp + i * L, L)))
          for (std::size_t t = 0; t < L; ++t) {
            if (!m[t])
              continue;
            if (!std::isfinite(static_cast<double>(old_lp[i * L + t])))
              hir::detail::fail(fn, "old_logp[", i, ", ", t, "] = ", old_lp[i * L + t], " is not finite");
            if (!std::isfinite(static_cast<double>(ref_lp[i * L + t])))
              hir::detail::fail(fn, "ref_logp[", i, ", ", t, "] = ", ref_lp[i * L + t], " is not finite");
          }
        valid[j] = n;
      }
      last[j] = detail::reinforce_row_rewards(m, kl ? old_lp + i * L : nullptr, kl ? ref_lp + i * L : nullptr, L,
                                              tiled ? 0.0 : row_value[i], kl, o, r + j * L, c + j * L);
    }
  };

  // (1) Validation and statistics. Whitening statistics of the returns (per-row sums about the row's last return,
  // which lies inside the row's range, so the one-pass variance loses at most log2(2L) bits), or, for the tiled
  // baseline, the row sums Σ_t r_t that make a_i.
  detail::moments all;
  std::size_t total_valid = 0;
  std::vector<double> row_count(tiled ? B : 0);
  for (std::size_t i0 = 0; i0 < B; i0 += R) {
    const std::size_t rows = B - i0 < R ? B - i0 : R;
    std::size_t valid[R];
    fill(i0, rows, true, valid);
    for (std::size_t j = 0; j < rows; ++j)
      total_valid += valid[j];
    if (tiled) {
      for (std::size_t j = 0; j < rows; ++j) {
        double s = 0.0; // score − β Σ k_t m_t, verl's token_level_rewards.sum(-1)
        for (std::size_t t = 0; t < L; ++t)
          s += r[j * L + t];
        row_value[i0 + j] += s;
        row_count[i0 + j] = static_cast<double>(valid[j]);
      }
      continue;
    }
    if (o.whiten == whitening::none)
      continue;
    detail::reinforce_sweep(r, c, L);
    for (std::size_t j = 0; j < rows; ++j) {
      // Sums about the row's last return (G = r there), which lies inside the row's range: the one-pass variance
      // then loses at most log2(2L) bits.
      const double n = static_cast<double>(valid[j]), shift = r[j * L + last[j]];
      double s1 = 0.0, s2 = 0.0;
      detail::reinforce_row_sums(mask + (i0 + j) * L, r + j * L, L, shift, s1, s2);
      const double m2 = s2 - s1 * s1 / n;
      all.merge(n, shift + s1 / n, m2 > 0.0 ? m2 : 0.0);
    }
  }
  const bool scaled = o.whiten == whitening::standard || o.whiten == whitening::keep_mean;
  if (scaled && o.std == std_kind::unbiased && total_valid < 2)
    hir::detail::fail(fn, "whitening with unbiased variance needs at least 2 valid tokens in the batch (it has ",
                      total_valid, ")");
  if (tiled) {
    subtract_group_means();
    if (o.whiten != whitening::none)
      for (std::size_t i = 0; i < B; ++i)
        all.merge(row_count[i], row_value[i], 0.0);
  }
  double mu = 0.0, scale = 1.0;
  if (o.whiten != whitening::none) {
    mu = all.mean;
    if (scaled) {
      scale =
          hir::detail::reinforce_whiten_scale(all.m2 / (o.std == std_kind::unbiased ? all.count - 1.0 : all.count), o);
    }
  }
  // whiten(a) = (a − center)·scale + add: standard (μ, r, 0), center_only (μ, 1, 0), keep_mean (μ, r, μ), none.
  const double center = mu, add = o.whiten == whitening::keep_mean ? mu : 0.0;
  auto whiten = [&](double a) { return (a - center) * scale + add; };

  // (2) Output: 0 at masked positions.
  if (tiled) {
    for (std::size_t i = 0; i < B; ++i) {
      const T a = static_cast<T>(whiten(row_value[i]));
      const std::uint8_t* m = mask + i * L;
      T* y = out.data() + i * L;
      for (std::size_t t = 0; t < L; ++t)
        y[t] = m[t] ? a : T(0);
    }
    return;
  }
  for (std::size_t i0 = 0; i0 < B; i0 += R) {
    const std::size_t rows = B - i0 < R ? B - i0 : R;
    fill(i0, rows, false, nullptr);
    detail::reinforce_sweep(r, c, L);
    for (std::size_t j = 0; j < rows; ++j) {
      const std::uint8_t* m = mask + (i0 + j) * L;
      const double* g = r + j * L;
      T* y = out.data() + (i0 + j) * L;
      for (std::size_t t = 0; t < L; ++t) // G is finite everywhere: · m selects; + 0.0 turns −0 into +0
        y[t] = static_cast<T>(whiten(g[t]) * static_cast<double>(m[t]) + 0.0);
    }
  }
}

} // namespace cpu
} // namespace backend
} // namespace hir
