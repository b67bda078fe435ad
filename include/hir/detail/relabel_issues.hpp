// SPDX-License-Identifier: Apache-2.0
// Input-issue codes of the hindsight-replay and preference functions: an implementation reports the first offending
// index and what is wrong with it; the public function turns that into a hir::invalid_argument message before any
// output is written.
#pragma once

namespace hir {
namespace detail {

/// What is wrong with one candidate or row (the public functions turn the code into a message).
enum class relabel_issue : int {
  none = 0,
  prompt_out_of_range,     ///< prompt index outside [0, num_prompts)
  count_mismatch,          ///< verdict count differs from the prompt's constraint count
  count_inconsistent,      ///< verdict count differs from an earlier response to the same prompt
  entropy_invalid,         ///< summed entropy negative or not finite
  length_invalid,          ///< response length < 1
  weights_invalid,         ///< prompt weights negative, not finite, zero sum, or fewer than the constraints
  mask_invalid,            ///< a token mask entry other than 0 or 1
  logp_invalid,            ///< a non-finite log-probability on a valid token
  value_invalid,           ///< a non-finite value on a valid token
  score_invalid,           ///< a non-finite score
  prompt_empty,            ///< a prompt in [0, num_prompts) without responses
  index_out_of_range,      ///< a replay index outside [0, batch)
  index_repeated,          ///< a response selected twice
  index_ineligible,        ///< a selected response that met no or every constraint
  response_empty,          ///< a selected response without valid tokens
  recomputed_logp_invalid, ///< a non-finite recomputed log-probability on a valid token
  pair_out_of_range,       ///< a preference pair row outside [0, rows)
  pair_level_invalid       ///< a preference pair level other than 0 (response) or 1 (instruction)
};

/// A problem found in an input array: the issue and the offending index (candidate, row, replay or pair).
struct relabel_input_issue {
  relabel_issue issue = relabel_issue::none;
  long long index = -1;
  explicit operator bool() const { return issue != relabel_issue::none; }
};

/// A short description of each issue, for messages.
inline const char* describe(relabel_issue issue) {
  switch (issue) {
  case relabel_issue::prompt_out_of_range:
    return "has a prompt index outside [0, num_prompts)";
  case relabel_issue::count_mismatch:
    return "has a verdict count that disagrees with its prompt's constraint count";
  case relabel_issue::count_inconsistent:
    return "has a verdict count that disagrees with an earlier response to the same prompt";
  case relabel_issue::entropy_invalid:
    return "has a negative or non-finite summed entropy";
  case relabel_issue::length_invalid:
    return "has a response length < 1";
  case relabel_issue::weights_invalid:
    return "has constraint weights that are negative, non-finite, sum to zero or are fewer than its constraints";
  case relabel_issue::mask_invalid:
    return "has a token mask entry other than 0 or 1";
  case relabel_issue::logp_invalid:
    return "has a non-finite log-probability on a valid token";
  case relabel_issue::value_invalid:
    return "has a non-finite value on a valid token";
  case relabel_issue::score_invalid:
    return "has a non-finite score";
  case relabel_issue::prompt_empty:
    return "has no responses (every prompt in [0, num_prompts) needs at least one)";
  case relabel_issue::index_out_of_range:
    return "is outside [0, batch)";
  case relabel_issue::index_repeated:
    return "selects a response that an earlier replay already selected (each response is replayed at most once)";
  case relabel_issue::index_ineligible:
    return "selects a response that met no constraint or every constraint (only 0 < fraction met < 1 is replayed)";
  case relabel_issue::response_empty:
    return "selects a response without valid tokens";
  case relabel_issue::recomputed_logp_invalid:
    return "has a non-finite recomputed log-probability on a valid token";
  case relabel_issue::pair_out_of_range:
    return "names a row outside [0, rows)";
  case relabel_issue::pair_level_invalid:
    return "has a level other than 0 (response) or 1 (instruction)";
  case relabel_issue::none:
  default:
    return "is valid";
  }
}

} // namespace detail
} // namespace hir
