// SPDX-License-Identifier: Apache-2.0
// hir::nn::model: the GPT's parameter, gradient and activation buffers (one allocation each, from the layouts) and
// the training-side passes over a [B, T] token batch: forward (per-position log-probability of a target token, entropy
// of the next-token distribution, logits), backward from a given dL/dlogp (the output of hir's policy losses) with an
// optional dL/dentropy, and backward from masked cross-entropy (supervised warm start). Backward passes ADD into the
// gradients, so micro-batches accumulate until zero_grad(). Nothing is allocated after construction.
// The class is generic over the backend: hir::cpu (std::vector storage, the layers of nn/layers.hpp) or the device
// backend (thrust::device_vector storage, the layers of nn/device/layers.hpp, found by argument-dependent lookup).
// With hir::device linked (HIR_WITH_DEVICE) this header brings the device layers, and the CPU layers (Eigen) only in
// host-compiler translation units that can include Eigen: a CUDA translation unit never sees Eigen.
#pragma once

#if defined(HIR_WITH_DEVICE)
#  include <hir/backend/device/tag.hpp> // first: Thrust's config decides HIR_DEVICE_IS_CUDA
#endif

#include <hir/backend/cpu/tag.hpp>
#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/random.hpp>
#include <hir/core/span.hpp>
#include <hir/nn/config.hpp>
#include <hir/nn/detail/init.hpp>

#if defined(HIR_WITH_DEVICE)
#  include <hir/nn/device/layers.hpp>
#  include <hir/nn/device/model_ops.hpp>
#endif
#if !defined(HIR_WITH_DEVICE) || (!defined(__CUDACC__) && __has_include(<Eigen/Core>))
#  include <hir/nn/layers.hpp>
#endif

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace hir::nn {

/// A GPT-2 style transformer on backend `Backend` in scalar type T (float for training, double for gradient checks).
/// `Backend` is hir::backend::cpu::tag_t (host memory, OpenMP + Eigen/CBLAS) or hir::backend::device::tag_t
/// (device memory, Thrust + cuBLAS on CUDA; include <hir/nn/device.hpp>). Every span the model returns or takes for
/// gradients, masks and dL/dlogp is in Backend's memory (`span_for<T, Backend>`); token ids always come from the
/// host and are copied into buffers allocated at construction.
///
/// Usage: construct with the config and the largest batch the passes will see; `init_parameters(seed)`; per
/// micro-batch `forward(tokens, targets, B, T)` then `backward(dlogp)` or `backward_cross_entropy(mask)`; read
/// `gradients()` and update `parameters()` (adamw_state::update), then `zero_grad()`.
template <class T = float, class Backend = backend::cpu::tag_t>
class model {
  static_assert(backend::is_backend_v<Backend>, "hir::nn::model: Backend must be a backend tag type");
  static_assert(std::is_same_v<Backend, backend::cpu::tag_t> || std::is_same_v<memory_space_t<Backend>, device_space>,
                "hir::nn::model: the backend is hir::cpu or the device backend");
  /// CPU backend: host loops exactly as before the model became generic (the hot path is unchanged).
  static constexpr bool on_cpu = std::is_same_v<Backend, backend::cpu::tag_t>;

public:
  using span_type = span_for<T, Backend>;             ///< mutable span in Backend's memory
  using const_span_type = span_for<const T, Backend>; ///< read-only span in Backend's memory

  /// Allocates parameters, gradients (zero) and activations for batches up to max_batch × max_seq_len
  /// (max_seq_len = 0: the config's context), and the token buffers, in Backend's memory. Parameters start at zero:
  /// call init_parameters or load them. `be` is the backend object every pass runs with (for the device backend,
  /// e.g. `hir::device.on(stream)`, so every layer runs on that stream).
  /// \throws hir::invalid_argument on an invalid config or sizes.
  model(const transformer_config& cfg, std::size_t max_batch, std::size_t max_seq_len = 0, Backend be = Backend{})
      : be_(be), params_layout_(cfg), acts_layout_(cfg, max_batch, max_seq_len ? max_seq_len : cfg.context),
        params_(params_layout_.total), grads_(params_layout_.total), acts_(acts_layout_.total),
        tokens_(acts_layout_.batch * acts_layout_.seq_len), targets_(acts_layout_.batch * acts_layout_.seq_len) {}

  const transformer_config& config() const { return params_layout_.config; }
  const parameter_layout& params_layout() const { return params_layout_; }
  const activation_layout& acts_layout() const { return acts_layout_; }
  /// The backend object the passes run with.
  const Backend& backend_tag() const { return be_; }
  /// Runs later passes with `be` (e.g. another stream; the model's buffers are not moved).
  void set_backend_tag(const Backend& be) { be_ = be; }

  /// All parameters, in parameter_layout order (params_layout().total elements).
  span_type parameters() { return whole(params_); }
  const_span_type parameters() const { return whole(params_); }
  /// The gradient buffer, same layout as parameters().
  span_type gradients() { return whole(grads_); }
  const_span_type gradients() const { return whole(grads_); }
  /// One parameter tensor (all layers of a stacked tensor).
  span_type parameter(param p) { return whole(params_).subspan(params_layout_[p].offset, params_layout_[p].size); }
  span_type gradient(param p) { return whole(grads_).subspan(params_layout_[p].offset, params_layout_[p].size); }

  /// GPT-2 initialization from a counter-based generator: weights and embeddings N(0, std), the two residual
  /// projections (proj_weight, fc2_weight) N(0, std/√(2L)), biases 0, LayerNorm weights 1 and biases 0. The device
  /// backend draws the same Philox numbers on the device (equal to the CPU's up to last-ulp libm differences).
  void init_parameters(std::uint64_t seed, double std_dev = 0.02) {
    if constexpr (on_cpu) {
      const philox gen{seed};
      std::fill(params_.begin(), params_.end(), T(0));
      for (std::size_t i = 0; i < num_param_tensors; ++i) {
        const param_tensor& t = params_layout_.tensors[i];
        const param p = static_cast<param>(i);
        T* dst = params_.data() + t.offset;
        if (t.matrix) {
          const double sd = (p == param::proj_weight || p == param::fc2_weight)
                                ? std_dev / std::sqrt(2.0 * static_cast<double>(config().layers))
                                : std_dev;
          for (std::size_t j = 0; j < t.size; ++j)
            dst[j] = static_cast<T>(nn::detail::gpt2_normal(gen, i, j, sd));
        } else if (p == param::ln1_weight || p == param::ln2_weight || p == param::lnf_weight) {
          std::fill(dst, dst + t.size, T(1));
        }
      }
    } else {
      nn_init_parameters(be_, params_layout_, whole(params_), seed, std_dev);
    }
  }

  /// Sets every gradient to zero.
  void zero_grad() { fill(whole(grads_), T(0)); }

  /// Forward pass over tokens (B, T) with targets (B, T) (negative: no target; logp is 0 there), both HOST spans on
  /// every backend (checked on the host, then copied into the model's token buffers). Afterwards logp(), entropy()
  /// (B·T each) and logits() (B·T·V) hold the results, and a backward may follow.
  /// \throws hir::invalid_argument if B or T exceed the allocated maxima, sizes mismatch or a token is out of range.
  void forward(span<const token_t> tokens, span<const token_t> targets, std::size_t B, std::size_t Tn) {
    const char* fn = "nn::model::forward";
    if (B == 0 || Tn == 0 || B > acts_layout_.batch || Tn > acts_layout_.seq_len)
      hir::detail::fail(fn, "need 0 < B <= ", acts_layout_.batch, " and 0 < T <= ", acts_layout_.seq_len,
                        ", got B = ", B, ", T = ", Tn);
    hir::detail::check_size(fn, "tokens.size()", tokens.size(), "B*T", B * Tn);
    hir::detail::check_size(fn, "targets.size()", targets.size(), "B*T", B * Tn);
    const std::size_t V = config().vocab;
    for (std::size_t i = 0; i < B * Tn; ++i) {
      if (tokens[i] < 0 || static_cast<std::size_t>(tokens[i]) >= V)
        hir::detail::fail(fn, "tokens[", i, "] = ", tokens[i], " is outside [0, V = ", V, ")");
      if (targets[i] >= 0 && static_cast<std::size_t>(targets[i]) >= V)
        hir::detail::fail(fn, "targets[", i, "] = ", targets[i], " is not below V = ", V);
    }
    if constexpr (on_cpu) {
      std::copy(tokens.begin(), tokens.end(), tokens_.begin());
      std::copy(targets.begin(), targets.end(), targets_.begin());
    } else {
      nn_upload_tokens(be_, whole(tokens_).subspan(0, B * Tn), tokens, fn);
      nn_upload_tokens(be_, whole(targets_).subspan(0, B * Tn), targets, fn);
    }
    B_ = B;
    T_ = Tn;
    run_forward();
  }

  /// Log-probabilities of the targets (B, T) of the last forward (Backend's memory).
  const_span_type logp() const { return a(act::logp, B_ * T_); }
  /// Entropies of the next-token distributions (B, T) of the last forward (Backend's memory).
  const_span_type entropy() const { return a(act::entropy, B_ * T_); }
  /// Logits (B, T, V) of the last forward (Backend's memory).
  const_span_type logits() const { return a(act::logits, B_ * T_ * config().vocab); }
  /// Batch size and sequence length of the last forward.
  std::size_t batch() const { return B_; }
  std::size_t seq_len() const { return T_; }

  /// Backward of the last forward given dL/dlogp (B, T) and optionally dL/dentropy (B, T), in Backend's memory (the
  /// outputs of hir's policy losses on the same backend); ADDS into gradients(). Positions with a negative target
  /// ignore dlogp. \throws hir::invalid_argument on sizes or without a forward.
  void backward(const_span_type dlogp, const_span_type dentropy = {}) {
    const char* fn = "nn::model::backward";
    if (B_ == 0)
      hir::detail::fail(fn, "no forward pass to differentiate");
    hir::detail::check_size(fn, "dlogp.size()", dlogp.size(), "B*T", B_ * T_);
    if (!dentropy.empty())
      hir::detail::check_size(fn, "dentropy.size()", dentropy.size(), "B*T", B_ * T_);
    run_backward(dlogp, dentropy);
  }

  /// Masked mean cross-entropy of the last forward's targets, loss = −Σ mask·logp / denominator (denominator 0:
  /// Σ mask over this batch; pass the token count of the whole batch to weight micro-batches equally). Runs the
  /// backward (ADDS into gradients()) and returns the loss. `mask` (B·T) and `scratch` (B·T, receives dL/dlogp) are
  /// in Backend's memory; on the device the sums are one double reduction read back (synchronizes the stream).
  /// \throws hir::invalid_argument on sizes, a mask with no weight and denominator 0, or without a forward.
  T backward_cross_entropy(const_span_type mask, span_type scratch, double denominator = 0.0) {
    const char* fn = "nn::model::backward_cross_entropy";
    if (B_ == 0)
      hir::detail::fail(fn, "no forward pass to differentiate");
    hir::detail::check_size(fn, "mask.size()", mask.size(), "B*T", B_ * T_);
    hir::detail::check_size(fn, "scratch.size()", scratch.size(), "B*T", B_ * T_);
    double loss = 0.0;
    if constexpr (on_cpu) {
      loss = cross_entropy(mask, denominator, fn);
      double den = denominator;
      if (den == 0.0)
        for (std::size_t i = 0; i < B_ * T_; ++i)
          den += static_cast<double>(mask[i]);
      for (std::size_t i = 0; i < B_ * T_; ++i)
        scratch[i] = static_cast<T>(-static_cast<double>(mask[i]) / den);
    } else {
      const auto sums = nn_masked_logp_sums(be_, mask, logp()); // (−Σ mask·logp, Σ mask): one reduction
      const double den = ce_denominator(sums.den, denominator, fn);
      loss = sums.num / den;
      nn_cross_entropy_dlogp(be_, scratch, mask, den);
    }
    run_backward(const_span_type(scratch), const_span_type());
    return static_cast<T>(loss);
  }

  /// The masked mean cross-entropy of the last forward without a backward (see backward_cross_entropy); `mask` in
  /// Backend's memory.
  T cross_entropy(const_span_type mask, double denominator = 0.0) const {
    hir::detail::check_size("nn::model::cross_entropy", "mask.size()", mask.size(), "B*T", B_ * T_);
    return static_cast<T>(cross_entropy(mask, denominator, "nn::model::cross_entropy"));
  }

private:
  template <class U>
  using vector_t = hir::vector<U, Backend>;
  using token_span = span_for<const token_t, Backend>;

  /// A span over a whole buffer (const buffers give spans of const).
  template <class V>
  static auto whole(V& v) {
    auto* ptr = backend::traits<Backend>::raw(v);
    return span_for<std::remove_pointer_t<decltype(ptr)>, Backend>(ptr, v.size());
  }
  void fill(span_type x, T value) {
    if constexpr (on_cpu)
      std::fill(x.begin(), x.end(), value);
    else
      nn_fill(be_, x, value);
  }

  span_type a(act x, std::size_t n) { return whole(acts_).subspan(acts_layout_.offset(x), n); }
  const_span_type a(act x, std::size_t n) const { return whole(acts_).subspan(acts_layout_.offset(x), n); }
  span_type al(act x, std::size_t layer, std::size_t per_layer) {
    return whole(acts_).subspan(acts_layout_.offset(x) + layer * per_layer, per_layer);
  }
  const_span_type p(param x, std::size_t layer = 0) const {
    return whole(params_).subspan(params_layout_.offset(x, layer), params_layout_[x].per_layer);
  }
  span_type g(param x, std::size_t layer = 0) {
    return whole(grads_).subspan(params_layout_.offset(x, layer), params_layout_[x].per_layer);
  }

  double cross_entropy(const_span_type mask, double denominator, const char* fn) const {
    double num = 0.0, den = 0.0;
    if constexpr (on_cpu) {
      const span<const T> lp = logp();
      for (std::size_t i = 0; i < B_ * T_; ++i) {
        num -= static_cast<double>(mask[i]) * static_cast<double>(lp[i]);
        den += static_cast<double>(mask[i]);
      }
    } else {
      const auto sums = nn_masked_logp_sums(be_, mask, logp());
      num = sums.num;
      den = sums.den;
    }
    return num / ce_denominator(den, denominator, fn);
  }
  /// The given denominator, else Σ mask; throws when both are 0.
  static double ce_denominator(double mask_sum, double denominator, const char* fn) {
    const double den = denominator != 0.0 ? denominator : mask_sum;
    if (den == 0.0)
      hir::detail::fail(fn, "the mask has no weight and no denominator was given");
    return den;
  }

  void run_forward() {
    const Backend& be = be_;
    const std::size_t B = B_, Tn = T_, C = config().channels, L = config().layers, H = config().heads;
    const std::size_t V = config().vocab, BT = B * Tn;
    const token_span tok = whole(tokens_).subspan(0, BT), tgt = whole(targets_).subspan(0, BT);
    embedding_forward<T>(be, a(act::encoded, BT * C), tok, p(param::wte), p(param::wpe), B, Tn, C);
    const_span_type residual = a(act::encoded, BT * C);
    for (std::size_t l = 0; l < L; ++l) {
      const span_type ln1 = al(act::ln1, l, BT * C), qkv = al(act::qkv, l, BT * 3 * C);
      const span_type atty = al(act::atty, l, BT * C), att = al(act::att, l, B * H * Tn * Tn);
      const span_type res2 = al(act::residual2, l, BT * C), ln2 = al(act::ln2, l, BT * C);
      const span_type fch = al(act::fch, l, BT * 4 * C), fchg = al(act::fch_gelu, l, BT * 4 * C);
      const span_type res3 = al(act::residual3, l, BT * C);
      // (B, T, C) → (B, T, 3C) → attention → (B, T, C)
      layernorm_forward<T>(be, ln1, al(act::ln1_mean, l, BT), al(act::ln1_rstd, l, BT), residual,
                           p(param::ln1_weight, l), p(param::ln1_bias, l), BT, C);
      matmul_forward<T>(be, qkv, ln1, p(param::qkv_weight, l), p(param::qkv_bias, l), BT, C, 3 * C);
      attention_forward<T>(be, atty, att, qkv, B, Tn, C, H);
      matmul_forward<T>(be, res2, atty, p(param::proj_weight, l), p(param::proj_bias, l), BT, C, C);
      residual_forward<T>(be, res2, res2, residual, BT * C);
      // (B, T, C) → (B, T, 4C) → GELU → (B, T, C)
      layernorm_forward<T>(be, ln2, al(act::ln2_mean, l, BT), al(act::ln2_rstd, l, BT), res2, p(param::ln2_weight, l),
                           p(param::ln2_bias, l), BT, C);
      matmul_forward<T>(be, fch, ln2, p(param::fc_weight, l), p(param::fc_bias, l), BT, C, 4 * C);
      gelu_forward<T>(be, fchg, fch, BT * 4 * C);
      matmul_forward<T>(be, res3, fchg, p(param::fc2_weight, l), p(param::fc2_bias, l), BT, 4 * C, C);
      residual_forward<T>(be, res3, res3, res2, BT * C);
      residual = res3;
    }
    // (B, T, C) → (B, T, V) with the tied embedding as the LM head
    layernorm_forward<T>(be, a(act::lnf, BT * C), a(act::lnf_mean, BT), a(act::lnf_rstd, BT), residual,
                         p(param::lnf_weight), p(param::lnf_bias), BT, C);
    matmul_forward<T>(be, a(act::logits, BT * V), a(act::lnf, BT * C), p(param::wte), const_span_type(), BT, C, V);
    logp_entropy_forward<T>(be, a(act::logp, BT), a(act::entropy, BT), a(act::lse, BT), a(act::logits, BT * V), tgt, BT,
                            V);
  }

  void run_backward(const_span_type dlogp, const_span_type dentropy) {
    const Backend& be = be_;
    const std::size_t B = B_, Tn = T_, C = config().channels, L = config().layers, H = config().heads;
    const std::size_t V = config().vocab, BT = B * Tn;
    const token_span tok = whole(tokens_).subspan(0, BT), tgt = whole(targets_).subspan(0, BT);
    const span_type dres = a(act::dresidual, BT * C), dbuf = a(act::dbuf, BT * C), dqkv = a(act::dqkv, BT * 3 * C);
    const span_type datt = a(act::datt, B * H * Tn * Tn), dfch = a(act::dfch, BT * 4 * C);
    const span_type dlogits = a(act::dlogits, BT * V);
    logp_entropy_backward<T>(be, dlogits, a(act::logits, BT * V), a(act::lse, BT), a(act::entropy, BT), tgt, dlogp,
                             dentropy, BT, V);
    matmul_backward<T>(be, dbuf, g(param::wte), span_type(), dlogits, a(act::lnf, BT * C), p(param::wte), BT, C, V);
    fill(dres, T(0));
    const auto residual_out = [&](std::size_t l) -> const_span_type {
      return l == 0 ? a(act::encoded, BT * C) : al(act::residual3, l - 1, BT * C);
    };
    layernorm_backward<T>(be, dres, g(param::lnf_weight), g(param::lnf_bias), dbuf, residual_out(L),
                          p(param::lnf_weight), a(act::lnf_mean, BT), a(act::lnf_rstd, BT), BT, C);
    for (std::size_t l = L; l-- > 0;) {
      // MLP: residual3 = residual2 + fc2(gelu(fc(ln2(residual2)))); dres holds d residual3 and becomes d residual2.
      matmul_backward<T>(be, dfch, g(param::fc2_weight, l), g(param::fc2_bias, l), dres,
                         al(act::fch_gelu, l, BT * 4 * C), p(param::fc2_weight, l), BT, 4 * C, C);
      gelu_backward<T>(be, dfch, al(act::fch, l, BT * 4 * C), dfch, BT * 4 * C);
      matmul_backward<T>(be, dbuf, g(param::fc_weight, l), g(param::fc_bias, l), dfch, al(act::ln2, l, BT * C),
                         p(param::fc_weight, l), BT, C, 4 * C);
      layernorm_backward<T>(be, dres, g(param::ln2_weight, l), g(param::ln2_bias, l), dbuf,
                            al(act::residual2, l, BT * C), p(param::ln2_weight, l), al(act::ln2_mean, l, BT),
                            al(act::ln2_rstd, l, BT), BT, C);
      // Attention: residual2 = residual + proj(attn(ln1(residual))); dres becomes d residual.
      matmul_backward<T>(be, dbuf, g(param::proj_weight, l), g(param::proj_bias, l), dres, al(act::atty, l, BT * C),
                         p(param::proj_weight, l), BT, C, C);
      attention_backward<T>(be, dqkv, datt, dbuf, al(act::qkv, l, BT * 3 * C), al(act::att, l, B * H * Tn * Tn), B, Tn,
                            C, H);
      matmul_backward<T>(be, dbuf, g(param::qkv_weight, l), g(param::qkv_bias, l), dqkv, al(act::ln1, l, BT * C),
                         p(param::qkv_weight, l), BT, C, 3 * C);
      layernorm_backward<T>(be, dres, g(param::ln1_weight, l), g(param::ln1_bias, l), dbuf, residual_out(l),
                            p(param::ln1_weight, l), al(act::ln1_mean, l, BT), al(act::ln1_rstd, l, BT), BT, C);
    }
    embedding_backward<T>(be, g(param::wte), g(param::wpe).subspan(0, Tn * C), dres, tok, B, Tn, C);
  }

  Backend be_;
  parameter_layout params_layout_;
  activation_layout acts_layout_;
  vector_t<T> params_, grads_, acts_;
  vector_t<token_t> tokens_, targets_; ///< (max_batch, max_seq_len) each; the last forward's first B·T
  std::size_t B_ = 0, T_ = 0;
};

} // namespace hir::nn
