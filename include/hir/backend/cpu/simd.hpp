// SPDX-License-Identifier: Apache-2.0
// How the CPU backend's AVX-512 loops (group_advantages' uniform path, REINFORCE++ rows, the policy loss) are built
// and chosen: compiled whatever -march says, each function carrying its own target attribute (HIR_CPU_AVX512_FN), and
// taken at run time when the CPU has AVX-512F, BW, VL and DQ (cpu_has_avx512(), checked once). A build for the default
// x86-64 target therefore runs them on an AVX-512 machine, and the same binary runs the portable loops elsewhere.
// Define HIR_NO_AVX512 to leave them out (every call takes the portable loops; the tests build one target so).
#pragma once

// HIR_CPU_AVX512: 1 when the AVX-512 loops are compiled (x86-64, GCC or Clang, HIR_NO_AVX512 not defined).
#if !defined(HIR_NO_AVX512) && defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#  define HIR_CPU_AVX512 1
/// The target of every function that uses AVX-512 intrinsics (none may be a lambda: nvcc drops a lambda's attributes
/// when it hands host code to the host compiler).
#  define HIR_CPU_AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,popcnt")))
#  include <immintrin.h>
#else
#  define HIR_CPU_AVX512 0
#endif

namespace hir {
namespace backend {
namespace cpu {
namespace detail {

/// True when the AVX-512 loops can run here: the CPU (and OS) support AVX-512F, BW, VL and DQ. False when they are
/// not compiled.
inline bool cpu_has_avx512() {
#if HIR_CPU_AVX512
  static const bool v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return v;
#else
  return false;
#endif
}

} // namespace detail
} // namespace cpu
} // namespace backend
} // namespace hir
