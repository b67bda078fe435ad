// SPDX-License-Identifier: Apache-2.0
// Dual-level preference losses: HiR's dual-preference view (docs/hindsight.md, §5 of the algorithm) as explicit
// pairwise losses on sequence log-probabilities, beside the policy-gradient form.
//
//   response-level pair     (y⁺, y⁻) under the same instruction q: a success and a failure among the originals
//                           of one prompt
//   instruction-level pair  the same response y under the rewritten instruction q' (chosen) and the original q
//                           (rejected): a replay row and its source row
//
// With h = (log π(y_c|·) − log π_ref(y_c|·)) − (log π(y_r|·) − log π_ref(y_r|·)) per pair, the loss is DPO's sigmoid
// −(1−ε) log σ(βh) − ε log σ(−βh) (ε = label smoothing) or IPO's (h − 1/(2β))²; each level is averaged over its pairs
// and weighted separately:  L = w_resp · mean_resp L + w_inst · mean_inst L.  The gradient is returned per row with
// respect to the sequence log-probability log π(y|·); hir::sequence_logp_backward spreads it over tokens.
//
// Relation to the policy-gradient form: ∂L/∂log π(y_c) = −∂L/∂log π(y_r) = w·dL/dh, so a pair contributes
// w·|dL/dh|·(∇ log π(y_c) − ∇ log π(y_r)) to −∇L — the same direction as the pairwise terms a(∇ log π(y⁺|q) −
// ∇ log π(y⁻|q)) and a(∇ log π(y|q') − ∇ log π(y|q)) into which the REINFORCE gradient of a binary-reward batch with
// replays decomposes; the policy gradient weighs each pair by its advantage gap, DPO by σ(−βh) (large while the
// pair is still mis-ordered), IPO by the distance of h from 1/(2β).
#pragma once

#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/span.hpp>
#include <hir/detail/relabel_issues.hpp>
#include <hir/relabel/replay_batch.hpp>
#include <hir/relabel/select.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace hir {

/// The pairwise loss of hir::preference_loss.
enum class preference_loss_kind {
  sigmoid, ///< DPO: −(1−ε) log σ(βh) − ε log σ(−βh) (ε = label_smoothing: conservative DPO)
  ipo      ///< IPO: (h − 1/(2β))²
};

/// The level of a preference pair.
enum class preference_level : std::uint8_t {
  response = 0,   ///< same instruction, a success preferred to a failure
  instruction = 1 ///< same response, the rewritten instruction preferred to the original
};

/// How successes and failures of one prompt are paired at the response level.
enum class response_pairing {
  all_pairs,  ///< every (success, failure) pair: |S|·|F| pairs, successes outer, both in row order
  round_robin ///< failure j (in row order) with success j mod |S|: |F| pairs when |S| > 0
};

/// Options of build_preference_pairs.
struct preference_pair_options {
  bool response_level = true;    ///< build response-level pairs
  bool instruction_level = true; ///< build instruction-level pairs
  response_pairing pairing = response_pairing::all_pairs;
  double success_threshold = 1.0; ///< an original with reward ≥ threshold is a success, otherwise a failure
};

/// A view of preference pairs: pair j prefers row chosen[j] to row rejected[j] at level level[j] (0/1).
template <class Space = host_space>
struct preference_pairs_ref {
  span<const std::int64_t, Space> chosen;
  span<const std::int64_t, Space> rejected;
  span<const std::uint8_t, Space> level;
  HIR_HOST_DEVICE std::size_t size() const { return chosen.size(); }
};

/// Preference pairs built from a replay batch: response-level pairs first (by prompt, then row order), then
/// instruction-level pairs (in replay row order).
template <class Backend>
struct preference_pairs {
  hir::vector<std::int64_t, Backend> chosen;
  hir::vector<std::int64_t, Backend> rejected;
  hir::vector<std::uint8_t, Backend> level;
  std::size_t num_response = 0;
  std::size_t num_instruction = 0;

  std::size_t size() const noexcept { return chosen.size(); }
  preference_pairs_ref<memory_space_t<Backend>> ref() const {
    return {detail::const_view<Backend>(chosen), detail::const_view<Backend>(rejected),
            detail::const_view<Backend>(level)};
  }
  operator preference_pairs_ref<memory_space_t<Backend>>() const { return ref(); }
};

/// Options of preference_loss.
struct preference_loss_options {
  preference_loss_kind kind = preference_loss_kind::sigmoid;
  double beta = 0.1;               ///< β > 0
  double label_smoothing = 0.0;    ///< ε ∈ [0, 0.5), sigmoid only
  double response_weight = 1.0;    ///< w_resp ≥ 0
  double instruction_weight = 1.0; ///< w_inst ≥ 0
};

/// Loss value and diagnostics of preference_loss. Means over an empty level are 0.
struct preference_loss_result {
  double loss = 0;             ///< w_resp · response_loss + w_inst · instruction_loss
  double response_loss = 0;    ///< mean pair loss over response-level pairs
  double instruction_loss = 0; ///< mean pair loss over instruction-level pairs
  std::size_t response_pairs = 0;
  std::size_t instruction_pairs = 0;
  double response_accuracy = 0;    ///< fraction of response-level pairs with h > 0
  double instruction_accuracy = 0; ///< fraction of instruction-level pairs with h > 0
  double response_margin = 0;      ///< mean β·h over response-level pairs
  double instruction_margin = 0;   ///< mean β·h over instruction-level pairs
};

/// How token log-probabilities are reduced to a sequence log-probability.
enum class sequence_reduction {
  sum, ///< Σ_t m_t log π(y_t|·) = log π(y|·)
  mean ///< the sum over the number of valid tokens (0 for a row without valid tokens); IPO's length normalisation
};

namespace detail {
inline void check_preference_loss_options(const char* fn, const preference_loss_options& o) {
  if (static_cast<unsigned>(o.kind) > static_cast<unsigned>(preference_loss_kind::ipo))
    fail(fn, "kind = ", static_cast<int>(o.kind), " is not a preference_loss_kind");
  if (!(o.beta > 0) || !std::isfinite(o.beta))
    fail(fn, "beta = ", o.beta, " must be finite and > 0");
  if (!(o.label_smoothing >= 0 && o.label_smoothing < 0.5))
    fail(fn, "label_smoothing = ", o.label_smoothing, " must be in [0, 0.5)");
  if (o.kind == preference_loss_kind::ipo && o.label_smoothing != 0)
    fail(fn, "label_smoothing = ", o.label_smoothing, " applies to the sigmoid loss only, not to IPO");
  if (!(o.response_weight >= 0) || !std::isfinite(o.response_weight))
    fail(fn, "response_weight = ", o.response_weight, " must be finite and >= 0");
  if (!(o.instruction_weight >= 0) || !std::isfinite(o.instruction_weight))
    fail(fn, "instruction_weight = ", o.instruction_weight, " must be finite and >= 0");
}

inline void check_token_rows(const char* fn, std::size_t mask_size, std::size_t length) {
  if (length == 0)
    fail(fn, "length = 0");
  if (mask_size == 0)
    fail(fn, "the batch is empty (mask.size() = 0)");
  if (mask_size % length != 0)
    fail(fn, "mask.size() = ", mask_size, " is not a multiple of length = ", length);
}
} // namespace detail

/// Sequence log-probabilities: out[r] = Σ_t mask[r,t]·logp[r,t] (sum) or that over Σ_t mask[r,t] (mean).
/// \throws hir::invalid_argument on an empty batch, mismatched sizes, a mask entry other than 0/1 or a non-finite
///         log-probability on a valid token.
template <class Backend, class T>
void sequence_logp(Backend const& be, span<const T, memory_space_t<Backend>> logp,
                   span<const std::uint8_t, memory_space_t<Backend>> mask, std::size_t length,
                   span<T, memory_space_t<Backend>> out, sequence_reduction reduction = sequence_reduction::sum) {
  detail::check_backend<Backend>();
  constexpr const char* fn = "sequence_logp";
  detail::check_token_rows(fn, mask.size(), length);
  detail::check_size(fn, "logp.size()", logp.size(), "mask.size()", mask.size());
  detail::check_size(fn, "out.size()", out.size(), "rows", mask.size() / length);
  const auto is = relabel_masked_rows_check_impl(be, mask, logp, length);
  if (is)
    detail::fail(fn, "row ", is.index, " ", detail::describe(is.issue));
  sequence_logp_impl(be, logp, mask, length, out, reduction);
}

/// The token gradient of sequence_logp: grad_token[r,t] = mask[r,t]·grad_seq[r] (sum) or that over the row's
/// valid-token count (mean).
/// \throws hir::invalid_argument on an empty batch, mismatched sizes, a mask entry other than 0/1 or a non-finite
///         gradient.
template <class Backend, class T>
void sequence_logp_backward(Backend const& be, span<const T, memory_space_t<Backend>> grad_seq,
                            span<const std::uint8_t, memory_space_t<Backend>> mask, std::size_t length,
                            span<T, memory_space_t<Backend>> grad_token,
                            sequence_reduction reduction = sequence_reduction::sum) {
  detail::check_backend<Backend>();
  constexpr const char* fn = "sequence_logp_backward";
  detail::check_token_rows(fn, mask.size(), length);
  detail::check_size(fn, "grad_seq.size()", grad_seq.size(), "rows", mask.size() / length);
  detail::check_size(fn, "grad_token.size()", grad_token.size(), "mask.size()", mask.size());
  const long long bad_grad = preference_first_non_finite_impl(be, grad_seq);
  if (bad_grad >= 0)
    detail::fail(fn, "grad_seq[", bad_grad, "] is not finite");
  const long long bad_mask = preference_first_invalid_mask_impl(be, mask);
  if (bad_mask >= 0)
    detail::fail(fn, "mask[", bad_mask, "] is neither 0 nor 1");
  sequence_logp_backward_impl(be, grad_seq, mask, length, grad_token, reduction);
}

/// Builds response-level and instruction-level preference pairs from a replay batch (reads prompt, reward,
/// is_replay and source_row).
/// \throws hir::invalid_argument on an empty batch, mismatched sizes, a non-finite reward or threshold, an is_replay
///         entry other than 0/1, or a replay whose source_row is out of range, not an original, or of another
///         prompt.
template <class Backend, class T>
HIR_NODISCARD preference_pairs<Backend> build_preference_pairs(Backend const& be,
                                                               replay_batch_ref<T, memory_space_t<Backend>> batch,
                                                               preference_pair_options const& opt = {}) {
  detail::check_backend<Backend>();
  constexpr const char* fn = "build_preference_pairs";
  if (batch.batch == 0)
    detail::fail(fn, "the batch is empty (batch = 0)");
  if (!std::isfinite(opt.success_threshold))
    detail::fail(fn, "success_threshold = ", opt.success_threshold, " must be finite");
  if (static_cast<unsigned>(opt.pairing) > static_cast<unsigned>(response_pairing::round_robin))
    detail::fail(fn, "pairing = ", static_cast<int>(opt.pairing), " is not a response_pairing");
  detail::check_size(fn, "prompt.size()", batch.prompt.size(), "batch", batch.batch);
  detail::check_size(fn, "reward.size()", batch.reward.size(), "batch", batch.batch);
  detail::check_size(fn, "is_replay.size()", batch.is_replay.size(), "batch", batch.batch);
  detail::check_size(fn, "source_row.size()", batch.source_row.size(), "batch", batch.batch);
  const long long bad = preference_rows_check_impl(be, batch);
  if (bad >= 0)
    detail::fail(fn, "row ", bad,
                 " has a non-finite reward, an is_replay entry other than 0/1, or (a replay) a source_row that is out "
                 "of range, not an original, or of another prompt");
  preference_pairs<Backend> out;
  build_preference_pairs_impl(be, batch, opt, out);
  return out;
}

/// Dual-level DPO / IPO loss over preference pairs, with the gradient with respect to each row's sequence
/// log-probability.
/// \param pairs     e.g. build_preference_pairs(...).ref()
/// \param logp      [R] log π_θ(y|·) of every row (under the row's instruction), e.g. from hir::sequence_logp
/// \param ref_logp  [R] log π_ref(y|·) (empty: 0, a reference-free loss)
/// \param grad      [R] overwritten with ∂L/∂logp (empty: not computed); rows in no pair get 0
/// \throws hir::invalid_argument on empty pairs or rows, mismatched sizes, a pair row out of range or a level other
///         than 0/1, a non-finite log-probability, or a bad option; `grad` is untouched then.
template <class Backend, class T>
preference_loss_result preference_loss(Backend const& be, preference_pairs_ref<memory_space_t<Backend>> pairs,
                                       span<const T, memory_space_t<Backend>> logp,
                                       span<const T, memory_space_t<Backend>> ref_logp,
                                       span<T, memory_space_t<Backend>> grad, preference_loss_options const& opt = {}) {
  detail::check_backend<Backend>();
  constexpr const char* fn = "preference_loss";
  detail::check_preference_loss_options(fn, opt);
  if (logp.empty())
    detail::fail(fn, "the batch is empty (logp.size() = 0)");
  if (pairs.size() == 0)
    detail::fail(fn, "there are no preference pairs (a batch without successes and without replays has none)");
  detail::check_size(fn, "rejected.size()", pairs.rejected.size(), "chosen.size()", pairs.chosen.size());
  detail::check_size(fn, "level.size()", pairs.level.size(), "chosen.size()", pairs.chosen.size());
  if (!ref_logp.empty())
    detail::check_size(fn, "ref_logp.size()", ref_logp.size(), "logp.size()", logp.size());
  auto overlaps = [&](const T* p, std::size_t n) {
    const auto a = reinterpret_cast<std::uintptr_t>(p), g = reinterpret_cast<std::uintptr_t>(grad.data());
    return n > 0 && !grad.empty() && a < g + grad.size() * sizeof(T) && g < a + n * sizeof(T);
  };
  if (overlaps(logp.data(), logp.size()) || overlaps(ref_logp.data(), ref_logp.size()))
    detail::fail(fn, "grad overlaps logp or ref_logp");
  if (!grad.empty())
    detail::check_size(fn, "grad.size()", grad.size(), "logp.size()", logp.size());
  const long long bad_row = preference_first_non_finite_impl(be, logp);
  if (bad_row >= 0)
    detail::fail(fn, "logp[", bad_row, "] is not finite");
  const long long bad_ref = ref_logp.empty() ? -1 : preference_first_non_finite_impl(be, ref_logp);
  if (bad_ref >= 0)
    detail::fail(fn, "ref_logp[", bad_ref, "] is not finite");
  const detail::relabel_input_issue is = preference_pairs_check_impl(be, pairs, logp.size());
  if (is)
    detail::fail(fn, "pair ", is.index, " ", detail::describe(is.issue));
  return preference_loss_impl(be, pairs, logp, ref_logp, grad, opt);
}

} // namespace hir
