// SPDX-License-Identifier: Apache-2.0
// Sampling from the reference transformer: `sample_token` draws one token from a logits row under temperature, top-k
// and top-p given one uniform number, and `generator` runs batched autoregressive generation with a KV cache. Every
// draw uses hir::philox keyed by (seed, sequence id, position), so a sequence's tokens do not depend on which other
// sequences share its batch, on the thread count or on the batch split. Prompts of different lengths are given
// right-padded with per-row lengths; all rows advance one position per step, rows still inside their prompt are
// teacher-forced, and finished rows leave the batch (the remaining ones are compacted). Decode steps are M = rows
// products against weights packed once per generate() call, with the residual adds in the GEMM epilogue; the KV
// cache keeps keys transposed in 16-position tiles so the per-head attention (AVX-512 for float) scores 16 positions
// per vector and reads each row's cache front to back.
#pragma once

#include <hir/backend/cpu/tag.hpp>
#include <hir/core/error.hpp>
#include <hir/core/random.hpp>
#include <hir/core/span.hpp>
#include <hir/nn/config.hpp>
#include <hir/nn/layers.hpp>
#include <hir/nn/model.hpp>
#include <hir/nn/sampling_options.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__linux__)
#  include <sys/mman.h>
#endif

namespace hir::nn {

namespace detail {
/// sample_row's sort step on the CPU: std::partial_sort by more_likely, O(V log k) (the same first k tokens, in the
/// same order, as the device's selection, the order being strict and total).
struct partial_sort_first_k {
  template <class T>
  void operator()(const T* logits, token_t* order, std::size_t V, std::size_t k) const {
    std::partial_sort(order, order + k, order + V,
                      [logits](token_t a, token_t b) { return more_likely(logits, a, b); });
  }
};
} // namespace detail

/// Draws a token from `logits` (V) with uniform number u ∈ [0, 1) by inversion of the sampling policy's CDF
/// (vocabulary order without top-k/top-p; most-likely-first order with them; detail::sample_row, shared with the
/// device generator). `probs` (V) and `order` (V) are scratch.
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
  return detail::sample_row(logits.data(), V, opt, u, probs.data(), order.data(), detail::partial_sort_first_k{});
}

namespace detail {
/// Allocator of the generator's buffer (the KV cache, tens of MiB streamed every step): allocations of 2 MiB or more
/// are 2 MiB-aligned and, on Linux, marked MADV_HUGEPAGE before std::vector's zero-fill touches them, so they are
/// backed by transparent huge pages where the kernel only grants them on request ("madvise" mode), which saves TLB
/// misses on every pass over the cache. Smaller allocations are plain operator new. Stateless, so copies compare equal.
template <class T>
struct huge_page_allocator {
  using value_type = T;
  static constexpr std::size_t huge = std::size_t{2} << 20;

  huge_page_allocator() = default;
  template <class U>
  huge_page_allocator(const huge_page_allocator<U>&) noexcept {}

  T* allocate(std::size_t n) {
    const std::size_t bytes = n * sizeof(T);
    if (bytes < huge)
      return static_cast<T*>(::operator new(bytes));
    void* p = ::operator new (bytes, std::align_val_t{huge});
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    ::madvise(p, bytes, MADV_HUGEPAGE); // a hint: without THP the pages stay 4 KiB
#endif
    return static_cast<T*>(p);
  }
  void deallocate(T* p, std::size_t n) noexcept {
    if (n * sizeof(T) < huge)
      ::operator delete(p);
    else
      ::operator delete (p, std::align_val_t{huge});
  }
  template <class U>
  bool operator==(const huge_page_allocator<U>&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(const huge_page_allocator<U>&) const noexcept {
    return false;
  }
};

/// Positions per tile of the generator's key cache. A head's keys are stored transposed in tiles of kv_tile positions
/// × hs channels: key j, channel d at (j / kv_tile)·ldk + d·kv_tile + j % kv_tile, so the scores of 16 positions are
/// one vector accumulated over d; its values are rows: value j, channel d at j·ldv + d. The generator interleaves the
/// heads (ldk = C·kv_tile, ldv = C), so a row's cache up to position s is one contiguous block of keys and one of
/// values, read front to back by the heads in turn.
inline constexpr std::size_t kv_tile = 16;

/// Writes position s's key k (hs) and value v (hs) of one head into its cache (kt: key tiles, vc: values).
template <class T>
void kv_store(T* kt, T* vc, const T* k, const T* v, std::size_t hs, std::size_t ldk, std::size_t ldv, std::size_t s) {
  T* kd = kt + (s / kv_tile) * ldk + s % kv_tile;
  for (std::size_t d = 0; d < hs; ++d)
    kd[d * kv_tile] = k[d];
  std::copy(v, v + hs, vc + s * ldv);
}

/// One head of decode attention over positions 0..s: y (hs) = softmax(scale·q·Kᵀ) · V with q (hs) and the head's
/// cache (kt, vc as kv_store writes them); sc is scratch of s + 1 rounded up to kv_tile elements. Any T, any CPU.
template <class T>
void kv_attend_generic(const T* q, const T* kt, const T* vc, std::size_t hs, std::size_t ldk, std::size_t ldv,
                       std::size_t s, T scale, T* sc, T* y) {
  for (std::size_t j = 0; j <= s; ++j) {
    const T* k = kt + (j / kv_tile) * ldk + j % kv_tile;
    T acc = T(0);
    for (std::size_t d = 0; d < hs; ++d)
      acc += q[d] * k[d * kv_tile];
    sc[j] = scale * acc;
  }
  array_map<T> a(sc, ei(s + 1));
  a = (a - a.maxCoeff()).exp();
  a *= T(1) / a.sum();
  array_map<T> out(y, ei(hs));
  out.setZero();
  for (std::size_t j = 0; j <= s; ++j)
    out += sc[j] * const_array_map<T>(vc + j * ldv, ei(hs));
}

#if defined(HIR_NN_HAVE_AVX512_KERNEL)
namespace avx512 {
/// Scores of M consecutive key tiles: sc[m·16 + j] = scale · Σ_d q[d]·kt[m·ldk + d·16 + j] (two chains per tile).
template <int M>
HIR_NN_AVX512_FN inline void kv_scores(const float* q, const float* kt, std::size_t hs, std::size_t ldk, float scale,
                                       float* sc) {
  __m512 a0[M], a1[M];
#  pragma GCC unroll 4
  for (int m = 0; m < M; ++m)
    a0[m] = a1[m] = _mm512_setzero_ps();
  std::size_t d = 0;
  for (; d + 2 <= hs; d += 2) {
    const __m512 q0 = _mm512_set1_ps(q[d]), q1 = _mm512_set1_ps(q[d + 1]);
#  pragma GCC unroll 4
    for (int m = 0; m < M; ++m) {
      const float* k = kt + static_cast<std::size_t>(m) * ldk + d * kv_tile;
      a0[m] = _mm512_fmadd_ps(q0, _mm512_loadu_ps(k), a0[m]);
      a1[m] = _mm512_fmadd_ps(q1, _mm512_loadu_ps(k + kv_tile), a1[m]);
    }
  }
  if (d < hs) {
    const __m512 q0 = _mm512_set1_ps(q[d]);
#  pragma GCC unroll 4
    for (int m = 0; m < M; ++m)
      a0[m] = _mm512_fmadd_ps(q0, _mm512_loadu_ps(kt + static_cast<std::size_t>(m) * ldk + d * kv_tile), a0[m]);
  }
  const __m512 vs = _mm512_set1_ps(scale);
#  pragma GCC unroll 4
  for (int m = 0; m < M; ++m)
    _mm512_storeu_ps(sc + m * 16, _mm512_mul_ps(_mm512_add_ps(a0[m], a1[m]), vs));
}

/// kv_attend_generic for float with AVX-512: scores 16 positions per vector, a vectorized softmax (exp_ps), and
/// y = Σ_j p_j·v_j over 32-channel slices with four positions in flight, normalized once at the end.
HIR_NN_AVX512_FN inline void kv_attend(const float* q, const float* kt, const float* vc, std::size_t hs,
                                       std::size_t ldk, std::size_t ldv, std::size_t s, float scale, float* sc,
                                       float* y) {
  const std::size_t n = s + 1, tiles = (n + kv_tile - 1) / kv_tile, last = tiles - 1;
  std::size_t t = 0;
  for (; t + 4 <= tiles; t += 4)
    kv_scores<4>(q, kt + t * ldk, hs, ldk, scale, sc + t * kv_tile);
  switch (tiles - t) {
  case 3:
    kv_scores<3>(q, kt + t * ldk, hs, ldk, scale, sc + t * kv_tile);
    break;
  case 2:
    kv_scores<2>(q, kt + t * ldk, hs, ldk, scale, sc + t * kv_tile);
    break;
  case 1:
    kv_scores<1>(q, kt + t * ldk, hs, ldk, scale, sc + t * kv_tile);
    break;
  default:
    break;
  }
  // Softmax over the n valid scores (the last tile's lanes past s are masked out, whatever they hold).
  const __mmask16 tail = static_cast<__mmask16>((1u << (n - last * kv_tile)) - 1u);
  __m512 mx = _mm512_set1_ps(-3.402823466e38f);
  for (t = 0; t < last; ++t)
    mx = max_ps(mx, _mm512_loadu_ps(sc + t * kv_tile));
  mx = _mm512_mask_max_ps(mx, tail, mx, _mm512_loadu_ps(sc + last * kv_tile));
  const __m512 vm = _mm512_set1_ps(hmax_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (t = 0; t < tiles; ++t) {
    __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(sc + t * kv_tile), vm));
    if (t == last)
      e = _mm512_maskz_mov_ps(tail, e);
    _mm512_storeu_ps(sc + t * kv_tile, e);
    sum = _mm512_add_ps(sum, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / sum_ps(sum));
  // y = (Σ_j e_j·v_j) / Σ_j e_j, 32 channels at a time (masked at the end of the head).
  for (std::size_t c0 = 0; c0 < hs; c0 += 32) {
    const std::size_t w = std::min<std::size_t>(32, hs - c0);
    const __mmask16 m0 = w >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << w) - 1u);
    const __mmask16 m1 = w >= 32 ? __mmask16(0xFFFF) : w > 16 ? static_cast<__mmask16>((1u << (w - 16)) - 1u) : 0;
    __m512 a0[4], a1[4];
#  pragma GCC unroll 4
    for (int u = 0; u < 4; ++u)
      a0[u] = a1[u] = _mm512_setzero_ps();
    std::size_t j = 0;
    for (; j + 4 <= n; j += 4) {
#  pragma GCC unroll 4
      for (int u = 0; u < 4; ++u) {
        const __m512 p = _mm512_set1_ps(sc[j + u]);
        const float* v = vc + (j + u) * ldv + c0;
        a0[u] = _mm512_fmadd_ps(p, _mm512_maskz_loadu_ps(m0, v), a0[u]);
        a1[u] = _mm512_fmadd_ps(p, _mm512_maskz_loadu_ps(m1, v + 16), a1[u]);
      }
    }
    for (; j < n; ++j) {
      const __m512 p = _mm512_set1_ps(sc[j]);
      const float* v = vc + j * ldv + c0;
      a0[0] = _mm512_fmadd_ps(p, _mm512_maskz_loadu_ps(m0, v), a0[0]);
      a1[0] = _mm512_fmadd_ps(p, _mm512_maskz_loadu_ps(m1, v + 16), a1[0]);
    }
    const __m512 r0 = _mm512_add_ps(_mm512_add_ps(a0[0], a0[1]), _mm512_add_ps(a0[2], a0[3]));
    const __m512 r1 = _mm512_add_ps(_mm512_add_ps(a1[0], a1[1]), _mm512_add_ps(a1[2], a1[3]));
    _mm512_mask_storeu_ps(y + c0, m0, _mm512_mul_ps(r0, inv));
    _mm512_mask_storeu_ps(y + c0 + 16, m1, _mm512_mul_ps(r1, inv));
  }
}
} // namespace avx512
#endif

/// One head of decode attention (see kv_attend_generic): AVX-512 for float on CPUs that have it.
template <class T>
void kv_attend(const T* q, const T* kt, const T* vc, std::size_t hs, std::size_t ldk, std::size_t ldv, std::size_t s,
               T scale, T* sc, T* y) {
#if defined(HIR_NN_HAVE_AVX512_KERNEL)
  if constexpr (std::is_same_v<T, float>)
    if (cpu_has_avx512()) {
      avx512::kv_attend(q, kt, vc, hs, ldk, ldv, s, scale, sc, y);
      return;
    }
#endif
  kv_attend_generic(q, kt, vc, hs, ldk, ldv, s, scale, sc, y);
}
} // namespace detail

/// Batched autoregressive generation with a KV cache, for up to max_batch rows of up to max_len positions
/// (prompt + generated). All buffers are allocated at construction; generate() allocates nothing.
template <class T = float>
class generator {
public:
  /// \throws hir::invalid_argument if max_len exceeds the context or a size is zero.
  generator(const transformer_config& cfg, std::size_t max_batch, std::size_t max_len)
      : cfg_(cfg), max_batch_(max_batch), max_len_(max_len) {
    detail::check_generator_shape("nn::generator", cfg, max_batch, max_len);
    const std::size_t B = max_batch, C = cfg.channels, V = cfg.vocab, S = padded_len();
    std::size_t sizes[n_buffers] = {};
    sizes[kv_] = cfg.layers * B * 2 * C * S; // per (layer, row): key tiles, then value rows (see attend)
    sizes[x_] = sizes[ln_] = sizes[atty_] = B * C;
    sizes[mean_] = sizes[rstd_] = B;
    sizes[qkv_] = B * 3 * C;
    sizes[fch_] = B * 4 * C;
    sizes[logits_] = B * V;
    sizes[scores_] = B * cfg.heads * S;
    // Every buffer starts on a 64-byte boundary (16 floats; align_ spare elements let the base be aligned too).
    std::size_t off = 0;
    for (std::size_t i = 0; i < n_buffers; ++i) {
      offsets_[i] = off;
      off += (sizes[i] + align_ - 1) / align_ * align_;
    }
    buf_.assign(off + align_, T(0));
    // Every linear weight (per layer, then the LM head), packed once per generate() call for the decode products
    // (empty where T's products do not use packed panels).
    std::size_t poff = 0;
    for (std::size_t j = 0; j <= cfg.layers * n_linear; ++j) {
      packed_offsets_.push_back(poff);
      const auto [out, in] = linear_shape(j);
      poff += detail::packed_weight_elements<T>(out, in);
    }
    packed_.assign(poff, T(0));
    probs_.assign(B * V, 0.0);
    order_.assign(B * V, 0);
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
    detail::check_generation_call(fn, m.config() == cfg_, opt, B, max_batch_, P,
                                  {prompts.size(), prompt_lengths.size(), sequence_ids.size(), out_tokens.size(),
                                   out_logp.size(), out_entropy.size(), out_lengths.size()});
    for (std::size_t r = 0; r < B; ++r) {
      const std::size_t pl = prompt_lengths[r];
      if (pl == 0 || pl > P || pl + N > max_len_)
        detail::fail_prompt_length(fn, r, pl, P, max_len_);
      for (std::size_t t = 0; t < pl; ++t) {
        const token_t x = prompts[r * P + t];
        if (x < 0 || static_cast<std::size_t>(x) >= V)
          detail::fail_prompt_token(fn, r * P + t, x, V);
      }
    }
    std::fill(out_tokens.begin(), out_tokens.end(), opt.pad_token);
    std::fill(out_logp.begin(), out_logp.end(), T(0));
    std::fill(out_entropy.begin(), out_entropy.end(), T(0));
    std::fill(out_lengths.begin(), out_lengths.end(), std::size_t{0});
    pack_weights(m);

    std::size_t n = B;
    for (std::size_t r = 0; r < B; ++r)
      rows_[r] = r;
    const philox gen{opt.seed};
    for (std::size_t s = 0; n > 0; ++s) {
      // The token each active row feeds at position s: its prompt, then its own samples.
      bool any_draw = false;
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t r = rows_[i], pl = prompt_lengths[r];
        feed_[i] = s < pl ? prompts[r * P + s] : out_tokens[r * N + (s - pl)];
        any_draw = any_draw || s + 1 >= pl;
      }
      // Steps where every row is still inside its prompt only fill the cache: no logits needed.
      step(m, n, s, any_draw);
      if (!any_draw)
        continue;
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
  enum buffer_id : std::size_t { kv_, x_, ln_, mean_, rstd_, qkv_, atty_, fch_, logits_, scores_, n_buffers };
  static constexpr std::size_t n_linear = 4; // qkv, proj, fc, fc2
  static constexpr std::size_t align_ = 64 / sizeof(T) > 0 ? 64 / sizeof(T) : 1;

  // Cache positions per head, rounded up to whole key tiles.
  std::size_t padded_len() const { return (max_len_ + detail::kv_tile - 1) / detail::kv_tile * detail::kv_tile; }

  T* base() {
    const auto addr = reinterpret_cast<std::uintptr_t>(buf_.data());
    return buf_.data() + ((64 - addr % 64) % 64) / sizeof(T);
  }
  span<T> b(buffer_id id, std::size_t n) { return span<T>(base() + offsets_[id], n); }

  // Linear weight j: layer j / n_linear's qkv, proj, fc, fc2 (j % n_linear), or the LM head (wte) for j = L·n_linear.
  // Shape (out, in) as stored, and its offset in the model's parameters.
  std::pair<std::size_t, std::size_t> linear_shape(std::size_t j) const {
    const std::size_t C = cfg_.channels;
    const std::pair<std::size_t, std::size_t> shapes[n_linear] = {{3 * C, C}, {C, C}, {4 * C, C}, {C, 4 * C}};
    return j == cfg_.layers * n_linear ? std::pair<std::size_t, std::size_t>{cfg_.vocab, C} : shapes[j % n_linear];
  }
  std::size_t linear_offset(const parameter_layout& pl, std::size_t j) const {
    const param weights[n_linear] = {param::qkv_weight, param::proj_weight, param::fc_weight, param::fc2_weight};
    return j == cfg_.layers * n_linear ? pl.offset(param::wte) : pl.offset(weights[j % n_linear], j / n_linear);
  }

  // Packs every linear weight of m for the decode products (a no-op where packing is not used).
  void pack_weights(const model<T>& m) {
    if (packed_.empty())
      return;
    const T* prm = m.parameters().data();
    detail::parallel_for(cfg_.layers * n_linear + 1, 1, [&](std::size_t j0, std::size_t j1) {
      for (std::size_t j = j0; j < j1; ++j) {
        const auto [out, in] = linear_shape(j);
        detail::pack_weight<T>(prm + linear_offset(m.params_layout(), j), out, in, packed_.data() + packed_offsets_[j]);
      }
    });
  }
  const T* packed(std::size_t layer, std::size_t k) const {
    return packed_.empty() ? nullptr : packed_.data() + packed_offsets_[layer * n_linear + k];
  }

  // One decode step: active rows rows_[0..n) feed feed_[i] at position s; with `logits`, leaves their next-token
  // logits in logits_ (otherwise the step only fills the KV cache).
  void step(const model<T>& m, std::size_t n, std::size_t s, bool logits) {
    const auto& be = hir::cpu;
    const std::size_t C = cfg_.channels, L = cfg_.layers, V = cfg_.vocab;
    const parameter_layout& pl = m.params_layout();
    const span<const T> prm = m.parameters();
    const auto p = [&](param x, std::size_t l = 0) { return prm.subspan(pl.offset(x, l), pl[x].per_layer); };
    const span<T> x = b(x_, n * C), ln = b(ln_, n * C), mean = b(mean_, n), rstd = b(rstd_, n);
    const span<T> qkv = b(qkv_, n * 3 * C), atty = b(atty_, n * C), fch = b(fch_, n * 4 * C);
    embedding_forward<T>(be, x, span<const token_t>(feed_.data(), n), p(param::wte), p(param::wpe), n, 1, C, s);
    for (std::size_t l = 0; l < L; ++l) {
      layernorm_forward<T>(be, ln, mean, rstd, x, p(param::ln1_weight, l), p(param::ln1_bias, l), n, C);
      linear(qkv, ln, p(param::qkv_weight, l), packed(l, 0), p(param::qkv_bias, l), n, C, 3 * C, false);
      attend(l, n, s, qkv, atty);
      linear(x, atty, p(param::proj_weight, l), packed(l, 1), p(param::proj_bias, l), n, C, C, true); // x += …
      layernorm_forward<T>(be, ln, mean, rstd, x, p(param::ln2_weight, l), p(param::ln2_bias, l), n, C);
      linear(fch, ln, p(param::fc_weight, l), packed(l, 2), p(param::fc_bias, l), n, C, 4 * C, false);
      gelu_forward<T>(be, fch, fch, n * 4 * C);
      linear(x, fch, p(param::fc2_weight, l), packed(l, 3), p(param::fc2_bias, l), n, 4 * C, C, true); // x += …
    }
    if (!logits)
      return;
    layernorm_forward<T>(be, ln, mean, rstd, x, p(param::lnf_weight), p(param::lnf_bias), n, C);
    linear(b(logits_, n * V), ln, p(param::wte), packed(L, 0), span<const T>(), n, C, V, false);
  }

  // out (n, OC) = inp (n, K) · Wᵀ + bias, or out += … when `residual`: the residual add in the GEMM's epilogue (with
  // the AVX-512 kernel bit-identical to matmul_forward + residual_forward). Rows split across threads like
  // matmul_forward.
  static void linear(span<T> out, span<const T> inp, span<const T> w, const T* packed_w, span<const T> bias,
                     std::size_t n, std::size_t K, std::size_t OC, bool residual) {
    detail::parallel_for(
        n, detail::matmul_grain(K, OC),
        [&](std::size_t r0, std::size_t r1) {
          detail::gemm_weight<T>(r1 - r0, OC, K, inp.data() + r0 * K, K, w.data(), packed_w, out.data() + r0 * OC, OC,
                                 bias.empty() ? nullptr : bias.data(), residual);
        },
        16);
  }

  // Appends the rows' k, v at position s to layer l's cache and attends over positions 0..s, one (row, head) pair
  // per work item. Per (layer, row) the cache holds the key tiles (S / kv_tile tiles of every head's hs × kv_tile
  // block, C·S elements), then the values (S rows of C), so positions 0..s of a row are two contiguous blocks.
  void attend(std::size_t l, std::size_t n, std::size_t s, span<const T> qkv, span<T> out) {
    const std::size_t C = cfg_.channels, H = cfg_.heads, hs = C / H, S = padded_len();
    T* kv = base() + offsets_[kv_] + l * max_batch_ * 2 * C * S;
    T* scores = base() + offsets_[scores_];
    const T scale = T(1) / std::sqrt(static_cast<T>(hs));
    detail::parallel_for(n * H, 16, [&](std::size_t p0, std::size_t p1) {
      for (std::size_t pi = p0; pi < p1; ++pi) {
        const std::size_t i = pi / H, h = pi % H;
        const T* q = qkv.data() + i * 3 * C + h * hs;
        T* kt = kv + rows_[i] * 2 * C * S + h * hs * detail::kv_tile;
        T* vc = kv + rows_[i] * 2 * C * S + C * S + h * hs;
        detail::kv_store(kt, vc, q + C, q + 2 * C, hs, C * detail::kv_tile, C, s);
        detail::kv_attend(q, kt, vc, hs, C * detail::kv_tile, C, s, scale, scores + pi * S,
                          out.data() + i * C + h * hs);
      }
    });
  }

  transformer_config cfg_;
  std::size_t max_batch_, max_len_;
  std::size_t offsets_[n_buffers] = {};
  std::vector<T, detail::huge_page_allocator<T>> buf_;
  std::vector<T> packed_;
  std::vector<std::size_t> packed_offsets_;
  std::vector<double> probs_;
  std::vector<token_t> order_;
  std::vector<std::size_t> rows_;
  std::vector<token_t> feed_;
};

} // namespace hir::nn
