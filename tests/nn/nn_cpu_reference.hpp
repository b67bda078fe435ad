// SPDX-License-Identifier: Apache-2.0
// The CPU transformer (hir::cpu layers, model, AdamW) behind a plain interface of host vectors, compiled in its own
// translation unit (nn_cpu_reference.cpp, Eigen) so the device tests — one nvcc translation unit in CUDA builds —
// compare against it without ever including Eigen. Every function runs the hir::nn function of the same name on
// hir::cpu and lets its hir::invalid_argument through; instantiated for float and double.
#pragma once

#include <hir/nn/adamw.hpp>
#include <hir/nn/config.hpp>
#include <hir/nn/sampling_options.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace hir::test::nn_cpu {

using hir::nn::token_t;
template <class T>
using vec = std::vector<T>;
using std::size_t;

template <class T>
void embedding_forward(vec<T>& out, const vec<token_t>& tokens, const vec<T>& wte, const vec<T>& wpe, size_t B,
                       size_t Tn, size_t C, size_t position_offset);
template <class T>
void embedding_backward(vec<T>& dwte, vec<T>& dwpe, const vec<T>& dout, const vec<token_t>& tokens, size_t B, size_t Tn,
                        size_t C);
template <class T>
void layernorm_forward(vec<T>& out, vec<T>& mean, vec<T>& rstd, const vec<T>& inp, const vec<T>& weight,
                       const vec<T>& bias, size_t N, size_t C);
template <class T>
void layernorm_backward(vec<T>& dinp, vec<T>& dweight, vec<T>& dbias, const vec<T>& dout, const vec<T>& inp,
                        const vec<T>& weight, const vec<T>& mean, const vec<T>& rstd, size_t N, size_t C);
template <class T>
void matmul_forward(vec<T>& out, const vec<T>& inp, const vec<T>& weight, const vec<T>& bias, size_t N, size_t C,
                    size_t OC);
template <class T>
void matmul_backward(vec<T>& dinp, vec<T>& dweight, vec<T>& dbias, const vec<T>& dout, const vec<T>& inp,
                     const vec<T>& weight, size_t N, size_t C, size_t OC);
template <class T>
void attention_forward(vec<T>& out, vec<T>& att, const vec<T>& qkv, size_t B, size_t Tn, size_t C, size_t H);
template <class T>
void attention_backward(vec<T>& dqkv, vec<T>& datt, const vec<T>& dout, const vec<T>& qkv, const vec<T>& att, size_t B,
                        size_t Tn, size_t C, size_t H);
template <class T>
void gelu_forward(vec<T>& out, const vec<T>& inp, size_t N);
/// dinp = gelu'(inp)·dout; `in_place` runs it with dinp aliasing dout (dinp must hold dout on entry).
template <class T>
void gelu_backward(vec<T>& dinp, const vec<T>& inp, const vec<T>& dout, size_t N, bool in_place);
/// out = a + b; `in_place` runs it with out aliasing a (out must hold a on entry).
template <class T>
void residual_forward(vec<T>& out, const vec<T>& a, const vec<T>& b, size_t N, bool in_place);
template <class T>
void logp_entropy_forward(vec<T>& logp, vec<T>& entropy, vec<T>& lse, const vec<T>& logits, const vec<token_t>& targets,
                          size_t N, size_t V);
template <class T>
void logp_entropy_backward(vec<T>& dlogits, const vec<T>& logits, const vec<T>& lse, const vec<T>& entropy,
                           const vec<token_t>& targets, const vec<T>& dlogp, const vec<T>& dentropy, size_t N,
                           size_t V);
template <class T>
double clip_grad_norm(vec<T>& grads, double max_norm);
template <class T>
void adamw_update(const hir::nn::parameter_layout& layout, vec<T>& params, const vec<T>& grads, vec<T>& m, vec<T>& v,
                  const hir::nn::adamw_options& opt, std::uint64_t step, double lr);

/// One model scenario, run the same way by the CPU reference and by the device test.
template <class T>
struct model_case {
  hir::nn::transformer_config cfg;
  size_t max_batch = 0, max_seq_len = 0, B = 0, Tn = 0;
  vec<T> params;                 ///< the parameters both models start from
  vec<token_t> tokens, targets;  ///< (B, T); targets with negatives
  vec<T> dlogp, dentropy;        ///< (B, T) for backward(dlogp, dentropy)
  vec<T> mask;                   ///< (B, T) for backward_cross_entropy
  double denominator = 0.0;      ///< of the cross-entropy backward (0: Σ mask)
  std::uint64_t init_seed = 0;   ///< for init_parameters on a fresh model
  hir::nn::adamw_options adamw;  ///< training steps: forward, zero_grad, cross-entropy backward (Σ mask),
  hir::nn::lr_schedule schedule; ///< clip_grad_norm(clip), adamw_state::update(schedule.at(step))
  double clip = 1.0;
  size_t steps = 0;
};

/// What a model scenario produces.
template <class T>
struct model_run {
  vec<T> init;                  ///< init_parameters(init_seed) of a fresh model
  vec<T> logits, logp, entropy; ///< forward
  vec<T> grads_policy;          ///< zero_grad + backward(dlogp, dentropy)
  vec<T> grads_ce, ce_scratch;  ///< zero_grad + backward_cross_entropy(mask, scratch, denominator)
  double ce_loss = 0.0;
  vec<double> step_loss, step_norm; ///< per training step
  vec<T> final_params, final_m, final_v;
};

/// Runs `c` on hir::nn::model<T> (hir::cpu).
template <class T>
model_run<T> run_model(const model_case<T>& c);

/// What generator<T>::generate writes: tokens, logp, entropy (B, N) and lengths (B).
template <class T>
struct generation_run {
  vec<token_t> tokens;
  vec<T> logp, entropy;
  vec<size_t> lengths;
};

/// Runs hir::nn::generator<T>(cfg, max_batch, max_len).generate on a CPU model holding `params` (parameter_layout
/// order) with the prompts (B, P), their lengths and sequence ids (B); outputs sized for B rows of N tokens.
template <class T>
generation_run<T> generate(const hir::nn::transformer_config& cfg, const vec<T>& params, size_t max_batch,
                           size_t max_len, const vec<token_t>& prompts, const vec<size_t>& prompt_lengths,
                           const vec<std::uint64_t>& sequence_ids, size_t B, size_t P,
                           const hir::nn::generation_options& opt);

} // namespace hir::test::nn_cpu
