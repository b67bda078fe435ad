// SPDX-License-Identifier: Apache-2.0
// What the CPU generator (nn/sampling.hpp) and the device generator (nn/device/sampling.hpp) share: the sampling and
// generation options, the sampled-token record, and detail::sample_row — the draw of one token from a logits row by
// inversion of the sampling policy's CDF — written once for host and device code. Never includes Eigen (nvcc compiles
// it).
#pragma once

#include <hir/config.hpp>
#include <hir/core/error.hpp>
#include <hir/nn/config.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace hir::nn {

/// How a token is drawn from a logits row.
struct sampling_options {
  double temperature = 1.0; ///< logits are divided by it; 0 = greedy (argmax, lowest index on ties)
  std::size_t top_k = 0;    ///< keep the k most likely tokens (0 = all)
  double top_p = 1.0;       ///< then keep the smallest most-likely prefix with probability ≥ top_p (1 = all)

  /// Throws hir::invalid_argument naming fn unless temperature ≥ 0 and 0 < top_p ≤ 1.
  void validate(const char* fn) const {
    if (!(temperature >= 0.0) || !std::isfinite(temperature))
      hir::detail::fail(fn, "temperature = ", temperature, " must be finite and >= 0");
    if (!(top_p > 0.0 && top_p <= 1.0))
      hir::detail::fail(fn, "top_p = ", top_p, " must be in (0, 1]");
  }
};

/// A drawn token with its log-probability and the entropy of the distribution it was drawn from (the sampling
/// policy: after temperature, top-k and top-p; greedy draws have logp 0 and entropy 0).
struct sampled_token {
  token_t token = 0;
  double logp = 0.0;
  double entropy = 0.0;
};

/// Options of a generate() call (generator<T> and device_generator<T>).
struct generation_options {
  sampling_options sampling;       ///< temperature, top-k, top-p
  std::size_t max_new_tokens = 20; ///< N, tokens generated per row at most
  token_t stop_token = -1;         ///< a row ends after emitting it (kept in the output); negative: none
  token_t pad_token = 0;           ///< written to out_tokens after a row's end
  std::uint64_t seed = 0;          ///< philox key; draw for position p of sequence s uses uniform(stream s, counter p)
};

namespace detail {

/// The generators' constructor checks (fn names the class): a valid config, 0 < max_batch, 0 < max_len ≤ context.
inline void check_generator_shape(const char* fn, const transformer_config& cfg, std::size_t max_batch,
                                  std::size_t max_len) {
  cfg.validate(fn);
  if (max_batch == 0 || max_len == 0 || max_len > cfg.context)
    hir::detail::fail(fn, "need 0 < max_batch and 0 < max_len <= context = ", cfg.context,
                      ", got max_batch = ", max_batch, ", max_len = ", max_len);
}

/// The sizes of one generate() call's arguments.
struct generation_call_sizes {
  std::size_t prompts, prompt_lengths, sequence_ids, out_tokens, out_logp, out_entropy, out_lengths;
};

/// generate()'s checks that read no data, in both generators' order: the model's config, the options, B in
/// [1, max_batch], N > 0, then every size. \throws hir::invalid_argument naming fn.
inline void check_generation_call(const char* fn, bool config_matches, const generation_options& opt, std::size_t B,
                                  std::size_t max_batch, std::size_t P, const generation_call_sizes& n) {
  const std::size_t N = opt.max_new_tokens;
  if (!config_matches)
    hir::detail::fail(fn, "the model's config does not match the generator's");
  opt.sampling.validate(fn);
  if (B == 0 || B > max_batch)
    hir::detail::fail(fn, "B = ", B, " must be in [1, max_batch = ", max_batch, "]");
  if (N == 0)
    hir::detail::fail(fn, "max_new_tokens must be positive");
  hir::detail::check_size(fn, "prompts.size()", n.prompts, "B*P", B * P);
  hir::detail::check_size(fn, "prompt_lengths.size()", n.prompt_lengths, "B", B);
  hir::detail::check_size(fn, "sequence_ids.size()", n.sequence_ids, "B", B);
  hir::detail::check_size(fn, "out_tokens.size()", n.out_tokens, "B*N", B * N);
  hir::detail::check_size(fn, "out_logp.size()", n.out_logp, "B*N", B * N);
  hir::detail::check_size(fn, "out_entropy.size()", n.out_entropy, "B*N", B * N);
  hir::detail::check_size(fn, "out_lengths.size()", n.out_lengths, "B", B);
}

/// Throws the generators' error for row r's prompt length pl (outside [1, P], or pl + N > max_len).
[[noreturn]] inline void fail_prompt_length(const char* fn, std::size_t r, std::size_t pl, std::size_t P,
                                            std::size_t max_len) {
  hir::detail::fail(fn, "prompt_lengths[", r, "] = ", pl, " must be in [1, P = ", P,
                    "] and prompt length + max_new_tokens must not exceed max_len = ", max_len);
}

/// Throws the generators' error for prompt token x at flat index `at` outside [0, V).
[[noreturn]] inline void fail_prompt_token(const char* fn, std::size_t at, token_t x, std::size_t V) {
  hir::detail::fail(fn, "prompts[", at, "] = ", x, " is outside [0, V = ", V, ")");
}

/// Whether token a is more likely than token b under `logits` (ties: the lower index first): a strict total order,
/// so every sort by it puts the same tokens first, in the same order.
template <class T>
HIR_HOST_DEVICE inline bool more_likely(const T* logits, token_t a, token_t b) {
  const T za = logits[static_cast<std::size_t>(a)], zb = logits[static_cast<std::size_t>(b)];
  return za > zb || (za == zb && a < b);
}

/// Puts the k most likely of the V tokens in order[0..k) in more_likely order by selection (O(k·V): for the small
/// vocabularies of the reference transformer, and for device code, which has no std::partial_sort).
struct select_first_k {
  template <class T>
  HIR_HOST_DEVICE void operator()(const T* logits, token_t* order, std::size_t V, std::size_t k) const {
    for (std::size_t i = 0; i < k; ++i) {
      std::size_t b = i;
      for (std::size_t j = i + 1; j < V; ++j)
        if (more_likely(logits, order[j], order[b]))
          b = j;
      const token_t t = order[i];
      order[i] = order[b];
      order[b] = t;
    }
  }
};

/// Draws a token from `logits` (V) with uniform number u ∈ [0, 1) by inversion of the sampling policy's CDF, in
/// double: argmax (lowest index on ties) at temperature 0 with logp 0 and entropy 0; without top-k / top-p, inversion
/// in vocabulary order; with them, the k most likely first (`sort_first_k(logits, order, V, k)` puts them in
/// more_likely order in order[0..k)), then the smallest prefix holding top_p of their mass. `probs` (V) and `order`
/// (V) are scratch. Options and u are trusted (the callers validate them).
template <class T, class SortFirstK>
HIR_HOST_DEVICE sampled_token sample_row(const T* logits, std::size_t V, const sampling_options& opt, double u,
                                         double* probs, token_t* order, SortFirstK sort_first_k) {
  std::size_t best = 0;
  for (std::size_t v = 1; v < V; ++v)
    if (logits[v] > logits[best])
      best = v;
  if (opt.temperature == 0.0)
    return {static_cast<token_t>(best), 0.0, 0.0};
  const double inv_t = 1.0 / opt.temperature, m = static_cast<double>(logits[best]) * inv_t;
  const bool filter = (opt.top_k != 0 && opt.top_k < V) || opt.top_p < 1.0;
  if (!filter) {
    // probs = exp(z/T − m), inversion in vocabulary order.
    double s = 0.0, sz = 0.0;
    for (std::size_t v = 0; v < V; ++v) {
      const double x = static_cast<double>(logits[v]) * inv_t - m;
      probs[v] = ::exp(x);
      s += probs[v];
      sz += probs[v] * x;
    }
    const double target = u * s;
    double cum = 0.0;
    std::size_t pick = best;
    for (std::size_t v = 0; v < V; ++v) {
      cum += probs[v];
      if (target < cum && probs[v] > 0.0) {
        pick = v;
        break;
      }
    }
    const double log_s = ::log(s);
    return {static_cast<token_t>(pick), static_cast<double>(logits[pick]) * inv_t - m - log_s, log_s - sz / s};
  }
  // Most likely first (ties: lower index first), keep k, then the top-p prefix.
  for (std::size_t v = 0; v < V; ++v)
    order[v] = static_cast<token_t>(v);
  const std::size_t k = (opt.top_k != 0 && opt.top_k < V) ? opt.top_k : V;
  sort_first_k(logits, order, V, k);
  double sk = 0.0;
  for (std::size_t i = 0; i < k; ++i) {
    probs[i] = ::exp(static_cast<double>(logits[static_cast<std::size_t>(order[i])]) * inv_t - m);
    sk += probs[i];
  }
  std::size_t n = k;
  if (opt.top_p < 1.0) {
    double cum = 0.0;
    for (std::size_t i = 0; i < k; ++i) {
      cum += probs[i];
      if (cum >= opt.top_p * sk) {
        n = i + 1;
        break;
      }
    }
  }
  double s = 0.0, sz = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    s += probs[i];
    sz += probs[i] * ::log(probs[i]);
  }
  const double target = u * s;
  double cum = 0.0;
  std::size_t pick = 0;
  for (std::size_t i = 0; i < n; ++i) {
    cum += probs[i];
    if (target < cum) {
      pick = i;
      break;
    }
    pick = i;
  }
  const double log_s = ::log(s);
  return {order[pick], ::log(probs[pick]) - log_s, log_s - sz / s};
}

} // namespace detail
} // namespace hir::nn
