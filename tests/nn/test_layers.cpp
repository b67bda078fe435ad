// SPDX-License-Identifier: Apache-2.0
// hir::nn layers: every backward against central finite differences in double (loss = Σ r·out for a random r),
// every forward against a naive double loop (at sizes that split across threads, in float), and bad sizes.
#include "nn_test_util.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <hir/nn.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <random>
#include <vector>

namespace {

using hir::span;
using vec = std::vector<double>;
using hir::test::nn::numeric_grad;
using hir::test::nn::uniform;

double dot(const vec& a, const vec& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    s += a[i] * b[i];
  return s;
}

// Naive references (double, no shared code with the library).
vec ref_layernorm(const vec& x, const vec& w, const vec& b, std::size_t N, std::size_t C) {
  vec out(N * C);
  for (std::size_t i = 0; i < N; ++i) {
    double m = 0, v = 0;
    for (std::size_t c = 0; c < C; ++c)
      m += x[i * C + c];
    m /= static_cast<double>(C);
    for (std::size_t c = 0; c < C; ++c)
      v += (x[i * C + c] - m) * (x[i * C + c] - m);
    v /= static_cast<double>(C);
    for (std::size_t c = 0; c < C; ++c)
      out[i * C + c] = (x[i * C + c] - m) / std::sqrt(v + 1e-5) * w[c] + b[c];
  }
  return out;
}

vec ref_matmul(const vec& x, const vec& w, const vec& b, std::size_t N, std::size_t C, std::size_t OC) {
  vec out(N * OC);
  for (std::size_t i = 0; i < N; ++i)
    for (std::size_t o = 0; o < OC; ++o) {
      double s = b.empty() ? 0.0 : b[o];
      for (std::size_t c = 0; c < C; ++c)
        s += x[i * C + c] * w[o * C + c];
      out[i * OC + o] = s;
    }
  return out;
}

vec ref_attention(const vec& qkv, std::size_t B, std::size_t T, std::size_t C, std::size_t H) {
  const std::size_t hs = C / H;
  vec out(B * T * C, 0.0);
  for (std::size_t b = 0; b < B; ++b)
    for (std::size_t h = 0; h < H; ++h)
      for (std::size_t t = 0; t < T; ++t) {
        std::vector<double> s(t + 1);
        double mx = -1e300;
        for (std::size_t j = 0; j <= t; ++j) {
          double d = 0;
          for (std::size_t c = 0; c < hs; ++c)
            d += qkv[(b * T + t) * 3 * C + h * hs + c] * qkv[(b * T + j) * 3 * C + C + h * hs + c];
          s[j] = d / std::sqrt(static_cast<double>(hs));
          mx = std::max(mx, s[j]);
        }
        double z = 0;
        for (auto& x : s)
          z += (x = std::exp(x - mx));
        for (std::size_t j = 0; j <= t; ++j)
          for (std::size_t c = 0; c < hs; ++c)
            out[(b * T + t) * C + h * hs + c] += s[j] / z * qkv[(b * T + j) * 3 * C + 2 * C + h * hs + c];
      }
  return out;
}

template <class T>
std::vector<T> cast(const vec& v) {
  return std::vector<T>(v.begin(), v.end());
}

} // namespace

TEST_CASE("nn layers: layernorm forward and backward") {
  std::mt19937_64 rng(hir::test::seed(101));
  const std::size_t N = 5, C = 7;
  vec x = uniform(rng, N * C, -2, 2), w = uniform(rng, C, 0.5, 1.5), b = uniform(rng, C), r = uniform(rng, N * C);
  vec out(N * C), mean(N), rstd(N);
  const auto fwd = [&] {
    hir::nn::layernorm_forward<double>(hir::cpu, hir::view(out), hir::view(mean), hir::view(rstd), x, w, b, N, C);
    return dot(out, r);
  };
  fwd();
  HIR_CHECK_CLOSE(out, ref_layernorm(x, w, b, N, C), 1e-12, 1e-12);
  vec dx(N * C, 0.5), dw(C, 0.25), db(C, -0.5); // start non-zero: the backward adds
  hir::nn::layernorm_backward<double>(hir::cpu, hir::view(dx), hir::view(dw), hir::view(db), r, x, w, mean, rstd, N, C);
  for (auto& v : dx)
    v -= 0.5;
  for (auto& v : dw)
    v -= 0.25;
  for (auto& v : db)
    v += 0.5;
  HIR_CHECK_GRAD("dinp", dx, numeric_grad(x, fwd), 1e-8, 1e-6);
  HIR_CHECK_GRAD("dweight", dw, numeric_grad(w, fwd), 1e-8, 1e-6);
  HIR_CHECK_GRAD("dbias", db, numeric_grad(b, fwd), 1e-8, 1e-6);

  // Float at a size that splits across threads.
  const std::size_t N2 = 1000, C2 = 96;
  vec x2 = uniform(rng, N2 * C2, -3, 3), w2 = uniform(rng, C2), b2 = uniform(rng, C2);
  std::vector<float> o2(N2 * C2), m2(N2), s2(N2);
  hir::nn::layernorm_forward<float>(hir::cpu, hir::view(o2), hir::view(m2), hir::view(s2), cast<float>(x2),
                                    cast<float>(w2), cast<float>(b2), N2, C2);
  HIR_CHECK_CLOSE(o2, ref_layernorm(x2, w2, b2, N2, C2), 1e-4, 1e-4);

  CHECK_THROWS_AS(
      hir::nn::layernorm_forward<double>(hir::cpu, hir::view(out), hir::view(mean), hir::view(rstd), x, w, b, N, C + 1),
      hir::invalid_argument);
}

TEST_CASE("nn layers: matmul forward and backward") {
  std::mt19937_64 rng(hir::test::seed(102));
  const std::size_t N = 4, C = 6, OC = 5;
  vec x = uniform(rng, N * C), w = uniform(rng, OC * C), b = uniform(rng, OC), r = uniform(rng, N * OC);
  vec out(N * OC);
  const auto fwd = [&] {
    hir::nn::matmul_forward<double>(hir::cpu, hir::view(out), x, w, b, N, C, OC);
    return dot(out, r);
  };
  fwd();
  HIR_CHECK_CLOSE(out, ref_matmul(x, w, b, N, C, OC), 1e-12, 1e-12);
  vec dx(N * C, 7.0), dw(OC * C, 0.0), db(OC, 0.0);
  hir::nn::matmul_backward<double>(hir::cpu, hir::view(dx), hir::view(dw), hir::view(db), r, x, w, N, C, OC);
  HIR_CHECK_GRAD("dinp (overwritten)", dx, numeric_grad(x, fwd), 1e-8, 1e-6);
  HIR_CHECK_GRAD("dweight", dw, numeric_grad(w, fwd), 1e-8, 1e-6);
  HIR_CHECK_GRAD("dbias", db, numeric_grad(b, fwd), 1e-8, 1e-6);
  // Accumulation: a second backward doubles the parameter gradients.
  vec dw1 = dw;
  hir::nn::matmul_backward<double>(hir::cpu, hir::view(dx), hir::view(dw), hir::view(db), r, x, w, N, C, OC);
  for (auto& v : dw1)
    v *= 2;
  HIR_CHECK_CLOSE(dw, dw1, 1e-12, 1e-12);

  // Float, no bias, a size that splits rows and output rows across threads, against the naive product.
  const std::size_t N2 = 777, C2 = 40, OC2 = 67;
  vec x2 = uniform(rng, N2 * C2), w2 = uniform(rng, OC2 * C2), d2 = uniform(rng, N2 * OC2);
  std::vector<float> o2(N2 * OC2), dx2(N2 * C2), dw2(OC2 * C2, 0.f);
  hir::nn::matmul_forward<float>(hir::cpu, hir::view(o2), cast<float>(x2), cast<float>(w2), {}, N2, C2, OC2);
  HIR_CHECK_CLOSE(o2, ref_matmul(x2, w2, {}, N2, C2, OC2), 1e-4, 1e-4);
  hir::nn::matmul_backward<float>(hir::cpu, hir::view(dx2), hir::view(dw2), {}, cast<float>(d2), cast<float>(x2),
                                  cast<float>(w2), N2, C2, OC2);
  vec ref_dx(N2 * C2, 0.0), ref_dw(OC2 * C2, 0.0);
  for (std::size_t i = 0; i < N2; ++i)
    for (std::size_t o = 0; o < OC2; ++o)
      for (std::size_t c = 0; c < C2; ++c) {
        ref_dx[i * C2 + c] += d2[i * OC2 + o] * w2[o * C2 + c];
        ref_dw[o * C2 + c] += d2[i * OC2 + o] * x2[i * C2 + c];
      }
  HIR_CHECK_CLOSE(dx2, ref_dx, 1e-4, 1e-4);
  HIR_CHECK_CLOSE(dw2, ref_dw, 1e-3, 1e-4);

  CHECK_THROWS_AS(hir::nn::matmul_forward<double>(hir::cpu, hir::view(out), x, w, vec(OC + 1), N, C, OC),
                  hir::invalid_argument);
}

TEST_CASE("nn layers: matmul with a pre-packed weight equals the unpacked product bit for bit") {
  // The generator packs each weight once per generate() call; the product must not change (batch-split invariance
  // of generated tokens rests on it). Shapes: partial row blocks, partial 32-wide panels, K over one 384-deep block.
  std::mt19937_64 rng(hir::test::seed(107));
  for (const auto& [N, C, OC] : {std::array<std::size_t, 3>{37, 128, 96}, {9, 520, 67}, {256, 40, 1100}}) {
    INFO("N " << N << " C " << C << " OC " << OC);
    const vec xd = uniform(rng, N * C), wd = uniform(rng, OC * C), bd = uniform(rng, OC);
    const auto x = cast<float>(xd), w = cast<float>(wd), b = cast<float>(bd);
    std::vector<float> packed(hir::nn::detail::packed_weight_elements<float>(OC, C), -1.f);
    hir::nn::detail::pack_weight<float>(w.data(), OC, C, packed.data());
    std::vector<float> plain(N * OC), fast(N * OC);
    hir::nn::matmul_forward<float>(hir::cpu, hir::view(plain), x, w, b, N, C, OC);
    hir::nn::matmul_forward<float>(hir::cpu, hir::view(fast), x, w, b, N, C, OC,
                                   packed.empty() ? nullptr : packed.data());
    CHECK(fast == plain);
    HIR_CHECK_CLOSE(fast, ref_matmul(xd, wd, bd, N, C, OC), 1e-4, 1e-4);
  }
}

TEST_CASE("nn layers: causal attention forward and backward") {
  std::mt19937_64 rng(hir::test::seed(103));
  const std::size_t B = 2, T = 5, C = 8, H = 2;
  vec qkv = uniform(rng, B * T * 3 * C, -1.5, 1.5), r = uniform(rng, B * T * C);
  vec out(B * T * C), att(B * H * T * T);
  const auto fwd = [&] {
    hir::nn::attention_forward<double>(hir::cpu, hir::view(out), hir::view(att), qkv, B, T, C, H);
    return dot(out, r);
  };
  fwd();
  HIR_CHECK_CLOSE(out, ref_attention(qkv, B, T, C, H), 1e-12, 1e-10);
  for (std::size_t p = 0; p < B * H; ++p)
    for (std::size_t t = 0; t < T; ++t) {
      double s = 0;
      for (std::size_t j = 0; j < T; ++j) {
        s += att[(p * T + t) * T + j];
        if (j > t)
          CHECK(att[(p * T + t) * T + j] == 0.0);
      }
      CHECK(s == doctest::Approx(1.0).epsilon(1e-12));
    }
  vec dqkv(B * T * 3 * C, 3.0), datt(B * H * T * T);
  hir::nn::attention_backward<double>(hir::cpu, hir::view(dqkv), hir::view(datt), r, qkv, att, B, T, C, H);
  HIR_CHECK_GRAD("dqkv", dqkv, numeric_grad(qkv, fwd), 1e-8, 1e-6);

  // Float, B·H large enough to split, T = 33.
  const std::size_t B2 = 3, T2 = 33, C2 = 32, H2 = 4;
  vec q2 = uniform(rng, B2 * T2 * 3 * C2, -2, 2);
  std::vector<float> o2(B2 * T2 * C2), a2(B2 * H2 * T2 * T2);
  hir::nn::attention_forward<float>(hir::cpu, hir::view(o2), hir::view(a2), cast<float>(q2), B2, T2, C2, H2);
  HIR_CHECK_CLOSE(o2, ref_attention(q2, B2, T2, C2, H2), 1e-5, 1e-4);

  CHECK_THROWS_AS(hir::nn::attention_forward<double>(hir::cpu, hir::view(out), hir::view(att), qkv, B, T, C, 3),
                  hir::invalid_argument);
}

TEST_CASE("nn layers: gelu and residual") {
  std::mt19937_64 rng(hir::test::seed(104));
  const std::size_t N = 40;
  vec x = uniform(rng, N, -4, 4), r = uniform(rng, N), out(N);
  const auto fwd = [&] {
    hir::nn::gelu_forward<double>(hir::cpu, hir::view(out), x, N);
    return dot(out, r);
  };
  fwd();
  for (std::size_t i = 0; i < N; ++i) {
    const double v = x[i];
    CHECK(out[i] ==
          doctest::Approx(0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)))).epsilon(1e-12));
  }
  vec dx(N);
  hir::nn::gelu_backward<double>(hir::cpu, hir::view(dx), x, r, N);
  HIR_CHECK_GRAD("gelu dinp", dx, numeric_grad(x, fwd), 1e-8, 1e-6);
  // In place (dinp aliases dout), float, split across threads.
  const std::size_t N2 = 100000;
  vec x2 = uniform(rng, N2, -5, 5), r2 = uniform(rng, N2);
  std::vector<float> xf = cast<float>(x2), d = cast<float>(r2), ref(N2);
  for (std::size_t i = 0; i < N2; ++i) {
    const double v = x2[i], th = std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v));
    ref[i] = static_cast<float>(
        r2[i] * (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * std::sqrt(2 / M_PI) * (1 + 3 * 0.044715 * v * v)));
  }
  hir::nn::gelu_backward<float>(hir::cpu, hir::view(d), xf, d, N2);
  HIR_CHECK_CLOSE(d, ref, 1e-5, 1e-4);
  // Float forward (AVX-512 where available; N3 leaves a partial vector at the end of each thread's block), against
  // the tanh formula in double at the float inputs, including large |x|.
  const std::size_t N3 = 100003;
  vec x3 = uniform(rng, N3, -12, 12);
  std::vector<float> xf3 = cast<float>(x3), of(N3);
  vec ref3(N3);
  for (std::size_t i = 0; i < N3; ++i) {
    const double v = xf3[i];
    ref3[i] = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
  }
  hir::nn::gelu_forward<float>(hir::cpu, hir::view(of), xf3, N3);
  HIR_CHECK_CLOSE(of, ref3, 1e-6, 1e-6);

  vec a = uniform(rng, N), b = uniform(rng, N), s(N);
  hir::nn::residual_forward<double>(hir::cpu, hir::view(s), a, b, N);
  for (std::size_t i = 0; i < N; ++i)
    CHECK(s[i] == a[i] + b[i]);
}

TEST_CASE("nn layers: embedding forward and backward") {
  std::mt19937_64 rng(hir::test::seed(105));
  const std::size_t B = 3, T = 4, C = 5, V = 6, P = 7;
  auto tok = hir::test::nn::tokens(rng, B * T, V);
  vec wte = uniform(rng, V * C), wpe = uniform(rng, P * C), r = uniform(rng, B * T * C), out(B * T * C);
  const std::size_t off = 2;
  const auto fwd = [&] {
    hir::nn::embedding_forward<double>(hir::cpu, hir::view(out), tok, wte, wpe, B, T, C, off);
    return dot(out, r);
  };
  fwd();
  for (std::size_t i = 0; i < B * T; ++i)
    for (std::size_t c = 0; c < C; ++c)
      CHECK(out[i * C + c] == wte[static_cast<std::size_t>(tok[i]) * C + c] + wpe[(off + i % T) * C + c]);
  // The backward is for position_offset 0.
  const auto fwd0 = [&] {
    hir::nn::embedding_forward<double>(hir::cpu, hir::view(out), tok, wte, wpe, B, T, C);
    return dot(out, r);
  };
  vec dwte(V * C, 0.0), dwpe(P * C, 0.0);
  hir::nn::embedding_backward<double>(hir::cpu, hir::view(dwte), hir::view(dwpe), r, tok, B, T, C);
  HIR_CHECK_GRAD("dwte", dwte, numeric_grad(wte, fwd0), 1e-8, 1e-6);
  HIR_CHECK_GRAD("dwpe", dwpe, numeric_grad(wpe, fwd0), 1e-8, 1e-6);

  tok[3] = static_cast<hir::nn::token_t>(V);
  CHECK_THROWS_AS(hir::nn::embedding_forward<double>(hir::cpu, hir::view(out), tok, wte, wpe, B, T, C),
                  hir::invalid_argument);
  CHECK_THROWS_AS(hir::nn::embedding_forward<double>(hir::cpu, hir::view(out), tok, wte, wpe, B, T, C, P - T + 1),
                  hir::invalid_argument);
}

TEST_CASE("nn layers: log-probability and entropy head") {
  std::mt19937_64 rng(hir::test::seed(106));
  const std::size_t N = 6, V = 9;
  vec z = uniform(rng, N * V, -3, 3), g = uniform(rng, N), h = uniform(rng, N);
  auto tgt = hir::test::nn::tokens(rng, N, V);
  tgt[2] = -1; // no target: logp 0, g ignored
  vec logp(N), ent(N), lse(N);
  const auto fwd = [&] {
    hir::nn::logp_entropy_forward<double>(hir::cpu, hir::view(logp), hir::view(ent), hir::view(lse), z, tgt, N, V);
    return dot(logp, g) + dot(ent, h);
  };
  fwd();
  for (std::size_t i = 0; i < N; ++i) {
    double mx = -1e300, s = 0, H = 0;
    for (std::size_t v = 0; v < V; ++v)
      mx = std::max(mx, z[i * V + v]);
    for (std::size_t v = 0; v < V; ++v)
      s += std::exp(z[i * V + v] - mx);
    for (std::size_t v = 0; v < V; ++v) {
      const double lp = z[i * V + v] - mx - std::log(s);
      H -= std::exp(lp) * lp;
    }
    CHECK(ent[i] == doctest::Approx(H).epsilon(1e-12));
    const double expect = tgt[i] < 0 ? 0.0 : z[i * V + static_cast<std::size_t>(tgt[i])] - mx - std::log(s);
    CHECK(logp[i] == doctest::Approx(expect).epsilon(1e-12));
  }
  vec dz(N * V);
  hir::nn::logp_entropy_backward<double>(hir::cpu, hir::view(dz), z, lse, ent, tgt, g, h, N, V);
  HIR_CHECK_GRAD("dlogits (logp and entropy)", dz, numeric_grad(z, fwd), 1e-8, 1e-6);
  // Without dentropy.
  vec h0(N, 0.0), dz0(N * V);
  const auto fwd_lp = [&] {
    hir::nn::logp_entropy_forward<double>(hir::cpu, hir::view(logp), hir::view(ent), hir::view(lse), z, tgt, N, V);
    return dot(logp, g);
  };
  fwd_lp();
  hir::nn::logp_entropy_backward<double>(hir::cpu, hir::view(dz0), z, lse, ent, tgt, g, {}, N, V);
  HIR_CHECK_GRAD("dlogits (logp only)", dz0, numeric_grad(z, fwd_lp), 1e-8, 1e-6);

  tgt[0] = static_cast<hir::nn::token_t>(V);
  CHECK_THROWS_AS(
      hir::nn::logp_entropy_forward<double>(hir::cpu, hir::view(logp), hir::view(ent), hir::view(lse), z, tgt, N, V),
      hir::invalid_argument);
}
