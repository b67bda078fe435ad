// SPDX-License-Identifier: Apache-2.0
// The argument checks of the transformer's layer functions, shared by the CPU overloads (nn/layers.hpp) and the
// device overloads (nn/device/layers.hpp), so both backends reject the same arguments with the same messages. They
// read sizes only (plain C++: no Eigen, no Thrust) and run before anything is written.
#pragma once

#include <hir/core/error.hpp>

#include <cstddef>

namespace hir::nn::detail {

/// Throws (naming fn, the argument and both sizes) unless `size == expected`.
inline void need(const char* fn, const char* what, std::size_t size, const char* shape, std::size_t expected) {
  hir::detail::check_size(fn, what, size, shape, expected);
}

/// Vocabulary and position rows of an embedding: V = wte/C and P = wpe/C.
struct embedding_rows {
  std::size_t V, P;
};

/// embedding_forward's sizes: out (B·T·C), tokens (B·T), wte and wpe multiples of C, position_offset + T ≤ P.
inline embedding_rows check_embedding_forward(const char* fn, std::size_t out, std::size_t tokens, std::size_t wte,
                                              std::size_t wpe, std::size_t B, std::size_t Tn, std::size_t C,
                                              std::size_t position_offset) {
  need(fn, "out.size()", out, "B*T*C", B * Tn * C);
  need(fn, "tokens.size()", tokens, "B*T", B * Tn);
  if (C == 0 || wte % C != 0 || wpe % C != 0)
    hir::detail::fail(fn, "wte.size() = ", wte, " and wpe.size() = ", wpe, " must be multiples of C = ", C);
  const embedding_rows r{wte / C, wpe / C};
  if (position_offset + Tn > r.P)
    hir::detail::fail(fn, "position_offset + T = ", position_offset + Tn, " exceeds the ", r.P, " positions of wpe");
  return r;
}

/// embedding_backward's sizes: dout (B·T·C), tokens (B·T), dwte a multiple of C, dwpe at least T·C.
inline void check_embedding_backward(const char* fn, std::size_t dwte, std::size_t dwpe, std::size_t dout,
                                     std::size_t tokens, std::size_t B, std::size_t Tn, std::size_t C) {
  need(fn, "dout.size()", dout, "B*T*C", B * Tn * C);
  need(fn, "tokens.size()", tokens, "B*T", B * Tn);
  if (C == 0 || dwte % C != 0 || dwpe < Tn * C)
    hir::detail::fail(fn, "dwte.size() = ", dwte, " must be a multiple of C = ", C, " and dwpe.size() = ", dwpe,
                      " at least T*C = ", Tn * C);
}

/// layernorm_forward's sizes: out, inp (N·C); mean, rstd (N); weight, bias (C).
inline void check_layernorm_forward(const char* fn, std::size_t out, std::size_t mean, std::size_t rstd,
                                    std::size_t inp, std::size_t weight, std::size_t bias, std::size_t N,
                                    std::size_t C) {
  need(fn, "out.size()", out, "N*C", N * C);
  need(fn, "inp.size()", inp, "N*C", N * C);
  need(fn, "mean.size()", mean, "N", N);
  need(fn, "rstd.size()", rstd, "N", N);
  need(fn, "weight.size()", weight, "C", C);
  need(fn, "bias.size()", bias, "C", C);
}

/// layernorm_backward's sizes: dinp, dout, inp (N·C); dweight, dbias, weight (C); mean, rstd (N).
inline void check_layernorm_backward(const char* fn, std::size_t dinp, std::size_t dweight, std::size_t dbias,
                                     std::size_t dout, std::size_t inp, std::size_t weight, std::size_t mean,
                                     std::size_t rstd, std::size_t N, std::size_t C) {
  need(fn, "dinp.size()", dinp, "N*C", N * C);
  need(fn, "dout.size()", dout, "N*C", N * C);
  need(fn, "inp.size()", inp, "N*C", N * C);
  need(fn, "dweight.size()", dweight, "C", C);
  need(fn, "dbias.size()", dbias, "C", C);
  need(fn, "weight.size()", weight, "C", C);
  need(fn, "mean.size()", mean, "N", N);
  need(fn, "rstd.size()", rstd, "N", N);
}

/// matmul_forward's sizes: out (N·OC), inp (N·C), weight (OC·C), bias (OC, or empty).
inline void check_matmul_forward(const char* fn, std::size_t out, std::size_t inp, std::size_t weight, std::size_t bias,
                                 std::size_t N, std::size_t C, std::size_t OC) {
  need(fn, "out.size()", out, "N*OC", N * OC);
  need(fn, "inp.size()", inp, "N*C", N * C);
  need(fn, "weight.size()", weight, "OC*C", OC * C);
  if (bias != 0)
    need(fn, "bias.size()", bias, "OC", OC);
}

/// matmul_backward's sizes: dinp (N·C, or empty), dweight (OC·C), dbias (OC, or empty), dout (N·OC), inp (N·C),
/// weight (OC·C).
inline void check_matmul_backward(const char* fn, std::size_t dinp, std::size_t dweight, std::size_t dbias,
                                  std::size_t dout, std::size_t inp, std::size_t weight, std::size_t N, std::size_t C,
                                  std::size_t OC) {
  if (dinp != 0)
    need(fn, "dinp.size()", dinp, "N*C", N * C);
  need(fn, "dweight.size()", dweight, "OC*C", OC * C);
  if (dbias != 0)
    need(fn, "dbias.size()", dbias, "OC", OC);
  need(fn, "dout.size()", dout, "N*OC", N * OC);
  need(fn, "inp.size()", inp, "N*C", N * C);
  need(fn, "weight.size()", weight, "OC*C", OC * C);
}

/// C a positive multiple of H (the attention layers).
inline void check_heads(const char* fn, std::size_t C, std::size_t H) {
  if (H == 0 || C % H != 0)
    hir::detail::fail(fn, "C = ", C, " is not a positive multiple of H = ", H);
}

/// attention_forward's sizes: out (B·T·C), att (B·H·T·T), qkv (B·T·3C).
inline void check_attention_forward(const char* fn, std::size_t out, std::size_t att, std::size_t qkv, std::size_t B,
                                    std::size_t Tn, std::size_t C, std::size_t H) {
  check_heads(fn, C, H);
  need(fn, "out.size()", out, "B*T*C", B * Tn * C);
  need(fn, "att.size()", att, "B*H*T*T", B * H * Tn * Tn);
  need(fn, "qkv.size()", qkv, "B*T*3C", B * Tn * 3 * C);
}

/// attention_backward's sizes: dqkv, qkv (B·T·3C); datt, att (B·H·T·T); dout (B·T·C).
inline void check_attention_backward(const char* fn, std::size_t dqkv, std::size_t datt, std::size_t dout,
                                     std::size_t qkv, std::size_t att, std::size_t B, std::size_t Tn, std::size_t C,
                                     std::size_t H) {
  check_heads(fn, C, H);
  need(fn, "dqkv.size()", dqkv, "B*T*3C", B * Tn * 3 * C);
  need(fn, "datt.size()", datt, "B*H*T*T", B * H * Tn * Tn);
  need(fn, "dout.size()", dout, "B*T*C", B * Tn * C);
  need(fn, "qkv.size()", qkv, "B*T*3C", B * Tn * 3 * C);
  need(fn, "att.size()", att, "B*H*T*T", B * H * Tn * Tn);
}

/// logp_entropy_forward's sizes: logp, entropy, lse, targets (N); logits (N·V).
inline void check_logp_entropy_forward(const char* fn, std::size_t logp, std::size_t entropy, std::size_t lse,
                                       std::size_t logits, std::size_t targets, std::size_t N, std::size_t V) {
  need(fn, "logp.size()", logp, "N", N);
  need(fn, "entropy.size()", entropy, "N", N);
  need(fn, "lse.size()", lse, "N", N);
  need(fn, "logits.size()", logits, "N*V", N * V);
  need(fn, "targets.size()", targets, "N", N);
}

/// logp_entropy_backward's sizes: dlogits, logits (N·V); lse, entropy, targets, dlogp, dentropy (N, or empty).
inline void check_logp_entropy_backward(const char* fn, std::size_t dlogits, std::size_t logits, std::size_t lse,
                                        std::size_t entropy, std::size_t targets, std::size_t dlogp,
                                        std::size_t dentropy, std::size_t N, std::size_t V) {
  need(fn, "dlogits.size()", dlogits, "N*V", N * V);
  need(fn, "logits.size()", logits, "N*V", N * V);
  need(fn, "lse.size()", lse, "N", N);
  need(fn, "entropy.size()", entropy, "N", N);
  need(fn, "targets.size()", targets, "N", N);
  need(fn, "dlogp.size()", dlogp, "N", N);
  if (dentropy != 0)
    need(fn, "dentropy.size()", dentropy, "N", N);
}

} // namespace hir::nn::detail
