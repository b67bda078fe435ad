// SPDX-License-Identifier: Apache-2.0
// Helpers of the hir::nn tests: random vectors from the run's seed, central finite differences in double, and a
// gradient comparison that reports the worst element.
#pragma once

#include "support/compare.hpp"

#include <doctest/doctest.h>

#include <hir/nn/config.hpp> // token_t only: also usable from device (nvcc) translation units

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace hir::test::nn {

/// n values uniform in [lo, hi) from `rng`.
template <class T = double>
std::vector<T> uniform(std::mt19937_64& rng, std::size_t n, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<T> v(n);
  for (auto& x : v)
    x = static_cast<T>(d(rng));
  return v;
}

/// n tokens uniform in [0, V).
inline std::vector<hir::nn::token_t> tokens(std::mt19937_64& rng, std::size_t n, std::size_t V) {
  std::uniform_int_distribution<int> d(0, static_cast<int>(V) - 1);
  std::vector<hir::nn::token_t> v(n);
  for (auto& x : v)
    x = d(rng);
  return v;
}

/// Central differences of loss() with respect to every element of x (restored afterwards).
template <class F>
std::vector<double> numeric_grad(std::vector<double>& x, F&& loss, double h = 1e-6) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    g[i] = (lp - lm) / (2 * h);
  }
  return g;
}

/// Largest |a − e| / (abs + rel·|e|) over the elements; ≤ 1 passes. Describes the worst element in `where`.
inline double worst_ratio(const std::vector<double>& a, const std::vector<double>& e, double abs_tol, double rel_tol,
                          std::string& where) {
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size() && i < e.size(); ++i) {
    const double r = std::fabs(a[i] - e[i]) / (abs_tol + rel_tol * std::fabs(e[i]));
    if (r > worst) {
      worst = r;
      std::ostringstream os;
      os.precision(12);
      os << "index " << i << ": analytic " << a[i] << " numeric " << e[i];
      where = os.str();
    }
  }
  if (a.size() != e.size()) {
    where = "sizes differ";
    return 1e300;
  }
  return worst;
}

} // namespace hir::test::nn

/// CHECK an analytic gradient against a numeric one within abs + rel·|numeric|.
#define HIR_CHECK_GRAD(name, analytic, numeric, abs_tol, rel_tol)                                                      \
  do {                                                                                                                 \
    std::string hir_where_;                                                                                            \
    const double hir_r_ = ::hir::test::nn::worst_ratio((analytic), (numeric), (abs_tol), (rel_tol), hir_where_);       \
    INFO(name << ": worst " << hir_where_);                                                                            \
    CHECK(hir_r_ <= 1.0);                                                                                              \
  } while (0)
