// SPDX-License-Identifier: Apache-2.0
// hir::nn sampling: empirical token frequencies against softmax(logits/T) (chi-square, fixed seed) with and without
// top-k/top-p; greedy; and generation: the KV-cache tokens' log-probs and entropies equal a full recomputation by
// model::forward, tokens do not depend on the batch split, stop tokens end rows, per-row prompt lengths, bad input.
#include "nn_test_util.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <hir/nn.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

namespace {

using hir::nn::token_t;

// Chi-square statistic of `counts` against probabilities `p` (cells with p = 0 must be empty).
double chi_square(const std::vector<double>& counts, const std::vector<double>& p, double n, bool& impossible) {
  double x2 = 0;
  impossible = false;
  for (std::size_t v = 0; v < p.size(); ++v) {
    if (p[v] == 0.0) {
      impossible = impossible || counts[v] > 0;
      continue;
    }
    const double e = n * p[v];
    x2 += (counts[v] - e) * (counts[v] - e) / e;
  }
  return x2;
}

std::vector<double> softmax(const std::vector<float>& z, double temp) {
  double mx = -1e300, s = 0;
  for (float x : z)
    mx = std::max(mx, x / temp);
  std::vector<double> p(z.size());
  for (std::size_t v = 0; v < z.size(); ++v)
    s += (p[v] = std::exp(z[v] / temp - mx));
  for (auto& x : p)
    x /= s;
  return p;
}

struct draw_stats {
  std::vector<double> counts;
  bool logp_ok = true, entropy_ok = true;
};

// n draws with u from philox(fixed seed); checks each draw's logp and entropy against `policy`.
draw_stats draw(const std::vector<float>& z, const hir::nn::sampling_options& opt, const std::vector<double>& policy,
                std::size_t n) {
  const hir::philox gen{12345};
  std::vector<double> probs(z.size());
  std::vector<token_t> order(z.size());
  draw_stats s;
  s.counts.assign(z.size(), 0.0);
  double H = 0;
  for (double p : policy)
    H -= p > 0 ? p * std::log(p) : 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const auto t =
        hir::nn::sample_token<float>(hir::cpu, z, opt, gen.uniform(7, i), hir::view(probs), hir::view(order));
    s.counts[static_cast<std::size_t>(t.token)] += 1;
    s.logp_ok = s.logp_ok && std::fabs(t.logp - std::log(policy[static_cast<std::size_t>(t.token)])) < 1e-6;
    s.entropy_ok = s.entropy_ok && std::fabs(t.entropy - H) < 1e-6;
  }
  return s;
}

hir::nn::transformer_config small_config() {
  hir::nn::transformer_config c;
  c.vocab = 13;
  c.context = 24;
  c.channels = 16;
  c.layers = 2;
  c.heads = 2;
  return c;
}

} // namespace

TEST_CASE("nn sampling: token frequencies match softmax(logits / T) (chi-square, fixed seed)") {
  const std::vector<float> z = {1.0f, -0.5f, 2.0f, 0.3f, 0.3f, -2.0f, 1.5f, 0.0f};
  const std::size_t n = 40000;
  hir::nn::sampling_options opt;
  opt.temperature = 0.7;
  {
    const auto p = softmax(z, 0.7);
    const auto s = draw(z, opt, p, n);
    bool impossible;
    CHECK(chi_square(s.counts, p, n, impossible) < 24.32); // df 7, p = 0.001
    CHECK_FALSE(impossible);
    CHECK(s.logp_ok);
    CHECK(s.entropy_ok);
  }
  SUBCASE("top-k = 3 keeps tokens 2, 6, 0, renormalized") {
    opt.top_k = 3;
    auto p = softmax(z, 0.7);
    const double keep = p[2] + p[6] + p[0];
    for (std::size_t v = 0; v < p.size(); ++v)
      p[v] = (v == 2 || v == 6 || v == 0) ? p[v] / keep : 0.0;
    const auto s = draw(z, opt, p, n);
    bool impossible;
    CHECK(chi_square(s.counts, p, n, impossible) < 13.82); // df 2
    CHECK_FALSE(impossible);
    CHECK(s.logp_ok);
    CHECK(s.entropy_ok);
  }
  SUBCASE("top-p keeps the smallest most-likely prefix reaching p") {
    auto p = softmax(z, 0.7);
    opt.top_p = (p[2] + p[6]) * 1.001; // needs tokens 2, 6 and then 0
    const double keep = p[2] + p[6] + p[0];
    for (std::size_t v = 0; v < p.size(); ++v)
      p[v] = (v == 2 || v == 6 || v == 0) ? p[v] / keep : 0.0;
    const auto s = draw(z, opt, p, n);
    bool impossible;
    CHECK(chi_square(s.counts, p, n, impossible) < 13.82);
    CHECK_FALSE(impossible);
    CHECK(s.logp_ok);
  }
  SUBCASE("greedy and bad options") {
    opt.temperature = 0.0;
    std::vector<double> probs(z.size());
    std::vector<token_t> order(z.size());
    const auto t = hir::nn::sample_token<float>(hir::cpu, z, opt, 0.99, hir::view(probs), hir::view(order));
    CHECK(t.token == 2);
    CHECK(t.logp == 0.0);
    opt.temperature = -1.0;
    CHECK_THROWS_AS(hir::nn::sample_token<float>(hir::cpu, z, opt, 0.5, hir::view(probs), hir::view(order)),
                    hir::invalid_argument);
    opt.temperature = 1.0;
    opt.top_p = 0.0;
    CHECK_THROWS_AS(hir::nn::sample_token<float>(hir::cpu, z, opt, 0.5, hir::view(probs), hir::view(order)),
                    hir::invalid_argument);
    opt.top_p = 1.0;
    CHECK_THROWS_AS(hir::nn::sample_token<float>(hir::cpu, z, opt, 1.0, hir::view(probs), hir::view(order)),
                    hir::invalid_argument);
  }
}

TEST_CASE("nn generation: KV cache equals full recomputation; batch split; stop token; prompt lengths") {
  const auto c = small_config();
  hir::nn::model<float> m(c, 1, c.context);
  m.init_parameters(hir::test::seed(401), 0.5); // a large init: peaked, varied distributions
  const std::size_t B = 6, P = 5, N = 12;
  std::mt19937_64 rng(hir::test::seed(402));
  const auto prompts = hir::test::nn::tokens(rng, B * P, c.vocab);
  const std::vector<std::size_t> plen = {5, 1, 3, 5, 2, 4};
  std::vector<std::uint64_t> ids(B);
  for (std::size_t r = 0; r < B; ++r)
    ids[r] = 1000 + r;
  hir::nn::generation_options opt;
  opt.max_new_tokens = N;
  opt.seed = hir::test::seed(403);
  opt.sampling.temperature = 1.0;
  hir::nn::generator<float> gen(c, B, P + N);
  std::vector<token_t> tok(B * N);
  std::vector<float> lp(B * N), ent(B * N);
  std::vector<std::size_t> len(B);
  gen.generate(m, prompts, plen, ids, B, P, opt, hir::view(tok), hir::view(lp), hir::view(ent), hir::view(len));

  // Full recomputation of each row with model::forward.
  for (std::size_t r = 0; r < B; ++r) {
    CHECK(len[r] == N); // no stop token
    std::vector<token_t> seq(prompts.begin() + static_cast<std::ptrdiff_t>(r * P),
                             prompts.begin() + static_cast<std::ptrdiff_t>(r * P + plen[r]));
    seq.insert(seq.end(), tok.begin() + static_cast<std::ptrdiff_t>(r * N),
               tok.begin() + static_cast<std::ptrdiff_t>(r * N + len[r]));
    const std::size_t T = seq.size();
    std::vector<token_t> tgt(T, -1);
    for (std::size_t t = 0; t + 1 < T; ++t)
      tgt[t] = seq[t + 1];
    m.forward(seq, tgt, 1, T);
    for (std::size_t j = 0; j < len[r]; ++j) {
      const std::size_t t = plen[r] - 1 + j;
      INFO("row " << r << " token " << j);
      CHECK(lp[r * N + j] == doctest::Approx(m.logp()[t]).epsilon(1e-4).scale(1.0));
      CHECK(ent[r * N + j] == doctest::Approx(m.entropy()[t]).epsilon(1e-4).scale(1.0));
    }
  }

  // The same rows split into two batches (different sizes, different order) draw the same tokens.
  std::vector<token_t> tok2(B * N);
  std::vector<float> lp2(B * N), ent2(B * N);
  std::vector<std::size_t> len2(B);
  const std::vector<std::size_t> first = {4, 1}, second = {0, 2, 3, 5};
  for (const auto& part : {first, second}) {
    const std::size_t b = part.size();
    std::vector<token_t> pr(b * P), t(b * N);
    std::vector<std::size_t> pl(b), l(b);
    std::vector<std::uint64_t> id(b);
    std::vector<float> a(b * N), e(b * N);
    for (std::size_t i = 0; i < b; ++i) {
      std::copy_n(prompts.begin() + static_cast<std::ptrdiff_t>(part[i] * P), P,
                  pr.begin() + static_cast<std::ptrdiff_t>(i * P));
      pl[i] = plen[part[i]];
      id[i] = ids[part[i]];
    }
    gen.generate(m, pr, pl, id, b, P, opt, hir::view(t), hir::view(a), hir::view(e), hir::view(l));
    for (std::size_t i = 0; i < b; ++i) {
      std::copy_n(t.begin() + static_cast<std::ptrdiff_t>(i * N), N,
                  tok2.begin() + static_cast<std::ptrdiff_t>(part[i] * N));
      std::copy_n(a.begin() + static_cast<std::ptrdiff_t>(i * N), N,
                  lp2.begin() + static_cast<std::ptrdiff_t>(part[i] * N));
      len2[part[i]] = l[i];
    }
  }
  CHECK(tok2 == tok);
  CHECK(len2 == len);
  HIR_CHECK_CLOSE(lp2, lp, 1e-5, 1e-5);

  // A different seed draws different tokens.
  auto opt_b = opt;
  opt_b.seed += 1;
  std::vector<token_t> tok3(B * N);
  gen.generate(m, prompts, plen, ids, B, P, opt_b, hir::view(tok3), hir::view(lp2), hir::view(ent2), hir::view(len2));
  CHECK(tok3 != tok);

  // Stop token: the most frequent generated token ends rows early; padding after.
  std::vector<std::size_t> freq(c.vocab, 0);
  for (token_t t : tok)
    ++freq[static_cast<std::size_t>(t)];
  opt.stop_token = static_cast<token_t>(std::max_element(freq.begin(), freq.end()) - freq.begin());
  opt.pad_token = 0;
  gen.generate(m, prompts, plen, ids, B, P, opt, hir::view(tok2), hir::view(lp2), hir::view(ent2), hir::view(len2));
  bool some_stopped = false;
  for (std::size_t r = 0; r < B; ++r) {
    REQUIRE(len2[r] >= 1);
    // Identical up to and including the first stop token of the unstopped run.
    std::size_t first_stop = N;
    for (std::size_t j = 0; j < N; ++j)
      if (tok[r * N + j] == opt.stop_token) {
        first_stop = j;
        break;
      }
    CHECK(len2[r] == std::min(N, first_stop + 1));
    some_stopped = some_stopped || len2[r] < N;
    for (std::size_t j = 0; j < len2[r]; ++j)
      CHECK(tok2[r * N + j] == tok[r * N + j]);
    for (std::size_t j = len2[r]; j < N; ++j) {
      CHECK(tok2[r * N + j] == 0);
      CHECK(lp2[r * N + j] == 0.0f);
    }
  }
  CHECK(some_stopped);

  // Temperature and top-k: logp is under the sampling policy, i.e. log_softmax(logits / T) restricted to the top k.
  opt.stop_token = -1;
  opt.sampling.temperature = 0.8;
  opt.sampling.top_k = 4;
  gen.generate(m, hir::view(prompts).subspan(0, P), hir::view(plen).subspan(0, 1), hir::view(ids).subspan(0, 1), 1, P,
               opt, hir::view(tok2).subspan(0, N), hir::view(lp2).subspan(0, N), hir::view(ent2).subspan(0, N),
               hir::view(len2).subspan(0, 1));
  {
    std::vector<token_t> seq(prompts.begin(), prompts.begin() + static_cast<std::ptrdiff_t>(plen[0]));
    seq.push_back(tok2[0]);
    std::vector<token_t> tgt(seq.size(), 0);
    m.forward(seq, tgt, 1, seq.size());
    std::vector<float> z(m.logits().begin() + static_cast<std::ptrdiff_t>((plen[0] - 1) * c.vocab),
                         m.logits().begin() + static_cast<std::ptrdiff_t>(plen[0] * c.vocab));
    auto p = softmax(z, 0.8);
    std::vector<double> sorted = p;
    std::sort(sorted.rbegin(), sorted.rend());
    const double keep = sorted[0] + sorted[1] + sorted[2] + sorted[3];
    CHECK(p[static_cast<std::size_t>(tok2[0])] >= sorted[3]);
    CHECK(lp2[0] == doctest::Approx(std::log(p[static_cast<std::size_t>(tok2[0])] / keep)).epsilon(1e-4));
  }

  // Bad input.
  std::vector<std::size_t> bad = plen;
  bad[2] = 0;
  CHECK_THROWS_AS(
      gen.generate(m, prompts, bad, ids, B, P, opt, hir::view(tok), hir::view(lp), hir::view(ent), hir::view(len)),
      hir::invalid_argument);
  hir::nn::generator<float> short_gen(c, B, P + N - 1);
  CHECK_THROWS_AS(short_gen.generate(m, prompts, plen, ids, B, P, opt, hir::view(tok), hir::view(lp), hir::view(ent),
                                     hir::view(len)),
                  hir::invalid_argument);
  CHECK_THROWS_AS(hir::nn::generator<float>(c, B, c.context + 1), hir::invalid_argument);
}

TEST_CASE("nn generation: KV-cache attention kernel against a double reference (tile edges, head sizes)") {
  // The generator's per-head attention over a tiled, transposed key cache: the float kernel (AVX-512 where the CPU
  // has it) and the generic one in double against a direct evaluation of softmax(q·kᵀ/√hs)·v. Cache entries past
  // position s are NaN: they must never reach the result.
  std::mt19937_64 rng(hir::test::seed(404));
  const std::size_t kt = hir::nn::detail::kv_tile;
  for (const std::size_t hs : {8, 24, 32, 40}) {
    const std::size_t S = 80, ldk = (hs + 8) * kt, ldv = hs + 8; // strides as if other heads were interleaved
    const auto keys = hir::test::nn::uniform(rng, S * hs, -2.0, 2.0), vals = hir::test::nn::uniform(rng, S * hs);
    const auto q = hir::test::nn::uniform(rng, hs, -2.0, 2.0);
    const double nan = std::numeric_limits<double>::quiet_NaN();
    std::vector<float> kf(S / kt * ldk, static_cast<float>(nan)), vf(S * ldv, static_cast<float>(nan));
    std::vector<double> kd(S / kt * ldk, nan), vd(S * ldv, nan);
    std::vector<float> qf(q.begin(), q.end()), scf(S), yf(hs);
    std::vector<double> scd(S), yd(hs);
    std::size_t stored = 0; // positions 0 .. stored − 1 are in both caches
    for (const std::size_t s : {0, 1, 14, 15, 16, 17, 47, 63, 64, 79}) {
      INFO("hs " << hs << " s " << s);
      for (; stored <= s; ++stored) {
        const std::size_t p = stored;
        const std::vector<float> k1(keys.begin() + static_cast<std::ptrdiff_t>(p * hs),
                                    keys.begin() + static_cast<std::ptrdiff_t>((p + 1) * hs));
        const std::vector<float> v1(vals.begin() + static_cast<std::ptrdiff_t>(p * hs),
                                    vals.begin() + static_cast<std::ptrdiff_t>((p + 1) * hs));
        hir::nn::detail::kv_store(kf.data(), vf.data(), k1.data(), v1.data(), hs, ldk, ldv, p);
        const std::vector<double> k2(k1.begin(), k1.end()), v2(v1.begin(), v1.end());
        hir::nn::detail::kv_store(kd.data(), vd.data(), k2.data(), v2.data(), hs, ldk, ldv, p);
      }
      // Reference.
      std::vector<double> w(s + 1), ref(hs, 0.0);
      double mx = -1e300, z = 0;
      for (std::size_t j = 0; j <= s; ++j) {
        double d = 0;
        for (std::size_t c = 0; c < hs; ++c)
          d += static_cast<double>(qf[c]) * static_cast<double>(static_cast<float>(keys[j * hs + c]));
        w[j] = d / std::sqrt(static_cast<double>(hs));
        mx = std::max(mx, w[j]);
      }
      for (std::size_t j = 0; j <= s; ++j)
        z += (w[j] = std::exp(w[j] - mx));
      for (std::size_t j = 0; j <= s; ++j)
        for (std::size_t c = 0; c < hs; ++c)
          ref[c] += w[j] / z * static_cast<double>(static_cast<float>(vals[j * hs + c]));
      const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
      hir::nn::detail::kv_attend<float>(qf.data(), kf.data(), vf.data(), hs, ldk, ldv, s, scale, scf.data(), yf.data());
      HIR_CHECK_CLOSE(yf, ref, 2e-6, 2e-5);
      const std::vector<double> qd(qf.begin(), qf.end());
      hir::nn::detail::kv_attend<double>(qd.data(), kd.data(), vd.data(), hs, ldk, ldv, s,
                                         1.0 / std::sqrt(static_cast<double>(hs)), scd.data(), yd.data());
      HIR_CHECK_CLOSE(yd, ref, 1e-12, 1e-12);
    }
  }
}

TEST_CASE("nn generation: the double generator (generic kernels) equals full recomputation") {
  const auto c = small_config();
  hir::nn::model<double> m(c, 1, c.context);
  m.init_parameters(hir::test::seed(405), 0.5);
  const std::size_t B = 3, P = 4, N = 9;
  std::mt19937_64 rng(hir::test::seed(406));
  const auto prompts = hir::test::nn::tokens(rng, B * P, c.vocab);
  const std::vector<std::size_t> plen = {4, 2, 3};
  const std::vector<std::uint64_t> ids = {7, 8, 9};
  hir::nn::generation_options opt;
  opt.max_new_tokens = N;
  opt.seed = hir::test::seed(407);
  hir::nn::generator<double> gen(c, B, P + N);
  std::vector<token_t> tok(B * N);
  std::vector<double> lp(B * N), ent(B * N);
  std::vector<std::size_t> len(B);
  gen.generate(m, prompts, plen, ids, B, P, opt, hir::view(tok), hir::view(lp), hir::view(ent), hir::view(len));
  for (std::size_t r = 0; r < B; ++r) {
    REQUIRE(len[r] == N);
    std::vector<token_t> seq(prompts.begin() + static_cast<std::ptrdiff_t>(r * P),
                             prompts.begin() + static_cast<std::ptrdiff_t>(r * P + plen[r]));
    seq.insert(seq.end(), tok.begin() + static_cast<std::ptrdiff_t>(r * N),
               tok.begin() + static_cast<std::ptrdiff_t>((r + 1) * N));
    std::vector<token_t> tgt(seq.size(), -1);
    for (std::size_t t = 0; t + 1 < seq.size(); ++t)
      tgt[t] = seq[t + 1];
    m.forward(seq, tgt, 1, seq.size());
    for (std::size_t j = 0; j < N; ++j) {
      INFO("row " << r << " token " << j);
      CHECK(lp[r * N + j] == doctest::Approx(m.logp()[plen[r] - 1 + j]).epsilon(1e-10).scale(1.0));
      CHECK(ent[r * N + j] == doctest::Approx(m.entropy()[plen[r] - 1 + j]).epsilon(1e-10).scale(1.0));
    }
  }
}

TEST_CASE("nn generation: the KV-cache allocator aligns large buffers to 2 MiB and copies like std::vector") {
  using alloc = hir::nn::detail::huge_page_allocator<float>;
  std::vector<float, alloc> big(std::size_t{3} << 20, 1.5f), small(100, 2.5f); // 12 MiB and 400 bytes
  CHECK(reinterpret_cast<std::uintptr_t>(big.data()) % (std::size_t{2} << 20) == 0);
  const std::vector<float, alloc> copy = big;
  CHECK(copy == big);
  big.assign(10, 0.0f);
  big.shrink_to_fit(); // releases the aligned block through the matching operator delete
  CHECK(big.size() == 10);
  CHECK(small[99] == 2.5f);
}
