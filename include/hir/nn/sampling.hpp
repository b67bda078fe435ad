// SPDX-License-Identifier: Apache-2.0
// Sampling from the reference transformer: `sample_token` draws one token from a logits row under temperature, top-k
// and top-p given one uniform number, and `generator` runs batched autoregressive generation with a KV cache. Every
// draw uses hir::philox keyed by (seed, sequence id, position), so a sequence's tokens do not depend on which other
// sequences share its batch, on the thread count or on the batch split. Prompts of different lengths are given
// right-padded with per-row lengths; all rows advance one position per step, rows still inside their prompt are
// teacher-forced, and finished rows leave the batch (the remaining ones are compacted).
#pragma once

#include <hir/backend/cpu/tag.hpp>
#include <hir/core/error.hpp>
#include <hir/core/random.hpp>
#include <hir/core/span.hpp>
#include <hir/nn/config.hpp>
#include <hir/nn/layers.hpp>
#include <hir/nn/model.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

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

/// Draws a token from `logits` (V) with uniform number u ∈ [0, 1) by inversion of the sampling policy's CDF
/// (vocabulary order without top-k/top-p; most-likely-first order with them). `probs` (V) and `order` (V) are scratch.
/// \throws hir::invalid_argument on sizes, bad options or u outside [0, 1).
template <class T>
sampled_token sample_token(backend::cpu::tag_t const&, span<const T> logits, const sampling_options& opt, double u,
                           span<double> probs, span<token_t> order) {
  const char* fn = "nn::sample_token";
  opt.validate(fn);
  const std::size_t V = logits.size();
  if (V == 0)
    hir::detail::fail(fn, "logits is empty");
  hir::detail::check_size(fn, "probs.size()", probs.size(), "logits.size()", V);
  hir::detail::check_size(fn, "order.size()", order.size(), "logits.size()", V);
  if (!(u >= 0.0 && u < 1.0))
    hir::detail::fail(fn, "u = ", u, " must be in [0, 1)");
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
      probs[v] = std::exp(x);
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
    const double log_s = std::log(s);
    return {static_cast<token_t>(pick), static_cast<double>(logits[pick]) * inv_t - m - log_s, log_s - sz / s};
  }
  // Most likely first (ties: lower index first), keep k, then the top-p prefix.
  for (std::size_t v = 0; v < V; ++v)
    order[v] = static_cast<token_t>(v);
  const std::size_t k = (opt.top_k != 0 && opt.top_k < V) ? opt.top_k : V;
  const auto more_likely = [&](token_t a, token_t b) {
    return logits[static_cast<std::size_t>(a)] > logits[static_cast<std::size_t>(b)] ||
           (logits[static_cast<std::size_t>(a)] == logits[static_cast<std::size_t>(b)] && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(), more_likely);
  double sk = 0.0;
  for (std::size_t i = 0; i < k; ++i) {
    probs[i] = std::exp(static_cast<double>(logits[static_cast<std::size_t>(order[i])]) * inv_t - m);
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
    sz += probs[i] * std::log(probs[i]);
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
  const double log_s = std::log(s);
  return {order[pick], std::log(probs[pick]) - log_s, log_s - sz / s};
}

/// Options of a generate() call.
struct generation_options {
  sampling_options sampling;       ///< temperature, top-k, top-p
  std::size_t max_new_tokens = 20; ///< N, tokens generated per row at most
  token_t stop_token = -1;         ///< a row ends after emitting it (kept in the output); negative: none
  token_t pad_token = 0;           ///< written to out_tokens after a row's end
  std::uint64_t seed = 0;          ///< philox key; draw for position p of sequence s uses uniform(stream s, counter p)
};

/// Batched autoregressive generation with a KV cache, for up to max_batch rows of up to max_len positions
/// (prompt + generated). All buffers are allocated at construction; generate() allocates nothing.
template <class T = float>
class generator {
public:
  /// \throws hir::invalid_argument if max_len exceeds the context or a size is zero.
  generator(const transformer_config& cfg, std::size_t max_batch, std::size_t max_len)
      : cfg_(cfg), max_batch_(max_batch), max_len_(max_len) {
    cfg.validate("nn::generator");
    if (max_batch == 0 || max_len == 0 || max_len > cfg.context)
      hir::detail::fail("nn::generator", "need 0 < max_batch and 0 < max_len <= context = ", cfg.context,
                        ", got max_batch = ", max_batch, ", max_len = ", max_len);
    const std::size_t B = max_batch, C = cfg.channels, S = max_len;
    const std::size_t sizes[n_buffers] = {cfg.layers * B * S * 2 * C, // kv cache (L, B, S, 2C): k then v
                                          B * C,
                                          B * C,
                                          B,
                                          B,
                                          B * 3 * C,
                                          B * C,
                                          B * C,
                                          B * 4 * C,
                                          B * cfg.vocab,
                                          B * cfg.heads * S};
    std::size_t off = 0;
    for (std::size_t i = 0; i < n_buffers; ++i) {
      offsets_[i] = off;
      sizes_[i] = sizes[i];
      off += (sizes[i] + 15) / 16 * 16;
    }
    buf_.assign(off, T(0));
    probs_.assign(B * cfg.vocab, 0.0);
    order_.assign(B * cfg.vocab, 0);
    rows_.assign(B, 0);
    feed_.assign(B, 0);
  }

  /// Elements of the single float buffer (KV cache and per-step activations).
  std::size_t buffer_elements() const { return buf_.size(); }

  /// Generates up to N = opt.max_new_tokens tokens after each prompt with model m's parameters.
  /// \param prompts (B, P) right-padded; row r's prompt is its first prompt_lengths[r] tokens (1 ≤ length ≤ P)
  /// \param sequence_ids (B) the philox stream of each row (e.g. a global sample index)
  /// \param out_tokens (B, N) generated tokens, then pad_token \param out_logp, out_entropy (B, N) under the
  /// sampling policy, 0 after the end \param out_lengths (B) generated tokens per row (stop token included).
  /// \throws hir::invalid_argument on sizes, a config mismatch, tokens out of range or prompt_length + N > max_len.
  void generate(const model<T>& m, span<const token_t> prompts, span<const std::size_t> prompt_lengths,
                span<const std::uint64_t> sequence_ids, std::size_t B, std::size_t P, const generation_options& opt,
                span<token_t> out_tokens, span<T> out_logp, span<T> out_entropy, span<std::size_t> out_lengths) {
    const char* fn = "nn::generator::generate";
    const std::size_t N = opt.max_new_tokens, V = cfg_.vocab;
    if (m.config() != cfg_)
      hir::detail::fail(fn, "the model's config does not match the generator's");
    opt.sampling.validate(fn);
    if (B == 0 || B > max_batch_)
      hir::detail::fail(fn, "B = ", B, " must be in [1, max_batch = ", max_batch_, "]");
    if (N == 0)
      hir::detail::fail(fn, "max_new_tokens must be positive");
    hir::detail::check_size(fn, "prompts.size()", prompts.size(), "B*P", B * P);
    hir::detail::check_size(fn, "prompt_lengths.size()", prompt_lengths.size(), "B", B);
    hir::detail::check_size(fn, "sequence_ids.size()", sequence_ids.size(), "B", B);
    hir::detail::check_size(fn, "out_tokens.size()", out_tokens.size(), "B*N", B * N);
    hir::detail::check_size(fn, "out_logp.size()", out_logp.size(), "B*N", B * N);
    hir::detail::check_size(fn, "out_entropy.size()", out_entropy.size(), "B*N", B * N);
    hir::detail::check_size(fn, "out_lengths.size()", out_lengths.size(), "B", B);
    for (std::size_t r = 0; r < B; ++r) {
      const std::size_t pl = prompt_lengths[r];
      if (pl == 0 || pl > P || pl + N > max_len_)
        hir::detail::fail(fn, "prompt_lengths[", r, "] = ", pl, " must be in [1, P = ", P,
                          "] and prompt length + max_new_tokens must not exceed max_len = ", max_len_);
      for (std::size_t t = 0; t < pl; ++t) {
        const token_t x = prompts[r * P + t];
        if (x < 0 || static_cast<std::size_t>(x) >= V)
          hir::detail::fail(fn, "prompts[", r * P + t, "] = ", x, " is outside [0, V = ", V, ")");
      }
    }
    std::fill(out_tokens.begin(), out_tokens.end(), opt.pad_token);
    std::fill(out_logp.begin(), out_logp.end(), T(0));
    std::fill(out_entropy.begin(), out_entropy.end(), T(0));
    std::fill(out_lengths.begin(), out_lengths.end(), std::size_t{0});

    std::size_t n = B;
    for (std::size_t r = 0; r < B; ++r)
      rows_[r] = r;
    const philox gen{opt.seed};
    for (std::size_t s = 0; n > 0; ++s) {
      // The token each active row feeds at position s: its prompt, then its own samples.
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t r = rows_[i], pl = prompt_lengths[r];
        feed_[i] = s < pl ? prompts[r * P + s] : out_tokens[r * N + (s - pl)];
      }
      step(m, n, s);
      // Rows whose next position is past their prompt draw it.
      const span<const T> logits = b(logits_, n * V);
      detail::parallel_for(n, 64, [&](std::size_t i0, std::size_t i1) {
        for (std::size_t i = i0; i < i1; ++i) {
          const std::size_t r = rows_[i], pl = prompt_lengths[r];
          if (s + 1 < pl)
            continue;
          const double u = gen.uniform(sequence_ids[r], s + 1);
          const sampled_token st =
              sample_token<T>(hir::cpu, logits.subspan(i * V, V), opt.sampling, u,
                              span<double>(probs_.data() + i * V, V), span<token_t>(order_.data() + i * V, V));
          const std::size_t j = s + 1 - pl;
          out_tokens[r * N + j] = st.token;
          out_logp[r * N + j] = static_cast<T>(st.logp);
          out_entropy[r * N + j] = static_cast<T>(st.entropy);
          out_lengths[r] = j + 1;
        }
      });
      // Drop finished rows (stable, so the order of the others is kept).
      std::size_t kept = 0;
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t r = rows_[i], len = out_lengths[r];
        const bool finished =
            len == N || (len > 0 && opt.stop_token >= 0 && out_tokens[r * N + len - 1] == opt.stop_token);
        if (!finished)
          rows_[kept++] = r;
      }
      n = kept;
    }
  }

private:
  enum buffer_id : std::size_t { kv_, x_, ln_, mean_, rstd_, qkv_, atty_, tmp_, fch_, logits_, scores_, n_buffers };

  span<T> b(buffer_id id, std::size_t n) { return span<T>(buf_.data() + offsets_[id], n); }

  // One decode step: active rows rows_[0..n) feed feed_[i] at position s; leaves their next-token logits in logits_.
  void step(const model<T>& m, std::size_t n, std::size_t s) {
    const auto& be = hir::cpu;
    const std::size_t C = cfg_.channels, L = cfg_.layers, V = cfg_.vocab;
    const parameter_layout& pl = m.params_layout();
    const span<const T> prm = m.parameters();
    const auto p = [&](param x, std::size_t l = 0) { return prm.subspan(pl.offset(x, l), pl[x].per_layer); };
    const span<T> x = b(x_, n * C), ln = b(ln_, n * C), mean = b(mean_, n), rstd = b(rstd_, n);
    const span<T> qkv = b(qkv_, n * 3 * C), atty = b(atty_, n * C), tmp = b(tmp_, n * C), fch = b(fch_, n * 4 * C);
    embedding_forward<T>(be, x, span<const token_t>(feed_.data(), n), p(param::wte), p(param::wpe), n, 1, C, s);
    for (std::size_t l = 0; l < L; ++l) {
      layernorm_forward<T>(be, ln, mean, rstd, x, p(param::ln1_weight, l), p(param::ln1_bias, l), n, C);
      matmul_forward<T>(be, qkv, ln, p(param::qkv_weight, l), p(param::qkv_bias, l), n, C, 3 * C);
      attend(l, n, s, qkv, atty);
      matmul_forward<T>(be, tmp, atty, p(param::proj_weight, l), p(param::proj_bias, l), n, C, C);
      residual_forward<T>(be, x, x, tmp, n * C);
      layernorm_forward<T>(be, ln, mean, rstd, x, p(param::ln2_weight, l), p(param::ln2_bias, l), n, C);
      matmul_forward<T>(be, fch, ln, p(param::fc_weight, l), p(param::fc_bias, l), n, C, 4 * C);
      gelu_forward<T>(be, fch, fch, n * 4 * C);
      matmul_forward<T>(be, tmp, fch, p(param::fc2_weight, l), p(param::fc2_bias, l), n, 4 * C, C);
      residual_forward<T>(be, x, x, tmp, n * C);
    }
    layernorm_forward<T>(be, ln, mean, rstd, x, p(param::lnf_weight), p(param::lnf_bias), n, C);
    matmul_forward<T>(be, b(logits_, n * V), ln, p(param::wte), span<const T>(), n, C, V);
  }

  // Appends the rows' k, v at position s to layer l's cache and attends over positions 0..s.
  void attend(std::size_t l, std::size_t n, std::size_t s, span<const T> qkv, span<T> out) {
    const std::size_t C = cfg_.channels, H = cfg_.heads, hs = C / H, S = max_len_;
    T* kv = buf_.data() + offsets_[kv_] + l * max_batch_ * S * 2 * C;
    T* scores = buf_.data() + offsets_[scores_];
    const T scale = T(1) / std::sqrt(static_cast<T>(hs));
    for (std::size_t i = 0; i < n; ++i)
      std::copy(qkv.data() + i * 3 * C + C, qkv.data() + (i + 1) * 3 * C, kv + (rows_[i] * S + s) * 2 * C);
    detail::parallel_for(n * H, 16, [&](std::size_t p0, std::size_t p1) {
      for (std::size_t pi = p0; pi < p1; ++pi) {
        const std::size_t i = pi / H, h = pi % H;
        const T* cache = kv + rows_[i] * S * 2 * C + h * hs;
        const Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>> q(qkv.data() + i * 3 * C + h * hs, detail::ei(hs));
        T* sc = scores + pi * S;
        for (std::size_t j = 0; j <= s; ++j)
          sc[j] =
              scale * q.dot(Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>(cache + j * 2 * C, detail::ei(hs)));
        detail::array_map<T> a(sc, detail::ei(s + 1));
        a = (a - a.maxCoeff()).exp();
        a *= T(1) / a.sum();
        detail::array_map<T> y(out.data() + i * C + h * hs, detail::ei(hs));
        y.setZero();
        for (std::size_t j = 0; j <= s; ++j)
          y += sc[j] * detail::const_array_map<T>(cache + j * 2 * C + C, detail::ei(hs));
      }
    });
  }

  transformer_config cfg_;
  std::size_t max_batch_, max_len_;
  std::size_t offsets_[n_buffers] = {}, sizes_[n_buffers] = {};
  std::vector<T> buf_;
  std::vector<double> probs_;
  std::vector<token_t> order_;
  std::vector<std::size_t> rows_;
  std::vector<token_t> feed_;
};

} // namespace hir::nn
