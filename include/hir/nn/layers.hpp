// SPDX-License-Identifier: Apache-2.0
// The transformer's layers on the CPU backend, one forward and one backward function per layer (llm.c's
// train_gpt2.c as the spec), templated on the scalar type so the tests can check every backward against finite
// differences in double. Every function takes the backend tag first, then spans (outputs first), then the sizes; it
// checks every span's size and throws hir::invalid_argument before writing anything. Backward functions ADD (+=) into
// parameter gradients; what they do to activation gradients is stated on each (most overwrite). Work is split across
// OpenMP threads inside each function; the matrix products go through detail::gemm (Eigen, or a CBLAS).
#pragma once

#include <hir/backend/cpu/tag.hpp>
#include <hir/core/error.hpp>
#include <hir/core/span.hpp>
#include <hir/nn/config.hpp>
#include <hir/nn/detail/gemm.hpp>
#include <hir/nn/detail/layer_checks.hpp>
#include <hir/nn/detail/parallel.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace hir::nn {

namespace detail {
template <class T>
struct nondeduced {
  using type = T;
};
/// T in a position that does not take part in template argument deduction.
template <class T>
using nondeduced_t = typename nondeduced<T>::type;

template <class T>
using array_map = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using const_array_map = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

inline Eigen::Index ei(std::size_t v) {
  return static_cast<Eigen::Index>(v);
}

/// Rows per thread of a matrix product whose rows cost 2·K·N FLOP each: at least 16 and ~2 MFLOP of work.
inline std::size_t matmul_grain(std::size_t K, std::size_t N) {
  return std::max<std::size_t>(16, std::size_t{1000000} / std::max<std::size_t>(1, K * N));
}

} // namespace detail

/// Host span of const T (the input spans of the layer functions).
template <class T>
using in_span = span<const detail::nondeduced_t<T>>;

// ---- embedding -------------------------------------------------------------------------------------------------

/// out[b, t] = wte[tokens[b, t]] + wpe[position_offset + t].
/// \param out (B, T, C)  \param tokens (B, T), each in [0, V)  \param wte (V, C)  \param wpe (P, C) with
/// position_offset + T ≤ P. \throws hir::invalid_argument on a size mismatch or a token outside [0, V).
template <class T>
void embedding_forward(backend::cpu::tag_t const&, span<T> out, span<const token_t> tokens, in_span<T> wte,
                       in_span<T> wpe, std::size_t B, std::size_t Tn, std::size_t C, std::size_t position_offset = 0) {
  const char* fn = "nn::embedding_forward";
  const std::size_t V =
      detail::check_embedding_forward(fn, out.size(), tokens.size(), wte.size(), wpe.size(), B, Tn, C, position_offset)
          .V;
  for (std::size_t i = 0; i < B * Tn; ++i)
    if (tokens[i] < 0 || static_cast<std::size_t>(tokens[i]) >= V)
      hir::detail::fail(fn, "tokens[", i, "] = ", tokens[i], " is outside [0, V = ", V, ")");
  // (B, T, C)
  nn::detail::parallel_for(B * Tn, 256, [&](std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) {
      const std::size_t t = i % Tn;
      detail::array_map<T>(out.data() + i * C, detail::ei(C)) =
          detail::const_array_map<T>(wte.data() + static_cast<std::size_t>(tokens[i]) * C, detail::ei(C)) +
          detail::const_array_map<T>(wpe.data() + (position_offset + t) * C, detail::ei(C));
    }
  });
}

/// dwte[tokens[b, t]] += dout[b, t]; dwpe[t] += Σ_b dout[b, t]. Tokens are trusted (checked by the forward).
/// \param dwte (V, C) \param dwpe (P, C), P ≥ T \param dout (B, T, C) \param tokens (B, T).
template <class T>
void embedding_backward(backend::cpu::tag_t const&, span<T> dwte, span<T> dwpe, in_span<T> dout,
                        span<const token_t> tokens, std::size_t B, std::size_t Tn, std::size_t C) {
  const char* fn = "nn::embedding_backward";
  detail::check_embedding_backward(fn, dwte.size(), dwpe.size(), dout.size(), tokens.size(), B, Tn, C);
  // Split over channels: each thread owns a slice of every row of dwte and dwpe, so no two threads write one element.
  nn::detail::parallel_for(
      C, 32,
      [&](std::size_t c0, std::size_t c1) {
        for (std::size_t i = 0; i < B * Tn; ++i) {
          const std::size_t t = i % Tn;
          T* wt = dwte.data() + static_cast<std::size_t>(tokens[i]) * C;
          T* wp = dwpe.data() + t * C;
          const T* d = dout.data() + i * C;
          for (std::size_t c = c0; c < c1; ++c) {
            wt[c] += d[c];
            wp[c] += d[c];
          }
        }
      },
      16);
}

// ---- layernorm -------------------------------------------------------------------------------------------------

/// out = (inp − mean) · rstd · weight + bias over the last axis (biased variance, eps 1e-5).
/// \param out (N, C) \param mean (N) \param rstd (N) \param inp (N, C) \param weight (C) \param bias (C).
template <class T>
void layernorm_forward(backend::cpu::tag_t const&, span<T> out, span<T> mean, span<T> rstd, in_span<T> inp,
                       in_span<T> weight, in_span<T> bias, std::size_t N, std::size_t C) {
  const char* fn = "nn::layernorm_forward";
  detail::check_layernorm_forward(fn, out.size(), mean.size(), rstd.size(), inp.size(), weight.size(), bias.size(), N,
                                  C);
  const detail::const_array_map<T> w(weight.data(), detail::ei(C)), bi(bias.data(), detail::ei(C));
  // (N, C), at least ~16 K elements per thread
  const std::size_t grain = std::max<std::size_t>(64, 16384 / std::max<std::size_t>(C, 1));
  nn::detail::parallel_for(N, grain, [&](std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) {
      const detail::const_array_map<T> x(inp.data() + i * C, detail::ei(C));
      const T m = x.mean();
      const T var = (x - m).square().mean();
      const T s = T(1) / std::sqrt(var + T(1e-5));
      detail::array_map<T>(out.data() + i * C, detail::ei(C)) = (x - m) * s * w + bi;
      mean[i] = m;
      rstd[i] = s;
    }
  });
}

/// Backward of layernorm_forward: dinp += (ADDS, so the residual stream's gradient accumulates in place),
/// dweight += Σ_n dout·x̂, dbias += Σ_n dout. \param dinp (N, C) \param dweight (C) \param dbias (C)
/// \param dout (N, C) \param inp (N, C) \param weight (C) \param mean, rstd (N) from the forward.
template <class T>
void layernorm_backward(backend::cpu::tag_t const&, span<T> dinp, span<T> dweight, span<T> dbias, in_span<T> dout,
                        in_span<T> inp, in_span<T> weight, in_span<T> mean, in_span<T> rstd, std::size_t N,
                        std::size_t C) {
  const char* fn = "nn::layernorm_backward";
  detail::check_layernorm_backward(fn, dinp.size(), dweight.size(), dbias.size(), dout.size(), inp.size(),
                                   weight.size(), mean.size(), rstd.size(), N, C);
  const detail::const_array_map<T> w(weight.data(), detail::ei(C));
  // Rows in parallel: dinp = rstd · (g − mean(g) − x̂ · mean(g · x̂)) with g = dout · weight.
  const std::size_t grain = std::max<std::size_t>(64, 16384 / std::max<std::size_t>(C, 1));
  nn::detail::parallel_for(N, grain, [&](std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) {
      const detail::const_array_map<T> x(inp.data() + i * C, detail::ei(C)), d(dout.data() + i * C, detail::ei(C));
      const auto xhat = (x - mean[i]) * rstd[i];
      const auto g = d * w;
      const T g_mean = g.mean(), gx_mean = (g * xhat).mean();
      detail::array_map<T>(dinp.data() + i * C, detail::ei(C)) += (g - g_mean - xhat * gx_mean) * rstd[i];
    }
  });
  // Channel slices in parallel for the parameter gradients (no reduction across threads).
  nn::detail::parallel_for(
      C, 32,
      [&](std::size_t c0, std::size_t c1) {
        const Eigen::Index n = detail::ei(c1 - c0);
        detail::array_map<T> dw(dweight.data() + c0, n), db(dbias.data() + c0, n);
        for (std::size_t i = 0; i < N; ++i) {
          const detail::const_array_map<T> x(inp.data() + i * C + c0, n), d(dout.data() + i * C + c0, n);
          dw += d * ((x - mean[i]) * rstd[i]);
          db += d;
        }
      },
      16);
}

// ---- matmul ----------------------------------------------------------------------------------------------------

/// out = inp · weightᵀ + bias (PyTorch Linear). \param out (N, OC) \param inp (N, C) \param weight (OC, C)
/// \param bias (OC), or empty for none. \param packed_weight weight packed by detail::pack_weight (for a weight
/// multiplied many times, e.g. in every decode step), or null; the result is the same either way.
template <class T>
void matmul_forward(backend::cpu::tag_t const&, span<T> out, in_span<T> inp, in_span<T> weight, in_span<T> bias,
                    std::size_t N, std::size_t C, std::size_t OC,
                    const detail::nondeduced_t<T>* packed_weight = nullptr) {
  const char* fn = "nn::matmul_forward";
  detail::check_matmul_forward(fn, out.size(), inp.size(), weight.size(), bias.size(), N, C, OC);
  nn::detail::blas_single_thread();
  // (N, OC) rows split across threads; each block is one GEMM (with the bias in its epilogue). A thread takes at
  // least ~2 MFLOP (tens of µs), so the small products of decoding run on one thread instead of paying for a region.
  nn::detail::parallel_for(
      N, detail::matmul_grain(C, OC),
      [&](std::size_t b, std::size_t e) {
        nn::detail::gemm_weight<T>(e - b, OC, C, inp.data() + b * C, C, weight.data(), packed_weight,
                                   out.data() + b * OC, OC, bias.empty() ? nullptr : bias.data());
      },
      16);
}

/// Backward of matmul_forward: dinp = dout · weight (OVERWRITES dinp; skipped when dinp is empty),
/// dweight += doutᵀ · inp, dbias += Σ_n dout (skipped when dbias is empty).
/// \param dinp (N, C) \param dweight (OC, C) \param dbias (OC) \param dout (N, OC) \param inp (N, C)
/// \param weight (OC, C).
template <class T>
void matmul_backward(backend::cpu::tag_t const&, span<T> dinp, span<T> dweight, span<T> dbias, in_span<T> dout,
                     in_span<T> inp, in_span<T> weight, std::size_t N, std::size_t C, std::size_t OC) {
  const char* fn = "nn::matmul_backward";
  detail::check_matmul_backward(fn, dinp.size(), dweight.size(), dbias.size(), dout.size(), inp.size(), weight.size(),
                                N, C, OC);
  nn::detail::blas_single_thread();
  // (N, C) = (N, OC) · (OC, C), rows split across threads.
  if (!dinp.empty())
    nn::detail::parallel_for(
        N, detail::matmul_grain(C, OC),
        [&](std::size_t b, std::size_t e) {
          nn::detail::gemm<T>(false, false, e - b, C, OC, T(1), dout.data() + b * OC, OC, weight.data(), C, T(0),
                              dinp.data() + b * C, C);
        },
        16);
  // (OC, C) += (OC, N) · (N, C), output rows split across threads; the bias gradient of the same rows alongside.
  nn::detail::parallel_for(
      OC, detail::matmul_grain(C, N),
      [&](std::size_t o0, std::size_t o1) {
        nn::detail::gemm<T>(true, false, o1 - o0, C, N, T(1), dout.data() + o0, OC, inp.data(), C, T(1),
                            dweight.data() + o0 * C, C);
        if (!dbias.empty()) {
          detail::array_map<T> db(dbias.data() + o0, detail::ei(o1 - o0));
          for (std::size_t i = 0; i < N; ++i)
            db += detail::const_array_map<T>(dout.data() + i * OC + o0, detail::ei(o1 - o0));
        }
      },
      8);
}

// ---- attention -------------------------------------------------------------------------------------------------

/// Causal multi-head self-attention: for each (b, h), att = softmax(q·kᵀ/√hs) over keys ≤ the query position (the
/// rest of the row is written as 0) and out = att · v. q, k, v are the three C-wide thirds of each qkv row; head h
/// uses channels h·hs … (h+1)·hs − 1 of each. \param out (B, T, C) \param att (B, H, T, T) \param qkv (B, T, 3C).
template <class T>
void attention_forward(backend::cpu::tag_t const&, span<T> out, span<T> att, in_span<T> qkv, std::size_t B,
                       std::size_t Tn, std::size_t C, std::size_t H) {
  const char* fn = "nn::attention_forward";
  detail::check_attention_forward(fn, out.size(), att.size(), qkv.size(), B, Tn, C, H);
  const std::size_t hs = C / H, C3 = 3 * C;
  const T scale = T(1) / std::sqrt(static_cast<T>(hs));
  nn::detail::blas_single_thread();
  // One (b, h) pair per work item.
  nn::detail::parallel_for(B * H, 1, [&](std::size_t p0, std::size_t p1) {
    for (std::size_t p = p0; p < p1; ++p) {
      const std::size_t b = p / H, h = p % H;
      const T* q = qkv.data() + b * Tn * C3 + h * hs;
      const T* k = q + C;
      const T* v = q + 2 * C;
      T* a = att.data() + p * Tn * Tn;
      // (T, T) = (T, hs) · (hs, T)
      nn::detail::gemm<T>(false, true, Tn, Tn, hs, scale, q, C3, k, C3, T(0), a, Tn);
      for (std::size_t t = 0; t < Tn; ++t) {
        detail::array_map<T> row(a + t * Tn, detail::ei(t + 1));
        row = (row - row.maxCoeff()).exp();
        row *= T(1) / row.sum();
        std::fill(a + t * Tn + t + 1, a + (t + 1) * Tn, T(0));
      }
      // (T, hs) = (T, T) · (T, hs)
      nn::detail::gemm<T>(false, false, Tn, hs, Tn, T(1), a, Tn, v, C3, T(0), out.data() + b * Tn * C + h * hs, C);
    }
  });
}

/// Backward of attention_forward: OVERWRITES dqkv (B, T, 3C) with the gradient of q, k and v; `datt` (B, H, T, T) is
/// scratch. \param dout (B, T, C) \param qkv (B, T, 3C) and \param att (B, H, T, T) from the forward.
template <class T>
void attention_backward(backend::cpu::tag_t const&, span<T> dqkv, span<T> datt, in_span<T> dout, in_span<T> qkv,
                        in_span<T> att, std::size_t B, std::size_t Tn, std::size_t C, std::size_t H) {
  const char* fn = "nn::attention_backward";
  detail::check_attention_backward(fn, dqkv.size(), datt.size(), dout.size(), qkv.size(), att.size(), B, Tn, C, H);
  const std::size_t hs = C / H, C3 = 3 * C;
  const T scale = T(1) / std::sqrt(static_cast<T>(hs));
  nn::detail::blas_single_thread();
  nn::detail::parallel_for(B * H, 1, [&](std::size_t p0, std::size_t p1) {
    for (std::size_t p = p0; p < p1; ++p) {
      const std::size_t b = p / H, h = p % H;
      const T* q = qkv.data() + b * Tn * C3 + h * hs;
      const T* k = q + C;
      const T* v = q + 2 * C;
      T* dq = dqkv.data() + b * Tn * C3 + h * hs;
      T* dk = dq + C;
      T* dv = dq + 2 * C;
      const T* a = att.data() + p * Tn * Tn;
      const T* dy = dout.data() + b * Tn * C + h * hs;
      T* da = datt.data() + p * Tn * Tn;
      // dA (T, T) = dY (T, hs) · Vᵀ
      nn::detail::gemm<T>(false, true, Tn, Tn, hs, T(1), dy, C, v, C3, T(0), da, Tn);
      // Softmax backward in place: dS = A ⊙ (dA − Σ_j A·dA) on the causal part, 0 above the diagonal.
      for (std::size_t t = 0; t < Tn; ++t) {
        const detail::const_array_map<T> ar(a + t * Tn, detail::ei(t + 1));
        detail::array_map<T> dr(da + t * Tn, detail::ei(t + 1));
        const T dot = (ar * dr).sum();
        dr = ar * (dr - dot);
        std::fill(da + t * Tn + t + 1, da + (t + 1) * Tn, T(0));
      }
      // dQ = scale · dS · K, dK = scale · dSᵀ · Q, dV = Aᵀ · dY, each (T, hs)
      nn::detail::gemm<T>(false, false, Tn, hs, Tn, scale, da, Tn, k, C3, T(0), dq, C3);
      nn::detail::gemm<T>(true, false, Tn, hs, Tn, scale, da, Tn, q, C3, T(0), dk, C3);
      nn::detail::gemm<T>(true, false, Tn, hs, Tn, T(1), a, Tn, dy, C, T(0), dv, C3);
    }
  });
}

// ---- gelu, residual --------------------------------------------------------------------------------------------

namespace detail {
template <class T>
inline constexpr T gelu_k = T(0.7978845608028654); // √(2/π)
} // namespace detail

/// GELU, tanh approximation (GPT-2): out = ½x(1 + tanh(√(2/π)(x + 0.044715x³))). \param out, inp (N); may alias.
template <class T>
void gelu_forward(backend::cpu::tag_t const&, span<T> out, in_span<T> inp, std::size_t N) {
  const char* fn = "nn::gelu_forward";
  detail::need(fn, "out.size()", out.size(), "N", N);
  detail::need(fn, "inp.size()", inp.size(), "N", N);
  nn::detail::parallel_for(
      N, 16384,
      [&](std::size_t b, std::size_t e) {
        const detail::const_array_map<T> x(inp.data() + b, detail::ei(e - b));
        detail::array_map<T>(out.data() + b, detail::ei(e - b)) =
            T(0.5) * x * (T(1) + (detail::gelu_k<T> * (x + T(0.044715) * x.cube())).tanh());
      },
      16);
}

/// Backward of gelu_forward: OVERWRITES dinp = gelu'(inp) · dout. \param dinp, dout (N); may alias.
/// \param inp (N) the forward's input.
template <class T>
void gelu_backward(backend::cpu::tag_t const&, span<T> dinp, in_span<T> inp, in_span<T> dout, std::size_t N) {
  const char* fn = "nn::gelu_backward";
  detail::need(fn, "dinp.size()", dinp.size(), "N", N);
  detail::need(fn, "inp.size()", inp.size(), "N", N);
  detail::need(fn, "dout.size()", dout.size(), "N", N);
  nn::detail::parallel_for(
      N, 16384,
      [&](std::size_t b, std::size_t e) {
        // Blocks of 256 so tanh is evaluated once into a stack array (no heap temporaries).
        for (std::size_t s = b; s < e; s += 256) {
          const Eigen::Index n = detail::ei(std::min<std::size_t>(256, e - s));
          const detail::const_array_map<T> x(inp.data() + s, n), d(dout.data() + s, n);
          const Eigen::Array<T, Eigen::Dynamic, 1, 0, 256, 1> th =
              (detail::gelu_k<T> * (x + T(0.044715) * x.cube())).tanh();
          detail::array_map<T>(dinp.data() + s, n) =
              d * (T(0.5) * (T(1) + th) +
                   T(0.5) * x * (T(1) - th.square()) * detail::gelu_k<T> * (T(1) + T(3 * 0.044715) * x.square()));
        }
      },
      16);
}

/// out = a + b, element-wise. \param out, a, b (N); out may alias a or b.
template <class T>
void residual_forward(backend::cpu::tag_t const&, span<T> out, in_span<T> a, in_span<T> b, std::size_t N) {
  const char* fn = "nn::residual_forward";
  detail::need(fn, "out.size()", out.size(), "N", N);
  detail::need(fn, "a.size()", a.size(), "N", N);
  detail::need(fn, "b.size()", b.size(), "N", N);
  nn::detail::parallel_for(
      N, 32768,
      [&](std::size_t s, std::size_t e) {
        detail::array_map<T>(out.data() + s, detail::ei(e - s)) =
            detail::const_array_map<T>(a.data() + s, detail::ei(e - s)) +
            detail::const_array_map<T>(b.data() + s, detail::ei(e - s));
      },
      16);
}

// ---- output head: log-probability of the target and entropy --------------------------------------------------

/// Per row of logits: lse = log Σ exp(z), logp = z[target] − lse (0 where target < 0), entropy = −Σ p log p.
/// \param logp, entropy, lse (N) \param logits (N, V) \param targets (N), each < V (negative: no target).
template <class T>
void logp_entropy_forward(backend::cpu::tag_t const&, span<T> logp, span<T> entropy, span<T> lse, in_span<T> logits,
                          span<const token_t> targets, std::size_t N, std::size_t V) {
  const char* fn = "nn::logp_entropy_forward";
  detail::check_logp_entropy_forward(fn, logp.size(), entropy.size(), lse.size(), logits.size(), targets.size(), N, V);
  for (std::size_t i = 0; i < N; ++i)
    if (targets[i] >= 0 && static_cast<std::size_t>(targets[i]) >= V)
      hir::detail::fail(fn, "targets[", i, "] = ", targets[i], " is not below V = ", V);
  nn::detail::parallel_for(N, 128, [&](std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) {
      const detail::const_array_map<T> z(logits.data() + i * V, detail::ei(V));
      const T m = z.maxCoeff();
      const auto ez = (z - m).exp();
      const T s = ez.sum();
      const T log_s = std::log(s);
      lse[i] = m + log_s;
      // H = log s − Σ e·(z − m) / s
      entropy[i] = log_s - (ez * (z - m)).sum() / s;
      logp[i] = targets[i] >= 0 ? z[static_cast<Eigen::Index>(targets[i])] - lse[i] : T(0);
    }
  });
}

/// Backward of logp_entropy_forward given dL/dlogp (g) and, optionally, dL/dentropy (h): OVERWRITES
/// dlogits[v] = g·(1[v = target] − p_v) − h·p_v·(log p_v + H). Rows with a negative target take no g.
/// \param dlogits, logits (N, V) \param lse, entropy (N) from the forward \param targets (N) \param dlogp (N)
/// \param dentropy (N) or empty.
template <class T>
void logp_entropy_backward(backend::cpu::tag_t const&, span<T> dlogits, in_span<T> logits, in_span<T> lse,
                           in_span<T> entropy, span<const token_t> targets, in_span<T> dlogp, in_span<T> dentropy,
                           std::size_t N, std::size_t V) {
  const char* fn = "nn::logp_entropy_backward";
  detail::check_logp_entropy_backward(fn, dlogits.size(), logits.size(), lse.size(), entropy.size(), targets.size(),
                                      dlogp.size(), dentropy.size(), N, V);
  nn::detail::parallel_for(N, 128, [&](std::size_t b, std::size_t e) {
    for (std::size_t i = b; i < e; ++i) {
      const detail::const_array_map<T> z(logits.data() + i * V, detail::ei(V));
      detail::array_map<T> dz(dlogits.data() + i * V, detail::ei(V));
      const T g = targets[i] >= 0 ? dlogp[i] : T(0);
      const T h = dentropy.empty() ? T(0) : dentropy[i];
      if (h == T(0)) {
        dz = -g * (z - lse[i]).exp();
      } else {
        const auto lp = z - lse[i];
        dz = -lp.exp() * (g + h * (lp + entropy[i]));
      }
      if (targets[i] >= 0)
        dz[static_cast<Eigen::Index>(targets[i])] += g;
    }
  });
}

} // namespace hir::nn
