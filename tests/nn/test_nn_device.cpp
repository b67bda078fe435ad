// SPDX-License-Identifier: Apache-2.0
// hir::nn on the device backend against the CPU backend on the same random inputs (the CPU side runs in
// nn_cpu_reference.cpp, a translation unit of its own, so this one — nvcc's in CUDA builds — never sees Eigen):
// every layer's forward and backward in float and double over several shapes whose B·T is a multiple of nothing in
// particular (accumulating outputs pre-filled, in-place calls, targets without a target, dL/dentropy with zeros),
// the layers' error messages and "nothing written" on bad input; AdamW and clipping; and the whole model — logits,
// log-probs, entropies, both backward entry points' full gradients, GPT-2 initialization, and five AdamW steps with
// clipping and a warm-up + cosine schedule from identical parameters and inputs, with a workspace that serves every
// step after the first without a new allocation. Tolerances are on max|device − CPU| / max|CPU| per tensor and are
// listed (with the values measured on Thrust's CPP and OMP systems) in docs/transformer.md, "Device backend".
#include <hir/nn/device.hpp> // first: Thrust's config decides HIR_DEVICE_IS_CUDA

#include "nn_cpu_reference.hpp"
#include "nn_test_util.hpp"
#include "support/compare.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <thrust/copy.h>
#include <thrust/device_ptr.h>
#include <thrust/device_vector.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#if defined(EIGEN_WORLD_VERSION)
#  error "Eigen must not reach the device test's translation unit (the CPU side is nn_cpu_reference.cpp)"
#endif

namespace {

namespace ref = hir::test::nn_cpu;
using hir::nn::token_t;
using device_tag = hir::backend::device::tag_t;

template <class T>
using dvec = thrust::device_vector<T>;
template <class T>
dvec<T> up(const std::vector<T>& v) {
  return dvec<T>(v.begin(), v.end());
}
template <class T>
std::vector<T> down(const dvec<T>& v) {
  return hir::to_host(v);
}
template <class T>
hir::span<T, hir::device_space> dv(dvec<T>& v) {
  return hir::view(v);
}
template <class T>
hir::span<const T, hir::device_space> dc(const dvec<T>& v) {
  return hir::view(v);
}

/// max|dev − cpu| / max|cpu|: the error relative to the tensor's scale (1e300 on a size mismatch).
template <class T>
double scaled_err(const std::vector<T>& dev, const std::vector<T>& cpu) {
  if (dev.size() != cpu.size())
    return 1e300;
  double diff = 0.0, scale = 1e-300;
  for (std::size_t i = 0; i < cpu.size(); ++i) {
    const double a = static_cast<double>(dev[i]), e = static_cast<double>(cpu[i]);
    diff = std::max(diff, std::fabs(a - e));
    scale = std::max(scale, std::fabs(e));
    if (a != a)
      return 1e300; // NaN
  }
  return diff / scale;
}

/// The worst scaled error seen per check name and scalar type, printed when the program ends (the figures quoted in
/// docs/transformer.md; ctest shows them with --output-on-failure or -V).
struct worst_error_table {
  std::map<std::string, double> worst;
  ~worst_error_table() {
    if (worst.empty())
      return;
    std::printf("worst max|device - cpu| / max|cpu| per check:\n");
    for (const auto& [name, err] : worst)
      std::printf("  %-62s %.3g\n", name.c_str(), err);
  }
};
std::map<std::string, double>& worst_errors() {
  static worst_error_table t;
  return t.worst;
}

template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

/// Tolerances of the scaled error. Element-wise and row-wise layers evaluate the CPU's formulas in another order
/// (and, on CUDA, with other exp/tanh and FMA contraction); GEMM-based outputs sum K products in another order.
template <class T>
struct tol {
  static constexpr bool f = std::is_same_v<T, float>;
  static constexpr double elementwise = f ? 2e-5 : 1e-13;     ///< embedding, layernorm, gelu, residual, output head
  static constexpr double gemm = f ? 2e-5 : 1e-12;            ///< matmul, attention
  static constexpr double model = f ? 1e-4 : 1e-10;           ///< whole-model outputs and gradients
  static constexpr double training = f ? 2e-4 : 1e-9;         ///< after 5 AdamW steps: losses, norms, moments
  static constexpr double training_params = f ? 1e-5 : 1e-12; ///< final parameters (all but 0.2 % of them)
};

#define HIR_CHECK_DEVICE(name, T, dev, cpu, tolerance)                                                                 \
  do {                                                                                                                 \
    const double hir_e_ = scaled_err((dev), (cpu));                                                                    \
    const std::string hir_k_ = std::string(name) + " (" + type_name<T>() + ")";                                        \
    double& hir_w_ = worst_errors()[hir_k_];                                                                           \
    hir_w_ = std::max(hir_w_, hir_e_);                                                                                 \
    INFO(hir_k_ << ": max|device - cpu| / max|cpu| = " << hir_e_ << ", tolerance " << (tolerance));                    \
    CHECK(hir_e_ <= (tolerance));                                                                                      \
  } while (0)

template <class T>
std::vector<T> uniform(std::mt19937_64& rng, std::size_t n, double lo = -1.0, double hi = 1.0) {
  return hir::test::nn::uniform<T>(rng, n, lo, hi);
}

struct shape {
  std::size_t B, Tn, C, H, V;
};
// B·T = 1, 21, 34, 15; head sizes 4, 4, 5, 4; vocabularies that divide nothing.
constexpr shape shapes[] = {{1, 1, 4, 1, 5}, {3, 7, 12, 3, 13}, {2, 17, 20, 4, 37}, {5, 3, 8, 2, 9}};

} // namespace

TEST_CASE_TEMPLATE("nn device layers: embedding, layernorm, gelu, residual match the CPU layers", T, float, double) {
  std::mt19937_64 rng(hir::test::seed(301));
  for (const shape& sh : shapes) {
    const std::size_t B = sh.B, Tn = sh.Tn, C = sh.C, V = sh.V, N = B * Tn, P = Tn + 2, off = 1;
    CAPTURE(B);
    CAPTURE(Tn);
    CAPTURE(C);
    // embedding: forward, and a backward that adds into pre-filled gradients (repeated tokens)
    const auto tok = hir::test::nn::tokens(rng, N, V);
    const auto wte = uniform<T>(rng, V * C), wpe = uniform<T>(rng, P * C);
    std::vector<T> out_c(N * C);
    ref::embedding_forward(out_c, tok, wte, wpe, B, Tn, C, off);
    dvec<T> out_d(N * C), wte_d = up(wte), wpe_d = up(wpe);
    const dvec<token_t> tok_d = up(tok);
    hir::nn::embedding_forward(hir::device, dv(out_d), dc(tok_d), dc(wte_d), dc(wpe_d), B, Tn, C, off);
    HIR_CHECK_DEVICE("embedding_forward", T, down(out_d), out_c, tol<T>::elementwise);
    const auto dout = uniform<T>(rng, N * C);
    auto gwte_c = uniform<T>(rng, V * C), gwpe_c = uniform<T>(rng, P * C);
    dvec<T> gwte_d = up(gwte_c), gwpe_d = up(gwpe_c), dout_d = up(dout);
    ref::embedding_backward(gwte_c, gwpe_c, dout, tok, B, Tn, C);
    hir::nn::embedding_backward(hir::device, dv(gwte_d), dv(gwpe_d), dc(dout_d), dc(tok_d), B, Tn, C);
    HIR_CHECK_DEVICE("embedding_backward dwte", T, down(gwte_d), gwte_c, tol<T>::elementwise);
    HIR_CHECK_DEVICE("embedding_backward dwpe", T, down(gwpe_d), gwpe_c, tol<T>::elementwise);

    // layernorm: forward (scaled, shifted rows), backward adding into a pre-filled dinp and parameter gradients
    const auto x = uniform<T>(rng, N * C, -2.0, 3.0), w = uniform<T>(rng, C, 0.5, 1.5), b = uniform<T>(rng, C);
    std::vector<T> ln_c(N * C), mean_c(N), rstd_c(N);
    ref::layernorm_forward(ln_c, mean_c, rstd_c, x, w, b, N, C);
    dvec<T> ln_d(N * C), mean_d(N), rstd_d(N), x_d = up(x), w_d = up(w), b_d = up(b);
    hir::nn::layernorm_forward(hir::device, dv(ln_d), dv(mean_d), dv(rstd_d), dc(x_d), dc(w_d), dc(b_d), N, C);
    HIR_CHECK_DEVICE("layernorm_forward out", T, down(ln_d), ln_c, tol<T>::elementwise);
    HIR_CHECK_DEVICE("layernorm_forward mean", T, down(mean_d), mean_c, tol<T>::elementwise);
    HIR_CHECK_DEVICE("layernorm_forward rstd", T, down(rstd_d), rstd_c, tol<T>::elementwise);
    const auto dy = uniform<T>(rng, N * C);
    auto dx_c = uniform<T>(rng, N * C), dw_c = uniform<T>(rng, C), db_c = uniform<T>(rng, C);
    dvec<T> dx_d = up(dx_c), dw_d = up(dw_c), db_d = up(db_c), dy_d = up(dy);
    ref::layernorm_backward(dx_c, dw_c, db_c, dy, x, w, mean_c, rstd_c, N, C);
    hir::nn::layernorm_backward(hir::device, dv(dx_d), dv(dw_d), dv(db_d), dc(dy_d), dc(x_d), dc(w_d), dc(mean_d),
                                dc(rstd_d), N, C);
    HIR_CHECK_DEVICE("layernorm_backward dinp", T, down(dx_d), dx_c, tol<T>::elementwise);
    HIR_CHECK_DEVICE("layernorm_backward dweight", T, down(dw_d), dw_c, tol<T>::elementwise);
    HIR_CHECK_DEVICE("layernorm_backward dbias", T, down(db_d), db_c, tol<T>::elementwise);

    // gelu over [-5, 5]; backward out of place and in place (dinp aliasing dout, as the model calls it)
    const std::size_t M = N * 4 * C;
    const auto u = uniform<T>(rng, M, -5.0, 5.0), du = uniform<T>(rng, M);
    std::vector<T> g_c(M), dg_c(M), dgi_c = du;
    ref::gelu_forward(g_c, u, M);
    ref::gelu_backward(dg_c, u, du, M, false);
    ref::gelu_backward(dgi_c, u, du, M, true);
    dvec<T> g_d(M), dg_d(M), u_d = up(u), du_d = up(du), dgi_d = up(du);
    hir::nn::gelu_forward(hir::device, dv(g_d), dc(u_d), M);
    hir::nn::gelu_backward(hir::device, dv(dg_d), dc(u_d), dc(du_d), M);
    hir::nn::gelu_backward(hir::device, dv(dgi_d), dc(u_d), dc(dgi_d), M);
    HIR_CHECK_DEVICE("gelu_forward", T, down(g_d), g_c, tol<T>::elementwise);
    HIR_CHECK_DEVICE("gelu_backward", T, down(dg_d), dg_c, tol<T>::elementwise);
    HIR_CHECK_DEVICE("gelu_backward in place", T, down(dgi_d), dgi_c, tol<T>::elementwise);
    // the in-place call computes what the out-of-place one does
    CHECK(down(dgi_d) == down(dg_d));

    // residual, out of place and in place (out aliasing a)
    std::vector<T> r_c(N * C), ri_c = x;
    ref::residual_forward(r_c, x, dy, N * C, false);
    ref::residual_forward(ri_c, x, dy, N * C, true);
    dvec<T> r_d(N * C), ri_d = up(x);
    hir::nn::residual_forward(hir::device, dv(r_d), dc(x_d), dc(dy_d), N * C);
    hir::nn::residual_forward(hir::device, dv(ri_d), dc(ri_d), dc(dy_d), N * C);
    HIR_CHECK_DEVICE("residual_forward", T, down(r_d), r_c, 0.0); // one rounding of the same sum: identical
    HIR_CHECK_DEVICE("residual_forward in place", T, down(ri_d), ri_c, 0.0);
  }
}

TEST_CASE_TEMPLATE("nn device layers: matmul and attention match the CPU layers", T, float, double) {
  std::mt19937_64 rng(hir::test::seed(302));
  for (const shape& sh : shapes) {
    const std::size_t B = sh.B, Tn = sh.Tn, C = sh.C, H = sh.H, N = B * Tn, OC = 3 * C + 1;
    CAPTURE(B);
    CAPTURE(Tn);
    CAPTURE(C);
    // matmul forward with and without bias; OC = 3C + 1 so no dimension is a multiple of another
    const auto x = uniform<T>(rng, N * C), w = uniform<T>(rng, OC * C), bias = uniform<T>(rng, OC);
    std::vector<T> y_c(N * OC), yn_c(N * OC);
    ref::matmul_forward(y_c, x, w, bias, N, C, OC);
    ref::matmul_forward(yn_c, x, w, std::vector<T>(), N, C, OC);
    dvec<T> y_d(N * OC), yn_d(N * OC, T(7)), x_d = up(x), w_d = up(w), bias_d = up(bias);
    hir::nn::matmul_forward(hir::device, dv(y_d), dc(x_d), dc(w_d), dc(bias_d), N, C, OC);
    hir::nn::matmul_forward(hir::device, dv(yn_d), dc(x_d), dc(w_d), hir::span<const T, hir::device_space>(), N, C, OC);
    HIR_CHECK_DEVICE("matmul_forward", T, down(y_d), y_c, tol<T>::gemm);
    HIR_CHECK_DEVICE("matmul_forward no bias", T, down(yn_d), yn_c, tol<T>::gemm);
    // backward: dinp overwritten (pre-filled with garbage), dweight and dbias accumulate (pre-filled)
    const auto dy = uniform<T>(rng, N * OC);
    std::vector<T> dx_c(N * C, T(-3));
    auto dw_c = uniform<T>(rng, OC * C), db_c = uniform<T>(rng, OC);
    dvec<T> dx_d(N * C, T(5)), dw_d = up(dw_c), db_d = up(db_c), dy_d = up(dy);
    auto dw2_c = dw_c;
    dvec<T> dw2_d = up(dw_c);
    ref::matmul_backward(dx_c, dw_c, db_c, dy, x, w, N, C, OC);
    hir::nn::matmul_backward(hir::device, dv(dx_d), dv(dw_d), dv(db_d), dc(dy_d), dc(x_d), dc(w_d), N, C, OC);
    HIR_CHECK_DEVICE("matmul_backward dinp", T, down(dx_d), dx_c, tol<T>::gemm);
    HIR_CHECK_DEVICE("matmul_backward dweight", T, down(dw_d), dw_c, tol<T>::gemm);
    HIR_CHECK_DEVICE("matmul_backward dbias", T, down(db_d), db_c, tol<T>::elementwise);
    // without dinp and dbias (the LM head's call)
    std::vector<T> none;
    ref::matmul_backward(none, dw2_c, none, dy, x, w, N, C, OC);
    hir::nn::matmul_backward(hir::device, hir::span<T, hir::device_space>(), dv(dw2_d),
                             hir::span<T, hir::device_space>(), dc(dy_d), dc(x_d), dc(w_d), N, C, OC);
    HIR_CHECK_DEVICE("matmul_backward dweight only", T, down(dw2_d), dw2_c, tol<T>::gemm);

    // attention: scores of O(1) so the softmax is neither flat nor one-hot; outputs and scratch pre-filled
    const auto qkv = uniform<T>(rng, N * 3 * C, -1.5, 1.5);
    std::vector<T> o_c(N * C), att_c(B * H * Tn * Tn, T(9));
    ref::attention_forward(o_c, att_c, qkv, B, Tn, C, H);
    dvec<T> o_d(N * C, T(4)), att_d(B * H * Tn * Tn, T(-9)), qkv_d = up(qkv);
    hir::nn::attention_forward(hir::device, dv(o_d), dv(att_d), dc(qkv_d), B, Tn, C, H);
    HIR_CHECK_DEVICE("attention_forward out", T, down(o_d), o_c, tol<T>::gemm);
    HIR_CHECK_DEVICE("attention_forward att", T, down(att_d), att_c, tol<T>::gemm);
    const auto dout = uniform<T>(rng, N * C);
    std::vector<T> dqkv_c(N * 3 * C, T(2)), datt_c(B * H * Tn * Tn, T(1));
    ref::attention_backward(dqkv_c, datt_c, dout, qkv, att_c, B, Tn, C, H);
    dvec<T> dqkv_d(N * 3 * C, T(-2)), datt_d(B * H * Tn * Tn, T(-1)), dout_d = up(dout);
    hir::nn::attention_backward(hir::device, dv(dqkv_d), dv(datt_d), dc(dout_d), dc(qkv_d), dc(att_d), B, Tn, C, H);
    HIR_CHECK_DEVICE("attention_backward dqkv", T, down(dqkv_d), dqkv_c, tol<T>::gemm);
  }
}

TEST_CASE_TEMPLATE("nn device layers: log-probabilities and entropies match the CPU layers", T, float, double) {
  std::mt19937_64 rng(hir::test::seed(303));
  for (const shape& sh : shapes) {
    const std::size_t N = sh.B * sh.Tn, V = sh.V;
    CAPTURE(N);
    CAPTURE(V);
    const auto z = uniform<T>(rng, N * V, -3.0, 3.0);
    auto tgt = hir::test::nn::tokens(rng, N, V);
    for (std::size_t i = 0; i < N; i += 3)
      tgt[i] = -1 - static_cast<token_t>(i % 2); // no target (-1 or -2)
    std::vector<T> lp_c(N), h_c(N), lse_c(N);
    ref::logp_entropy_forward(lp_c, h_c, lse_c, z, tgt, N, V);
    dvec<T> lp_d(N), h_d(N), lse_d(N), z_d = up(z);
    const dvec<token_t> tgt_d = up(tgt);
    hir::nn::logp_entropy_forward(hir::device, dv(lp_d), dv(h_d), dv(lse_d), dc(z_d), dc(tgt_d), N, V);
    HIR_CHECK_DEVICE("logp_entropy_forward logp", T, down(lp_d), lp_c, tol<T>::elementwise);
    HIR_CHECK_DEVICE("logp_entropy_forward entropy", T, down(h_d), h_c, tol<T>::elementwise);
    HIR_CHECK_DEVICE("logp_entropy_forward lse", T, down(lse_d), lse_c, tol<T>::elementwise);
    for (std::size_t i = 0; i < N; i += 3)
      CHECK(down(lp_d)[i] == T(0));
    // backward with dL/dentropy (zero in some rows: the h = 0 branch) and without
    const auto g = uniform<T>(rng, N);
    auto hgrad = uniform<T>(rng, N);
    for (std::size_t i = 1; i < N; i += 4)
      hgrad[i] = T(0);
    std::vector<T> dz_c(N * V), dz0_c(N * V);
    ref::logp_entropy_backward(dz_c, z, lse_c, h_c, tgt, g, hgrad, N, V);
    ref::logp_entropy_backward(dz0_c, z, lse_c, h_c, tgt, g, std::vector<T>(), N, V);
    dvec<T> dz_d(N * V, T(3)), dz0_d(N * V, T(3)), g_d = up(g), hg_d = up(hgrad);
    hir::nn::logp_entropy_backward(hir::device, dv(dz_d), dc(z_d), dc(lse_d), dc(h_d), dc(tgt_d), dc(g_d), dc(hg_d), N,
                                   V);
    hir::nn::logp_entropy_backward(hir::device, dv(dz0_d), dc(z_d), dc(lse_d), dc(h_d), dc(tgt_d), dc(g_d),
                                   hir::span<const T, hir::device_space>(), N, V);
    HIR_CHECK_DEVICE("logp_entropy_backward", T, down(dz_d), dz_c, tol<T>::elementwise);
    HIR_CHECK_DEVICE("logp_entropy_backward no dentropy", T, down(dz0_d), dz0_c, tol<T>::elementwise);
  }
}

TEST_CASE("nn device layers: bad input throws the CPU's message before writing") {
  using T = float;
  const std::size_t B = 2, Tn = 3, C = 4, V = 5, N = B * Tn;
  std::vector<token_t> tok = {0, 1, 2, 3, 4, 0};
  const std::vector<T> wte(V * C, 1.f), wpe(Tn * C, 1.f);
  std::vector<T> out_c(N * C, 7.f);
  dvec<T> out_d(N * C, 7.f), wte_d = up(wte), wpe_d = up(wpe);
  const auto dev_embed = [&](const std::vector<token_t>& t, std::size_t off) {
    const dvec<token_t> t_d = up(t);
    hir::nn::embedding_forward(hir::device, dv(out_d), dc(t_d), dc(wte_d), dc(wpe_d), B, Tn, C, off);
  };
  for (const token_t bad : {token_t(5), token_t(-1), token_t(1000)}) {
    tok[4] = bad;
    const std::string cpu = hir::test::what_of([&] { ref::embedding_forward(out_c, tok, wte, wpe, B, Tn, C, 0); });
    const std::string dev = hir::test::what_of([&] { dev_embed(tok, 0); });
    CHECK(!cpu.empty());
    CHECK(dev == cpu);
  }
  tok[4] = 4;
  CHECK(hir::test::what_of([&] { dev_embed(tok, 1); }) ==
        hir::test::what_of([&] { ref::embedding_forward(out_c, tok, wte, wpe, B, Tn, C, 1); }));
  CHECK(down(out_d) == std::vector<T>(N * C, 7.f)); // nothing written by the failed calls
  CHECK(out_c == std::vector<T>(N * C, 7.f));

  // a target at or above V; a negative one is allowed
  std::vector<token_t> tgt = {0, -1, 4, -7, 5, 1};
  const std::vector<T> z(N * V, 0.5f);
  std::vector<T> a_c(N, 7.f), b_c(N, 7.f), c_c(N, 7.f);
  dvec<T> a_d(N, 7.f), b_d(N, 7.f), c_d(N, 7.f), z_d = up(z);
  const dvec<token_t> tgt_d = up(tgt);
  const std::string cpu = hir::test::what_of([&] { ref::logp_entropy_forward(a_c, b_c, c_c, z, tgt, N, V); });
  const std::string dev = hir::test::what_of(
      [&] { hir::nn::logp_entropy_forward(hir::device, dv(a_d), dv(b_d), dv(c_d), dc(z_d), dc(tgt_d), N, V); });
  CHECK(cpu.find("targets[4] = 5") != std::string::npos);
  CHECK(dev == cpu);
  CHECK(down(a_d) == std::vector<T>(N, 7.f));

  // sizes and head counts
  dvec<T> att_d(B * 3 * Tn * Tn), qkv_d(N * 3 * C), o_d(N * C);
  std::vector<T> att_c(B * 3 * Tn * Tn), qkv_c(N * 3 * C), o_c(N * C);
  CHECK(hir::test::what_of([&] {
          hir::nn::attention_forward(hir::device, dv(o_d), dv(att_d), dc(qkv_d), B, Tn, C, 3);
        }) == hir::test::what_of([&] { ref::attention_forward(o_c, att_c, qkv_c, B, Tn, C, 3); }));
  const std::string short_dev = hir::test::what_of([&] {
    hir::nn::matmul_forward(hir::device, dv(o_d), dc(qkv_d), dc(wte_d), hir::span<const T, hir::device_space>(), N, C,
                            C);
  });
  CHECK(short_dev.find("hir::nn::matmul_forward: inp.size() = 72 does not match N*C = 24") == 0);
}

TEST_CASE_TEMPLATE("nn device AdamW and clipping match the CPU", T, float, double) {
  std::mt19937_64 rng(hir::test::seed(304));
  hir::nn::transformer_config cfg;
  cfg.vocab = 13;
  cfg.context = 6;
  cfg.channels = 12;
  cfg.layers = 2;
  cfg.heads = 3;
  const hir::nn::parameter_layout layout(cfg);
  // padding between tensors holds a sentinel that no backend may touch
  std::vector<T> p_c(layout.total, T(42)), g_c(layout.total, T(42));
  for (const auto& t : layout.tensors) {
    const auto pv = uniform<T>(rng, t.size), gv = uniform<T>(rng, t.size, -3.0, 3.0);
    std::copy(pv.begin(), pv.end(), p_c.begin() + static_cast<std::ptrdiff_t>(t.offset));
    std::copy(gv.begin(), gv.end(), g_c.begin() + static_cast<std::ptrdiff_t>(t.offset));
  }
  std::vector<T> m_c(layout.total), v_c(layout.total);
  dvec<T> p_d = up(p_c), g_d = up(g_c), m_d(layout.total), v_d(layout.total);
  for (const bool decay_all : {false, true}) {
    hir::nn::adamw_options opt;
    opt.decay_all = decay_all;
    for (std::uint64_t step = 1; step <= 3; ++step) {
      const double lr = 1e-2 / static_cast<double>(step);
      ref::adamw_update(layout, p_c, g_c, m_c, v_c, opt, step, lr);
      hir::nn::adamw_update(hir::device, layout, dv(p_d), dc(g_d), dv(m_d), dv(v_d), opt, step, lr);
    }
  }
  HIR_CHECK_DEVICE("adamw_update params", T, down(p_d), p_c, tol<T>::elementwise);
  HIR_CHECK_DEVICE("adamw_update m", T, down(m_d), m_c, tol<T>::elementwise);
  HIR_CHECK_DEVICE("adamw_update v", T, down(v_d), v_c, tol<T>::elementwise);
  const auto p_after = down(p_d);
  CHECK(std::count(p_c.begin(), p_c.end(), T(42)) == static_cast<std::ptrdiff_t>(layout.total - layout.count));
  CHECK(std::count(p_after.begin(), p_after.end(), T(42)) == static_cast<std::ptrdiff_t>(layout.total - layout.count));

  // clipping: below the norm (scales), above it (leaves the gradients alone)
  for (const double max_norm : {1.0, 1e6}) {
    auto gc = g_c;
    dvec<T> gd = up(g_c);
    const double n_c = ref::clip_grad_norm(gc, max_norm);
    const double n_d = hir::nn::clip_grad_norm(hir::device, dv(gd), max_norm);
    CHECK(n_d == doctest::Approx(n_c).epsilon(std::is_same_v<T, float> ? 1e-6 : 1e-12));
    HIR_CHECK_DEVICE("clip_grad_norm gradients", T, down(gd), gc, tol<T>::elementwise);
    CHECK(hir::nn::global_grad_norm(hir::device, dc(gd)) <= std::max(max_norm, n_c) * (1 + 1e-6));
  }

  // errors: the CPU's messages, nothing written
  const auto before = down(p_d);
  hir::nn::adamw_options opt;
  CHECK(hir::test::what_of([&] {
          hir::nn::adamw_update(hir::device, layout, dv(p_d), dc(g_d), dv(m_d), dv(v_d), opt, 0, 1e-3);
        }) == hir::test::what_of([&] { ref::adamw_update(layout, p_c, g_c, m_c, v_c, opt, 0, 1e-3); }));
  dvec<T> short_m(layout.total - 1);
  CHECK(hir::test::what_of([&] {
          hir::nn::adamw_update(hir::device, layout, dv(p_d), dc(g_d), dv(short_m), dv(v_d), opt, 1, 1e-3);
        }).find("m.size()") != std::string::npos);
  CHECK(down(p_d) == before);
  CHECK(hir::test::what_of([&] { hir::nn::clip_grad_norm(hir::device, dv(g_d), 0.0); }) ==
        hir::test::what_of([&] { ref::clip_grad_norm(g_c, 0.0); }));
}

namespace {

/// The device side of ref::run_model: the same calls on hir::nn::model<T, device_tag>, with a workspace for Thrust's
/// temporaries; `extra_allocations` receives the workspace allocations made by training steps 2..n.
template <class T>
ref::model_run<T> run_device_model(const ref::model_case<T>& c, std::size_t& extra_allocations) {
  using model_t = hir::nn::model<T, device_tag>;
  ref::model_run<T> r;
  {
    model_t fresh(c.cfg, c.max_batch, c.max_seq_len);
    fresh.init_parameters(c.init_seed);
    r.init = hir::to_host(fresh.parameters());
  }
  hir::device_workspace ws;
  const device_tag be = hir::device.with(ws);
  model_t m(c.cfg, c.max_batch, c.max_seq_len, be);
  thrust::copy(c.params.begin(), c.params.end(), thrust::device_pointer_cast(m.parameters().data()));
  m.forward(c.tokens, c.targets, c.B, c.Tn);
  r.logits = hir::to_host(m.logits());
  r.logp = hir::to_host(m.logp());
  r.entropy = hir::to_host(m.entropy());
  const dvec<T> dlogp = up(c.dlogp), dentropy = up(c.dentropy), mask = up(c.mask);
  m.zero_grad();
  m.backward(dc(dlogp), dc(dentropy));
  r.grads_policy = hir::to_host(m.gradients());
  m.zero_grad();
  dvec<T> scratch(c.B * c.Tn);
  r.ce_loss = static_cast<double>(m.backward_cross_entropy(dc(mask), dv(scratch), c.denominator));
  r.grads_ce = hir::to_host(m.gradients());
  r.ce_scratch = down(scratch);

  hir::nn::adamw_state<T, device_tag> opt(m.params_layout());
  std::size_t after_first = 0;
  for (std::size_t step = 0; step < c.steps; ++step) {
    m.forward(c.tokens, c.targets, c.B, c.Tn);
    m.zero_grad();
    r.step_loss.push_back(static_cast<double>(m.backward_cross_entropy(dc(mask), dv(scratch))));
    r.step_norm.push_back(hir::nn::clip_grad_norm(m.backend_tag(), m.gradients(), c.clip));
    opt.update(m.backend_tag(), m.parameters(), m.gradients(), c.adamw, c.schedule.at(opt.step()));
    if (step == 0)
      after_first = ws.allocations();
  }
  extra_allocations = ws.allocations() - after_first;
  r.final_params = hir::to_host(m.parameters());
  r.final_m = hir::to_host(opt.m());
  r.final_v = hir::to_host(opt.v());
  return r;
}

/// `x` without the key thirds of qkv_bias: their true gradient is zero (softmax ignores q·b_k), so AdamW turns
/// round-off into ±lr steps there (the PyTorch comparison excludes them too).
template <class T>
std::vector<T> without_key_bias(const std::vector<T>& x, const hir::nn::parameter_layout& pl) {
  const auto& qb = pl[hir::nn::param::qkv_bias];
  const std::size_t C = pl.config.channels;
  std::vector<T> out;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const bool key_bias = i >= qb.offset && i < qb.offset + qb.size && (i - qb.offset) % (3 * C) / C == 1;
    if (!key_bias)
      out.push_back(x[i]);
  }
  return out;
}

} // namespace

TEST_CASE_TEMPLATE("nn device model: outputs, both backward entry points and 5 AdamW steps match the CPU model", T,
                   float, double) {
  std::mt19937_64 rng(hir::test::seed(305));
  ref::model_case<T> c;
  c.cfg.vocab = 37;
  c.cfg.context = 16;
  c.cfg.channels = 32;
  c.cfg.layers = 2;
  c.cfg.heads = 4;
  c.max_batch = 4;
  c.max_seq_len = 16;
  c.B = 3; // smaller than the allocated maxima
  c.Tn = 11;
  const hir::nn::parameter_layout pl(c.cfg);
  const std::size_t BT = c.B * c.Tn;
  // Parameters of GPT-2 scale with non-zero biases and LayerNorm weights around 1.
  c.params = uniform<T>(rng, pl.total, -0.15, 0.15);
  for (auto p : {hir::nn::param::ln1_weight, hir::nn::param::ln2_weight, hir::nn::param::lnf_weight})
    for (std::size_t i = 0; i < pl[p].size; ++i)
      c.params[pl[p].offset + i] += T(1);
  c.tokens = hir::test::nn::tokens(rng, BT, c.cfg.vocab);
  c.targets = hir::test::nn::tokens(rng, BT, c.cfg.vocab);
  c.targets[4] = -1; // positions without a target
  c.targets[BT - 1] = -1;
  c.dlogp = uniform<T>(rng, BT);
  c.dentropy = uniform<T>(rng, BT, -0.5, 0.5);
  c.mask.assign(BT, T(1));
  for (std::size_t i = 0; i < BT; i += 5)
    c.mask[i] = T(0);
  c.denominator = 40.0;
  c.init_seed = hir::test::seed(306);
  c.schedule.kind = hir::nn::lr_schedule::cosine;
  c.schedule.lr = 3e-3;
  c.schedule.min_lr = 3e-4;
  c.schedule.warmup_steps = 2;
  c.schedule.total_steps = 5;
  c.clip = 0.5; // below the gradients' norm: clipping is active
  c.steps = 5;

  const ref::model_run<T> cpu = ref::run_model(c);
  std::size_t extra_allocations = 1;
  const ref::model_run<T> dev = run_device_model(c, extra_allocations);

  HIR_CHECK_DEVICE("model init_parameters", T, dev.init, cpu.init, (std::is_same_v<T, float> ? 1e-6 : 1e-14));
  HIR_CHECK_DEVICE("model logits", T, dev.logits, cpu.logits, tol<T>::model);
  HIR_CHECK_DEVICE("model logp", T, dev.logp, cpu.logp, tol<T>::model);
  HIR_CHECK_DEVICE("model entropy", T, dev.entropy, cpu.entropy, tol<T>::model);
  CHECK(dev.logp[4] == T(0));
  HIR_CHECK_DEVICE("model backward(dlogp, dentropy) gradients", T, dev.grads_policy, cpu.grads_policy, tol<T>::model);
  HIR_CHECK_DEVICE("model backward_cross_entropy gradients", T, dev.grads_ce, cpu.grads_ce, tol<T>::model);
  HIR_CHECK_DEVICE("model backward_cross_entropy dL/dlogp", T, dev.ce_scratch, cpu.ce_scratch, 0.0);
  CHECK(dev.ce_loss == doctest::Approx(cpu.ce_loss).epsilon(tol<T>::model));
  // every parameter tensor receives gradient (the checks above are not vacuous)
  for (const auto& t : pl.tensors) {
    double m = 0;
    for (std::size_t i = 0; i < t.size; ++i)
      m = std::max(m, std::fabs(static_cast<double>(cpu.grads_policy[t.offset + i])));
    INFO(t.name);
    CHECK(m > 0.0);
  }

  REQUIRE(dev.step_loss.size() == c.steps);
  HIR_CHECK_DEVICE("training losses", T, dev.step_loss, cpu.step_loss, tol<T>::training);
  HIR_CHECK_DEVICE("training gradient norms", T, dev.step_norm, cpu.step_norm, tol<T>::training);
  CHECK(cpu.step_loss.back() < cpu.step_loss.front()); // it trains
  CHECK(dev.step_loss.back() < dev.step_loss.front());
  for (double n : cpu.step_norm)
    CHECK(n > c.clip);
  HIR_CHECK_DEVICE("training final m (key bias excluded)", T, without_key_bias(dev.final_m, pl),
                   without_key_bias(cpu.final_m, pl), tol<T>::training);
  HIR_CHECK_DEVICE("training final v (key bias excluded)", T, without_key_bias(dev.final_v, pl),
                   without_key_bias(cpu.final_v, pl), tol<T>::training);
  // Final parameters. AdamW's step lr·m̂/(√v̂ + eps) depends on the sign, not the size, of a gradient whose size is
  // at its round-off level, so the rare element with a near-zero gradient may end up to one ±lr step per update
  // apart (always so for the key bias, whose true gradient is zero: softmax ignores q·b_k). So: every element within
  // 2·Σ lr, and all but 0.2 % of the others within the training tolerance of the scale.
  double lr_sum = 0;
  for (std::size_t s = 0; s < c.steps; ++s)
    lr_sum += c.schedule.at(s);
  const auto pd = without_key_bias(dev.final_params, pl), pc = without_key_bias(cpu.final_params, pl);
  const double scale = hir::test::max_abs(pc);
  std::size_t beyond = 0;
  for (std::size_t i = 0; i < pc.size(); ++i)
    beyond += std::fabs(static_cast<double>(pd[i]) - static_cast<double>(pc[i])) > tol<T>::training_params * scale;
  double& worst_share =
      worst_errors()[std::string("training final parameters: share beyond tolerance (") + type_name<T>() + ")"];
  worst_share = std::max(worst_share, static_cast<double>(beyond) / static_cast<double>(pc.size()));
  double& worst_params = worst_errors()[std::string("training final parameters, all but the key bias (") +
                                        type_name<T>() + ", not a check)"];
  worst_params = std::max(worst_params, scaled_err(pd, pc));
  INFO("final parameters beyond " << tol<T>::training_params << " of the scale: " << beyond << " of " << pc.size());
  CHECK(beyond <= pc.size() / 500);
  double worst_step = 0;
  for (std::size_t i = 0; i < pl.total; ++i)
    worst_step = std::max(
        worst_step, std::fabs(static_cast<double>(dev.final_params[i]) - static_cast<double>(cpu.final_params[i])));
  INFO("max |device - cpu| of the final parameters " << worst_step << ", 2·Σ lr = " << 2 * lr_sum);
  CHECK(worst_step <= 2.0 * lr_sum * (1 + 1e-6));
  // After the first step the workspace held everything Thrust's temporaries needed.
  CHECK(extra_allocations == 0);
}

TEST_CASE("nn device model: bad input throws before anything runs") {
  hir::nn::transformer_config cfg;
  cfg.vocab = 11;
  cfg.context = 8;
  cfg.channels = 8;
  cfg.layers = 1;
  cfg.heads = 2;
  hir::nn::model<float, device_tag> m(cfg, 2, 8);
  m.init_parameters(7);
  std::vector<token_t> tok(16, 1), tgt(16, 2);
  const dvec<float> g(16, 0.f);
  CHECK(hir::test::what_of([&] { m.backward(dc(g)); }) == "hir::nn::model::backward: no forward pass to differentiate");
  CHECK(hir::test::what_of([&] { m.forward(tok, tgt, 2, 9); }).find("need 0 < B <= 2 and 0 < T <= 8") !=
        std::string::npos);
  tok[3] = 11;
  CHECK(hir::test::what_of([&] { m.forward(tok, tgt, 2, 8); }) ==
        "hir::nn::model::forward: tokens[3] = 11 is outside [0, V = 11)");
  tok[3] = 1;
  tgt[4] = 11;
  CHECK(hir::test::what_of([&] { m.forward(tok, tgt, 2, 8); }) ==
        "hir::nn::model::forward: targets[4] = 11 is not below V = 11");
  tgt[4] = -1;
  m.forward(tok, tgt, 2, 8);
  CHECK(hir::to_host(m.logp())[4] == 0.f);
  const dvec<float> short_g(15), zero_mask(16, 0.f);
  dvec<float> scratch(16);
  CHECK(hir::test::what_of([&] { m.backward(dc(short_g)); }) ==
        "hir::nn::model::backward: dlogp.size() = 15 does not match B*T = 16");
  CHECK(hir::test::what_of([&] { m.backward_cross_entropy(dc(zero_mask), dv(scratch)); }) ==
        "hir::nn::model::backward_cross_entropy: the mask has no weight and no denominator was given");
  CHECK(hir::test::what_of([&] { (void)m.cross_entropy(dc(zero_mask)); }) ==
        "hir::nn::model::cross_entropy: the mask has no weight and no denominator was given");
  // gradients untouched by the failed calls
  const auto grads = hir::to_host(m.gradients());
  CHECK(std::all_of(grads.begin(), grads.end(), [](float x) { return x == 0.f; }));
}
