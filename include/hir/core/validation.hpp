// SPDX-License-Identifier: Apache-2.0
// When an algorithm checks its inputs: before writing anything (the default, the strong guarantee) or fused into
// the computing pass (one pass over the inputs fewer; on an error the output has been partly written or zero-filled).
#pragma once

namespace hir {

/// When non-finite or malformed inputs are detected. They are always detected and reported with the function's name
/// and the offending value; the choice is only what the output holds when that happens.
enum class input_validation {
  before_writing, ///< a read-only pass over the inputs runs first: on error the outputs are untouched
  fused           ///< detected inside the computing pass: on error the outputs are partly written or zero-filled
};

} // namespace hir
