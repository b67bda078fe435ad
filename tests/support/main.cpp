// SPDX-License-Identifier: Apache-2.0
// doctest main for hir's tests. Prints the random seed (override with --seed=N or HIR_TEST_SEED=N). In CUDA builds
// (HIR_TEST_CUDA_PROBE) it first probes for a GPU: without one it prints why and exits 77, which CTest reports as
// Skipped; with HIR_REQUIRE_GPU=1 a missing GPU is a failure instead.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "support/seed.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#if defined(HIR_TEST_CUDA_PROBE)
#  include <cuda_runtime_api.h>
#endif

namespace hir::test {
std::uint64_t& seed_storage() {
  static std::uint64_t s = 0;
  return s;
}
} // namespace hir::test

int main(int argc, char** argv) {
  std::uint64_t seed = static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  if (const char* env = std::getenv("HIR_TEST_SEED"))
    seed = std::strtoull(env, nullptr, 10);
  bool listing = false;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--seed=", 7) == 0)
      seed = std::strtoull(argv[i] + 7, nullptr, 10);
    if (std::strstr(argv[i], "list") || std::strstr(argv[i], "help") || std::strstr(argv[i], "-h"))
      listing = true;
  }
  hir::test::seed_storage() = seed;
  (void)listing;

#if defined(HIR_TEST_CUDA_PROBE)
  if (!listing) {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count); // leaves count unwritten on error: test the code
    const char* require = std::getenv("HIR_REQUIRE_GPU");
    const bool required = require && std::strcmp(require, "0") != 0;
    if (err != cudaSuccess || count == 0) {
      std::printf("hir: no usable CUDA device (%s); %s\n", err != cudaSuccess ? cudaGetErrorString(err) : "0 devices",
                  required ? "HIR_REQUIRE_GPU is set: failing" : "skipping (exit 77)");
      return required ? 1 : 77;
    }
  }
#endif
  std::printf("hir test seed: %llu (rerun with --seed=%llu)\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  doctest::Context ctx;
  ctx.applyCommandLine(argc, argv);
  return ctx.run();
}
