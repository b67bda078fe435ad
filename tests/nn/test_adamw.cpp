// SPDX-License-Identifier: Apache-2.0
// hir::nn AdamW, gradient clipping and learning-rate schedules against naive double references written from the
// formulas (torch.optim.AdamW, clip_grad_norm_), including which tensors are decayed.
#include "nn_test_util.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <hir/nn.hpp>

#include <cmath>
#include <random>
#include <vector>

TEST_CASE("nn adamw: three updates match the reference, decay only on matrices by default") {
  std::mt19937_64 rng(hir::test::seed(301));
  hir::nn::transformer_config c;
  c.vocab = 7;
  c.context = 5;
  c.channels = 4;
  c.layers = 2;
  c.heads = 2;
  const hir::nn::parameter_layout pl(c);
  for (bool decay_all : {false, true}) {
    hir::nn::adamw_options opt;
    opt.weight_decay = 0.3;
    opt.decay_all = decay_all;
    auto p = hir::test::nn::uniform(rng, pl.total);
    auto ref = p;
    std::vector<double> rm(pl.total, 0.0), rv(pl.total, 0.0);
    hir::nn::adamw_state<double> st(pl);
    for (int step = 1; step <= 3; ++step) {
      const auto g = hir::test::nn::uniform(rng, pl.total);
      const double lr = 0.01 * step;
      st.update(hir::cpu, hir::view(p), g, opt, lr);
      for (const auto& t : pl.tensors)
        for (std::size_t i = t.offset; i < t.offset + t.size; ++i) {
          rm[i] = 0.9 * rm[i] + 0.1 * g[i];
          rv[i] = 0.999 * rv[i] + 0.001 * g[i] * g[i];
          const double mh = rm[i] / (1 - std::pow(0.9, step)), vh = rv[i] / (1 - std::pow(0.999, step));
          if (decay_all || t.matrix)
            ref[i] -= lr * 0.3 * ref[i];
          ref[i] -= lr * mh / (std::sqrt(vh) + 1e-8);
        }
    }
    CHECK(st.step() == 3);
    HIR_CHECK_CLOSE(p, ref, 1e-12, 1e-10);
  }
  // Biases and norms are not decayed by default: a zero gradient leaves them unchanged, matrices shrink.
  std::vector<double> p(pl.total, 1.0), g(pl.total, 0.0);
  hir::nn::adamw_state<double> st(pl);
  st.update(hir::cpu, hir::view(p), g, {}, 0.1);
  CHECK(p[pl[hir::nn::param::ln1_bias].offset] == 1.0);
  CHECK(p[pl[hir::nn::param::qkv_weight].offset] == doctest::Approx(1.0 - 0.1 * 0.1));
  CHECK_THROWS_AS(hir::nn::adamw_update<double>(hir::cpu, pl, hir::view(p), g, st.m(), st.v(), {}, 0, 0.1),
                  hir::invalid_argument);
  CHECK_THROWS_AS(st.update(hir::cpu, hir::view(p), std::vector<double>(3), {}, 0.1), hir::invalid_argument);
}

TEST_CASE("nn adamw: global norm clipping") {
  std::vector<float> g = {3.f, 4.f, 0.f, 12.f}; // norm 13
  CHECK(hir::nn::global_grad_norm<float>(hir::cpu, g) == doctest::Approx(13.0));
  const double n = hir::nn::clip_grad_norm<float>(hir::cpu, hir::view(g), 1.3);
  CHECK(n == doctest::Approx(13.0));
  CHECK(g[1] == doctest::Approx(4.0 * 1.3 / (13.0 + 1e-6)));
  std::vector<float> small = {0.1f, 0.2f};
  hir::nn::clip_grad_norm<float>(hir::cpu, hir::view(small), 1.0);
  CHECK(small[1] == 0.2f); // below the threshold: untouched
  std::mt19937_64 rng(hir::test::seed(302));
  const auto big = hir::test::nn::uniform<float>(rng, 1 << 20);
  double ss = 0;
  for (float x : big)
    ss += static_cast<double>(x) * x;
  CHECK(hir::nn::global_grad_norm<float>(hir::cpu, big) == doctest::Approx(std::sqrt(ss)).epsilon(1e-12));
  CHECK_THROWS_AS(hir::nn::clip_grad_norm<float>(hir::cpu, hir::view(small), 0.0), hir::invalid_argument);
}

TEST_CASE("nn adamw: learning-rate schedules") {
  hir::nn::lr_schedule s;
  s.lr = 1.0;
  CHECK(s.at(0) == 1.0);
  CHECK(s.at(1000) == 1.0);
  s.kind = hir::nn::lr_schedule::warmup;
  s.warmup_steps = 4;
  CHECK(s.at(0) == 0.25);
  CHECK(s.at(3) == 1.0);
  CHECK(s.at(50) == 1.0);
  s.kind = hir::nn::lr_schedule::cosine;
  s.total_steps = 14;
  s.min_lr = 0.1;
  CHECK(s.at(1) == 0.5);
  CHECK(s.at(4) == doctest::Approx(1.0));
  CHECK(s.at(9) == doctest::Approx(0.1 + 0.45 * (1 + std::cos(M_PI * 0.5))));
  CHECK(s.at(14) == doctest::Approx(0.1));
  CHECK(s.at(100) == doctest::Approx(0.1));
}
