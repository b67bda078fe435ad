// SPDX-License-Identifier: Apache-2.0
// The reference transformer's configuration and its memory layouts (llm.c style): `transformer_config` names the
// shape of the GPT, `parameter_layout` the size and offset of every parameter tensor inside ONE buffer (the same
// layout serves the gradients and the two AdamW moments), and `activation_layout` the offsets of every activation a
// training step keeps for its backward pass plus the backward's scratch, again inside ONE buffer, sized once for a
// maximum batch and sequence length.
#pragma once

#include <hir/core/error.hpp>

#include <array>
#include <cstddef>
#include <cstdint>

namespace hir::nn {

/// Token ids: row-major [B, T] arrays of std::int32_t; a negative target means "no target at this position".
using token_t = std::int32_t;

/// Shape of a GPT-2 style transformer: token + learned position embeddings, `layers` pre-LayerNorm blocks (causal
/// multi-head attention, GELU MLP of width 4·channels), a final LayerNorm and an LM head tied to the token embedding.
struct transformer_config {
  std::size_t vocab = 96;     ///< V, vocabulary size
  std::size_t context = 128;  ///< maximum sequence length (rows of the position embedding)
  std::size_t channels = 128; ///< C, model width
  std::size_t layers = 4;     ///< L, number of blocks
  std::size_t heads = 4;      ///< H, attention heads; must divide channels

  /// Throws hir::invalid_argument naming `fn` unless every size is positive and heads divides channels.
  void validate(const char* fn) const {
    if (vocab == 0 || context == 0 || channels == 0 || layers == 0 || heads == 0)
      detail::fail(fn, "every transformer_config size must be positive: vocab = ", vocab, ", context = ", context,
                   ", channels = ", channels, ", layers = ", layers, ", heads = ", heads);
    if (channels % heads != 0)
      detail::fail(fn, "channels = ", channels, " is not a multiple of heads = ", heads);
  }
  /// Head size C / H.
  std::size_t head_size() const { return channels / heads; }
  bool operator==(const transformer_config& o) const {
    return vocab == o.vocab && context == o.context && channels == o.channels && layers == o.layers && heads == o.heads;
  }
  bool operator!=(const transformer_config& o) const { return !(*this == o); }
};

/// The parameter tensors, in buffer order. Per-layer tensors are stacked over the L layers (llm.c), so
/// `qkv_weight` is (L, 3C, C) and layer l's slice starts at offset + l·(3C·C).
enum class param : std::size_t {
  wte,         ///< (V, C) token embedding, also the LM head
  wpe,         ///< (context, C) position embedding
  ln1_weight,  ///< (L, C)
  ln1_bias,    ///< (L, C)
  qkv_weight,  ///< (L, 3C, C) rows 0..C-1 produce q, C..2C-1 k, 2C..3C-1 v (PyTorch Linear layout: out × in)
  qkv_bias,    ///< (L, 3C)
  proj_weight, ///< (L, C, C) attention output projection
  proj_bias,   ///< (L, C)
  ln2_weight,  ///< (L, C)
  ln2_bias,    ///< (L, C)
  fc_weight,   ///< (L, 4C, C)
  fc_bias,     ///< (L, 4C)
  fc2_weight,  ///< (L, C, 4C)
  fc2_bias,    ///< (L, C)
  lnf_weight,  ///< (C)
  lnf_bias,    ///< (C)
};
/// Number of parameter tensors.
inline constexpr std::size_t num_param_tensors = 16;

/// Size, offset and role of one parameter tensor.
struct param_tensor {
  const char* name = "";     ///< e.g. "qkv_weight"
  std::size_t offset = 0;    ///< first element inside the parameter buffer
  std::size_t size = 0;      ///< elements (all layers for stacked tensors)
  std::size_t per_layer = 0; ///< elements of one layer's slice (== size for unstacked tensors)
  bool matrix = false;       ///< a weight matrix or embedding (decayed by AdamW by default); false: bias or norm
};

/// Sizes and offsets of the parameters inside one buffer; tensors start on 16-element (64-byte) boundaries.
struct parameter_layout {
  transformer_config config;
  std::array<param_tensor, num_param_tensors> tensors{};
  std::size_t total = 0; ///< elements of the whole buffer, padding included
  std::size_t count = 0; ///< number of parameters (padding excluded)

  parameter_layout() = default;
  explicit parameter_layout(const transformer_config& c) : config(c) {
    c.validate("nn::parameter_layout");
    const std::size_t V = c.vocab, P = c.context, C = c.channels, L = c.layers;
    struct spec {
      const char* name;
      std::size_t per_layer, layers;
      bool matrix;
    };
    const spec specs[num_param_tensors] = {{"wte", V * C, 1, true},
                                           {"wpe", P * C, 1, true},
                                           {"ln1_weight", C, L, false},
                                           {"ln1_bias", C, L, false},
                                           {"qkv_weight", 3 * C * C, L, true},
                                           {"qkv_bias", 3 * C, L, false},
                                           {"proj_weight", C * C, L, true},
                                           {"proj_bias", C, L, false},
                                           {"ln2_weight", C, L, false},
                                           {"ln2_bias", C, L, false},
                                           {"fc_weight", 4 * C * C, L, true},
                                           {"fc_bias", 4 * C, L, false},
                                           {"fc2_weight", 4 * C * C, L, true},
                                           {"fc2_bias", C, L, false},
                                           {"lnf_weight", C, 1, false},
                                           {"lnf_bias", C, 1, false}};
    std::size_t off = 0;
    for (std::size_t i = 0; i < num_param_tensors; ++i) {
      tensors[i] = {specs[i].name, off, specs[i].per_layer * specs[i].layers, specs[i].per_layer, specs[i].matrix};
      count += tensors[i].size;
      off += (tensors[i].size + 15) / 16 * 16;
    }
    total = off;
  }
  /// The tensor `p`.
  const param_tensor& operator[](param p) const { return tensors[static_cast<std::size_t>(p)]; }
  /// Offset of layer l's slice of tensor p.
  std::size_t offset(param p, std::size_t layer = 0) const {
    const param_tensor& t = (*this)[p];
    return t.offset + layer * t.per_layer;
  }
  /// Weight-matrix parameters (the ones GEMMs touch): L·12·C² + V·C, used for FLOP counts.
  std::size_t matmul_count() const {
    return config.layers * 12 * config.channels * config.channels + config.vocab * config.channels;
  }
};

/// The activations of a forward pass kept for the backward, and the backward's scratch.
enum class act : std::size_t {
  encoded,   ///< (B, T, C) token + position embedding
  ln1,       ///< (L, B, T, C)
  ln1_mean,  ///< (L, B, T)
  ln1_rstd,  ///< (L, B, T)
  qkv,       ///< (L, B, T, 3C)
  atty,      ///< (L, B, T, C) attention output before the projection
  att,       ///< (L, B, H, T, T) attention probabilities (upper triangle zero)
  residual2, ///< (L, B, T, C) stream after the attention
  ln2,       ///< (L, B, T, C)
  ln2_mean,  ///< (L, B, T)
  ln2_rstd,  ///< (L, B, T)
  fch,       ///< (L, B, T, 4C) MLP pre-activation
  fch_gelu,  ///< (L, B, T, 4C)
  residual3, ///< (L, B, T, C) stream after the block
  lnf,       ///< (B, T, C)
  lnf_mean,  ///< (B, T)
  lnf_rstd,  ///< (B, T)
  logits,    ///< (B, T, V)
  lse,       ///< (B, T) log-sum-exp of each logits row
  logp,      ///< (B, T) log-probability of the target (0 where the target is negative)
  entropy,   ///< (B, T) entropy of the next-token distribution
  dresidual, ///< (B, T, C) backward scratch: gradient of the residual stream
  dbuf,      ///< (B, T, C) backward scratch
  dqkv,      ///< (B, T, 3C) backward scratch
  datt,      ///< (B, H, T, T) backward scratch
  dfch,      ///< (B, T, 4C) backward scratch
  dlogits,   ///< (B, T, V) backward scratch
};
/// Number of activation tensors.
inline constexpr std::size_t num_act_tensors = 27;

/// Sizes and offsets of the activations for batches up to `batch` × `seq_len`, inside one buffer. The tensors are
/// laid out for the maximum shape; a smaller (B, T) uses the first L·B·T·… elements of each tensor, row-major.
struct activation_layout {
  transformer_config config;
  std::size_t batch = 0;   ///< maximum B
  std::size_t seq_len = 0; ///< maximum T (≤ context)
  std::array<std::size_t, num_act_tensors> offsets{};
  std::array<std::size_t, num_act_tensors> sizes{};
  std::size_t total = 0; ///< elements of the whole buffer, padding included

  activation_layout() = default;
  activation_layout(const transformer_config& c, std::size_t max_batch, std::size_t max_seq_len)
      : config(c), batch(max_batch), seq_len(max_seq_len) {
    c.validate("nn::activation_layout");
    if (max_batch == 0 || max_seq_len == 0 || max_seq_len > c.context)
      detail::fail("nn::activation_layout", "need 0 < batch and 0 < seq_len <= context: batch = ", max_batch,
                   ", seq_len = ", max_seq_len, ", context = ", c.context);
    const std::size_t BT = max_batch * max_seq_len, C = c.channels, L = c.layers, V = c.vocab, H = c.heads;
    const std::size_t att = max_batch * H * max_seq_len * max_seq_len;
    const std::size_t s[num_act_tensors] = {BT * C,
                                            L * BT * C,
                                            L * BT,
                                            L * BT,
                                            L * BT * 3 * C,
                                            L * BT * C,
                                            L * att,
                                            L * BT * C,
                                            L * BT * C,
                                            L * BT,
                                            L * BT,
                                            L * BT * 4 * C,
                                            L * BT * 4 * C,
                                            L * BT * C,
                                            BT * C,
                                            BT,
                                            BT,
                                            BT * V,
                                            BT,
                                            BT,
                                            BT,
                                            BT * C,
                                            BT * C,
                                            BT * 3 * C,
                                            att,
                                            BT * 4 * C,
                                            BT * V};
    std::size_t off = 0;
    for (std::size_t i = 0; i < num_act_tensors; ++i) {
      sizes[i] = s[i];
      offsets[i] = off;
      off += (s[i] + 15) / 16 * 16;
    }
    total = off;
  }
  /// Offset of tensor a.
  std::size_t offset(act a) const { return offsets[static_cast<std::size_t>(a)]; }
  /// Capacity (elements) of tensor a.
  std::size_t size(act a) const { return sizes[static_cast<std::size_t>(a)]; }
};

} // namespace hir::nn
