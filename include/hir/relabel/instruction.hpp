// SPDX-License-Identifier: Apache-2.0
// Instructions and their rewriting (host only). An instruction is a task plus an ordered list of constraints and the
// template that renders them to text; rewriting keeps exactly the constraints a response met, in their original
// order, with the same template. Rendering to tokens goes through a user tokenizer, so hir never assumes a vocabulary.
//
// The six built-in layouts are the authors' surface templates (sastpg/HIR `_concat_question`, types 1–6):
//
//   sentences_after_task     "<task> <c1>. <c2>."                 (a "." is added unless c ends in , . ? !)
//   newline_after_task       "<task>\n<c1>. <c2>."
//   numbered_rules           "<task>\n\nThe output must follow the following rules:\n1. <c1>\n2. <c2>"
//   bullet_list              "<task>\n\n- <c1>\n- <c2>"
//   constraints_before_task  "<c1>. <c2>.\n\n<task>"
//   one_per_line             "<task>\n\n<c1>\n<c2>"
//
// The joined constraint block is stripped of leading and trailing whitespace, as Python's str.strip() does; an
// instruction without constraints renders as its task alone. Constraints must be non-empty strings.
#pragma once

#include <hir/core/error.hpp>
#include <hir/core/span.hpp>
#include <hir/rewards/reward_vector.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace hir {

/// The authors' six surface layouts of an instruction (types 1–6 of their code, in that order).
enum class instruction_layout {
  sentences_after_task,    ///< type 1: constraints as sentences after the task, separated by a space
  newline_after_task,      ///< type 2: constraints as sentences on a new line after the task
  numbered_rules,          ///< type 3: "The output must follow the following rules:" and a numbered list
  bullet_list,             ///< type 4: a "- " bullet list after a blank line
  constraints_before_task, ///< type 5: constraints as sentences, a blank line, then the task
  one_per_line             ///< type 6: one constraint per line after a blank line
};

/// The six layouts, in the authors' order (type 1 … type 6).
inline constexpr std::array<instruction_layout, 6> instruction_layouts = {
    instruction_layout::sentences_after_task,    instruction_layout::newline_after_task,
    instruction_layout::numbered_rules,          instruction_layout::bullet_list,
    instruction_layout::constraints_before_task, instruction_layout::one_per_line};

namespace detail {

inline bool is_strip_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f' || (c >= '\x1c' && c <= '\x1f');
}

/// Python's str.strip() for ASCII whitespace.
inline std::string strip(const std::string& s) {
  std::size_t b = 0, e = s.size();
  while (b < e && is_strip_space(s[b]))
    ++b;
  while (e > b && is_strip_space(s[e - 1]))
    --e;
  return s.substr(b, e - b);
}

/// Constraints joined as sentences: a ". " after each one unless it ends in , . ? ! (then a space), stripped.
inline std::string join_sentences(const std::vector<std::string>& constraints) {
  std::string out;
  for (const auto& c : constraints) {
    const char last = c.back();
    out += c;
    out += (last != ',' && last != '.' && last != '?' && last != '!') ? ". " : " ";
  }
  return strip(out);
}

} // namespace detail

/// How an instruction is rendered to text: one of the built-in layouts or a user callable
/// `std::string(const std::string& task, const std::vector<std::string>& constraints)`.
class instruction_template {
public:
  using render_function = std::function<std::string(const std::string&, const std::vector<std::string>&)>;

  /// The authors' type 1 layout.
  instruction_template() = default;
  /// A built-in layout (implicit, so an instruction_layout can be used where a template is expected).
  instruction_template(instruction_layout layout) : layout_(layout) {} // NOLINT(google-explicit-constructor)
  /// A user template. `name` is for diagnostics only.
  explicit instruction_template(render_function f, std::string name = "custom")
      : fn_(std::move(f)), name_(std::move(name)) {
    if (!fn_)
      detail::fail("instruction_template", "the render function is empty");
  }

  /// True for a user template.
  bool is_custom() const noexcept { return static_cast<bool>(fn_); }
  /// The built-in layout (meaningless for a user template).
  instruction_layout layout() const noexcept { return layout_; }
  /// "type1" … "type6" for the built-in layouts, the given name for a user template.
  std::string name() const { return is_custom() ? name_ : "type" + std::to_string(static_cast<int>(layout_) + 1); }

  /// Renders a task and its constraints. \throws hir::invalid_argument on an empty constraint string.
  std::string render(const std::string& task, const std::vector<std::string>& constraints) const {
    for (std::size_t c = 0; c < constraints.size(); ++c)
      if (constraints[c].empty())
        detail::fail("instruction_template::render", "constraint ", c, " is an empty string");
    if (is_custom())
      return fn_(task, constraints);
    if (constraints.empty())
      return task;
    switch (layout_) {
    case instruction_layout::newline_after_task:
      return task + "\n" + detail::join_sentences(constraints);
    case instruction_layout::numbered_rules: {
      std::string block = "The output must follow the following rules:\n";
      for (std::size_t c = 0; c < constraints.size(); ++c)
        block += std::to_string(c + 1) + ". " + constraints[c] + "\n";
      return task + "\n\n" + detail::strip(block);
    }
    case instruction_layout::bullet_list: {
      std::string block;
      for (const auto& c : constraints)
        block += "- " + c + "\n";
      return task + "\n\n" + detail::strip(block);
    }
    case instruction_layout::constraints_before_task:
      return detail::join_sentences(constraints) + "\n\n" + task;
    case instruction_layout::one_per_line: {
      std::string block;
      for (const auto& c : constraints)
        block += c + "\n";
      return task + "\n\n" + detail::strip(block);
    }
    case instruction_layout::sentences_after_task:
    default:
      return task + " " + detail::join_sentences(constraints);
    }
  }

private:
  instruction_layout layout_ = instruction_layout::sentences_after_task;
  render_function fn_;
  std::string name_;
};

/// An instruction q = (x, C): a task, its ordered constraints, and the template that renders them.
struct instruction {
  std::string task;                     ///< x
  std::vector<std::string> constraints; ///< C = (c_1 … c_n), n ≤ 64; verdict bit c refers to constraints[c]
  instruction_template style;           ///< the surface template (kept by rewriting)

  /// The instruction's text.
  std::string render() const { return style.render(task, constraints); }
};

/// The rewritten instruction q' = (x, C'): the constraints whose bit is set in `kept` (bit c = constraints[c]), in
/// their original order, with the same task and template. For a replay `kept` is the response's verdict mask.
/// \throws hir::invalid_argument if q has more than 64 constraints or `kept` has a bit at or above their number.
inline instruction rewrite_instruction(const instruction& q, std::uint64_t kept) {
  const std::size_t n = q.constraints.size();
  if (n > max_constraints)
    detail::fail("rewrite_instruction", "the instruction has ", n, " constraints; at most ", max_constraints,
                 " are supported");
  if ((kept & ~detail::low_bits(static_cast<unsigned>(n))) != 0)
    detail::fail("rewrite_instruction", "kept = 0x", std::hex, kept, std::dec, " has bits at or above the ", n,
                 " constraints");
  instruction out;
  out.task = q.task;
  out.style = q.style;
  for (std::size_t c = 0; c < n; ++c)
    if ((kept >> c) & 1u)
      out.constraints.push_back(q.constraints[c]);
  return out;
}

/// The constraint count of each instruction, for replay_candidates_ref / rollout_batch_ref::constraint_counts.
/// \throws hir::invalid_argument if one has more than 64 constraints.
inline std::vector<std::uint8_t> constraint_counts(span<const instruction> prompts) {
  std::vector<std::uint8_t> out(prompts.size());
  for (std::size_t p = 0; p < prompts.size(); ++p) {
    if (prompts[p].constraints.size() > max_constraints)
      detail::fail("constraint_counts", "instruction ", p, " has ", prompts[p].constraints.size(),
                   " constraints; at most ", max_constraints, " are supported");
    out[p] = static_cast<std::uint8_t>(prompts[p].constraints.size());
  }
  return out;
}

/// The instruction of every row of a batch: rewrite_instruction(prompts[prompt[r]], constraint_mask[r]) — the
/// original instruction for originals (all bits), the rewritten one for replays. Host arrays (copy a device
/// replay_batch's prompt and constraint_mask with hir::to_host first).
/// \throws hir::invalid_argument on mismatched sizes, a prompt index out of range, or a mask bit beyond the prompt's
///         constraints.
inline std::vector<instruction> row_instructions(span<const instruction> prompts, span<const std::int64_t> prompt,
                                                 span<const std::uint64_t> constraint_mask) {
  detail::check_size("row_instructions", "constraint_mask.size()", constraint_mask.size(), "prompt.size()",
                     prompt.size());
  for (std::size_t r = 0; r < prompt.size(); ++r) {
    if (prompt[r] < 0 || static_cast<std::size_t>(prompt[r]) >= prompts.size())
      detail::fail("row_instructions", "prompt[", r, "] = ", prompt[r], " is outside [0, ", prompts.size(), ")");
    const std::size_t n = prompts[static_cast<std::size_t>(prompt[r])].constraints.size();
    if (n > max_constraints || (constraint_mask[r] & ~detail::low_bits(static_cast<unsigned>(n))) != 0)
      detail::fail("row_instructions", "constraint_mask[", r, "] = 0x", std::hex, constraint_mask[r], std::dec,
                   " has bits beyond the ", n, " constraints of prompt ", prompt[r]);
  }
  std::vector<instruction> out;
  out.reserve(prompt.size());
  for (std::size_t r = 0; r < prompt.size(); ++r)
    out.push_back(rewrite_instruction(prompts[static_cast<std::size_t>(prompt[r])], constraint_mask[r]));
  return out;
}

/// Ragged token lists: row r is ids[offsets[r] .. offsets[r + 1]).
template <class Id>
struct ragged_tokens {
  std::vector<Id> ids;
  std::vector<std::int64_t> offsets{0};

  std::size_t size() const noexcept { return offsets.size() - 1; }
  span<const Id> row(std::size_t r) const {
    return {ids.data() + offsets[r], static_cast<std::size_t>(offsets[r + 1] - offsets[r])};
  }
};

/// Renders every instruction and tokenizes its text with `tokenizer`, a callable taking `const std::string&` and
/// returning a container of integer token ids (e.g. std::vector<std::int32_t>); the id type is deduced. Chat
/// templates, special tokens and truncation are the tokenizer's business.
template <class Tokenizer>
auto tokenize_instructions(span<const instruction> rows, Tokenizer&& tokenizer) {
  using result = std::decay_t<decltype(tokenizer(std::declval<const std::string&>()))>;
  using id = std::decay_t<decltype(*std::begin(std::declval<result&>()))>;
  static_assert(std::is_integral_v<id>, "hir::tokenize_instructions: the tokenizer must return integer token ids");
  ragged_tokens<id> out;
  out.offsets.reserve(rows.size() + 1);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const result ids = tokenizer(rows[r].render());
    out.ids.insert(out.ids.end(), std::begin(ids), std::end(ids));
    out.offsets.push_back(static_cast<std::int64_t>(out.ids.size()));
  }
  return out;
}

/// Renders and tokenizes the instruction of every row of a batch (see row_instructions), calling `tokenizer` once per
/// distinct (prompt, constraint mask): the m originals of a prompt share one call.
template <class Tokenizer>
auto tokenize_instructions(span<const instruction> prompts, span<const std::int64_t> prompt,
                           span<const std::uint64_t> constraint_mask, Tokenizer&& tokenizer) {
  using result = std::decay_t<decltype(tokenizer(std::declval<const std::string&>()))>;
  using id = std::decay_t<decltype(*std::begin(std::declval<result&>()))>;
  static_assert(std::is_integral_v<id>, "hir::tokenize_instructions: the tokenizer must return integer token ids");
  const std::vector<instruction> rows = row_instructions(prompts, prompt, constraint_mask); // validates
  std::map<std::pair<std::int64_t, std::uint64_t>, std::vector<id>> cache;
  ragged_tokens<id> out;
  out.offsets.reserve(rows.size() + 1);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    auto key = std::make_pair(prompt[r], constraint_mask[r]);
    auto it = cache.find(key);
    if (it == cache.end()) {
      const result ids = tokenizer(rows[r].render());
      it = cache.emplace(key, std::vector<id>(std::begin(ids), std::end(ids))).first;
    }
    out.ids.insert(out.ids.end(), it->second.begin(), it->second.end());
    out.offsets.push_back(static_cast<std::int64_t>(out.ids.size()));
  }
  return out;
}

} // namespace hir
