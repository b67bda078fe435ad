// SPDX-License-Identifier: Apache-2.0
// hir's exceptions and the helpers that build their messages ("hir::<function>: <what> = <value> ...").
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace hir {

/// A precondition of a public hir function does not hold. The message starts with the function's qualified name
/// and names the offending values; nothing the function was asked to write has been written.
class invalid_argument : public std::invalid_argument {
public:
  using std::invalid_argument::invalid_argument;
};

/// A CUDA runtime or CUB call failed (device backend, CUDA system only).
class cuda_error : public std::runtime_error {
public:
  cuda_error(int code, const std::string& what) : std::runtime_error(what), code_(code) {}
  /// The cudaError_t value, as an int so this header needs no CUDA headers.
  int code() const noexcept { return code_; }

private:
  int code_;
};

namespace detail {

/// Concatenates `parts` with operator<< after "hir::<fn>: ".
template <class... Parts>
std::string message(const char* fn, Parts&&... parts) {
  std::ostringstream os;
  os.precision(9);
  os << "hir::" << fn << ": ";
  (os << ... << std::forward<Parts>(parts));
  return os.str();
}

/// Throws hir::invalid_argument with message(fn, parts...).
template <class... Parts>
[[noreturn]] void fail(const char* fn, Parts&&... parts) {
  throw invalid_argument(message(fn, std::forward<Parts>(parts)...));
}

/// Throws unless `a == b`, naming both sizes.
inline void check_size(const char* fn, const char* what_a, std::size_t a, const char* what_b, std::size_t b) {
  if (a != b)
    fail(fn, what_a, " = ", a, " does not match ", what_b, " = ", b);
}

} // namespace detail
} // namespace hir
