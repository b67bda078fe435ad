// SPDX-License-Identifier: Apache-2.0
// Token-level policy losses with their analytic gradient with respect to the new log-probs, in one fused pass over a
// padded [B, L] batch with a mask. With ℓ = logp − old_logp clamped to [−C, C], ρ = e^ℓ, advantage A, per token:
//
//   ppo_clip   L = max(−A·ρ, −A·clip(ρ, 1 − ε_lo, 1 + ε_hi)), and for A < 0 with dual clip c: L = min(L, −A·c)
//   gspo       the same with the sequence ratio ρ_i = exp(clamp(Σ_t ℓ·m / |o_i|, −C, C_gspo)) (verl's GSPO-token form:
//              value of the sequence ratio, gradient flowing token by token)
//   cispo      L = −sg(clip(ρ)) · A · logp (two-sided relative clip, verl; or min(ρ, cap), TRL)
//   reinforce  L = −A · logp (no ratio)
//
// plus β times a KL estimator of κ = logp − ref_logp (k1 κ, abs |κ|, k2 κ²/2, k3 e^{−κ} − 1 + κ with −κ clamped to
// ±C_k before exp and the value clamped to ≤ V, and straight-through k1_st/k3_st: value of k1/k3, gradient of k2).
// Per-token terms are aggregated by a per-sequence weight w_i (token mean 1/N, sequence mean of token means
// 1/(|o_i|·S), sequence mean of token sums 1/S, constant 1/C); N, S or C are explicit inputs (`normalizer`) so that
// splitting a batch into micro-batches or data-parallel shards and summing gives the same loss and gradient.
// See docs/losses.md for the conventions of verl, TRL and OpenRLHF and the options that reproduce each.
#pragma once

#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/tokens.hpp>
#include <hir/core/validation.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace hir {

/// The policy-gradient term.
enum class policy_loss_kind {
  ppo_clip, ///< PPO clipped surrogate (symmetric or asymmetric "clip-higher"; dual clip with dual_clip > 1)
  gspo,     ///< GSPO: PPO clip on the sequence-level ratio exp(mean_t ℓ) (verl `gspo`)
  cispo,    ///< CISPO: clipped importance weight, stop-gradient, times A·logp
  reinforce ///< plain policy gradient −A·logp (verl `gpg`); old_logp is optional (metrics only)
};

/// How CISPO clips its importance weight.
enum class cispo_clip {
  two_sided, ///< verl: clip(ρ, 1 − ε_lo, 1 + ε_hi)
  upper_cap  ///< TRL: min(ρ, cispo_cap) (TRL's `epsilon_high`, recommended 5.0)
};

/// KL-to-reference estimator of κ = logp − ref_logp added to the loss as β·KL (verl `kl_loss_type`).
enum class kl_estimator {
  none, ///< no KL term (ref_logp is not read)
  k1,   ///< κ
  abs,  ///< |κ|
  k2,   ///< κ²/2 (verl "mse")
  k3, ///< e^{−κ} − 1 + κ with −κ clamped to ±kl_log_ratio_clamp, value clamped to ≤ kl_value_clamp ("low_var_kl")
  k1_st, ///< value of k1, gradient of k2 (verl "k1+")
  k3_st  ///< value of k3, gradient of k2 (verl "k3+" / "low_var_kl+")
};

/// How per-token terms become one loss (verl `loss_agg_mode`).
enum class loss_aggregation {
  token_mean,          ///< Σ L·m / N, N = valid tokens (DAPO, verl default)
  seq_mean_token_mean, ///< Σ_i (Σ_t L·m / |o_i|) / S, S = non-empty sequences (original GRPO)
  seq_mean_token_sum,  ///< Σ_i Σ_t L·m / S
  seq_sum_constant     ///< Σ L·m / C with a constant C (Dr.GRPO)
};

/// Options of policy_loss. The defaults are symmetric PPO clip (ε = 0.2), no dual clip, no KL, token mean over the
/// local valid tokens.
struct policy_loss_options {
  policy_loss_kind kind = policy_loss_kind::ppo_clip;
  double clip_low = 0.2;  ///< ε_lo ∈ [0, 1): lower ratio bound 1 − ε_lo (PPO, GSPO, two-sided CISPO)
  double clip_high = 0.2; ///< ε_hi ≥ 0: upper ratio bound 1 + ε_hi (DAPO clip-higher: 0.28)
  double dual_clip = 0.0; ///< c > 1 caps the loss of A < 0 tokens at −A·c (PPO, GSPO); 0 disables (verl uses 3)
  double log_ratio_clamp = 20.0;    ///< C ∈ (0, 80]: ℓ clamped to [−C, C] before exp (verl, OpenRLHF: 20)
  double gspo_log_ratio_max = 10.0; ///< C_gspo ∈ (0, 80]: upper clamp of GSPO's sequence log-ratio (verl: 10)
  cispo_clip cispo = cispo_clip::two_sided;
  double cispo_cap = 5.0; ///< the cap of cispo_clip::upper_cap (≥ 1)
  kl_estimator kl = kl_estimator::none;
  double kl_coef = 0.0;             ///< β ≥ 0 (verl kl_loss_coef, TRL beta)
  double kl_log_ratio_clamp = 20.0; ///< C_k ∈ (0, 80]: k3's −κ clamped to ±C_k before exp (verl: 20)
  double kl_value_clamp = 10.0;     ///< V ≥ 0: k3's value clamped to ≤ V (verl: 10); 0 = no clamp
  loss_aggregation aggregation = loss_aggregation::token_mean;
  /// N, S or C of the aggregation. 0: the local count (valid tokens for token_mean, non-empty sequences for the
  /// seq_mean_* modes) or, for seq_sum_constant, the padded length L (verl's default). > 0: the value given — pass
  /// the count over the whole global batch (divided by the data-parallel size if the framework averages gradients
  /// across ranks) to make the result invariant to micro-batching.
  double normalizer = 0.0;
  input_validation validation = input_validation::before_writing;
};

/// The loss, its parts and diagnostics. Means are over the valid tokens of this call (0 when there are none);
/// multiply by valid_tokens to combine micro-batches.
struct policy_loss_result {
  double loss = 0.0;               ///< pg_loss + β·kl_loss
  double pg_loss = 0.0;            ///< aggregated policy-gradient term
  double kl_loss = 0.0;            ///< aggregated KL estimator value (before β)
  double clip_fraction_low = 0.0;  ///< fraction of tokens with the lower clip active (TRL clip_ratio/low_mean)
  double clip_fraction_high = 0.0; ///< fraction with the upper clip active; low + high = verl pg_clipfrac
  double dual_clip_fraction = 0.0; ///< fraction capped by dual clip (verl pg_clipfrac_lower)
  double approx_kl = 0.0;          ///< mean of −ℓ (ℓ clamped to ±C; verl ppo_kl)
  double mean_ratio = 0.0;         ///< mean of ρ (ρ_i for GSPO; 1 for reinforce without old_logp)
  double mean_kl = 0.0;            ///< mean KL estimator value (0 for kl_estimator::none)
  std::size_t valid_tokens = 0;    ///< tokens with mask 1 in this call
  std::size_t valid_sequences = 0; ///< sequences with at least one valid token in this call
  double normalizer = 0.0;         ///< the N, S or C that was used (0 when nothing was valid and it was local)
};

namespace presets {
/// verl `vanilla` PPO as configured by default: ε = 0.2, dual clip c = 3, token mean (pass normalizer yourself).
inline policy_loss_options verl_vanilla_loss() {
  policy_loss_options o;
  o.dual_clip = 3.0;
  return o;
}
/// DAPO (verl `vanilla` with clip_ratio_high = 0.28, token mean).
inline policy_loss_options dapo_loss() {
  policy_loss_options o = verl_vanilla_loss();
  o.clip_high = 0.28;
  return o;
}
/// verl `gspo`: sequence ratio clamped at 10, no dual clip, seq-mean-token-mean (set clip_low/high: the GSPO paper
/// uses 3e-4 / 4e-4).
inline policy_loss_options verl_gspo_loss() {
  policy_loss_options o;
  o.kind = policy_loss_kind::gspo;
  o.aggregation = loss_aggregation::seq_mean_token_mean;
  return o;
}
/// verl `cispo`: clip(ρ, 1 − ε_lo, 1 + ε_hi), stop-gradient.
inline policy_loss_options verl_cispo_loss() {
  policy_loss_options o;
  o.kind = policy_loss_kind::cispo;
  return o;
}
/// TRL loss_type="cispo": min(ρ, 5) (TRL's recommended epsilon_high), no ℓ clamp in TRL (C = 80 here).
inline policy_loss_options trl_cispo_loss() {
  policy_loss_options o;
  o.kind = policy_loss_kind::cispo;
  o.cispo = cispo_clip::upper_cap;
  o.cispo_cap = 5.0;
  o.log_ratio_clamp = 80.0;
  return o;
}
/// HiR authors' code (hir-algorithm.md §4): PPO clip ε = 0.2 with dual clip c = 3, token mean, KL in the reward
/// (so no KL term here).
inline policy_loss_options hir_paper_code_loss() {
  return verl_vanilla_loss();
}
} // namespace presets

namespace detail {
inline void check_policy_loss_options(const char* fn, policy_loss_options const& o) {
  auto finite = [](double v) { return v == v && v < 1e300 && v > -1e300; };
  if (static_cast<unsigned>(o.kind) > static_cast<unsigned>(policy_loss_kind::reinforce))
    fail(fn, "kind = ", static_cast<int>(o.kind), " is not a policy_loss_kind");
  if (static_cast<unsigned>(o.cispo) > static_cast<unsigned>(cispo_clip::upper_cap))
    fail(fn, "cispo = ", static_cast<int>(o.cispo), " is not a cispo_clip");
  if (static_cast<unsigned>(o.kl) > static_cast<unsigned>(kl_estimator::k3_st))
    fail(fn, "kl = ", static_cast<int>(o.kl), " is not a kl_estimator");
  if (static_cast<unsigned>(o.aggregation) > static_cast<unsigned>(loss_aggregation::seq_sum_constant))
    fail(fn, "aggregation = ", static_cast<int>(o.aggregation), " is not a loss_aggregation");
  if (static_cast<unsigned>(o.validation) > static_cast<unsigned>(input_validation::fused))
    fail(fn, "validation = ", static_cast<int>(o.validation), " is not an input_validation");
  if (!(o.clip_low >= 0.0 && o.clip_low < 1.0))
    fail(fn, "clip_low = ", o.clip_low, " must be in [0, 1)");
  if (!(o.clip_high >= 0.0) || !finite(o.clip_high))
    fail(fn, "clip_high = ", o.clip_high, " must be finite and >= 0");
  if (!(o.dual_clip == 0.0 || (o.dual_clip > 1.0 && finite(o.dual_clip))))
    fail(fn, "dual_clip = ", o.dual_clip, " must be 0 (off) or a finite value > 1");
  if (!(o.log_ratio_clamp > 0.0 && o.log_ratio_clamp <= 80.0))
    fail(fn, "log_ratio_clamp = ", o.log_ratio_clamp, " must be in (0, 80]");
  if (!(o.gspo_log_ratio_max > 0.0 && o.gspo_log_ratio_max <= 80.0))
    fail(fn, "gspo_log_ratio_max = ", o.gspo_log_ratio_max, " must be in (0, 80]");
  if (!(o.cispo_cap >= 1.0) || !finite(o.cispo_cap)) // a cap below 1 would down-weight even on-policy tokens
    fail(fn, "cispo_cap = ", o.cispo_cap, " must be finite and >= 1");
  if (!(o.kl_coef >= 0.0) || !finite(o.kl_coef))
    fail(fn, "kl_coef = ", o.kl_coef, " must be finite and >= 0");
  if (!(o.kl_log_ratio_clamp > 0.0 && o.kl_log_ratio_clamp <= 80.0))
    fail(fn, "kl_log_ratio_clamp = ", o.kl_log_ratio_clamp, " must be in (0, 80]");
  if (!(o.kl_value_clamp >= 0.0) || !finite(o.kl_value_clamp))
    fail(fn, "kl_value_clamp = ", o.kl_value_clamp, " must be finite and >= 0 (0 = no clamp)");
  if (!(o.normalizer >= 0.0) || !finite(o.normalizer))
    fail(fn, "normalizer = ", o.normalizer, " must be finite and >= 0 (0 = local count)");
}
} // namespace detail

/// Token-level policy loss, its metrics and ∂loss/∂logp in one fused pass (see the file comment and
/// docs/losses.md for the formulas).
/// \param be          backend tag (hir::cpu)
/// \param tokens      the padded batch [B, L] in Backend's memory: mask and logp always; old_logp unless
///                    kind == reinforce (there it is optional and only feeds the ratio metrics); ref_logp when
///                    kl != none. Values at masked positions are never read into any result (they may be NaN).
/// \param advantages  per sequence (B values, broadcast over tokens) or per token (B·L values, row-major)
/// \param grad_logp   [B, L] output: ∂loss/∂logp[i, t], 0 at masked positions; must not overlap the inputs
/// \param opt         loss, clipping, KL, aggregation and normalizer options
/// \returns the loss, its parts and metrics (policy_loss_result)
/// \throws hir::invalid_argument on a bad option, mismatched sizes, overlapping output, a mask value other than
///         0 or 1, or a non-finite logp/old_logp/ref_logp/advantage at a valid position (naming the array, row,
///         column and value); with input_validation::before_writing (the default) grad_logp is then untouched.
///         A batch without valid tokens is not an error: the loss, metrics and gradient are all 0.
template <class Backend, class T>
policy_loss_result policy_loss(Backend const& be, token_batch_ref<T, memory_space_t<Backend>> tokens,
                               span<const T, memory_space_t<Backend>> advantages,
                               span<T, memory_space_t<Backend>> grad_logp, policy_loss_options const& opt = {}) {
  detail::check_backend<Backend>();
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "hir::policy_loss: T must be float or double");
  constexpr const char* fn = "policy_loss";
  detail::check_policy_loss_options(fn, opt);
  const std::size_t n = tokens.batch * tokens.length;
  const bool need_old = opt.kind != policy_loss_kind::reinforce;
  const bool need_ref = opt.kl != kl_estimator::none;
  detail::check_token_batch(fn, tokens, need_old ? (need_ref ? "lor" : "lo") : (need_ref ? "lr" : "l"));
  if (!need_old && !tokens.old_logp.empty())
    detail::check_size(fn, "old_logp.size()", tokens.old_logp.size(), "batch * length", n);
  if (!need_ref && !tokens.ref_logp.empty())
    detail::check_size(fn, "ref_logp.size()", tokens.ref_logp.size(), "batch * length", n);
  if (advantages.size() != tokens.batch && advantages.size() != n)
    detail::fail(fn, "advantages.size() = ", advantages.size(), " is neither batch = ", tokens.batch,
                 " (per sequence) nor batch * length = ", n, " (per token)");
  detail::check_size(fn, "grad_logp.size()", grad_logp.size(), "batch * length", n);
  auto overlaps = [&](const void* p, std::size_t bytes) {
    const auto a = reinterpret_cast<std::uintptr_t>(p), g = reinterpret_cast<std::uintptr_t>(grad_logp.data());
    return bytes > 0 && n > 0 && a < g + n * sizeof(T) && g < a + bytes;
  };
  if (overlaps(tokens.logp.data(), tokens.logp.size() * sizeof(T)) ||
      overlaps(tokens.old_logp.data(), tokens.old_logp.size() * sizeof(T)) ||
      overlaps(tokens.ref_logp.data(), tokens.ref_logp.size() * sizeof(T)) ||
      overlaps(advantages.data(), advantages.size() * sizeof(T)) || overlaps(tokens.mask.data(), tokens.mask.size()))
    detail::fail(fn, "grad_logp overlaps an input array");
  return policy_loss_impl(be, tokens, advantages, grad_logp, opt);
}

} // namespace hir
