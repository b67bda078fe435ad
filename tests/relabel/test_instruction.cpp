// SPDX-License-Identifier: Apache-2.0
// Instructions: the six built-in layouts rendered exactly, a user template, rewriting (met constraints in their
// original order, same template), per-row instructions of a batch, tokenization through a user tokenizer (with one
// call per distinct instruction), and bad input.
#include "support/backends.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <vector>

namespace {

hir::instruction example(hir::instruction_template style = {}) {
  hir::instruction q;
  q.task = "Write a haiku about autumn.";
  q.constraints = {"Use exactly three lines", "Mention the moon.", "Do not use commas", "End with a question?"};
  q.style = std::move(style);
  return q;
}

} // namespace

TEST_CASE("instruction: the six built-in layouts") {
  using L = hir::instruction_layout;
  CHECK(
      example(L::sentences_after_task).render() ==
      "Write a haiku about autumn. Use exactly three lines. Mention the moon. Do not use commas. End with a question?");
  CHECK(example(L::newline_after_task).render() == "Write a haiku about autumn.\nUse exactly three lines. Mention the "
                                                   "moon. Do not use commas. End with a question?");
  CHECK(example(L::numbered_rules).render() ==
        "Write a haiku about autumn.\n\nThe output must follow the following rules:\n1. Use exactly three lines\n"
        "2. Mention the moon.\n3. Do not use commas\n4. End with a question?");
  CHECK(example(L::bullet_list).render() ==
        "Write a haiku about autumn.\n\n- Use exactly three lines\n- Mention the moon.\n- Do not use commas\n"
        "- End with a question?");
  CHECK(example(L::constraints_before_task).render() ==
        "Use exactly three lines. Mention the moon. Do not use commas. End with a question?\n\nWrite a haiku about "
        "autumn.");
  CHECK(example(L::one_per_line).render() ==
        "Write a haiku about autumn.\n\nUse exactly three lines\nMention the moon.\nDo not use commas\nEnd with a "
        "question?");
  CHECK(hir::instruction_layouts.size() == 6);
  CHECK(hir::instruction_template(L::numbered_rules).name() == "type3");
  // whitespace around the joined block is stripped (Python's str.strip()); a comma ending gets no period
  hir::instruction q;
  q.task = "T";
  q.constraints = {"  a,", "b  \n"};
  CHECK(q.render() == "T a, b  \n.");
  q.style = L::bullet_list;
  CHECK(q.render() == "T\n\n-   a,\n- b");
  // no constraints: the task alone
  q.constraints.clear();
  for (auto l : hir::instruction_layouts) {
    q.style = l;
    CHECK(q.render() == "T");
  }
}

TEST_CASE("instruction: a user template") {
  hir::instruction_template custom(
      [](const std::string& task, const std::vector<std::string>& cs) {
        std::string s = "<task>" + task + "</task>";
        for (const auto& c : cs)
          s += "<c>" + c + "</c>";
        return s;
      },
      "xml");
  CHECK(custom.is_custom());
  CHECK(custom.name() == "xml");
  const auto q = example(custom);
  CHECK(q.render() == "<task>Write a haiku about autumn.</task><c>Use exactly three lines</c><c>Mention the moon.</c>"
                      "<c>Do not use commas</c><c>End with a question?</c>");
  const auto r = hir::rewrite_instruction(q, 0b1010);
  CHECK(r.render() == "<task>Write a haiku about autumn.</task><c>Mention the moon.</c><c>End with a question?</c>");
  CHECK_THROWS_AS(hir::instruction_template(hir::instruction_template::render_function{}), hir::invalid_argument);
}

TEST_CASE("rewrite_instruction: the met constraints, in their original order, with the same template") {
  for (auto layout : hir::instruction_layouts) {
    const auto q = example(layout);
    const auto r = hir::rewrite_instruction(q, 0b1101); // met c0, c2, c3; violated c1
    CHECK(r.task == q.task);
    CHECK(r.constraints ==
          std::vector<std::string>{"Use exactly three lines", "Do not use commas", "End with a question?"});
    CHECK(!r.style.is_custom());
    CHECK(r.style.layout() == layout);
    // rendering the rewritten instruction equals rendering the kept constraints with the original template
    CHECK(r.render() == q.style.render(q.task, r.constraints));
  }
  CHECK(hir::rewrite_instruction(example(), 0b1111).constraints.size() == 4);
  CHECK(hir::rewrite_instruction(example(), 0).constraints.empty());
  CHECK_THROWS_WITH_AS(
      hir::rewrite_instruction(example(), 0b10000),
      doctest::Contains("hir::rewrite_instruction: kept = 0x10 has bits at or above the 4 constraints"),
      hir::invalid_argument);
  hir::instruction q = example();
  q.constraints[1].clear();
  CHECK_THROWS_WITH_AS(q.render(), doctest::Contains("constraint 1 is an empty string"), hir::invalid_argument);
}

TEST_CASE("row_instructions and tokenize_instructions: a batch of originals and replays") {
  std::vector<hir::instruction> prompts = {example(hir::instruction_layout::numbered_rules), example()};
  prompts[1].task = "Summarize.";
  prompts[1].constraints = {"Be brief", "Use French"};
  // rows: two originals of prompt 0, one of prompt 1, replays (0, 0b0101) and (1, 0b10)
  const std::vector<std::int64_t> prompt = {0, 0, 1, 0, 1};
  const std::vector<std::uint64_t> masks = {0b1111, 0b1111, 0b11, 0b0101, 0b10};
  const auto rows = hir::row_instructions(prompts, prompt, masks);
  REQUIRE(rows.size() == 5);
  CHECK(rows[3].render() == "Write a haiku about autumn.\n\nThe output must follow the following rules:\n"
                            "1. Use exactly three lines\n2. Do not use commas");
  CHECK(rows[4].render() == "Summarize. Use French.");
  CHECK(rows[0].render() == prompts[0].render());
  CHECK(hir::constraint_counts(prompts) == std::vector<std::uint8_t>{4, 2});

  // A toy tokenizer: one id per byte, plus a BOS id 1; counts its calls. No vocabulary is assumed by hir.
  int calls = 0;
  auto tokenizer = [&calls](const std::string& text) {
    ++calls;
    std::vector<std::int32_t> ids = {1};
    for (unsigned char ch : text)
      ids.push_back(static_cast<std::int32_t>(ch) + 2);
    return ids;
  };
  const auto all = hir::tokenize_instructions(rows, tokenizer);
  CHECK(calls == 5);
  CHECK(all.size() == 5);
  CHECK(all.row(4).size() == std::string("Summarize. Use French.").size() + 1);
  CHECK(all.row(4)[1] == static_cast<std::int32_t>('S') + 2);
  calls = 0;
  const auto cached = hir::tokenize_instructions(prompts, prompt, masks, tokenizer);
  CHECK(calls == 4); // rows 0 and 1 share (prompt 0, all constraints)
  CHECK(cached.ids == all.ids);
  CHECK(cached.offsets == all.offsets);
  // a tokenizer with another id type
  auto wide = [](const std::string& text) { return std::vector<std::int64_t>(text.size(), 7); };
  const auto w = hir::tokenize_instructions(rows, wide);
  static_assert(std::is_same_v<decltype(w.ids)::value_type, std::int64_t>);
  CHECK(w.row(2).size() == rows[2].render().size());

  CHECK_THROWS_WITH_AS(hir::row_instructions(prompts, std::vector<std::int64_t>{2}, std::vector<std::uint64_t>{1}),
                       doctest::Contains("prompt[0] = 2 is outside [0, 2)"), hir::invalid_argument);
  CHECK_THROWS_WITH_AS(hir::row_instructions(prompts, std::vector<std::int64_t>{1}, std::vector<std::uint64_t>{4}),
                       doctest::Contains("constraint_mask[0] = 0x4 has bits beyond the 2 constraints of prompt 1"),
                       hir::invalid_argument);
  CHECK_THROWS_WITH_AS(hir::row_instructions(prompts, prompt, std::vector<std::uint64_t>{1}),
                       doctest::Contains("constraint_mask.size() = 1 does not match prompt.size() = 5"),
                       hir::invalid_argument);
}
