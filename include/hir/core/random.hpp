// SPDX-License-Identifier: Apache-2.0
// A counter-based random generator (Philox-4x32-10, Salmon et al. 2011): the i-th draw of a stream is a pure
// function of (seed, stream, i), so results do not depend on thread count, batch split or backend.
#pragma once

#include <hir/config.hpp>

#include <cstdint>

namespace hir {

/// Philox-4x32-10. `generate(counter)` returns four independent 32-bit words for a 64-bit counter within a
/// 64-bit stream id; the key is the seed.
struct philox {
  std::uint64_t seed = 0;

  struct block {
    std::uint32_t v[4];
  };

  HIR_HOST_DEVICE static void mulhilo(std::uint32_t a, std::uint32_t b, std::uint32_t& hi, std::uint32_t& lo) {
    const std::uint64_t p = static_cast<std::uint64_t>(a) * b;
    hi = static_cast<std::uint32_t>(p >> 32);
    lo = static_cast<std::uint32_t>(p);
  }

  /// Four 32-bit words for (stream, counter).
  HIR_HOST_DEVICE block generate(std::uint64_t stream, std::uint64_t counter) const {
    std::uint32_t c0 = static_cast<std::uint32_t>(counter), c1 = static_cast<std::uint32_t>(counter >> 32);
    std::uint32_t c2 = static_cast<std::uint32_t>(stream), c3 = static_cast<std::uint32_t>(stream >> 32);
    std::uint32_t k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
    for (int round = 0; round < 10; ++round) {
      std::uint32_t hi0, lo0, hi1, lo1;
      mulhilo(0xD2511F53u, c0, hi0, lo0);
      mulhilo(0xCD9E8D57u, c2, hi1, lo1);
      const std::uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
      c0 = n0;
      c1 = n1;
      c2 = n2;
      c3 = n3;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    return block{{c0, c1, c2, c3}};
  }

  /// A uniform double in [0, 1) with 53 random bits, for (stream, counter).
  HIR_HOST_DEVICE double uniform(std::uint64_t stream, std::uint64_t counter) const {
    const block b = generate(stream, counter);
    const std::uint64_t bits = (static_cast<std::uint64_t>(b.v[0]) << 21) ^ (static_cast<std::uint64_t>(b.v[1]) >> 11);
    return static_cast<double>(bits & ((std::uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
  }

  /// A 64-bit random word for (stream, counter).
  HIR_HOST_DEVICE std::uint64_t bits64(std::uint64_t stream, std::uint64_t counter) const {
    const block b = generate(stream, counter);
    return (static_cast<std::uint64_t>(b.v[0]) << 32) | b.v[1];
  }
};

} // namespace hir
