// SPDX-License-Identifier: Apache-2.0
// Work splitting for the CPU transformer: one OpenMP parallel region per call that hands each thread one contiguous
// block of a range (static partition, so results do not depend on scheduling). Without OpenMP, or inside another
// parallel region, or when the range is too small to pay for a region (several µs on these machines), it runs inline.
#pragma once

#include <algorithm>
#include <cstddef>

#if defined(_OPENMP)
#  include <omp.h>
#endif

namespace hir::nn::detail {

/// Threads a parallel_for may use now (omp_get_max_threads(), 1 without OpenMP or inside a parallel region).
inline int max_threads() {
#if defined(_OPENMP)
  return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
  return 1;
#endif
}

/// Calls f(begin, end) on disjoint blocks covering [0, n), one block per thread, blocks of at least `grain`
/// items (rounded to multiples of `align` items, except the last). f must not throw.
template <class F>
void parallel_for(std::size_t n, std::size_t grain, F&& f, std::size_t align = 1) {
  if (n == 0)
    return;
  const std::size_t by_grain = std::max<std::size_t>(1, n / std::max<std::size_t>(grain, 1));
  const int threads = static_cast<int>(std::min<std::size_t>(static_cast<std::size_t>(max_threads()), by_grain));
  if (threads <= 1) {
    f(std::size_t{0}, n);
    return;
  }
#if defined(_OPENMP)
#  pragma omp parallel num_threads(threads)
  {
    const std::size_t nt = static_cast<std::size_t>(omp_get_num_threads());
    const std::size_t id = static_cast<std::size_t>(omp_get_thread_num());
    const std::size_t units = (n + align - 1) / align;
    const std::size_t b = std::min(n, units * id / nt * align), e = std::min(n, units * (id + 1) / nt * align);
    if (b < e)
      f(b, e);
  }
#else
  (void)align; // without OpenMP every range runs inline above
#endif
}

} // namespace hir::nn::detail
