// SPDX-License-Identifier: Apache-2.0
// hir::nn::model: both backward entry points (dL/dlogp with dL/dentropy, and masked cross-entropy) against central
// finite differences over every parameter in double on a tiny config; float against double; gradient accumulation
// across micro-batches; initialization; layouts; bad input.
#include "nn_test_util.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <hir/nn.hpp>

#include <cmath>
#include <random>
#include <vector>

namespace {

using hir::nn::token_t;

hir::nn::transformer_config tiny() {
  hir::nn::transformer_config c;
  c.vocab = 11;
  c.context = 8;
  c.channels = 8;
  c.layers = 2;
  c.heads = 2;
  return c;
}

// Random parameters with LayerNorm weights near 1 (so the FD check sees every path with O(1) gradients).
template <class T>
void randomize(hir::nn::model<T>& m, std::mt19937_64& rng) {
  std::normal_distribution<double> d(0.0, 0.3);
  for (auto& x : m.parameters())
    x = static_cast<T>(d(rng));
  for (auto p : {hir::nn::param::ln1_weight, hir::nn::param::ln2_weight, hir::nn::param::lnf_weight})
    for (auto& x : m.parameter(p))
      x += T(1);
}

std::vector<double> grads_of(const hir::nn::model<double>& m) {
  return std::vector<double>(m.gradients().begin(), m.gradients().end());
}

} // namespace

TEST_CASE("nn model: layouts") {
  const auto c = tiny();
  const hir::nn::parameter_layout pl(c);
  const std::size_t C = c.channels, L = c.layers;
  CHECK(pl.count == c.vocab * C + c.context * C + L * (12 * C * C + 13 * C) + 2 * C);
  CHECK(pl.total >= pl.count);
  for (std::size_t i = 0; i + 1 < hir::nn::num_param_tensors; ++i) {
    CHECK(pl.tensors[i].offset % 16 == 0);
    CHECK(pl.tensors[i].offset + pl.tensors[i].size <= pl.tensors[i + 1].offset);
  }
  // The benchmark config of the issue: 0.82 M parameters.
  hir::nn::transformer_config big;
  const hir::nn::parameter_layout pb(big);
  CHECK(pb.count == 96 * 128 + 128 * 128 + 4 * (12 * 128 * 128 + 13 * 128) + 256);
  const hir::nn::activation_layout al(c, 3, 8);
  CHECK(al.size(hir::nn::act::att) == c.layers * 3 * c.heads * 8 * 8);
  CHECK_THROWS_AS(hir::nn::activation_layout(c, 3, 9), hir::invalid_argument);
  auto bad = c;
  bad.heads = 3;
  CHECK_THROWS_AS(hir::nn::parameter_layout{bad}, hir::invalid_argument);
}

TEST_CASE("nn model: backward from dL/dlogp and dL/dentropy matches finite differences (double)") {
  std::mt19937_64 rng(hir::test::seed(201));
  hir::nn::model<double> m(tiny(), 3, 8);
  randomize(m, rng);
  const std::size_t B = 2, T = 6; // smaller than the allocated maxima
  auto tok = hir::test::nn::tokens(rng, B * T, 11), tgt = hir::test::nn::tokens(rng, B * T, 11);
  tgt[5] = -1;
  const auto g = hir::test::nn::uniform(rng, B * T), h = hir::test::nn::uniform(rng, B * T);
  const auto loss = [&] {
    m.forward(tok, tgt, B, T);
    double s = 0;
    for (std::size_t i = 0; i < B * T; ++i)
      s += g[i] * m.logp()[i] + h[i] * m.entropy()[i];
    return s;
  };
  loss();
  CHECK(m.logp()[5] == 0.0);
  m.zero_grad();
  m.backward(g, h);
  const auto analytic = grads_of(m);
  std::vector<double> numeric(analytic.size());
  const double eps = 1e-6;
  for (std::size_t i = 0; i < numeric.size(); ++i) {
    double& p = m.parameters()[i];
    const double p0 = p;
    p = p0 + eps;
    const double lp = loss();
    p = p0 - eps;
    const double lm = loss();
    p = p0;
    numeric[i] = (lp - lm) / (2 * eps);
  }
  const auto& pl = m.params_layout();
  for (const auto& t : pl.tensors) {
    const std::vector<double> a(analytic.begin() + t.offset, analytic.begin() + t.offset + t.size);
    const std::vector<double> n(numeric.begin() + t.offset, numeric.begin() + t.offset + t.size);
    HIR_CHECK_GRAD(t.name, a, n, 1e-7, 1e-5);
  }
}

TEST_CASE("nn model: backward from masked cross-entropy matches finite differences (double)") {
  std::mt19937_64 rng(hir::test::seed(202));
  hir::nn::model<double> m(tiny(), 2, 8);
  randomize(m, rng);
  const std::size_t B = 2, T = 8;
  auto tok = hir::test::nn::tokens(rng, B * T, 11), tgt = hir::test::nn::tokens(rng, B * T, 11);
  std::vector<double> mask(B * T), scratch(B * T);
  for (std::size_t i = 0; i < B * T; ++i)
    mask[i] = (i % 3 == 0) ? 0.0 : 1.0;
  m.forward(tok, tgt, B, T);
  m.zero_grad();
  const double l0 = m.backward_cross_entropy(mask, hir::view(scratch));
  double expect = 0, count = 0;
  for (std::size_t i = 0; i < B * T; ++i) {
    expect -= mask[i] * m.logp()[i];
    count += mask[i];
  }
  CHECK(l0 == doctest::Approx(expect / count).epsilon(1e-12));
  const auto analytic = grads_of(m);
  std::vector<double> numeric(analytic.size());
  for (std::size_t i = 0; i < numeric.size(); ++i) {
    double& p = m.parameters()[i];
    const double p0 = p;
    p = p0 + 1e-6;
    m.forward(tok, tgt, B, T);
    const double lp = m.cross_entropy(mask);
    p = p0 - 1e-6;
    m.forward(tok, tgt, B, T);
    const double lm = m.cross_entropy(mask);
    p = p0;
    numeric[i] = (lp - lm) / 2e-6;
  }
  HIR_CHECK_GRAD("all parameters", analytic, numeric, 1e-7, 1e-5);
}

TEST_CASE("nn model: float agrees with double; micro-batches accumulate") {
  std::mt19937_64 rng(hir::test::seed(203));
  hir::nn::transformer_config c;
  c.vocab = 29;
  c.context = 24;
  c.channels = 32;
  c.layers = 2;
  c.heads = 4;
  hir::nn::model<double> md(c, 6, 20);
  hir::nn::model<float> mf(c, 6, 20);
  randomize(md, rng);
  std::copy(md.parameters().begin(), md.parameters().end(), mf.parameters().begin());
  const std::size_t B = 6, T = 20;
  auto tok = hir::test::nn::tokens(rng, B * T, c.vocab), tgt = hir::test::nn::tokens(rng, B * T, c.vocab);
  const auto g = hir::test::nn::uniform(rng, B * T);
  const std::vector<float> gf(g.begin(), g.end());
  md.forward(tok, tgt, B, T);
  mf.forward(tok, tgt, B, T);
  const std::vector<double> lpd(md.logp().begin(), md.logp().end()), end(md.entropy().begin(), md.entropy().end());
  const std::vector<double> lgd(md.logits().begin(), md.logits().end());
  HIR_CHECK_CLOSE(std::vector<float>(mf.logp().begin(), mf.logp().end()), lpd, 2e-5, 1e-5);
  HIR_CHECK_CLOSE(std::vector<float>(mf.entropy().begin(), mf.entropy().end()), end, 2e-5, 1e-5);
  HIR_CHECK_CLOSE(std::vector<float>(mf.logits().begin(), mf.logits().end()), lgd, 2e-5, 1e-5);
  md.zero_grad();
  mf.zero_grad();
  md.backward(g);
  mf.backward(gf);
  double worst = 0, scale = 0;
  for (std::size_t i = 0; i < md.gradients().size(); ++i) {
    worst = std::max(worst, std::fabs(md.gradients()[i] - static_cast<double>(mf.gradients()[i])));
    scale = std::max(scale, std::fabs(md.gradients()[i]));
  }
  CHECK(worst <= 1e-4 * scale);

  // Rows 0..3 then rows 4..5 (a different B) accumulate to the gradient of the whole batch.
  std::vector<double> whole(md.gradients().begin(), md.gradients().end());
  md.zero_grad();
  const std::size_t split = 4 * T;
  md.forward(std::vector<token_t>(tok.begin(), tok.begin() + split),
             std::vector<token_t>(tgt.begin(), tgt.begin() + split), 4, T);
  md.backward(std::vector<double>(g.begin(), g.begin() + split));
  md.forward(std::vector<token_t>(tok.begin() + split, tok.end()), std::vector<token_t>(tgt.begin() + split, tgt.end()),
             2, T);
  md.backward(std::vector<double>(g.begin() + split, g.end()));
  HIR_CHECK_CLOSE(std::vector<double>(md.gradients().begin(), md.gradients().end()), whole, 1e-12, 1e-9);
}

TEST_CASE("nn model: initialization and bad input") {
  hir::nn::model<float> m(tiny(), 2, 8), m2(tiny(), 2, 8);
  m.init_parameters(7);
  m2.init_parameters(7);
  CHECK(std::equal(m.parameters().begin(), m.parameters().end(), m2.parameters().begin()));
  for (float x : m.parameter(hir::nn::param::ln1_weight))
    CHECK(x == 1.0f);
  for (float x : m.parameter(hir::nn::param::qkv_bias))
    CHECK(x == 0.0f);
  double ss = 0;
  const auto wte = m.parameter(hir::nn::param::wte);
  for (float x : wte)
    ss += static_cast<double>(x) * x;
  CHECK(std::sqrt(ss / static_cast<double>(wte.size())) == doctest::Approx(0.02).epsilon(0.25));

  std::vector<token_t> tok(2 * 8, 1), tgt(2 * 8, 2);
  std::vector<float> g(2 * 8, 0.f);
  CHECK_THROWS_AS(m.backward(g), hir::invalid_argument); // no forward yet
  CHECK_THROWS_AS(m.forward(tok, tgt, 2, 9), hir::invalid_argument);
  CHECK_THROWS_AS(m.forward(tok, tgt, 1, 8), hir::invalid_argument);
  tok[3] = 11;
  CHECK_THROWS_AS(m.forward(tok, tgt, 2, 8), hir::invalid_argument);
  tok[3] = 1;
  tgt[4] = 11;
  CHECK_THROWS_AS(m.forward(tok, tgt, 2, 8), hir::invalid_argument);
  tgt[4] = -1;
  m.forward(tok, tgt, 2, 8);
  CHECK_THROWS_AS(m.backward(std::vector<float>(15)), hir::invalid_argument);
  std::vector<float> zero_mask(16, 0.f), scratch(16);
  CHECK_THROWS_AS(m.backward_cross_entropy(zero_mask, hir::view(scratch)), hir::invalid_argument);
}
