// SPDX-License-Identifier: Apache-2.0
// Batched autoregressive generation with a KV cache on the device backend: hir::nn::device_generator<T>, the device
// counterpart of hir::nn::generator<T> (nn/sampling.hpp) with the same semantics and outputs — right-padded prompts
// with per-row lengths, one position per step for every live row (rows inside their prompt teacher-forced, rows past
// it draw), philox draws keyed by (seed, sequence id, position), temperature / top-k / top-p, stop and pad tokens,
// finished rows leaving the batch. Every per-step operation is on the device: the forward of the live rows through
// the device layers (nn/device/layers.hpp), the KV-cache store and the decode attention as Thrust functors (one call
// per channel, one per (row, head)), the sampling one functor call per row (detail::sample_row, the CPU's sampler,
// from nn/sampling_options.hpp), and the row compaction one functor call. The host reads back one small status record
// per drawing step to know how many rows are live. Never includes Eigen (nvcc compiles it): it shares the options and
// the sampler with nn/sampling.hpp through nn/sampling_options.hpp, and is a class of its own rather than a
// specialization of generator<T> (whose header includes Eigen).
#pragma once

#include <hir/backend/device/rewards.hpp> // detail::first_index_where
#include <hir/backend/device/tag.hpp>     // first: Thrust's config decides HIR_DEVICE_IS_CUDA

#include <hir/config.hpp>
#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/random.hpp>
#include <hir/core/span.hpp>
#include <hir/nn/config.hpp>
#include <hir/nn/device/gemm.hpp>
#include <hir/nn/device/layers.hpp>
#include <hir/nn/model.hpp>
#include <hir/nn/sampling_options.hpp>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace hir {
namespace backend {
namespace device {
namespace detail {

/// What the host reads back after a drawing step: the live rows (the first `active` entries of the row list) and
/// the shortest prompt among them (the first position at which one of them draws is min_prompt − 1).
struct hir_gen_status {
  std::size_t active;
  std::size_t min_prompt;
};

/// Validation predicate over i ∈ [0, B·(P+1)), in the CPU's check order: i = r·(P+1) checks row r's prompt length
/// (in [1, P], length + N ≤ max_len), i = r·(P+1) + 1 + t checks token t < length of a row whose length is valid.
struct hir_gen_prompt_bad {
  const nn::token_t* prompts;
  const std::size_t* lengths;
  std::size_t P, N, max_len, V;
  HIR_HOST_DEVICE bool operator()(std::size_t i) const {
    const std::size_t r = i / (P + 1), j = i % (P + 1), pl = lengths[r];
    const bool length_bad = pl == 0 || pl > P || pl + N > max_len;
    if (j == 0)
      return length_bad;
    if (length_bad || j - 1 >= pl)
      return false;
    const nn::token_t x = prompts[r * P + (j - 1)];
    return x < 0 || static_cast<std::size_t>(x) >= V;
  }
};

/// e over (B, N): out_tokens = pad, logp = entropy = 0; lengths = 0 (at e = r·N).
template <class T>
struct hir_gen_fill_outputs {
  nn::token_t* tokens;
  T *logp, *entropy;
  std::size_t* lengths;
  std::size_t N;
  nn::token_t pad;
  HIR_HOST_DEVICE void operator()(std::size_t e) const {
    tokens[e] = pad;
    logp[e] = T(0);
    entropy[e] = T(0);
    if (e % N == 0)
      lengths[e / N] = 0;
  }
};

/// One call: the row list 0..B−1 and the first status (all rows live, their shortest prompt). Serial over B rows.
struct hir_gen_init {
  std::size_t* rows;
  const std::size_t* prompt_lengths;
  std::size_t B;
  hir_gen_status* status;
  HIR_HOST_DEVICE void operator()(std::size_t) const {
    std::size_t shortest = ~std::size_t{0};
    for (std::size_t r = 0; r < B; ++r) {
      rows[r] = r;
      shortest = prompt_lengths[r] < shortest ? prompt_lengths[r] : shortest;
    }
    status->active = B;
    status->min_prompt = shortest;
  }
};

/// Live row i feeds, at position s, its prompt token while s < its prompt length, else its own sample s − length.
struct hir_gen_feed {
  nn::token_t* feed;
  const std::size_t* rows;
  const std::size_t* prompt_lengths;
  const nn::token_t *prompts, *out_tokens;
  std::size_t P, N, s;
  HIR_HOST_DEVICE void operator()(std::size_t i) const {
    const std::size_t r = rows[i], pl = prompt_lengths[r];
    feed[i] = s < pl ? prompts[r * P + s] : out_tokens[r * N + (s - pl)];
  }
};

/// e over (n, C): channel c of live row i's key and value at position s (the k and v thirds of its qkv row) into
/// the cache of row rows[i] (layout: see device_generator).
template <class T>
struct hir_gen_kv_store {
  T* cache; // this layer's (max_batch, 2, S, C)
  const T* qkv;
  const std::size_t* rows;
  std::size_t C, S, s;
  HIR_HOST_DEVICE void operator()(std::size_t e) const {
    const std::size_t i = e / C, c = e % C;
    T* kr = cache + rows[i] * 2 * S * C;
    kr[s * C + c] = qkv[i * 3 * C + C + c];
    kr[S * C + s * C + c] = qkv[i * 3 * C + 2 * C + c];
  }
};

/// p over (n, H): head h of live row i attends over its cached positions 0..s — scores scale·q·k_j in T, softmax
/// (max-subtracted, normalized by the sum, in T, like the CPU's kv_attend_generic), y = Σ_j p_j·v_j in position
/// order. `scores` holds S values per (row, head).
template <class T>
struct hir_gen_attend {
  T* out; // (n, C)
  T* scores;
  const T* cache; // this layer's (max_batch, 2, S, C)
  const T* qkv;
  const std::size_t* rows;
  std::size_t C, H, S, s;
  T scale;
  HIR_HOST_DEVICE void operator()(std::size_t p) const {
    const std::size_t i = p / H, h = p % H, hs = C / H;
    const T* q = qkv + i * 3 * C + h * hs;
    const T* k = cache + rows[i] * 2 * S * C + h * hs;
    const T* v = k + S * C;
    T* sc = scores + p * S;
    T mx = T(0);
    for (std::size_t j = 0; j <= s; ++j) {
      T acc = T(0);
      for (std::size_t d = 0; d < hs; ++d)
        acc += q[d] * k[j * C + d];
      sc[j] = scale * acc;
      mx = (j == 0 || sc[j] > mx) ? sc[j] : mx;
    }
    T sum = T(0);
    for (std::size_t j = 0; j <= s; ++j) {
      sc[j] = hir_nn_exp(sc[j] - mx);
      sum += sc[j];
    }
    const T inv = T(1) / sum;
    for (std::size_t j = 0; j <= s; ++j)
      sc[j] *= inv;
    T* y = out + i * C + h * hs;
    for (std::size_t d = 0; d < hs; ++d) {
      T acc = T(0);
      for (std::size_t j = 0; j <= s; ++j)
        acc += sc[j] * v[j * C + d];
      y[d] = acc;
    }
  }
};

/// Live row i whose next position s + 1 is past its prompt draws it: u = philox{seed}.uniform(sequence id, s + 1),
/// nn::detail::sample_row on its logits (selection for the top-k sort), token / logp / entropy at column s + 1 − prompt
/// length, length updated.
template <class T>
struct hir_gen_sample {
  philox gen;
  const T* logits; // (n, V)
  const std::size_t* rows;
  const std::size_t* prompt_lengths;
  const std::uint64_t* sequence_ids;
  double* probs;      // (n, V) scratch
  nn::token_t* order; // (n, V) scratch
  nn::token_t* out_tokens;
  T *out_logp, *out_entropy;
  std::size_t* out_lengths;
  std::size_t V, N, s;
  nn::sampling_options opt;
  HIR_HOST_DEVICE void operator()(std::size_t i) const {
    const std::size_t r = rows[i], pl = prompt_lengths[r];
    if (s + 1 < pl)
      return;
    const double u = gen.uniform(sequence_ids[r], s + 1);
    const nn::sampled_token st =
        nn::detail::sample_row(logits + i * V, V, opt, u, probs + i * V, order + i * V, nn::detail::select_first_k{});
    const std::size_t j = s + 1 - pl;
    out_tokens[r * N + j] = st.token;
    out_logp[r * N + j] = static_cast<T>(st.logp);
    out_entropy[r * N + j] = static_cast<T>(st.entropy);
    out_lengths[r] = j + 1;
  }
};

/// One call: drops the finished rows (N tokens, or the last one the stop token) from the row list, keeping the
/// order of the others (the CPU's compaction), and writes the new status. Serial over the live rows.
struct hir_gen_compact {
  std::size_t* rows;
  const std::size_t* prompt_lengths;
  const std::size_t* out_lengths;
  const nn::token_t* out_tokens;
  std::size_t N;
  nn::token_t stop;
  hir_gen_status* status;
  HIR_HOST_DEVICE void operator()(std::size_t) const {
    const std::size_t n = status->active;
    std::size_t kept = 0, shortest = ~std::size_t{0};
    for (std::size_t i = 0; i < n; ++i) {
      const std::size_t r = rows[i], len = out_lengths[r];
      const bool finished = len == N || (len > 0 && stop >= 0 && out_tokens[r * N + len - 1] == stop);
      if (!finished) {
        rows[kept++] = r;
        shortest = prompt_lengths[r] < shortest ? prompt_lengths[r] : shortest;
      }
    }
    status->active = kept;
    status->min_prompt = shortest;
  }
};

} // namespace detail
} // namespace device
} // namespace backend

namespace nn {

/// Batched autoregressive generation with a KV cache on the device backend, for up to max_batch rows of up to
/// max_len positions (prompt + generated): hir::nn::generator<T> (nn/sampling.hpp) for
/// model<T, hir::backend::device::tag_t>, with the same arguments (device spans) and the same outputs — equal tokens
/// and lengths, log-probs and entropies up to the round-off of another summation order (tested against the CPU
/// generator on Thrust's CPP and OMP systems).
///
/// All device memory is allocated at construction: one buffer of T for the KV cache and the per-step activations,
/// the sampling scratch (max_batch × V doubles and token ids), the row list and the status record. generate()
/// allocates nothing but the temporaries of one validation reduction (from the tag's workspace when it has one) and,
/// on CUDA, the calling thread's cuBLAS handle on its first GEMM (as every device layer).
///
/// KV cache layout: per layer l and batch row r, the keys of positions 0..max_len−1 as rows of C channels (head h
/// at channels h·hs … (h+1)·hs − 1), then the values the same way: element (l, r, k|v, j, c) at
/// ((l·max_batch + r)·2 + {0 keys, 1 values})·max_len·C + j·C + c. Rows keep their cache slot (their index in the
/// batch) when the live rows are compacted.
///
/// Per step at position s, for the n live rows: the feed token of each row (functor), the token + position embedding
/// (the embedding layer's functor, without its token check: prompts are validated once, samples are in range), per
/// layer layernorm, the qkv matmul, the cache store of k and v at s (one call per channel), the decode attention (one
/// call per (row, head), accumulating in T), the projection matmul and residual add, layernorm, fc matmul, GELU, fc2
/// matmul and residual add; then, if some live row draws at s + 1, the final layernorm, the LM head (tied wte), one
/// sampling call per row (in double, nn::detail::sample_row) and one compaction call. All on the tag's stream.
///
/// Host round trips (device-to-host reads, each synchronizing the tag's stream) per generate(): one for the
/// validation (the index of the first bad prompt length or token; on an error, one more for the offending value),
/// one for the initial status, and one status record {live rows, their shortest prompt} after every step at which a
/// row draws. Steps at which every live row is still inside its prompt read nothing back (no row can finish there).
/// Besides, Thrust's `par` policy on CUDA waits for each algorithm to finish, as for every device layer.
///
/// The model's parameters are read on the tag's stream (finish updates made on another stream first). One generate()
/// at a time per generator: its buffers serve every call.
template <class T = float>
class device_generator {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "hir::nn::device_generator: float or double");

public:
  /// The backend this generator runs on.
  using backend_type = backend::device::tag_t;
  /// The model type whose parameters it reads.
  using model_type = model<T, backend_type>;

  /// Allocates the KV cache, the per-step buffers and the sampling scratch in device memory.
  /// \throws hir::invalid_argument on an invalid config, or unless 0 < max_batch and 0 < max_len ≤ context.
  device_generator(const transformer_config& cfg, std::size_t max_batch, std::size_t max_len)
      : cfg_(validated(cfg, max_batch, max_len)), max_batch_(max_batch), max_len_(max_len) {
    const std::size_t B = max_batch, C = cfg.channels, V = cfg.vocab, S = max_len;
    std::size_t sizes[n_buffers] = {};
    sizes[kv_] = cfg.layers * B * 2 * S * C;
    sizes[x_] = sizes[ln_] = sizes[atty_] = sizes[y_] = B * C;
    sizes[mean_] = sizes[rstd_] = B;
    sizes[qkv_] = B * 3 * C;
    sizes[fch_] = B * 4 * C;
    sizes[logits_] = B * V;
    sizes[scores_] = B * cfg.heads * S;
    std::size_t off = 0;
    for (std::size_t i = 0; i < n_buffers; ++i) {
      offsets_[i] = off;
      off += (sizes[i] + 15) / 16 * 16; // 64-byte (float) / 128-byte (double) steps
    }
    buf_.resize(off, T(0));
    probs_.resize(B * V, 0.0);
    order_.resize(B * V, 0);
    feed_.resize(B, 0);
    rows_.resize(B, 0);
    status_.resize(1, backend::device::detail::hir_gen_status{0, 0});
  }

  /// The transformer shape this generator serves.
  const transformer_config& config() const { return cfg_; }
  /// Rows per generate() call at most.
  std::size_t max_batch() const { return max_batch_; }
  /// Positions (prompt + generated) per row at most.
  std::size_t max_len() const { return max_len_; }
  /// Elements of the buffer of T (KV cache and per-step activations).
  std::size_t buffer_elements() const { return buf_.size(); }

  /// Generates up to N = opt.max_new_tokens tokens after each prompt with model m's parameters, on backend `be`
  /// (its stream and workspace). Every span is in device memory.
  /// \param prompts (B, P) right-padded; row r's prompt is its first prompt_lengths[r] tokens (1 ≤ length ≤ P)
  /// \param prompt_lengths (B) \param sequence_ids (B) the philox stream of each row (e.g. a global sample index)
  /// \param out_tokens (B, N) generated tokens, then pad_token \param out_logp, out_entropy (B, N) under the
  /// sampling policy, 0 after the end \param out_lengths (B) generated tokens per row (stop token included).
  /// \throws hir::invalid_argument naming nn::device_generator::generate, before any output is written, on a config
  /// mismatch, bad options, B outside [1, max_batch], N = 0, sizes, a prompt length outside [1, P], a prompt token
  /// outside [0, V) or prompt length + N > max_len (the CPU generator's checks and messages); hir::cuda_error from
  /// CUDA or cuBLAS.
  void generate(backend_type const& be, const model_type& m, span<const token_t, device_space> prompts,
                span<const std::size_t, device_space> prompt_lengths,
                span<const std::uint64_t, device_space> sequence_ids, std::size_t B, std::size_t P,
                const generation_options& opt, span<token_t, device_space> out_tokens, span<T, device_space> out_logp,
                span<T, device_space> out_entropy, span<std::size_t, device_space> out_lengths) {
    namespace dd = backend::device::detail;
    const char* fn = "nn::device_generator::generate";
    const std::size_t N = opt.max_new_tokens, V = cfg_.vocab;
    detail::check_generation_call(fn, m.config() == cfg_, opt, B, max_batch_, P,
                                  {prompts.size(), prompt_lengths.size(), sequence_ids.size(), out_tokens.size(),
                                   out_logp.size(), out_entropy.size(), out_lengths.size()});
    // Prompt lengths and tokens: the first failing check in the CPU's order (row by row, length before tokens).
    const long long bad = dd::first_index_where(
        be, B * (P + 1), dd::hir_gen_prompt_bad{prompts.data(), prompt_lengths.data(), P, N, max_len_, V});
    if (bad >= 0) {
      const std::size_t r = static_cast<std::size_t>(bad) / (P + 1), j = static_cast<std::size_t>(bad) % (P + 1);
      if (j == 0)
        detail::fail_prompt_length(fn, r, dd::nn_read_scalar(be, prompt_lengths.data() + r, fn), P, max_len_);
      const std::size_t at = r * P + (j - 1);
      detail::fail_prompt_token(fn, at, dd::nn_read_scalar(be, prompts.data() + at, fn), V);
    }

    dd::nn_for_each(be, B * N,
                    dd::hir_gen_fill_outputs<T>{out_tokens.data(), out_logp.data(), out_entropy.data(),
                                                out_lengths.data(), N, opt.pad_token});
    std::size_t* rows = raw(rows_);
    dd::hir_gen_status* status = raw(status_);
    dd::nn_for_each(be, 1, dd::hir_gen_init{rows, prompt_lengths.data(), B, status});
    dd::hir_gen_status st = dd::nn_read_scalar(be, status, fn);
    const philox gen{opt.seed};
    for (std::size_t s = 0; st.active > 0; ++s) {
      HIR_ASSERT(s < max_len_, "hir::nn::device_generator: a live row ran past max_len");
      const std::size_t n = st.active;
      // Some live row draws position s + 1 (else no row can finish at this step: nothing to read back).
      const bool draw = s + 1 >= st.min_prompt;
      dd::nn_for_each(
          be, n, dd::hir_gen_feed{raw(feed_), rows, prompt_lengths.data(), prompts.data(), out_tokens.data(), P, N, s});
      step(be, m, n, s, draw);
      if (!draw)
        continue;
      dd::nn_for_each(be, n,
                      dd::hir_gen_sample<T>{gen, buf(logits_), rows, prompt_lengths.data(), sequence_ids.data(),
                                            raw(probs_), raw(order_), out_tokens.data(), out_logp.data(),
                                            out_entropy.data(), out_lengths.data(), V, N, s, opt.sampling});
      dd::nn_for_each(be, 1,
                      dd::hir_gen_compact{rows, prompt_lengths.data(), out_lengths.data(), out_tokens.data(), N,
                                          opt.stop_token, status});
      st = dd::nn_read_scalar(be, status, fn);
    }
  }

private:
  enum buffer_id : std::size_t { kv_, x_, ln_, mean_, rstd_, qkv_, atty_, y_, fch_, logits_, scores_, n_buffers };
  template <class U>
  using vector_t = hir::vector<U, backend_type>;
  using dspan = span<T, device_space>;
  using const_dspan = span<const T, device_space>;

  static const transformer_config& validated(const transformer_config& cfg, std::size_t max_batch,
                                             std::size_t max_len) {
    detail::check_generator_shape("nn::device_generator", cfg, max_batch, max_len);
    return cfg;
  }

  template <class Vec>
  static auto raw(Vec& v) {
    return backend::traits<backend_type>::raw(v);
  }
  T* buf(buffer_id id) { return raw(buf_) + offsets_[id]; }
  dspan b(buffer_id id, std::size_t n) { return dspan(buf(id), n); }

  // One decode step: live rows 0..n−1 (batch rows rows_[i]) feed feed_[i] at position s; with `logits`, leaves their
  // next-token logits in logits_ (otherwise the step only fills the KV cache).
  void step(backend_type const& be, const model_type& m, std::size_t n, std::size_t s, bool logits) {
    namespace dd = backend::device::detail;
    const std::size_t C = cfg_.channels, L = cfg_.layers, H = cfg_.heads, V = cfg_.vocab, S = max_len_;
    const parameter_layout& pl = m.params_layout();
    const const_dspan prm = m.parameters();
    const auto p = [&](param x, std::size_t l = 0) { return prm.subspan(pl.offset(x, l), pl[x].per_layer); };
    const dspan x = b(x_, n * C), ln = b(ln_, n * C), mean = b(mean_, n), rstd = b(rstd_, n);
    const dspan qkv = b(qkv_, n * 3 * C), atty = b(atty_, n * C), y = b(y_, n * C), fch = b(fch_, n * 4 * C);
    const std::size_t* rows = raw(rows_);
    const T scale = T(1) / dd::hir_nn_sqrt(static_cast<T>(C / H));
    dd::nn_for_each(
        be, n * C,
        dd::hir_nn_embedding_fwd<T>{x.data(), raw(feed_), p(param::wte).data(), p(param::wpe).data(), 1, C, s});
    for (std::size_t l = 0; l < L; ++l) {
      T* cache = buf(kv_) + l * max_batch_ * 2 * S * C;
      backend::device::layernorm_forward<T>(be, ln, mean, rstd, x, p(param::ln1_weight, l), p(param::ln1_bias, l), n,
                                            C);
      backend::device::matmul_forward<T>(be, qkv, ln, p(param::qkv_weight, l), p(param::qkv_bias, l), n, C, 3 * C);
      dd::nn_for_each(be, n * C, dd::hir_gen_kv_store<T>{cache, qkv.data(), rows, C, S, s});
      dd::nn_for_each(be, n * H,
                      dd::hir_gen_attend<T>{atty.data(), buf(scores_), cache, qkv.data(), rows, C, H, S, s, scale});
      backend::device::matmul_forward<T>(be, y, atty, p(param::proj_weight, l), p(param::proj_bias, l), n, C, C);
      backend::device::residual_forward<T>(be, x, x, y, n * C);
      backend::device::layernorm_forward<T>(be, ln, mean, rstd, x, p(param::ln2_weight, l), p(param::ln2_bias, l), n,
                                            C);
      backend::device::matmul_forward<T>(be, fch, ln, p(param::fc_weight, l), p(param::fc_bias, l), n, C, 4 * C);
      backend::device::gelu_forward<T>(be, fch, fch, n * 4 * C);
      backend::device::matmul_forward<T>(be, y, fch, p(param::fc2_weight, l), p(param::fc2_bias, l), n, 4 * C, C);
      backend::device::residual_forward<T>(be, x, x, y, n * C);
    }
    if (!logits)
      return;
    backend::device::layernorm_forward<T>(be, ln, mean, rstd, x, p(param::lnf_weight), p(param::lnf_bias), n, C);
    backend::device::matmul_forward<T>(be, b(logits_, n * V), ln, p(param::wte), const_dspan(), n, C, V);
  }

  transformer_config cfg_;
  std::size_t max_batch_, max_len_;
  std::size_t offsets_[n_buffers] = {};
  vector_t<T> buf_;                                          ///< KV cache, then the per-step activations (offsets_)
  vector_t<double> probs_;                                   ///< (max_batch, V) sampling scratch
  vector_t<token_t> order_;                                  ///< (max_batch, V) sampling scratch
  vector_t<token_t> feed_;                                   ///< (max_batch) the token each live row feeds
  vector_t<std::size_t> rows_;                               ///< (max_batch) batch row of each live row, in batch order
  vector_t<backend::device::detail::hir_gen_status> status_; ///< (1) read back after drawing steps
};

} // namespace nn
} // namespace hir
