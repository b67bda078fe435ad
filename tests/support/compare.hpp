// SPDX-License-Identifier: Apache-2.0
// Tolerance checks: |actual − expected| ≤ abs + rel·|expected| element-wise (llm.c style), reporting the first
// mismatch with its index, and random-input helpers.
#pragma once

#include <hir/core/error.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace hir::test {

/// The message of the hir::invalid_argument f throws, or "" if it does not throw.
template <class F>
std::string what_of(F&& f) {
  try {
    f();
  } catch (const hir::invalid_argument& e) {
    return e.what();
  }
  return "";
}

/// max |x| over a vector (at least 1e-30).
template <class V>
double max_abs(const V& v) {
  double m = 1e-30;
  for (auto x : v)
    m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}

/// Index of the first element outside tolerance, or -1 (equal values, infinities included, always agree).
template <class A, class E>
long long first_mismatch(const std::vector<A>& actual, const std::vector<E>& expected, double abs_tol, double rel_tol) {
  if (actual.size() != expected.size())
    return 0;
  for (std::size_t i = 0; i < actual.size(); ++i) {
    const double a = static_cast<double>(actual[i]), e = static_cast<double>(expected[i]);
    if (a != e && !(std::fabs(a - e) <= abs_tol + rel_tol * std::fabs(e)))
      return static_cast<long long>(i);
  }
  return -1;
}

template <class A, class E>
std::string describe_mismatch(const std::vector<A>& actual, const std::vector<E>& expected, long long i) {
  std::ostringstream os;
  os.precision(12);
  if (actual.size() != expected.size())
    os << "sizes differ: " << actual.size() << " vs " << expected.size();
  else
    os << "index " << i << ": actual " << static_cast<double>(actual[static_cast<std::size_t>(i)]) << " expected "
       << static_cast<double>(expected[static_cast<std::size_t>(i)]);
  return os.str();
}

} // namespace hir::test

/// CHECK that two vectors agree within abs + rel·|expected|, naming the first mismatch.
#define HIR_CHECK_CLOSE(actual, expected, abs_tol, rel_tol)                                                            \
  do {                                                                                                                 \
    const auto& hir_a_ = (actual);                                                                                     \
    const auto& hir_e_ = (expected);                                                                                   \
    const long long hir_i_ = ::hir::test::first_mismatch(hir_a_, hir_e_, (abs_tol), (rel_tol));                        \
    CHECK_MESSAGE(hir_i_ < 0, ::hir::test::describe_mismatch(hir_a_, hir_e_, hir_i_));                                 \
  } while (0)
