// SPDX-License-Identifier: Apache-2.0
// CPU implementations of the dual-level preference losses: sequence log-probabilities and their token gradient,
// pair building from a replay batch (rows bucketed by prompt with a counting sort), and the DPO / IPO loss with its
// per-row gradient (double accumulation; a row in several pairs accumulates).
#pragma once

#include <hir/backend/cpu/relabel.hpp>
#include <hir/backend/cpu/tag.hpp>
#include <hir/detail/preference.hpp>
#include <hir/losses/preference.hpp>

#include <algorithm>
#include <cmath>
#include <vector>

namespace hir {
namespace backend {
namespace cpu {

template <class T>
long long preference_first_non_finite_impl(tag_t const&, span<const T, host_space> x) {
  for (std::size_t i = 0; i < x.size(); ++i)
    if (!std::isfinite(static_cast<double>(x[i])))
      return static_cast<long long>(i);
  return -1;
}

inline long long preference_first_invalid_mask_impl(tag_t const&, span<const std::uint8_t, host_space> mask) {
  for (std::size_t i = 0; i < mask.size(); ++i)
    if (mask[i] > 1)
      return static_cast<long long>(i);
  return -1;
}

template <class T>
void sequence_logp_impl(tag_t const&, span<const T, host_space> logp, span<const std::uint8_t, host_space> mask,
                        std::size_t length, span<T, host_space> out, sequence_reduction reduction) {
  const std::size_t rows = mask.size() / length;
  for (std::size_t r = 0; r < rows; ++r) {
    const T* lp = logp.data() + r * length;
    const std::uint8_t* m = mask.data() + r * length;
    double s = 0;
    std::size_t n = 0;
    for (std::size_t t = 0; t < length; ++t) {
      s += m[t] ? static_cast<double>(lp[t]) : 0.0;
      n += m[t];
    }
    out[r] = static_cast<T>(hir::detail::sequence_value(s, n, reduction));
  }
}

template <class T>
void sequence_logp_backward_impl(tag_t const&, span<const T, host_space> grad_seq,
                                 span<const std::uint8_t, host_space> mask, std::size_t length,
                                 span<T, host_space> grad_token, sequence_reduction reduction) {
  const std::size_t rows = mask.size() / length;
  for (std::size_t r = 0; r < rows; ++r) {
    const std::uint8_t* m = mask.data() + r * length;
    T* g = grad_token.data() + r * length;
    std::size_t n = 0;
    if (reduction == sequence_reduction::mean)
      for (std::size_t t = 0; t < length; ++t)
        n += m[t];
    const double scale = hir::detail::sequence_grad_scale(n, reduction);
    const T v = static_cast<T>(static_cast<double>(grad_seq[r]) * scale);
    for (std::size_t t = 0; t < length; ++t)
      g[t] = m[t] ? v : T(0);
  }
}

/// First invalid row of a batch for pair building, or -1.
template <class T>
long long preference_rows_check_impl(tag_t const&, replay_batch_ref<T, host_space> b) {
  const std::size_t R = b.batch;
  for (std::size_t r = 0; r < R; ++r) {
    if (!std::isfinite(static_cast<double>(b.reward[r])) || b.is_replay[r] > 1)
      return static_cast<long long>(r);
    if (b.is_replay[r]) {
      const std::int64_t s = b.source_row[r];
      if (s < 0 || static_cast<std::size_t>(s) >= R || b.is_replay[static_cast<std::size_t>(s)] ||
          b.prompt[static_cast<std::size_t>(s)] != b.prompt[r])
        return static_cast<long long>(r);
    }
  }
  return -1;
}

template <class T>
void build_preference_pairs_impl(tag_t const&, replay_batch_ref<T, host_space> b, preference_pair_options const& opt,
                                 preference_pairs<tag_t>& out) {
  const std::size_t R = b.batch;
  out.chosen.clear();
  out.rejected.clear();
  out.level.clear();
  if (opt.response_level) {
    // Originals bucketed by prompt id (ids are arbitrary integers: order prompts by value, rows in row order).
    std::vector<std::pair<std::int64_t, std::int64_t>> rows; // (prompt, row)
    rows.reserve(R);
    for (std::size_t r = 0; r < R; ++r)
      if (!b.is_replay[r])
        rows.push_back({b.prompt[r], static_cast<std::int64_t>(r)});
    std::stable_sort(rows.begin(), rows.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    std::vector<std::int64_t> wins, losses;
    for (std::size_t a = 0; a < rows.size();) {
      std::size_t e = a;
      wins.clear();
      losses.clear();
      for (; e < rows.size() && rows[e].first == rows[a].first; ++e) {
        const auto r = static_cast<std::size_t>(rows[e].second);
        (hir::detail::preference_success(static_cast<double>(b.reward[r]), opt.success_threshold) ? wins : losses)
            .push_back(rows[e].second);
      }
      if (!wins.empty() && !losses.empty()) {
        if (opt.pairing == response_pairing::all_pairs) {
          for (auto w : wins)
            for (auto l : losses) {
              out.chosen.push_back(w);
              out.rejected.push_back(l);
            }
        } else {
          for (std::size_t j = 0; j < losses.size(); ++j) {
            out.chosen.push_back(wins[j % wins.size()]);
            out.rejected.push_back(losses[j]);
          }
        }
      }
      a = e;
    }
  }
  out.num_response = out.chosen.size();
  if (opt.instruction_level)
    for (std::size_t r = 0; r < R; ++r)
      if (b.is_replay[r]) {
        out.chosen.push_back(static_cast<std::int64_t>(r));
        out.rejected.push_back(b.source_row[r]);
      }
  out.num_instruction = out.chosen.size() - out.num_response;
  out.level.assign(out.chosen.size(), static_cast<std::uint8_t>(preference_level::instruction));
  std::fill(out.level.begin(), out.level.begin() + static_cast<std::ptrdiff_t>(out.num_response),
            static_cast<std::uint8_t>(preference_level::response));
}

inline hir::detail::relabel_input_issue preference_pairs_check_impl(tag_t const&, preference_pairs_ref<host_space> p,
                                                                    std::size_t rows) {
  using hir::detail::relabel_issue;
  for (std::size_t j = 0; j < p.size(); ++j) {
    const auto jj = static_cast<long long>(j);
    if (p.chosen[j] < 0 || static_cast<std::size_t>(p.chosen[j]) >= rows || p.rejected[j] < 0 ||
        static_cast<std::size_t>(p.rejected[j]) >= rows)
      return {relabel_issue::pair_out_of_range, jj};
    if (p.level[j] > 1)
      return {relabel_issue::pair_level_invalid, jj};
  }
  return {};
}

template <class T>
preference_loss_result preference_loss_impl(tag_t const&, preference_pairs_ref<host_space> p,
                                            span<const T, host_space> logp, span<const T, host_space> ref_logp,
                                            span<T, host_space> grad, preference_loss_options const& opt) {
  hir::detail::preference_sums counts = {};
  for (std::size_t j = 0; j < p.size(); ++j)
    counts.pairs[p.level[j]] += 1;
  double scale[2];
  hir::detail::preference_scales(counts, opt, scale);
  std::vector<double> g(grad.empty() ? 0 : grad.size(), 0.0);
  hir::detail::preference_sums sums = {};
  auto h_of = [&](std::size_t r) {
    return static_cast<double>(logp[r]) - (ref_logp.empty() ? 0.0 : static_cast<double>(ref_logp[r]));
  };
  for (std::size_t j = 0; j < p.size(); ++j) {
    const auto c = static_cast<std::size_t>(p.chosen[j]), r = static_cast<std::size_t>(p.rejected[j]);
    const int lv = p.level[j];
    double dh;
    sums = hir::detail::hir_pref_sums_plus{}(
        sums, hir::detail::preference_pair_sums(opt.kind, opt.beta, opt.label_smoothing, h_of(c) - h_of(r), lv, dh));
    if (!g.empty()) {
      g[c] += scale[lv] * dh;
      g[r] -= scale[lv] * dh;
    }
  }
  const preference_loss_result res = hir::detail::preference_result(sums, opt);
  for (std::size_t r = 0; r < g.size(); ++r)
    grad[r] = static_cast<T>(g[r]);
  return res;
}

} // namespace cpu
} // namespace backend
} // namespace hir
