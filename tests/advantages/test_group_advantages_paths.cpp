// SPDX-License-Identifier: Apache-2.0
// The CPU backend's code paths of group_advantages, built with -march=native and OpenMP (when available) so that
// the AVX-512 uniform fast path and the threaded split run: every G of the fast path with tails of fewer than 8
// groups, every option, awkward values (constant and near-constant groups, large, tiny and subnormal scores)
// against the naive double reference; agreement of the fast and generic paths; independence of the thread count;
// in-place use; a non-finite score anywhere (first block, a late block, the tail) is reported by index with `out`
// untouched.
#include "group_presets.hpp"
#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/reference.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>

#if defined(_OPENMP)
#  include <omp.h>
#endif

namespace {

using hir::test::to_ref;

std::vector<float> run(const std::vector<float>& s, const hir::group_layout& layout,
                       const hir::group_advantage_options& o) {
  std::vector<float> out(s.size(), -7.0f);
  hir::group_advantages(hir::cpu, hir::span<const float>(hir::view(s)), layout.ref(), hir::view(out), o);
  return out;
}

std::vector<std::int64_t> uniform_ids(std::size_t n, std::size_t g) {
  std::vector<std::int64_t> ids(n);
  for (std::size_t i = 0; i < n; ++i)
    ids[i] = static_cast<std::int64_t>(i / g);
  return ids;
}

/// Groups of g scores of several kinds: binary, uniform, constant, near-constant (1-ulp apart), large, tiny,
/// subnormal (with ε = 0 their scale 1/σ exceeds the float range) and near ±FLT_MAX (differences overflow a float):
/// the last two take the fast path's double fallback.
std::vector<float> awkward_scores(std::mt19937_64& rng, std::size_t groups, std::size_t g) {
  std::vector<float> s;
  for (std::size_t k = 0; k < groups; ++k) {
    const int kind = static_cast<int>(rng() % 9);
    const float base = std::uniform_real_distribution<float>(-3, 3)(rng);
    for (std::size_t j = 0; j < g; ++j) {
      float v = 0;
      switch (kind) {
      case 0:
        v = static_cast<float>(rng() % 2);
        break;
      case 1:
        v = base; // constant
        break;
      case 2:
        v = rng() % 2 ? base : std::nextafter(base, 10.0f); // 1 ulp apart
        break;
      case 3:
        v = std::uniform_real_distribution<float>(-1e30f, 1e30f)(rng);
        break;
      case 4:
        v = std::uniform_real_distribution<float>(-1e-30f, 1e-30f)(rng);
        break;
      case 5:
        v = static_cast<float>(rng() % 3) * 1e-41f; // subnormal
        break;
      case 6:
        v = (rng() % 2 ? 1.0f : -1.0f) * std::uniform_real_distribution<float>(1e38f, 3.4e38f)(rng);
        break;
      default:
        v = std::uniform_real_distribution<float>(-5, 5)(rng);
      }
      s.push_back(v);
    }
  }
  return s;
}

/// Every option set of the advantage tests (tests/advantages/group_presets.hpp).
const auto& all_options = hir::test::group_presets();

} // namespace

TEST_CASE("group_advantages paths: uniform layouts of every G match the reference") {
#if !HIR_CPU_AVX512
  MESSAGE("built without AVX-512F: the uniform fast path is not compiled; testing the generic path");
#endif
  std::mt19937_64 rng(hir::test::seed(41));
  for (std::size_t g : {2u, 3u, 4u, 8u, 16u, 32u}) {
    for (std::size_t groups : {1u, 7u, 8u, 9u, 61u, 200u}) {
      const auto s = awkward_scores(rng, groups, g);
      const auto ids = uniform_ids(s.size(), g);
      const auto layout = hir::group_layout::uniform(s.size(), g);
      const std::vector<double> sd(s.begin(), s.end());
      for (const auto& [label, o] : all_options) {
        const std::string name = label;
        CAPTURE(name);
        CAPTURE(g);
        CAPTURE(groups);
        const auto a = run(s, layout, o);
        auto expected = hir::ref::group_advantages(sd, ids, to_ref(o));
        for (double& e : expected) // beyond the float range (unscaled differences of scores near ±FLT_MAX): ±inf
          if (std::fabs(e) > std::numeric_limits<float>::max())
            e = static_cast<double>(static_cast<float>(e));
        HIR_CHECK_CLOSE(a, expected, 2e-6, 2e-6);
        for (std::size_t k = 0; k < groups; ++k) { // constant groups: exact zeros
          bool constant = true;
          for (std::size_t j = 0; j < g; ++j)
            constant = constant && s[k * g + j] == s[k * g];
          if (constant)
            for (std::size_t j = 0; j < g; ++j)
              CHECK(a[k * g + j] == 0.0f);
        }
      }
    }
  }
}

TEST_CASE("group_advantages paths: scores across the fast path's range limits match the reference") {
  // Blocks whose scores sit on either side of the float output's range rule (r0² + S2 < a bound derived from the
  // options, a scale f within 2^±100 where the options do not prove it): magnitudes 2^e around ±2^100 and ±2^125,
  // tiny and subnormal ones, with relative spreads from 2⁻²⁰ to 1, every option set.
  std::mt19937_64 rng(hir::test::seed(45));
  for (std::size_t g : {2u, 4u, 8u, 16u, 32u}) {
    std::vector<float> s;
    for (int e : {-149, -140, -126, -100, -60, 0, 60, 90, 98, 99, 100, 101, 102, 110, 120, 124, 125, 126}) {
      for (double spread : {0x1p-20, 0x1p-8, 0.5, 1.0}) {
        const std::size_t groups = 8 + rng() % 9; // a block or two, and a tail
        for (std::size_t k = 0; k < groups * g; ++k) {
          const double u = std::uniform_real_distribution<double>(-1, 1)(rng);
          const double sign = rng() % 4 == 0 ? -1.0 : 1.0;
          s.push_back(static_cast<float>(std::ldexp(sign * (1.0 + spread * u), e)));
        }
      }
    }
    const std::size_t n = s.size() / g * g;
    s.resize(n);
    const auto layout = hir::group_layout::uniform(n, g);
    const auto ids = uniform_ids(n, g);
    const std::vector<double> sd(s.begin(), s.end());
    for (const auto& [label, o] : all_options) {
      const std::string name = label;
      CAPTURE(name);
      CAPTURE(g);
      const auto a = run(s, layout, o);
      auto expected = hir::ref::group_advantages(sd, ids, to_ref(o));
      for (double& x : expected) // beyond the float range: ±inf, as the float output rounds it
        if (std::fabs(x) > std::numeric_limits<float>::max())
          x = static_cast<double>(static_cast<float>(x));
      HIR_CHECK_CLOSE(a, expected, 2e-6, 2e-6);
    }
  }
}

TEST_CASE("group_advantages paths: the fast and generic paths agree") {
  std::mt19937_64 rng(hir::test::seed(42));
  for (std::size_t g : {2u, 4u, 8u, 16u, 32u}) {
    std::vector<float> s(g * 203);
    for (auto& v : s)
      v = std::uniform_real_distribution<float>(-2, 2)(rng);
    const auto uniform = hir::group_layout::uniform(s.size(), g);
    const std::vector<std::int64_t> sizes(s.size() / g, static_cast<std::int64_t>(g));
    const auto ragged = hir::group_layout::from_sizes(sizes); // same groups, generic path
    for (const auto& [label, o] : all_options) {
      const std::string name = label;
      CAPTURE(name);
      CAPTURE(g);
      HIR_CHECK_CLOSE(run(s, uniform, o), run(s, ragged, o), 1e-6, 1e-6);
    }
  }
}

TEST_CASE("group_advantages paths: large inputs do not depend on the thread count; in-place use") {
  std::mt19937_64 rng(hir::test::seed(43));
  for (std::size_t g : {8u, 16u, 5u}) {
    const std::size_t n = (std::size_t(1) << 19) / g * g + 3 * g; // above the parallel threshold, with a tail
    std::vector<float> s(n);
    for (auto& v : s)
      v = static_cast<float>(rng() % 2) + (rng() % 7 == 0 ? 0.25f : 0.0f);
    const auto layout = hir::group_layout::uniform(n, g);
    const auto o = hir::presets::verl_grpo();
#if defined(_OPENMP)
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    const auto one = run(s, layout, o);
    omp_set_num_threads(2);
    const auto two = run(s, layout, o);
    omp_set_num_threads(threads);
    CHECK(one == two); // bitwise
#endif
    const auto a = run(s, layout, o);
    const std::vector<double> sd(s.begin(), s.end());
    HIR_CHECK_CLOSE(a, hir::ref::group_advantages(sd, uniform_ids(n, g), to_ref(o)), 2e-6, 2e-6);
    auto inplace = s;
    hir::group_advantages(hir::cpu, hir::span<const float>(inplace.data(), n), layout.ref(), hir::view(inplace), o);
    CHECK(inplace == a);
  }
}

TEST_CASE("group_advantages paths: a non-finite score anywhere is reported and nothing is written") {
  const float bad_values[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                              -std::numeric_limits<float>::infinity()};
  for (std::size_t g : {8u, 16u, 3u}) {
    const std::size_t n = (std::size_t(1) << 19) / g * g + 5 * g;
    const auto layout = hir::group_layout::uniform(n, g);
    std::vector<float> s(n, 0.5f);
    for (std::size_t i = 0; i < n; i += 3)
      s[i] = 1.0f;
    for (std::size_t pos : {std::size_t(0), std::size_t(13), n / 2 + 1, n - 2 * g + 1, n - 1}) {
      for (float bad : bad_values) {
        auto x = s;
        x[pos] = bad;
        x[n - 1 - pos / 2] = bad; // a second one later (or the same) — the first is reported
        std::vector<float> out(n, 42.0f);
        const std::size_t first = std::min(pos, n - 1 - pos / 2);
        CAPTURE(g);
        CAPTURE(pos);
        try {
          hir::group_advantages(hir::cpu, hir::span<const float>(hir::view(x)), layout.ref(), hir::view(out));
          FAIL("no exception");
        } catch (const hir::invalid_argument& e) {
          CHECK(std::string(e.what()).find("hir::group_advantages: scores[" + std::to_string(first) + "] = ") == 0);
        }
        CHECK(std::count(out.begin(), out.end(), 42.0f) == static_cast<long>(n));
      }
    }
  }
}

TEST_CASE("group_advantages paths: fused validation (internal mode of the CPU backend)") {
  // Valid input: the same result as validating before writing.
  std::mt19937_64 rng(hir::test::seed(44));
  for (std::size_t g : {4u, 8u, 16u, 3u}) {
    const std::size_t n = g * 1003;
    std::vector<float> s(n);
    for (auto& v : s)
      v = std::uniform_real_distribution<float>(-1, 1)(rng);
    const auto layout = hir::group_layout::uniform(n, g);
    for (const auto& [label, o] : all_options) {
      const std::string name = label;
      CAPTURE(name);
      std::vector<float> fused(n, -7.0f);
      hir::backend::cpu::detail::group_advantages_cpu(hir::span<const float>(hir::view(s)), layout.ref(),
                                                      hir::view(fused), o, hir::input_validation::fused);
      CHECK(fused == run(s, layout, o));
    }
  }
  // A non-finite score: the exception names the first one; on one thread, the groups of the blocks before it hold
  // their advantages and nothing from its block on is written.
#if defined(_OPENMP)
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  for (std::size_t g : {8u, 16u}) {
    const std::size_t n = g * 8 * 40 + 3 * g; // 40 blocks and a tail of 3 groups
    std::vector<float> s(n);
    for (auto& v : s)
      v = static_cast<float>(rng() % 3);
    const auto layout = hir::group_layout::uniform(n, g);
    const auto o = hir::presets::verl_grpo();
    const auto expected = run(s, layout, o);
    for (std::size_t pos : {std::size_t(5), g * 8 * 17 + 3, n - 2}) {
      auto x = s;
      x[pos] = std::numeric_limits<float>::quiet_NaN();
      x[pos + 1] = std::numeric_limits<float>::infinity();
      std::vector<float> out(n, 42.0f);
      CAPTURE(g);
      CAPTURE(pos);
      CHECK_THROWS_WITH_AS(hir::backend::cpu::detail::group_advantages_cpu(hir::span<const float>(hir::view(x)),
                                                                           layout.ref(), hir::view(out), o,
                                                                           hir::input_validation::fused),
                           ("hir::group_advantages: scores[" + std::to_string(pos) + "] = nan is not finite").c_str(),
                           hir::invalid_argument);
      const std::size_t block_start = std::min(pos / (8 * g) * 8 * g, n / (8 * g) * 8 * g); // the tail: one unit
      for (std::size_t i = 0; i < n; ++i) {
        if (i < block_start)
          CHECK(out[i] == expected[i]);
        else
          CHECK(out[i] == 42.0f);
      }
    }
  }
#if defined(_OPENMP)
  omp_set_num_threads(threads);
#endif
}
