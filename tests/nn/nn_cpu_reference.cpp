// SPDX-License-Identifier: Apache-2.0
// The CPU side of the device transformer tests (see nn_cpu_reference.hpp): thin wrappers over hir::nn's CPU layers,
// model and AdamW, compiled with Eigen in a translation unit of its own (no device headers).
#include "nn_cpu_reference.hpp"

#include <hir/nn.hpp>

#if defined(HIR_WITH_DEVICE)
#  error "the CPU reference must not see the device backend (it links hir::hir only)"
#endif

namespace hir::test::nn_cpu {
namespace {
template <class T>
hir::span<T> s(vec<T>& v) {
  return hir::span<T>(v.data(), v.size());
}
template <class T>
hir::span<const T> s(const vec<T>& v) {
  return hir::span<const T>(v.data(), v.size());
}
} // namespace

template <class T>
void embedding_forward(vec<T>& out, const vec<token_t>& tokens, const vec<T>& wte, const vec<T>& wpe, size_t B,
                       size_t Tn, size_t C, size_t position_offset) {
  hir::nn::embedding_forward<T>(hir::cpu, s(out), s(tokens), s(wte), s(wpe), B, Tn, C, position_offset);
}
template <class T>
void embedding_backward(vec<T>& dwte, vec<T>& dwpe, const vec<T>& dout, const vec<token_t>& tokens, size_t B, size_t Tn,
                        size_t C) {
  hir::nn::embedding_backward<T>(hir::cpu, s(dwte), s(dwpe), s(dout), s(tokens), B, Tn, C);
}
template <class T>
void layernorm_forward(vec<T>& out, vec<T>& mean, vec<T>& rstd, const vec<T>& inp, const vec<T>& weight,
                       const vec<T>& bias, size_t N, size_t C) {
  hir::nn::layernorm_forward<T>(hir::cpu, s(out), s(mean), s(rstd), s(inp), s(weight), s(bias), N, C);
}
template <class T>
void layernorm_backward(vec<T>& dinp, vec<T>& dweight, vec<T>& dbias, const vec<T>& dout, const vec<T>& inp,
                        const vec<T>& weight, const vec<T>& mean, const vec<T>& rstd, size_t N, size_t C) {
  hir::nn::layernorm_backward<T>(hir::cpu, s(dinp), s(dweight), s(dbias), s(dout), s(inp), s(weight), s(mean), s(rstd),
                                 N, C);
}
template <class T>
void matmul_forward(vec<T>& out, const vec<T>& inp, const vec<T>& weight, const vec<T>& bias, size_t N, size_t C,
                    size_t OC) {
  hir::nn::matmul_forward<T>(hir::cpu, s(out), s(inp), s(weight), s(bias), N, C, OC);
}
template <class T>
void matmul_backward(vec<T>& dinp, vec<T>& dweight, vec<T>& dbias, const vec<T>& dout, const vec<T>& inp,
                     const vec<T>& weight, size_t N, size_t C, size_t OC) {
  hir::nn::matmul_backward<T>(hir::cpu, s(dinp), s(dweight), s(dbias), s(dout), s(inp), s(weight), N, C, OC);
}
template <class T>
void attention_forward(vec<T>& out, vec<T>& att, const vec<T>& qkv, size_t B, size_t Tn, size_t C, size_t H) {
  hir::nn::attention_forward<T>(hir::cpu, s(out), s(att), s(qkv), B, Tn, C, H);
}
template <class T>
void attention_backward(vec<T>& dqkv, vec<T>& datt, const vec<T>& dout, const vec<T>& qkv, const vec<T>& att, size_t B,
                        size_t Tn, size_t C, size_t H) {
  hir::nn::attention_backward<T>(hir::cpu, s(dqkv), s(datt), s(dout), s(qkv), s(att), B, Tn, C, H);
}
template <class T>
void gelu_forward(vec<T>& out, const vec<T>& inp, size_t N) {
  hir::nn::gelu_forward<T>(hir::cpu, s(out), s(inp), N);
}
template <class T>
void gelu_backward(vec<T>& dinp, const vec<T>& inp, const vec<T>& dout, size_t N, bool in_place) {
  if (in_place)
    hir::nn::gelu_backward<T>(hir::cpu, s(dinp), s(inp), s(dinp), N);
  else
    hir::nn::gelu_backward<T>(hir::cpu, s(dinp), s(inp), s(dout), N);
}
template <class T>
void residual_forward(vec<T>& out, const vec<T>& a, const vec<T>& b, size_t N, bool in_place) {
  if (in_place)
    hir::nn::residual_forward<T>(hir::cpu, s(out), s(out), s(b), N);
  else
    hir::nn::residual_forward<T>(hir::cpu, s(out), s(a), s(b), N);
}
template <class T>
void logp_entropy_forward(vec<T>& logp, vec<T>& entropy, vec<T>& lse, const vec<T>& logits, const vec<token_t>& targets,
                          size_t N, size_t V) {
  hir::nn::logp_entropy_forward<T>(hir::cpu, s(logp), s(entropy), s(lse), s(logits), s(targets), N, V);
}
template <class T>
void logp_entropy_backward(vec<T>& dlogits, const vec<T>& logits, const vec<T>& lse, const vec<T>& entropy,
                           const vec<token_t>& targets, const vec<T>& dlogp, const vec<T>& dentropy, size_t N,
                           size_t V) {
  hir::nn::logp_entropy_backward<T>(hir::cpu, s(dlogits), s(logits), s(lse), s(entropy), s(targets), s(dlogp),
                                    s(dentropy), N, V);
}
template <class T>
double clip_grad_norm(vec<T>& grads, double max_norm) {
  return hir::nn::clip_grad_norm(hir::cpu, s(grads), max_norm);
}
template <class T>
void adamw_update(const hir::nn::parameter_layout& layout, vec<T>& params, const vec<T>& grads, vec<T>& m, vec<T>& v,
                  const hir::nn::adamw_options& opt, std::uint64_t step, double lr) {
  hir::nn::adamw_update(hir::cpu, layout, s(params), s(grads), s(m), s(v), opt, step, lr);
}

template <class T>
model_run<T> run_model(const model_case<T>& c) {
  model_run<T> r;
  const auto copy = [](hir::span<const T> x) { return vec<T>(x.begin(), x.end()); };
  {
    hir::nn::model<T> fresh(c.cfg, c.max_batch, c.max_seq_len);
    fresh.init_parameters(c.init_seed);
    r.init = copy(fresh.parameters());
  }
  hir::nn::model<T> m(c.cfg, c.max_batch, c.max_seq_len);
  std::copy(c.params.begin(), c.params.end(), m.parameters().begin());
  m.forward(c.tokens, c.targets, c.B, c.Tn);
  r.logits = copy(m.logits());
  r.logp = copy(m.logp());
  r.entropy = copy(m.entropy());
  m.zero_grad();
  m.backward(c.dlogp, c.dentropy);
  r.grads_policy = copy(m.gradients());
  m.zero_grad();
  vec<T> scratch(c.B * c.Tn);
  r.ce_loss = static_cast<double>(m.backward_cross_entropy(c.mask, s(scratch), c.denominator));
  r.grads_ce = copy(m.gradients());
  r.ce_scratch = scratch;

  hir::nn::adamw_state<T> opt(m.params_layout());
  for (size_t step = 0; step < c.steps; ++step) {
    m.forward(c.tokens, c.targets, c.B, c.Tn);
    m.zero_grad();
    r.step_loss.push_back(static_cast<double>(m.backward_cross_entropy(c.mask, s(scratch))));
    r.step_norm.push_back(hir::nn::clip_grad_norm(hir::cpu, m.gradients(), c.clip));
    opt.update(hir::cpu, m.parameters(), m.gradients(), c.adamw, c.schedule.at(opt.step()));
  }
  r.final_params = copy(m.parameters());
  r.final_m = copy(opt.m());
  r.final_v = copy(opt.v());
  return r;
}

template <class T>
generation_run<T> generate(const hir::nn::transformer_config& cfg, const vec<T>& params, size_t max_batch,
                           size_t max_len, const vec<token_t>& prompts, const vec<size_t>& prompt_lengths,
                           const vec<std::uint64_t>& sequence_ids, size_t B, size_t P,
                           const hir::nn::generation_options& opt) {
  hir::nn::model<T> m(cfg, 1, cfg.context);
  hir::detail::check_size("nn_cpu::generate", "params.size()", params.size(), "parameters", m.parameters().size());
  std::copy(params.begin(), params.end(), m.parameters().begin());
  const size_t N = opt.max_new_tokens;
  generation_run<T> r;
  r.tokens.assign(B * N, token_t(-99));
  r.logp.assign(B * N, T(-99));
  r.entropy.assign(B * N, T(-99));
  r.lengths.assign(B, size_t(99));
  hir::nn::generator<T> gen(cfg, max_batch, max_len);
  gen.generate(m, prompts, prompt_lengths, sequence_ids, B, P, opt, s(r.tokens), s(r.logp), s(r.entropy), s(r.lengths));
  return r;
}

#define HIR_NN_CPU_INSTANTIATE(T)                                                                                      \
  template void embedding_forward<T>(vec<T>&, const vec<token_t>&, const vec<T>&, const vec<T>&, size_t, size_t,       \
                                     size_t, size_t);                                                                  \
  template void embedding_backward<T>(vec<T>&, vec<T>&, const vec<T>&, const vec<token_t>&, size_t, size_t, size_t);   \
  template void layernorm_forward<T>(vec<T>&, vec<T>&, vec<T>&, const vec<T>&, const vec<T>&, const vec<T>&, size_t,   \
                                     size_t);                                                                          \
  template void layernorm_backward<T>(vec<T>&, vec<T>&, vec<T>&, const vec<T>&, const vec<T>&, const vec<T>&,          \
                                      const vec<T>&, const vec<T>&, size_t, size_t);                                   \
  template void matmul_forward<T>(vec<T>&, const vec<T>&, const vec<T>&, const vec<T>&, size_t, size_t, size_t);       \
  template void matmul_backward<T>(vec<T>&, vec<T>&, vec<T>&, const vec<T>&, const vec<T>&, const vec<T>&, size_t,     \
                                   size_t, size_t);                                                                    \
  template void attention_forward<T>(vec<T>&, vec<T>&, const vec<T>&, size_t, size_t, size_t, size_t);                 \
  template void attention_backward<T>(vec<T>&, vec<T>&, const vec<T>&, const vec<T>&, const vec<T>&, size_t, size_t,   \
                                      size_t, size_t);                                                                 \
  template void gelu_forward<T>(vec<T>&, const vec<T>&, size_t);                                                       \
  template void gelu_backward<T>(vec<T>&, const vec<T>&, const vec<T>&, size_t, bool);                                 \
  template void residual_forward<T>(vec<T>&, const vec<T>&, const vec<T>&, size_t, bool);                              \
  template void logp_entropy_forward<T>(vec<T>&, vec<T>&, vec<T>&, const vec<T>&, const vec<token_t>&, size_t,         \
                                        size_t);                                                                       \
  template void logp_entropy_backward<T>(vec<T>&, const vec<T>&, const vec<T>&, const vec<T>&, const vec<token_t>&,    \
                                         const vec<T>&, const vec<T>&, size_t, size_t);                                \
  template double clip_grad_norm<T>(vec<T>&, double);                                                                  \
  template void adamw_update<T>(const hir::nn::parameter_layout&, vec<T>&, const vec<T>&, vec<T>&, vec<T>&,            \
                                const hir::nn::adamw_options&, std::uint64_t, double);                                 \
  template model_run<T> run_model<T>(const model_case<T>&);                                                            \
  template generation_run<T> generate<T>(const hir::nn::transformer_config&, const vec<T>&, size_t, size_t,            \
                                         const vec<token_t>&, const vec<size_t>&, const vec<std::uint64_t>&, size_t,   \
                                         size_t, const hir::nn::generation_options&);

HIR_NN_CPU_INSTANTIATE(float)
HIR_NN_CPU_INSTANTIATE(double)

} // namespace hir::test::nn_cpu
