// SPDX-License-Identifier: Apache-2.0
// The transformer's layers on the device backend: one overload of every hir::nn layer function (layers.hpp) for
// `hir::backend::device::tag_t`, with the same math, argument order, shapes, size checks and error messages, taking
// spans in device memory. Element-wise and row-wise work is a Thrust for_each_n over a counting iterator with the
// tag's execution policy (its stream and workspace), one output element or row per functor call, accumulating in T
// like the CPU code; the matrix products go through nn_gemm (cuBLAS on CUDA, a portable Thrust GEMM elsewhere).
// Attention runs per head as strided-batched GEMMs over the batch (scores, values; and the four products of the
// backward) with a row-wise causal softmax between them. Validation of token ids reads back one index (a
// min-reduction), so it synchronizes the tag's stream. The functions live in hir::backend::device, where
// argument-dependent lookup finds them from generic code (model<T, Backend>), and are also declared in hir::nn.
#pragma once

#include <hir/backend/device/rewards.hpp> // detail::first_index_where
#include <hir/backend/device/tag.hpp>     // first: Thrust's config decides HIR_DEVICE_IS_CUDA

#include <hir/config.hpp>
#include <hir/core/error.hpp>
#include <hir/core/span.hpp>
#include <hir/nn/config.hpp>
#include <hir/nn/detail/layer_checks.hpp>
#include <hir/nn/device/gemm.hpp>

#include <thrust/for_each.h>
#include <thrust/functional.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/transform_reduce.h>

#include <math.h>

#include <cstddef>
#include <limits>

namespace hir {
namespace backend {
namespace device {

namespace detail {
template <class T>
struct hir_nn_nondeduced {
  using type = T;
};
} // namespace detail

/// Device span of T (outputs of the device layers).
template <class T>
using nn_span = span<T, device_space>;
/// Device span of const T in a position that does not take part in deduction (inputs of the device layers), so a
/// span of T converts.
template <class T>
using nn_in_span = span<const typename detail::hir_nn_nondeduced<T>::type, device_space>;

namespace detail {

// Math of the functors, overloaded on the scalar type (float calls the float functions on host and device).
HIR_HOST_DEVICE inline float hir_nn_exp(float x) {
  return ::expf(x);
}
HIR_HOST_DEVICE inline double hir_nn_exp(double x) {
  return ::exp(x);
}
HIR_HOST_DEVICE inline float hir_nn_log(float x) {
  return ::logf(x);
}
HIR_HOST_DEVICE inline double hir_nn_log(double x) {
  return ::log(x);
}
HIR_HOST_DEVICE inline float hir_nn_sqrt(float x) {
  return ::sqrtf(x);
}
HIR_HOST_DEVICE inline double hir_nn_sqrt(double x) {
  return ::sqrt(x);
}
HIR_HOST_DEVICE inline float hir_nn_tanh(float x) {
  return ::tanhf(x);
}
HIR_HOST_DEVICE inline double hir_nn_tanh(double x) {
  return ::tanh(x);
}

/// Token i outside [0, V) (lo = 0), or a target i at or above V (negative targets allowed).
struct hir_nn_token_bad {
  const nn::token_t* tokens;
  std::size_t V;
  bool allow_negative;
  HIR_HOST_DEVICE bool operator()(std::size_t i) const {
    const nn::token_t t = tokens[i];
    if (t < 0)
      return !allow_negative;
    return static_cast<std::size_t>(t) >= V;
  }
};

template <class F>
void nn_for_each(tag_t const& be, std::size_t n, F f) {
  if (n > 0)
    thrust::for_each_n(policy(be), thrust::counting_iterator<std::size_t>(0), n, f);
}

// ---- functors (one output element or row per call) ---------------------------------------------------------------

template <class T>
struct hir_nn_embedding_fwd { // e over (B·T, C)
  T* out;
  const nn::token_t* tokens;
  const T *wte, *wpe;
  std::size_t Tn, C, offset;
  HIR_HOST_DEVICE void operator()(std::size_t e) const {
    const std::size_t i = e / C, c = e % C, t = i % Tn;
    out[e] = wte[static_cast<std::size_t>(tokens[i]) * C + c] + wpe[(offset + t) * C + c];
  }
};

template <class T>
struct hir_nn_embedding_bwd_wte { // e over (V, C): the positions holding token v, in order
  T* dwte;
  const T* dout;
  const nn::token_t* tokens;
  std::size_t BT, C;
  HIR_HOST_DEVICE void operator()(std::size_t e) const {
    const std::size_t v = e / C, c = e % C;
    T acc = dwte[e];
    for (std::size_t i = 0; i < BT; ++i)
      if (tokens[i] >= 0 && static_cast<std::size_t>(tokens[i]) == v)
        acc += dout[i * C + c];
    dwte[e] = acc;
  }
};

template <class T>
struct hir_nn_embedding_bwd_wpe { // e over (T, C): Σ over the batch
  T* dwpe;
  const T* dout;
  std::size_t B, Tn, C;
  HIR_HOST_DEVICE void operator()(std::size_t e) const {
    T acc = dwpe[e];
    for (std::size_t b = 0; b < B; ++b)
      acc += dout[b * Tn * C + e];
    dwpe[e] = acc;
  }
};

template <class T>
struct hir_nn_layernorm_fwd { // row i
  T *out, *mean, *rstd;
  const T *inp, *weight, *bias;
  std::size_t C;
  HIR_HOST_DEVICE void operator()(std::size_t i) const {
    const T* x = inp + i * C;
    T s = T(0);
    for (std::size_t c = 0; c < C; ++c)
      s += x[c];
    const T m = s / static_cast<T>(C);
    T v = T(0);
    for (std::size_t c = 0; c < C; ++c)
      v += (x[c] - m) * (x[c] - m);
    const T r = T(1) / hir_nn_sqrt(v / static_cast<T>(C) + T(1e-5));
    T* o = out + i * C;
    for (std::size_t c = 0; c < C; ++c)
      o[c] = (x[c] - m) * r * weight[c] + bias[c];
    mean[i] = m;
    rstd[i] = r;
  }
};

template <class T>
struct hir_nn_layernorm_bwd_rows { // row i: dinp += rstd·(g − mean(g) − x̂·mean(g·x̂)), g = dout·weight
  T* dinp;
  const T *dout, *inp, *weight, *mean, *rstd;
  std::size_t C;
  HIR_HOST_DEVICE void operator()(std::size_t i) const {
    const T *x = inp + i * C, *d = dout + i * C;
    const T m = mean[i], r = rstd[i];
    T gs = T(0), gxs = T(0);
    for (std::size_t c = 0; c < C; ++c) {
      const T g = d[c] * weight[c];
      gs += g;
      gxs += g * ((x[c] - m) * r);
    }
    const T g_mean = gs / static_cast<T>(C), gx_mean = gxs / static_cast<T>(C);
    T* di = dinp + i * C;
    for (std::size_t c = 0; c < C; ++c) {
      const T xhat = (x[c] - m) * r;
      di[c] += (d[c] * weight[c] - g_mean - xhat * gx_mean) * r;
    }
  }
};

template <class T>
struct hir_nn_layernorm_bwd_params { // channel c: Σ over rows, in row order
  T *dweight, *dbias;
  const T *dout, *inp, *mean, *rstd;
  std::size_t N, C;
  HIR_HOST_DEVICE void operator()(std::size_t c) const {
    T dw = dweight[c], db = dbias[c];
    for (std::size_t i = 0; i < N; ++i) {
      const T d = dout[i * C + c];
      dw += d * ((inp[i * C + c] - mean[i]) * rstd[i]);
      db += d;
    }
    dweight[c] = dw;
    dbias[c] = db;
  }
};

template <class T>
struct hir_nn_broadcast_rows { // e over (N, OC): out = bias[column]
  T* out;
  const T* bias;
  std::size_t OC;
  HIR_HOST_DEVICE void operator()(std::size_t e) const { out[e] = bias[e % OC]; }
};

template <class T>
struct hir_nn_column_sums { // column o: dbias[o] += Σ_n dout[n, o], in row order
  T* dbias;
  const T* dout;
  std::size_t N, OC;
  HIR_HOST_DEVICE void operator()(std::size_t o) const {
    T acc = dbias[o];
    for (std::size_t n = 0; n < N; ++n)
      acc += dout[n * OC + o];
    dbias[o] = acc;
  }
};

template <class T>
struct hir_nn_causal_softmax { // row r of (B·H·T, T): softmax over keys ≤ t, zero above
  T* att;
  std::size_t Tn;
  HIR_HOST_DEVICE void operator()(std::size_t r) const {
    const std::size_t t = r % Tn;
    T* a = att + r * Tn;
    T m = a[0];
    for (std::size_t j = 1; j <= t; ++j)
      m = a[j] > m ? a[j] : m;
    T s = T(0);
    for (std::size_t j = 0; j <= t; ++j) {
      const T e = hir_nn_exp(a[j] - m);
      a[j] = e;
      s += e;
    }
    const T inv = T(1) / s;
    for (std::size_t j = 0; j <= t; ++j)
      a[j] *= inv;
    for (std::size_t j = t + 1; j < Tn; ++j)
      a[j] = T(0);
  }
};

template <class T>
struct hir_nn_causal_softmax_bwd { // row r: dS = A ⊙ (dA − Σ_j A·dA) on keys ≤ t, 0 above (in place in datt)
  T* datt;
  const T* att;
  std::size_t Tn;
  HIR_HOST_DEVICE void operator()(std::size_t r) const {
    const std::size_t t = r % Tn;
    const T* a = att + r * Tn;
    T* d = datt + r * Tn;
    T dot = T(0);
    for (std::size_t j = 0; j <= t; ++j)
      dot += a[j] * d[j];
    for (std::size_t j = 0; j <= t; ++j)
      d[j] = a[j] * (d[j] - dot);
    for (std::size_t j = t + 1; j < Tn; ++j)
      d[j] = T(0);
  }
};

template <class T>
inline constexpr T hir_nn_gelu_k = T(0.7978845608028654); // √(2/π)

template <class T>
struct hir_nn_gelu_fwd {
  T* out;
  const T* inp;
  HIR_HOST_DEVICE void operator()(std::size_t i) const {
    const T x = inp[i];
    out[i] = T(0.5) * x * (T(1) + hir_nn_tanh(hir_nn_gelu_k<T> * (x + T(0.044715) * (x * x * x))));
  }
};

template <class T>
struct hir_nn_gelu_bwd {
  T* dinp;
  const T *inp, *dout;
  HIR_HOST_DEVICE void operator()(std::size_t i) const {
    const T x = inp[i];
    const T th = hir_nn_tanh(hir_nn_gelu_k<T> * (x + T(0.044715) * (x * x * x)));
    dinp[i] = dout[i] * (T(0.5) * (T(1) + th) +
                         T(0.5) * x * (T(1) - th * th) * hir_nn_gelu_k<T> * (T(1) + T(3 * 0.044715) * (x * x)));
  }
};

template <class T>
struct hir_nn_add {
  T* out;
  const T *a, *b;
  HIR_HOST_DEVICE void operator()(std::size_t i) const { out[i] = a[i] + b[i]; }
};

template <class T>
struct hir_nn_logp_entropy_fwd { // row i of (N, V)
  T *logp, *entropy, *lse;
  const T* logits;
  const nn::token_t* targets;
  std::size_t V;
  HIR_HOST_DEVICE void operator()(std::size_t i) const {
    const T* z = logits + i * V;
    T m = z[0];
    for (std::size_t v = 1; v < V; ++v)
      m = z[v] > m ? z[v] : m;
    T s = T(0), sz = T(0);
    for (std::size_t v = 0; v < V; ++v) {
      const T e = hir_nn_exp(z[v] - m);
      s += e;
      sz += e * (z[v] - m);
    }
    const T log_s = hir_nn_log(s);
    const T l = m + log_s;
    lse[i] = l;
    entropy[i] = log_s - sz / s; // H = log s − Σ e·(z − m) / s
    logp[i] = targets[i] >= 0 ? z[static_cast<std::size_t>(targets[i])] - l : T(0);
  }
};

template <class T>
struct hir_nn_logp_entropy_bwd { // e over (N, V)
  T* dlogits;
  const T *logits, *lse, *entropy;
  const nn::token_t* targets;
  const T *dlogp, *dentropy; // dentropy may be null
  std::size_t V;
  HIR_HOST_DEVICE void operator()(std::size_t e) const {
    const std::size_t i = e / V, v = e % V;
    const nn::token_t tgt = targets[i];
    const T g = tgt >= 0 ? dlogp[i] : T(0);
    const T h = dentropy ? dentropy[i] : T(0);
    const T lp = logits[e] - lse[i];
    T dz = h == T(0) ? -g * hir_nn_exp(lp) : -hir_nn_exp(lp) * (g + h * (lp + entropy[i]));
    if (tgt >= 0 && static_cast<std::size_t>(tgt) == v)
      dz += g;
    dlogits[e] = dz;
  }
};

/// Throws the CPU layer's message for the first token outside [0, V) (targets: at or above V), if any.
inline void nn_check_tokens(tag_t const& be, const char* fn, const char* name, span<const nn::token_t, device_space> t,
                            std::size_t V, bool targets) {
  const long long bad = first_index_where(be, t.size(), hir_nn_token_bad{t.data(), V, targets});
  if (bad < 0)
    return;
  const nn::token_t value = nn_read_scalar(be, t.data() + bad, fn);
  if (targets)
    hir::detail::fail(fn, name, "[", bad, "] = ", value, " is not below V = ", V);
  hir::detail::fail(fn, name, "[", bad, "] = ", value, " is outside [0, V = ", V, ")");
}

} // namespace detail

// ---- embedding ---------------------------------------------------------------------------------------------------

/// out[b, t] = wte[tokens[b, t]] + wpe[position_offset + t] on the device backend.
/// \param out (B, T, C) \param tokens (B, T), each in [0, V) \param wte (V, C) \param wpe (P, C) with
/// position_offset + T ≤ P; all in device memory. \throws hir::invalid_argument (before writing) on a size mismatch
/// or a token outside [0, V); the token check reads back one index (synchronizes the tag's stream).
template <class T>
void embedding_forward(tag_t const& be, nn_span<T> out, span<const nn::token_t, device_space> tokens, nn_in_span<T> wte,
                       nn_in_span<T> wpe, std::size_t B, std::size_t Tn, std::size_t C,
                       std::size_t position_offset = 0) {
  const char* fn = "nn::embedding_forward";
  const std::size_t V = hir::nn::detail::check_embedding_forward(fn, out.size(), tokens.size(), wte.size(), wpe.size(),
                                                                 B, Tn, C, position_offset)
                            .V;
  detail::nn_check_tokens(be, fn, "tokens", tokens, V, false);
  detail::nn_for_each(
      be, B * Tn * C,
      detail::hir_nn_embedding_fwd<T>{out.data(), tokens.data(), wte.data(), wpe.data(), Tn, C, position_offset});
}

/// dwte[tokens[b, t]] += dout[b, t]; dwpe[t] += Σ_b dout[b, t] (device memory). Positions are summed in order, one
/// element of dwte or dwpe per functor call (no atomics). Tokens are trusted (checked by the forward; one outside
/// [0, V) adds nowhere). \param dwte (V, C) \param dwpe (P, C), P ≥ T \param dout (B, T, C) \param tokens (B, T).
template <class T>
void embedding_backward(tag_t const& be, nn_span<T> dwte, nn_span<T> dwpe, nn_in_span<T> dout,
                        span<const nn::token_t, device_space> tokens, std::size_t B, std::size_t Tn, std::size_t C) {
  const char* fn = "nn::embedding_backward";
  hir::nn::detail::check_embedding_backward(fn, dwte.size(), dwpe.size(), dout.size(), tokens.size(), B, Tn, C);
  detail::nn_for_each(be, dwte.size(),
                      detail::hir_nn_embedding_bwd_wte<T>{dwte.data(), dout.data(), tokens.data(), B * Tn, C});
  detail::nn_for_each(be, Tn * C, detail::hir_nn_embedding_bwd_wpe<T>{dwpe.data(), dout.data(), B, Tn, C});
}

// ---- layernorm ---------------------------------------------------------------------------------------------------

/// out = (inp − mean)·rstd·weight + bias over the last axis (biased variance, eps 1e-5), one row per functor call.
/// \param out (N, C) \param mean (N) \param rstd (N) \param inp (N, C) \param weight (C) \param bias (C), device
/// memory. \throws hir::invalid_argument on a size mismatch.
template <class T>
void layernorm_forward(tag_t const& be, nn_span<T> out, nn_span<T> mean, nn_span<T> rstd, nn_in_span<T> inp,
                       nn_in_span<T> weight, nn_in_span<T> bias, std::size_t N, std::size_t C) {
  const char* fn = "nn::layernorm_forward";
  hir::nn::detail::check_layernorm_forward(fn, out.size(), mean.size(), rstd.size(), inp.size(), weight.size(),
                                           bias.size(), N, C);
  if (C == 0)
    return;
  detail::nn_for_each(
      be, N,
      detail::hir_nn_layernorm_fwd<T>{out.data(), mean.data(), rstd.data(), inp.data(), weight.data(), bias.data(), C});
}

/// Backward of layernorm_forward: dinp += (ADDS: the residual stream's gradient accumulates in place),
/// dweight += Σ_n dout·x̂, dbias += Σ_n dout (one channel per functor call, rows in order).
/// \param dinp (N, C) \param dweight (C) \param dbias (C) \param dout (N, C) \param inp (N, C) \param weight (C)
/// \param mean, rstd (N) from the forward; device memory. \throws hir::invalid_argument on a size mismatch.
template <class T>
void layernorm_backward(tag_t const& be, nn_span<T> dinp, nn_span<T> dweight, nn_span<T> dbias, nn_in_span<T> dout,
                        nn_in_span<T> inp, nn_in_span<T> weight, nn_in_span<T> mean, nn_in_span<T> rstd, std::size_t N,
                        std::size_t C) {
  const char* fn = "nn::layernorm_backward";
  hir::nn::detail::check_layernorm_backward(fn, dinp.size(), dweight.size(), dbias.size(), dout.size(), inp.size(),
                                            weight.size(), mean.size(), rstd.size(), N, C);
  if (C == 0)
    return;
  detail::nn_for_each(be, N,
                      detail::hir_nn_layernorm_bwd_rows<T>{dinp.data(), dout.data(), inp.data(), weight.data(),
                                                           mean.data(), rstd.data(), C});
  detail::nn_for_each(be, C,
                      detail::hir_nn_layernorm_bwd_params<T>{dweight.data(), dbias.data(), dout.data(), inp.data(),
                                                             mean.data(), rstd.data(), N, C});
}

// ---- matmul ------------------------------------------------------------------------------------------------------

/// out = inp·weightᵀ + bias (PyTorch Linear) on the device backend: the bias is broadcast into out, then one GEMM
/// adds the product (cuBLAS on CUDA). \param out (N, OC) \param inp (N, C) \param weight (OC, C) \param bias (OC) or
/// empty; device memory. \throws hir::invalid_argument on a size mismatch; hir::cuda_error if cuBLAS fails.
template <class T>
void matmul_forward(tag_t const& be, nn_span<T> out, nn_in_span<T> inp, nn_in_span<T> weight, nn_in_span<T> bias,
                    std::size_t N, std::size_t C, std::size_t OC) {
  const char* fn = "nn::matmul_forward";
  hir::nn::detail::check_matmul_forward(fn, out.size(), inp.size(), weight.size(), bias.size(), N, C, OC);
  if (!bias.empty())
    detail::nn_for_each(be, N * OC, detail::hir_nn_broadcast_rows<T>{out.data(), bias.data(), OC});
  // (N, OC) = (N, C) · (OC, C)ᵀ [+ out]
  detail::nn_gemm<T>(be, fn, false, true, N, OC, C, T(1), inp.data(), C, 0, weight.data(), C, 0,
                     bias.empty() ? T(0) : T(1), out.data(), OC, 0);
}

/// Backward of matmul_forward: dinp = dout·weight (OVERWRITES dinp; skipped when dinp is empty),
/// dweight += doutᵀ·inp, dbias += Σ_n dout (skipped when dbias is empty). \param dinp (N, C) \param dweight (OC, C)
/// \param dbias (OC) \param dout (N, OC) \param inp (N, C) \param weight (OC, C); device memory.
/// \throws hir::invalid_argument on a size mismatch; hir::cuda_error if cuBLAS fails.
template <class T>
void matmul_backward(tag_t const& be, nn_span<T> dinp, nn_span<T> dweight, nn_span<T> dbias, nn_in_span<T> dout,
                     nn_in_span<T> inp, nn_in_span<T> weight, std::size_t N, std::size_t C, std::size_t OC) {
  const char* fn = "nn::matmul_backward";
  hir::nn::detail::check_matmul_backward(fn, dinp.size(), dweight.size(), dbias.size(), dout.size(), inp.size(),
                                         weight.size(), N, C, OC);
  // (N, C) = (N, OC) · (OC, C)
  if (!dinp.empty())
    detail::nn_gemm<T>(be, fn, false, false, N, C, OC, T(1), dout.data(), OC, 0, weight.data(), C, 0, T(0), dinp.data(),
                       C, 0);
  // (OC, C) += (N, OC)ᵀ · (N, C)
  detail::nn_gemm<T>(be, fn, true, false, OC, C, N, T(1), dout.data(), OC, 0, inp.data(), C, 0, T(1), dweight.data(), C,
                     0);
  if (!dbias.empty())
    detail::nn_for_each(be, OC, detail::hir_nn_column_sums<T>{dbias.data(), dout.data(), N, OC});
}

// ---- attention ---------------------------------------------------------------------------------------------------

/// Causal multi-head self-attention on the device backend: for each (b, h), att = softmax(q·kᵀ/√hs) over keys ≤ the
/// query position (the rest of the row written as 0) and out = att·v; q, k, v are the three C-wide thirds of each
/// qkv row, head h using channels h·hs … (h+1)·hs − 1. Per head: one strided-batched GEMM over b for the scores, a
/// row-wise softmax, one for the values. \param out (B, T, C) \param att (B, H, T, T) \param qkv (B, T, 3C); device
/// memory. \throws hir::invalid_argument on sizes or C not a positive multiple of H; hir::cuda_error from cuBLAS.
template <class T>
void attention_forward(tag_t const& be, nn_span<T> out, nn_span<T> att, nn_in_span<T> qkv, std::size_t B,
                       std::size_t Tn, std::size_t C, std::size_t H) {
  const char* fn = "nn::attention_forward";
  hir::nn::detail::check_attention_forward(fn, out.size(), att.size(), qkv.size(), B, Tn, C, H);
  if (B * Tn == 0)
    return;
  const std::size_t hs = C / H, C3 = 3 * C, TT = Tn * Tn;
  const T scale = T(1) / detail::hir_nn_sqrt(static_cast<T>(hs));
  const T* q = qkv.data();
  for (std::size_t h = 0; h < H; ++h) // (T, T) = scale · (T, hs) · (T, hs)ᵀ for every b
    detail::nn_gemm<T>(be, fn, false, true, Tn, Tn, hs, scale, q + h * hs, C3, Tn * C3, q + C + h * hs, C3, Tn * C3,
                       T(0), att.data() + h * TT, Tn, H * TT, B);
  detail::nn_for_each(be, B * H * Tn, detail::hir_nn_causal_softmax<T>{att.data(), Tn});
  for (std::size_t h = 0; h < H; ++h) // (T, hs) = (T, T) · (T, hs)
    detail::nn_gemm<T>(be, fn, false, false, Tn, hs, Tn, T(1), att.data() + h * TT, Tn, H * TT, q + 2 * C + h * hs, C3,
                       Tn * C3, T(0), out.data() + h * hs, C, Tn * C, B);
}

/// Backward of attention_forward: OVERWRITES dqkv (B, T, 3C) with the gradients of q, k and v; `datt` (B, H, T, T)
/// is scratch. \param dout (B, T, C) \param qkv (B, T, 3C) and \param att (B, H, T, T) from the forward; device
/// memory. \throws hir::invalid_argument on sizes; hir::cuda_error from cuBLAS.
template <class T>
void attention_backward(tag_t const& be, nn_span<T> dqkv, nn_span<T> datt, nn_in_span<T> dout, nn_in_span<T> qkv,
                        nn_in_span<T> att, std::size_t B, std::size_t Tn, std::size_t C, std::size_t H) {
  const char* fn = "nn::attention_backward";
  hir::nn::detail::check_attention_backward(fn, dqkv.size(), datt.size(), dout.size(), qkv.size(), att.size(), B, Tn, C,
                                            H);
  if (B * Tn == 0)
    return;
  const std::size_t hs = C / H, C3 = 3 * C, TT = Tn * Tn;
  const T scale = T(1) / detail::hir_nn_sqrt(static_cast<T>(hs));
  const T* q = qkv.data();
  T* dq = dqkv.data();
  for (std::size_t h = 0; h < H; ++h) // dA (T, T) = dY (T, hs) · Vᵀ
    detail::nn_gemm<T>(be, fn, false, true, Tn, Tn, hs, T(1), dout.data() + h * hs, C, Tn * C, q + 2 * C + h * hs, C3,
                       Tn * C3, T(0), datt.data() + h * TT, Tn, H * TT, B);
  detail::nn_for_each(be, B * H * Tn, detail::hir_nn_causal_softmax_bwd<T>{datt.data(), att.data(), Tn});
  for (std::size_t h = 0; h < H; ++h) {
    const T* ds = datt.data() + h * TT;
    // dQ = scale · dS · K, dK = scale · dSᵀ · Q, dV = Aᵀ · dY, each (T, hs)
    detail::nn_gemm<T>(be, fn, false, false, Tn, hs, Tn, scale, ds, Tn, H * TT, q + C + h * hs, C3, Tn * C3, T(0),
                       dq + h * hs, C3, Tn * C3, B);
    detail::nn_gemm<T>(be, fn, true, false, Tn, hs, Tn, scale, ds, Tn, H * TT, q + h * hs, C3, Tn * C3, T(0),
                       dq + C + h * hs, C3, Tn * C3, B);
    detail::nn_gemm<T>(be, fn, true, false, Tn, hs, Tn, T(1), att.data() + h * TT, Tn, H * TT, dout.data() + h * hs, C,
                       Tn * C, T(0), dq + 2 * C + h * hs, C3, Tn * C3, B);
  }
}

// ---- gelu, residual ----------------------------------------------------------------------------------------------

/// GELU, tanh approximation (GPT-2): out = ½x(1 + tanh(√(2/π)(x + 0.044715x³))), element-wise on the device.
/// \param out, inp (N), device memory; may alias. \throws hir::invalid_argument on a size mismatch.
template <class T>
void gelu_forward(tag_t const& be, nn_span<T> out, nn_in_span<T> inp, std::size_t N) {
  const char* fn = "nn::gelu_forward";
  hir::nn::detail::need(fn, "out.size()", out.size(), "N", N);
  hir::nn::detail::need(fn, "inp.size()", inp.size(), "N", N);
  detail::nn_for_each(be, N, detail::hir_nn_gelu_fwd<T>{out.data(), inp.data()});
}

/// Backward of gelu_forward: OVERWRITES dinp = gelu'(inp)·dout. \param dinp, dout (N), may alias \param inp (N) the
/// forward's input; device memory. \throws hir::invalid_argument on a size mismatch.
template <class T>
void gelu_backward(tag_t const& be, nn_span<T> dinp, nn_in_span<T> inp, nn_in_span<T> dout, std::size_t N) {
  const char* fn = "nn::gelu_backward";
  hir::nn::detail::need(fn, "dinp.size()", dinp.size(), "N", N);
  hir::nn::detail::need(fn, "inp.size()", inp.size(), "N", N);
  hir::nn::detail::need(fn, "dout.size()", dout.size(), "N", N);
  detail::nn_for_each(be, N, detail::hir_nn_gelu_bwd<T>{dinp.data(), inp.data(), dout.data()});
}

/// out = a + b, element-wise on the device. \param out, a, b (N), device memory; out may alias a or b.
/// \throws hir::invalid_argument on a size mismatch.
template <class T>
void residual_forward(tag_t const& be, nn_span<T> out, nn_in_span<T> a, nn_in_span<T> b, std::size_t N) {
  const char* fn = "nn::residual_forward";
  hir::nn::detail::need(fn, "out.size()", out.size(), "N", N);
  hir::nn::detail::need(fn, "a.size()", a.size(), "N", N);
  hir::nn::detail::need(fn, "b.size()", b.size(), "N", N);
  detail::nn_for_each(be, N, detail::hir_nn_add<T>{out.data(), a.data(), b.data()});
}

// ---- output head -------------------------------------------------------------------------------------------------

/// Per row of logits (one row per functor call): lse = log Σ exp(z), logp = z[target] − lse (0 where target < 0),
/// entropy = −Σ p log p. \param logp, entropy, lse (N) \param logits (N, V) \param targets (N), each < V (negative:
/// no target); device memory. \throws hir::invalid_argument (before writing) on sizes or a target ≥ V; the target
/// check reads back one index (synchronizes the tag's stream).
template <class T>
void logp_entropy_forward(tag_t const& be, nn_span<T> logp, nn_span<T> entropy, nn_span<T> lse, nn_in_span<T> logits,
                          span<const nn::token_t, device_space> targets, std::size_t N, std::size_t V) {
  const char* fn = "nn::logp_entropy_forward";
  hir::nn::detail::check_logp_entropy_forward(fn, logp.size(), entropy.size(), lse.size(), logits.size(),
                                              targets.size(), N, V);
  detail::nn_check_tokens(be, fn, "targets", targets, V, true);
  if (V == 0)
    return;
  detail::nn_for_each(
      be, N,
      detail::hir_nn_logp_entropy_fwd<T>{logp.data(), entropy.data(), lse.data(), logits.data(), targets.data(), V});
}

/// Backward of logp_entropy_forward given dL/dlogp (g) and optionally dL/dentropy (h): OVERWRITES
/// dlogits[v] = g·(1[v = target] − p_v) − h·p_v·(log p_v + H), one element per functor call. Rows with a negative
/// target take no g. \param dlogits, logits (N, V) \param lse, entropy (N) from the forward \param targets (N)
/// \param dlogp (N) \param dentropy (N) or empty; device memory. \throws hir::invalid_argument on a size mismatch.
template <class T>
void logp_entropy_backward(tag_t const& be, nn_span<T> dlogits, nn_in_span<T> logits, nn_in_span<T> lse,
                           nn_in_span<T> entropy, span<const nn::token_t, device_space> targets, nn_in_span<T> dlogp,
                           nn_in_span<T> dentropy, std::size_t N, std::size_t V) {
  const char* fn = "nn::logp_entropy_backward";
  hir::nn::detail::check_logp_entropy_backward(fn, dlogits.size(), logits.size(), lse.size(), entropy.size(),
                                               targets.size(), dlogp.size(), dentropy.size(), N, V);
  detail::nn_for_each(be, N * V,
                      detail::hir_nn_logp_entropy_bwd<T>{dlogits.data(), logits.data(), lse.data(), entropy.data(),
                                                         targets.data(), dlogp.data(),
                                                         dentropy.empty() ? nullptr : dentropy.data(), V});
}

} // namespace device
} // namespace backend

namespace nn {
// The device overloads, callable as hir::nn::<layer>(hir::device, ...) beside the CPU ones.
using backend::device::attention_backward;
using backend::device::attention_forward;
using backend::device::embedding_backward;
using backend::device::embedding_forward;
using backend::device::gelu_backward;
using backend::device::gelu_forward;
using backend::device::layernorm_backward;
using backend::device::layernorm_forward;
using backend::device::logp_entropy_backward;
using backend::device::logp_entropy_forward;
using backend::device::matmul_backward;
using backend::device::matmul_forward;
using backend::device::residual_forward;
} // namespace nn
} // namespace hir
