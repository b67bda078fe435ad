// SPDX-License-Identifier: Apache-2.0
// Device implementation of policy_loss on Thrust. Passes: (1, input_validation::before_writing) a min-reduction
// finds the first invalid token (mask value above 1, or a non-finite input at a valid position) — one index read
// back, then a few scalars for the message; (2) reduce_by_key over the row index counts |o_i| and sums ℓ per row
// (GSPO), into B row records; a transform turns them into per-row weights w_i, ρ_i and pass flags; (3) one fused
// transform_reduce over the B·L tokens calls the shared per-token math (hir/detail/policy_loss_kernels.hpp, the
// same functions as the CPU loops), writes the gradient and sums the loss and metrics in double (one struct read
// back). The loss kind and KL estimator are dispatched at run time inside the functor (uniform across a warp), so a
// call instantiates one kernel per element type, not one per combination. Scratch (from the tag's workspace, if any):
// B row records (≈ 40 bytes each). The arrays of a call, the normalizer and the result are the CPU's
// (hir/detail/policy_loss_kernels.hpp).
#pragma once

#include <hir/backend/device/rewards.hpp>
#include <hir/backend/device/tag.hpp>
#include <hir/core/tokens.hpp>
#include <hir/detail/policy_loss_kernels.hpp>
#include <hir/losses/policy_loss.hpp>

#include <thrust/fill.h>
#include <thrust/functional.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/iterator/discard_iterator.h>
#include <thrust/iterator/transform_iterator.h>
#include <thrust/reduce.h>
#include <thrust/transform.h>
#include <thrust/transform_reduce.h>

#include <cstddef>
#include <cstdint>

namespace hir {
namespace backend {
namespace device {
namespace detail {

/// The arrays of one call as raw device pointers (shared with the CPU backend).
template <class T>
using hir_pl_arrays = hir::detail::policy_loss_arrays<T, device_space>;

/// v − v is 0 for a finite v and NaN otherwise (no reliance on isfinite in device code).
template <class T>
HIR_HOST_DEVICE inline bool hir_pl_finite(T v) {
  return v - v == v - v;
}

/// True when token k is invalid: mask value above 1, or a non-finite input at a valid position.
template <class T>
struct hir_pl_invalid_at {
  hir_pl_arrays<T> in;
  HIR_HOST_DEVICE bool operator()(std::size_t k) const {
    const unsigned m = in.mask[k];
    if (m > 1)
      return true;
    if (m == 0)
      return false;
    bool ok = hir_pl_finite(in.logp[k]);
    if (in.has_old)
      ok = ok && hir_pl_finite(in.old[k]);
    if (in.ref)
      ok = ok && hir_pl_finite(in.ref[k]);
    ok = ok && hir_pl_finite(in.token_adv ? in.adv[k] : in.adv[k / in.length]);
    return !ok;
  }
};

/// Per-row accumulator of pass 2: valid tokens and Σ_t ℓ·m in double (GSPO).
struct hir_pl_row_acc {
  long long count;
  double log_ratio_sum;
};
struct hir_pl_row_acc_plus {
  HIR_HOST_DEVICE hir_pl_row_acc operator()(const hir_pl_row_acc& a, const hir_pl_row_acc& b) const {
    return {a.count + b.count, a.log_ratio_sum + b.log_ratio_sum};
  }
};
template <class T>
struct hir_pl_row_token {
  hir_pl_arrays<T> in;
  bool gspo;
  HIR_HOST_DEVICE hir_pl_row_acc operator()(std::size_t k) const {
    if (in.mask[k] == 0)
      return {0, 0.0};
    return {1, gspo ? static_cast<double>(in.logp[k]) - static_cast<double>(in.old[k]) : 0.0};
  }
};
struct hir_pl_row_of {
  std::size_t length;
  HIR_HOST_DEVICE std::size_t operator()(std::size_t k) const { return k / length; }
};

/// Valid tokens and non-empty rows of the batch.
struct hir_pl_counts {
  long long tokens;
  long long rows;
};
struct hir_pl_counts_plus {
  HIR_HOST_DEVICE hir_pl_counts operator()(const hir_pl_counts& a, const hir_pl_counts& b) const {
    return {a.tokens + b.tokens, a.rows + b.rows};
  }
};
struct hir_pl_count_row {
  HIR_HOST_DEVICE hir_pl_counts operator()(const hir_pl_row_acc& r) const { return {r.count, r.count > 0 ? 1 : 0}; }
};

/// What the token pass needs of a row: aggregation weight, GSPO sequence ratio and its gradient pass flag.
template <class T>
struct hir_pl_row_param {
  T weight;
  T ratio;
  T pass;
};
template <class T>
struct hir_pl_make_row_param {
  loss_aggregation aggregation;
  double normalizer;
  bool gspo;
  double lo, hi; ///< GSPO clamp of the mean log-ratio: [−C, C_gspo]
  HIR_HOST_DEVICE hir_pl_row_param<T> operator()(const hir_pl_row_acc& r) const {
    hir_pl_row_param<T> p{T(0), T(1), T(1)};
    if (r.count == 0)
      return p;
    const double n_i = static_cast<double>(r.count);
    double w = 0.0;
    if (normalizer > 0.0)
      w = aggregation == loss_aggregation::seq_mean_token_mean ? 1.0 / (n_i * normalizer) : 1.0 / normalizer;
    p.weight = static_cast<T>(w);
    if (gspo) {
      const double mean = r.log_ratio_sum / n_i;
      p.pass = (mean >= lo && mean <= hi) ? T(1) : T(0); // NaN (fused mode) is reported after the pass
      p.ratio = static_cast<T>(::exp(mean < lo ? lo : (mean > hi ? hi : mean)));
    }
    return p;
  }
};

/// Sums of the token pass, all in double (clip counts are exact integers below 2^53).
struct hir_pl_sums {
  double pg, kl, kl_plain, ratio, log_ratio, low, high, dual, invalid;
};
struct hir_pl_sums_plus {
  HIR_HOST_DEVICE hir_pl_sums operator()(const hir_pl_sums& a, const hir_pl_sums& b) const {
    return {a.pg + b.pg,   a.kl + b.kl,     a.kl_plain + b.kl_plain, a.ratio + b.ratio,    a.log_ratio + b.log_ratio,
            a.low + b.low, a.high + b.high, a.dual + b.dual,         a.invalid + b.invalid};
  }
};

/// The fused token functor: per-token terms by the shared kernels, the gradient written, the sums returned.
template <class T>
struct hir_pl_token {
  hir_pl_arrays<T> in;
  const hir_pl_row_param<T>* rows;
  T* grad;
  hir::detail::policy_token_params<T> p;
  policy_loss_kind kind;
  kl_estimator kl_kind;

  /// The KL term of estimator E by its family's kernel (the family is mapped at compile time).
  template <kl_estimator E>
  HIR_HOST_DEVICE hir::detail::kl_terms<T> kl_of(T x, T r) const {
    return hir::detail::kl_token<hir::detail::kl_family_of(E)>(x, r, p);
  }

  HIR_HOST_DEVICE hir_pl_sums operator()(std::size_t k) const {
    hir_pl_sums s{0, 0, 0, 0, 0, 0, 0, 0, 0};
    const unsigned m = in.mask[k];
    if (m == 0) {
      grad[k] = T(0);
      return s;
    }
    const std::size_t i = k / in.length;
    const T x = in.logp[k], o = in.old[k];
    const T r = in.ref ? in.ref[k] : x;
    const T a = in.token_adv ? in.adv[k] : in.adv[i];
    if (m > 1 || !hir_pl_finite(x) || !hir_pl_finite(o) || !hir_pl_finite(r) || !hir_pl_finite(a))
      s.invalid = 1.0; // only possible with input_validation::fused; the caller then zero-fills and throws
    const hir_pl_row_param<T> row = rows[i];
    hir::detail::policy_pg_terms<T> pg;
    switch (kind) {
    case policy_loss_kind::ppo_clip:
      pg = hir::detail::policy_pg_token<policy_loss_kind::ppo_clip>(x, o, a, row.ratio, row.pass, p);
      break;
    case policy_loss_kind::gspo:
      pg = hir::detail::policy_pg_token<policy_loss_kind::gspo>(x, o, a, row.ratio, row.pass, p);
      break;
    case policy_loss_kind::cispo:
      pg = hir::detail::policy_pg_token<policy_loss_kind::cispo>(x, o, a, row.ratio, row.pass, p);
      break;
    default:
      pg = hir::detail::policy_pg_token<policy_loss_kind::reinforce>(x, o, a, row.ratio, row.pass, p);
      break;
    }
    hir::detail::kl_terms<T> kl{T(0), T(0)};
    switch (kl_kind) {
    case kl_estimator::k1:
      kl = kl_of<kl_estimator::k1>(x, r);
      break;
    case kl_estimator::abs:
      kl = kl_of<kl_estimator::abs>(x, r);
      break;
    case kl_estimator::k2:
      kl = kl_of<kl_estimator::k2>(x, r);
      break;
    case kl_estimator::k3:
      kl = kl_of<kl_estimator::k3>(x, r);
      break;
    case kl_estimator::k1_st:
      kl = kl_of<kl_estimator::k1_st>(x, r);
      break;
    case kl_estimator::k3_st:
      kl = kl_of<kl_estimator::k3_st>(x, r);
      break;
    default: // none
      break;
    }
    grad[k] = row.weight * (pg.grad + p.kl_coef * kl.grad);
    const double w = static_cast<double>(row.weight);
    s.pg = w * static_cast<double>(pg.pg);
    s.kl = w * static_cast<double>(kl.value);
    s.kl_plain = static_cast<double>(kl.value);
    s.ratio = static_cast<double>(pg.ratio); // the row ratio ρ_i for GSPO: Σ = Σ_i ρ_i·|o_i|, as on the CPU
    s.log_ratio = static_cast<double>(pg.log_ratio);
    s.low = static_cast<double>(pg.low);
    s.high = static_cast<double>(pg.high);
    s.dual = static_cast<double>(pg.dual);
    return s;
  }
};

/// Throws for invalid token k (found by hir_pl_invalid_at), reading back at most five scalars for the message,
/// in the CPU backend's order and wording.
template <class T>
[[noreturn]] void throw_policy_loss_token(const char* fn, token_batch_ref<T, device_space> tb,
                                          span<const T, device_space> adv, bool token_adv, std::size_t k) {
  const std::size_t i = k / tb.length, t = k % tb.length;
  const unsigned m = to_host(tb.mask.subspan(k, 1))[0];
  if (m > 1)
    hir::detail::fail(fn, "mask[", i, ", ", t, "] = ", m, " is not 0 or 1");
  auto value = [&](span<const T, device_space> s, std::size_t at) { return to_host(s.subspan(at, 1))[0]; };
  auto bad = [](T v) { return !(v - v == v - v); };
  const T x = value(tb.logp, k);
  if (bad(x))
    hir::detail::fail(fn, "logp[", i, ", ", t, "] = ", x, " is not finite (a valid token)");
  if (!tb.old_logp.empty()) {
    const T o = value(tb.old_logp, k);
    if (bad(o))
      hir::detail::fail(fn, "old_logp[", i, ", ", t, "] = ", o, " is not finite (a valid token)");
  }
  if (!tb.ref_logp.empty()) {
    const T r = value(tb.ref_logp, k);
    if (bad(r))
      hir::detail::fail(fn, "ref_logp[", i, ", ", t, "] = ", r, " is not finite (a valid token)");
  }
  if (token_adv)
    hir::detail::fail(fn, "advantages[", i, ", ", t, "] = ", value(adv, k), " is not finite (a valid token)");
  hir::detail::fail(fn, "advantages[", i, "] = ", value(adv, i), " is not finite (sequence ", i, " has valid tokens)");
}

} // namespace detail

template <class T>
policy_loss_result policy_loss_impl(tag_t const& be, token_batch_ref<T, device_space> tokens,
                                    span<const T, device_space> advantages, span<T, device_space> grad_logp,
                                    policy_loss_options const& opt) {
  constexpr const char* fn = "policy_loss";
  const std::size_t B = tokens.batch, L = tokens.length, n = B * L;
  if (n == 0)
    return {};
  const detail::hir_pl_arrays<T> in = hir::detail::make_policy_loss_arrays(tokens, advantages, opt);
  // The token batch as validated: only the arrays this call reads (for the error message).
  token_batch_ref<T, device_space> read = tokens;
  if (!in.ref)
    read.ref_logp = {};

  const bool fused = opt.validation == input_validation::fused;
  if (!fused) {
    const long long bad = detail::first_index_where(be, n, detail::hir_pl_invalid_at<T>{in});
    if (bad >= 0)
      detail::throw_policy_loss_token(fn, read, advantages, in.token_adv, static_cast<std::size_t>(bad));
  }

  // Per-row counts (and Σ ℓ for GSPO).
  const bool gspo = opt.kind == policy_loss_kind::gspo;
  const detail::scratch_buffer<detail::hir_pl_row_acc> row_acc(be, B); // one record per row (L > 0): all written
  {
    auto keys = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0), detail::hir_pl_row_of{L});
    auto vals = thrust::make_transform_iterator(thrust::counting_iterator<std::size_t>(0),
                                                detail::hir_pl_row_token<T>{in, gspo});
    thrust::reduce_by_key(detail::policy(be), keys, keys + n, vals, thrust::make_discard_iterator(), row_acc.begin(),
                          thrust::equal_to<std::size_t>(), detail::hir_pl_row_acc_plus{});
  }
  const detail::hir_pl_counts counts =
      thrust::transform_reduce(detail::policy(be), row_acc.begin(), row_acc.end(), detail::hir_pl_count_row{},
                               detail::hir_pl_counts{0, 0}, detail::hir_pl_counts_plus{});
  const double normalizer = hir::detail::policy_loss_normalizer(opt, static_cast<std::size_t>(counts.tokens),
                                                                static_cast<std::size_t>(counts.rows), L);
  const detail::scratch_buffer<detail::hir_pl_row_param<T>> rows(be, B);
  thrust::transform(detail::policy(be), row_acc.begin(), row_acc.end(), rows.begin(),
                    detail::hir_pl_make_row_param<T>{opt.aggregation, normalizer, gspo, -opt.log_ratio_clamp,
                                                     opt.gspo_log_ratio_max});

  // The fused token pass.
  detail::hir_pl_token<T> tok{
      in, rows.data(), grad_logp.data(), hir::detail::make_policy_token_params<T>(opt), opt.kind, opt.kl,
  };
  const detail::hir_pl_sums s = thrust::transform_reduce(
      detail::policy(be), thrust::counting_iterator<std::size_t>(0), thrust::counting_iterator<std::size_t>(n), tok,
      detail::hir_pl_sums{0, 0, 0, 0, 0, 0, 0, 0, 0}, detail::hir_pl_sums_plus{});
  if (fused && s.invalid > 0.0) {
    const long long bad = detail::first_index_where(be, n, detail::hir_pl_invalid_at<T>{in});
    thrust::fill(detail::policy(be), thrust::device_pointer_cast(grad_logp.data()),
                 thrust::device_pointer_cast(grad_logp.data()) + n, T(0));
    if (bad >= 0)
      detail::throw_policy_loss_token(fn, read, advantages, in.token_adv, static_cast<std::size_t>(bad));
  }

  return hir::detail::make_policy_loss_result(opt, s, static_cast<std::size_t>(counts.tokens),
                                              static_cast<std::size_t>(counts.rows), normalizer);
}

} // namespace device
} // namespace backend
} // namespace hir
