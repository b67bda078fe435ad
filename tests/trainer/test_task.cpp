// SPDX-License-Identifier: Apache-2.0
// The trainer's synthetic task (apps/hir_train/task.hpp): vocabulary layout and names, constraint tokens, every
// verifier on hand-written responses (both verdicts, empty and punctuation-only responses, count boundaries),
// instructions and the HiR rewrite, generated instructions being satisfiable, pool disjointness and
// reproducibility, responses for chosen verdicts, and the demonstrations' met rates (fixed seeds, generous bounds).
#include "hir_train/task.hpp"

#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

using namespace hir::toy;
using V = vocabulary;

/// Token ids of a space-separated list of token names ("apple pear . <eos>").
std::vector<int> toks(const std::string& text) {
  std::vector<int> ids;
  std::istringstream in(text);
  std::string s;
  while (in >> s) {
    const int id = V::id(s);
    REQUIRE_MESSAGE(id >= 0, "unknown token name " << s);
    ids.push_back(id);
  }
  return ids;
}

int tok(const std::string& name) {
  return toks(name).at(0);
}

constraint con(const std::string& name) {
  return constraint::from_token(tok(name));
}

/// The verdict of constraint `name` on `response`.
bool check(const std::string& name, const std::string& response) {
  return con(name).check(toks(response));
}

/// FNV-1a over a sequence of ints.
std::uint64_t fnv(std::uint64_t h, const std::vector<int>& v) {
  for (int x : v) {
    h ^= static_cast<std::uint32_t>(x);
    h *= 1099511628211ull;
  }
  return h;
}

std::uint64_t pool_hash(const std::vector<task>& pool) {
  std::uint64_t h = 14695981039346656037ull;
  for (const auto& t : pool)
    h = fnv(fnv(h, t.instr.tokens()), t.reference);
  return h;
}

bool same_pool(const std::vector<task>& a, const std::vector<task>& b) {
  if (a.size() != b.size())
    return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].instr != b[i].instr || a[i].reference != b[i].reference)
      return false;
  return true;
}

task_config small_config(std::size_t warm, std::size_t rl, std::size_t eval) {
  task_config c;
  c.warm_start_size = warm;
  c.rl_size = rl;
  c.eval_size = eval;
  return c;
}

} // namespace

TEST_CASE("task vocabulary: layout, names and predicates") {
  CHECK(V::size() == 363);
  CHECK(V::names().size() == V::size());
  CHECK(V::name(V::pad) == "<pad>");
  CHECK(V::name(V::bos) == "<bos>");
  CHECK(V::name(V::sep) == "<sep>");
  CHECK(V::name(V::eos) == "<eos>");
  CHECK(V::name(V::period) == ".");
  CHECK(V::name(V::comma) == ",");
  CHECK(V::name(V::word(0, 0)) == "apple");
  CHECK(V::name(V::word(1, 0)) == "red");
  CHECK(V::name(V::word(4, 7)) == "knife");
  CHECK(V::name(V::topic_token(3)) == "T:weather");
  CHECK(V::name(V::first_constraint) == "LEN>=:1");
  CHECK(V::name(V::num_tokens - 1) == "NOCOMMA");
  CHECK(V::kind_begin(constraint_kind::word_count) == V::id("COUNT:apple:2"));
  CHECK(V::id("no such token") == -1);

  std::set<std::string> unique(V::names().begin(), V::names().end());
  CHECK(unique.size() == V::size());
  for (int id = 0; id < V::num_tokens; ++id)
    CHECK(V::id(V::name(id)) == id);

  int words = 0, punct = 0, topics = 0, cons = 0, response = 0;
  for (int id = 0; id < V::num_tokens; ++id) {
    words += V::is_word(id);
    punct += V::is_punctuation(id);
    topics += V::is_topic(id);
    cons += V::is_constraint(id);
    response += V::is_response_token(id);
  }
  CHECK(words == 40);
  CHECK(punct == 2);
  CHECK(topics == 5);
  CHECK(cons == 312);
  CHECK(response == 43);
  const auto rt = V::response_tokens();
  CHECK(rt.size() == 43);
  for (int id : rt)
    CHECK(V::is_response_token(id));
  for (int t = 0; t < V::num_topics; ++t)
    for (int i = 0; i < V::words_per_topic; ++i)
      CHECK(V::topic_of_word(V::word(t, i)) == t);

  CHECK_FALSE(V::valid(-1));
  CHECK_FALSE(V::valid(V::num_tokens));
  CHECK_THROWS_AS(V::name(V::num_tokens), hir::invalid_argument);
  CHECK_THROWS_AS(V::word(5, 0), hir::invalid_argument);
  CHECK_THROWS_AS(V::word(0, 8), hir::invalid_argument);
  CHECK_THROWS_AS(V::topic_of_word(V::period), hir::invalid_argument);
}

TEST_CASE("task constraints: one token each, round trip, canonical order, validation") {
  for (int id = V::first_constraint; id < V::num_tokens; ++id) {
    const constraint c = constraint::from_token(id);
    CHECK(c.token() == id);
    CHECK(c.name() == V::name(id));
    CHECK(c.name().rfind(kind_name(c.kind()), 0) == 0); // the name starts with its kind's prefix
    CHECK_FALSE(c.description().empty());
  }
  // kinds appear in canonical order along the token ids
  for (int id = V::first_constraint + 1; id < V::num_tokens; ++id)
    CHECK(static_cast<int>(constraint::from_token(id - 1).kind()) <=
          static_cast<int>(constraint::from_token(id).kind()));

  CHECK(constraint::min_words(6).name() == "LEN>=:6");
  CHECK(constraint::max_words(12).name() == "LEN<=:12");
  CHECK(constraint::include_word(tok("apple")).name() == "HAS:apple");
  CHECK(constraint::exclude_word(tok("fox")).name() == "NOT:fox");
  CHECK(constraint::start_with(tok("saw")).name() == "START:saw");
  CHECK(constraint::end_with(V::period).name() == "END:.");
  CHECK(constraint::end_with(V::comma).name() == "END:,");
  CHECK(constraint::end_with(tok("knife")).name() == "END:knife");
  CHECK(constraint::sentences(0).name() == "SENT:0");
  CHECK(constraint::word_count(tok("red"), 2).name() == "COUNT:red:2");
  CHECK(constraint::word_count(tok("knife"), 4).name() == "COUNT:knife:4");
  CHECK(constraint::no_repeat().name() == "NOREPEAT");
  CHECK(constraint::no_comma().name() == "NOCOMMA");
  CHECK(constraint::word_count(tok("red"), 3).word() == tok("red"));
  CHECK(constraint::word_count(tok("red"), 3).count() == 3);
  CHECK(constraint::word_count(tok("red"), 3) == con("COUNT:red:3"));
  CHECK(constraint::word_count(tok("red"), 3) != con("COUNT:red:2"));

  CHECK(con("LEN<=:6").description() == "at most 6 words");
  CHECK(con("LEN>=:1").description() == "at least 1 word");
  CHECK(con("HAS:apple").description() == "include the word apple");
  CHECK(con("NOT:apple").description() == "do not use the word apple");
  CHECK(con("START:owl").description() == "start with the word owl");
  CHECK(con("END:.").description() == "end with a period");
  CHECK(con("END:,").description() == "end with a comma");
  CHECK(con("END:owl").description() == "end with the word owl");
  CHECK(con("SENT:2").description() == "exactly 2 sentences");
  CHECK(con("COUNT:red:2").description() == "use the word red exactly 2 times");
  CHECK(con("NOREPEAT").description() == "use no word more than once");
  CHECK(con("NOCOMMA").description() == "use no commas");

  CHECK_THROWS_AS(constraint::min_words(0), hir::invalid_argument);
  CHECK_THROWS_AS(constraint::max_words(13), hir::invalid_argument);
  CHECK_THROWS_AS(constraint::include_word(V::period), hir::invalid_argument);
  CHECK_THROWS_AS(constraint::start_with(V::comma), hir::invalid_argument);
  CHECK_THROWS_AS(constraint::end_with(V::eos), hir::invalid_argument);
  CHECK_THROWS_AS(constraint::sentences(4), hir::invalid_argument);
  CHECK_THROWS_AS(constraint::word_count(tok("red"), 1), hir::invalid_argument);
  CHECK_THROWS_AS(constraint::word_count(tok("red"), 5), hir::invalid_argument);
  CHECK_THROWS_AS(constraint::from_token(V::topic_token(0)), hir::invalid_argument);
  CHECK_THROWS_AS(constraint::from_token(V::num_tokens), hir::invalid_argument);
}

TEST_CASE("task verifiers: word counts (LEN>=, LEN<=)") {
  CHECK(check("LEN>=:3", "apple pear plum"));
  CHECK(check("LEN>=:3", "apple pear plum grape"));
  CHECK_FALSE(check("LEN>=:3", "apple pear"));
  CHECK_FALSE(check("LEN>=:3", "apple . pear , .")); // punctuation is not a word
  CHECK(check("LEN>=:3", "apple . pear , plum ."));
  CHECK_FALSE(check("LEN>=:1", ""));                      // empty response
  CHECK_FALSE(check("LEN>=:1", ". , ."));                 // punctuation only
  CHECK_FALSE(check("LEN>=:3", "apple pear <eos> plum")); // tokens after <eos> are not part of the response
  CHECK_FALSE(check("LEN>=:2", "apple <bos> <sep>"));     // non-response tokens are not words
  CHECK(check("LEN>=:12", "red red red red red red red red red red red red"));
  CHECK_FALSE(check("LEN>=:12", "red red red red red red red red red red red"));

  CHECK(check("LEN<=:3", "apple pear plum"));
  CHECK(check("LEN<=:3", "apple . pear , plum , ."));
  CHECK_FALSE(check("LEN<=:3", "apple pear plum grape"));
  CHECK(check("LEN<=:1", ""));
  CHECK(check("LEN<=:1", ". ,"));
  CHECK(check("LEN<=:1", "apple <eos> pear plum"));
  CHECK(check("LEN<=:1", "apple <pad> pear plum")); // <pad> also ends the response
}

TEST_CASE("task verifiers: include / exclude a word (HAS, NOT)") {
  CHECK(check("HAS:apple", "pear apple"));
  CHECK(check("HAS:apple", "apple apple apple"));
  CHECK_FALSE(check("HAS:apple", "pear plum ."));
  CHECK_FALSE(check("HAS:apple", ""));
  CHECK_FALSE(check("HAS:apple", ". ,"));
  CHECK_FALSE(check("HAS:apple", "pear <eos> apple"));
  CHECK_FALSE(check("HAS:apple", "HAS:apple pear")); // the constraint token is not the word

  CHECK(check("NOT:apple", "pear plum"));
  CHECK(check("NOT:apple", ""));
  CHECK(check("NOT:apple", ". ,"));
  CHECK(check("NOT:apple", "pear <eos> apple"));
  CHECK_FALSE(check("NOT:apple", "pear apple"));
  CHECK_FALSE(check("NOT:apple", "apple"));
}

TEST_CASE("task verifiers: start and end (START, END)") {
  CHECK(check("START:apple", "apple pear"));
  CHECK(check("START:apple", "apple"));
  CHECK_FALSE(check("START:apple", "pear apple"));
  CHECK_FALSE(check("START:apple", ". apple"));
  CHECK_FALSE(check("START:apple", ""));
  CHECK_FALSE(check("START:apple", ". ,"));
  CHECK_FALSE(check("START:apple", "<eos> apple"));

  CHECK(check("END:.", "apple ."));
  CHECK(check("END:.", "apple . <eos> pear"));
  CHECK(check("END:.", "."));
  CHECK(check("END:.", "apple . <pad> <pad>"));
  CHECK_FALSE(check("END:.", "apple . pear"));
  CHECK_FALSE(check("END:.", "apple . ,"));
  CHECK_FALSE(check("END:.", ""));
  CHECK(check("END:,", "apple ,"));
  CHECK_FALSE(check("END:,", "apple , ."));
  CHECK(check("END:pear", "apple pear"));
  CHECK(check("END:pear", "pear"));
  CHECK_FALSE(check("END:pear", "pear ."));
  CHECK_FALSE(check("END:pear", "pear apple"));
  CHECK_FALSE(check("END:pear", ""));
  CHECK_FALSE(check("END:pear", "pear <sep>")); // a stray non-response token is the last token
}

TEST_CASE("task verifiers: sentences (SENT)") {
  CHECK(check("SENT:0", ""));
  CHECK(check("SENT:0", "apple pear , plum"));
  CHECK_FALSE(check("SENT:0", "apple ."));
  CHECK(check("SENT:1", "apple pear ."));
  CHECK(check("SENT:1", "apple . pear"));
  CHECK_FALSE(check("SENT:1", "apple . pear ."));
  CHECK(check("SENT:2", ". ."));
  CHECK(check("SENT:2", "apple . pear . <eos> ."));
  CHECK_FALSE(check("SENT:2", "apple . pear . plum ."));
  CHECK(check("SENT:3", "apple . pear . plum ."));
  CHECK_FALSE(check("SENT:3", "apple . pear , plum ."));
}

TEST_CASE("task verifiers: word repeated exactly k times (COUNT)") {
  CHECK(check("COUNT:red:2", "red red"));
  CHECK(check("COUNT:red:2", "red blue . red ,"));
  CHECK_FALSE(check("COUNT:red:2", "red"));
  CHECK_FALSE(check("COUNT:red:2", "red red red"));
  CHECK_FALSE(check("COUNT:red:2", ""));
  CHECK_FALSE(check("COUNT:red:2", ". ,"));
  CHECK_FALSE(check("COUNT:red:2", "red <eos> red"));
  CHECK(check("COUNT:red:3", "red red red"));
  CHECK_FALSE(check("COUNT:red:3", "red red red red"));
  CHECK(check("COUNT:red:4", "red blue red blue red blue red"));
  CHECK_FALSE(check("COUNT:blue:4", "red blue red blue red blue red"));
  CHECK(check("COUNT:blue:3", "red blue red blue red blue red"));
}

TEST_CASE("task verifiers: no repeated word, no comma (NOREPEAT, NOCOMMA)") {
  CHECK(check("NOREPEAT", "apple pear plum"));
  CHECK(check("NOREPEAT", ""));
  CHECK(check("NOREPEAT", ". . , ,")); // punctuation may repeat
  CHECK(check("NOREPEAT", "apple . pear . plum ."));
  CHECK(check("NOREPEAT", "apple <eos> apple"));
  CHECK_FALSE(check("NOREPEAT", "apple pear apple"));
  CHECK_FALSE(check("NOREPEAT", "apple apple"));

  CHECK(check("NOCOMMA", "apple pear ."));
  CHECK(check("NOCOMMA", ""));
  CHECK(check("NOCOMMA", "apple <eos> ,"));
  CHECK_FALSE(check("NOCOMMA", "apple , pear"));
  CHECK_FALSE(check("NOCOMMA", ","));
  CHECK_FALSE(check("NOCOMMA", "apple ,"));
}

TEST_CASE("task verify: verdict vector in constraint order, batch form, invalid tokens") {
  const instruction q = instruction::from_tokens(toks("<bos> T:fruit LEN>=:3 HAS:apple NOT:pear END:. NOCOMMA <sep>"));
  REQUIRE(q.size() == 5);
  const auto v = verify(q, toks("apple plum , grape <eos>"));
  CHECK(v.count == 5);
  CHECK(v.mask == 0b00111); // LEN>=:3 yes, HAS:apple yes, NOT:pear yes, END:. no, NOCOMMA no
  CHECK(verify(q, toks("apple plum , grape . <eos>")).mask == 0b01111);
  CHECK(v.num_met() == 3);
  CHECK_FALSE(v.all_met());
  CHECK(v.cla() == doctest::Approx(0.6));
  CHECK(verify(q, toks("apple plum grape . <eos>")).all_met());
  CHECK(verify(q, toks("")).mask == 0b10100); // empty: only NOT and NOCOMMA hold
  CHECK(verify(q, toks(". . <eos>")).mask == 0b11100);

  const instruction none(2, {});
  CHECK(verify(none, toks("apple")).all_met()); // no constraints: vacuously met
  CHECK(verify(none, toks("apple")).cla() == 1.0);

  const std::vector<instruction> qs = {q, q, none};
  const std::vector<std::vector<int>> ys = {toks("apple plum , grape"), toks("apple plum grape ."), toks("")};
  const hir::verdict_batch b = verify_all(qs, ys);
  REQUIRE(b.size() == 3);
  CHECK(b.masks()[0] == 0b00111);
  CHECK(b.masks()[1] == 0b11111);
  CHECK(b.counts()[0] == 5);
  CHECK(b.counts()[2] == 0);
  CHECK_THROWS_AS(verify_all(qs, std::vector<std::vector<int>>(2)), hir::invalid_argument);

  CHECK_THROWS_AS(verify(q, std::vector<int>{tok("apple"), -1}), hir::invalid_argument);
  CHECK_THROWS_AS(verify(q, std::vector<int>{V::num_tokens}), hir::invalid_argument);
  CHECK_THROWS_AS(con("NOCOMMA").check(std::vector<int>{400}), hir::invalid_argument);
}

TEST_CASE("task instruction: template, canonical order, parsing") {
  const std::vector<int> t = toks("<bos> T:color LEN>=:2 HAS:red START:red END:. COUNT:red:2 <sep>");
  const instruction q = instruction::from_tokens(t);
  CHECK(q.topic() == 1);
  CHECK(q.size() == 5);
  CHECK(q.tokens() == t);
  CHECK(q.text() == "<bos> T:color LEN>=:2 HAS:red START:red END:. COUNT:red:2 <sep>");
  CHECK(q.describe() == "write about color: at least 2 words; include the word red; start with the word red; end "
                        "with a period; use the word red exactly 2 times");
  const auto padded = q.padded_tokens();
  REQUIRE(padded.size() == static_cast<std::size_t>(prompt_length));
  CHECK(padded[0] == V::pad);
  CHECK(padded[1] == V::pad);
  CHECK(std::vector<int>(padded.begin() + 2, padded.end()) == t);
  CHECK(instruction::from_tokens(padded) == q);
  CHECK_THROWS_AS(q.padded_tokens(7), hir::invalid_argument);

  CHECK_THROWS_AS(instruction(1, {con("HAS:red"), con("LEN>=:2")}), hir::invalid_argument); // not canonical
  CHECK_THROWS_AS(instruction(1, {con("HAS:red"), con("HAS:red")}), hir::invalid_argument); // duplicate
  CHECK_THROWS_AS(instruction(5, {}), hir::invalid_argument);
  CHECK_THROWS_AS(instruction::from_tokens(toks("T:color HAS:red <sep>")), hir::invalid_argument);
  CHECK_THROWS_AS(instruction::from_tokens(toks("<bos> T:color HAS:red")), hir::invalid_argument);
  CHECK_THROWS_AS(instruction::from_tokens(toks("<bos> T:color apple <sep>")), hir::invalid_argument);
  CHECK_THROWS_AS(instruction::from_tokens(toks("<bos> HAS:red <sep>")), hir::invalid_argument);
  CHECK(instruction::from_tokens(toks("<bos> T:tool <sep>")).size() == 0);

  std::set<instruction> s = {q, q.keep(0b1), q, q.keep(0b11)};
  CHECK(s.size() == 3);
}

TEST_CASE("task rewrite: keep() keeps exactly the met constraints, in order, same template") {
  const instruction q = instruction::from_tokens(toks("<bos> T:fruit LEN>=:3 HAS:apple NOT:pear END:. NOCOMMA <sep>"));
  CHECK(q.keep(0b11111) == q);
  CHECK(q.keep(0).size() == 0);
  CHECK(q.keep(0).tokens() == toks("<bos> T:fruit <sep>"));
  CHECK(q.keep(0b10101).tokens() == toks("<bos> T:fruit LEN>=:3 NOT:pear NOCOMMA <sep>"));
  CHECK_THROWS_AS(q.keep(0b100000), hir::invalid_argument);

  // Property over generated instructions and random masks; and the HiR invariant: a response meets the
  // instruction rewritten with its own verdicts.
  rng g(hir::test::seed(11), 0);
  for (int i = 0; i < 500; ++i) {
    const task t = sample_task(g);
    const instruction& qi = t.instr;
    const std::uint64_t mask = g.next() & hir::detail::low_bits(static_cast<unsigned>(qi.size()));
    const instruction r = qi.keep(mask);
    std::vector<int> expect = {V::bos, V::topic_token(qi.topic())};
    for (std::size_t c = 0; c < qi.size(); ++c)
      if ((mask >> c) & 1u)
        expect.push_back(qi[c].token());
    expect.push_back(V::sep);
    CHECK(r.tokens() == expect);
    CHECK(r.topic() == qi.topic());
    CHECK(static_cast<int>(r.size()) == hir::detail::popcount64(mask));

    const demo d = demonstration(qi, 0.7, g);
    const instruction rewritten = qi.keep(d.verdicts.mask);
    CHECK(verify(rewritten, d.response).all_met());
    CHECK(static_cast<int>(rewritten.size()) == d.verdicts.num_met());
  }
}

TEST_CASE("task generation: every instruction is satisfiable by its hidden reference") {
  rng g(hir::test::seed(12), 0);
  std::map<int, int> sizes;
  for (int i = 0; i < 5000; ++i) {
    const task t = sample_task(g);
    const instruction& q = t.instr;
    sizes[static_cast<int>(q.size())]++;
    REQUIRE(q.size() >= 3);
    REQUIRE(q.size() <= 7);
    for (std::size_t c = 1; c < q.size(); ++c)
      REQUIRE(q[c - 1].token() < q[c].token());
    const verdict_vector v = verify(q, t.reference);
    REQUIRE_MESSAGE(v.all_met(), q.text() << " => " << response_text(t.reference));
    // a reference is a well-formed response: words and punctuation, then <eos>, within the token budget
    REQUIRE(t.reference.size() <= static_cast<std::size_t>(max_response_tokens));
    REQUIRE(t.reference.back() == V::eos);
    const response_features f = response_features::of(t.reference);
    CHECK(f.length + 1 == t.reference.size());
    CHECK(f.words >= 3);
    CHECK(f.words <= max_response_words);
    CHECK(f.periods <= max_sentences);
    CHECK(f.commas <= max_commas);
    CHECK(V::is_word(f.first));
    CHECK(instruction::from_tokens(q.padded_tokens()) == q);
  }
  for (int n = 3; n <= 7; ++n)
    CHECK(sizes[n] > 500); // every count in [3, 7] occurs (uniform: ~1000 each)

  rng h(1, 0);
  for (int i = 0; i < 200; ++i) {
    const task t = sample_task(h, 1, 2);
    CHECK(t.instr.size() >= 1);
    CHECK(t.instr.size() <= 2);
  }
  CHECK_THROWS_AS(sample_task(h, 0, 3), hir::invalid_argument);
  CHECK_THROWS_AS(sample_task(h, 4, 3), hir::invalid_argument);
  CHECK_THROWS_AS(sample_task(h, 3, 8), hir::invalid_argument);
}

TEST_CASE("task suite: default pools are disjoint, satisfiable and reproducible from the seed") {
  const task_suite a(task_config{}, 1234);
  CHECK(a.warm_start().size() == 40000);
  CHECK(a.rl().size() == 4000);
  CHECK(a.eval().size() == 512);
  CHECK(a.seed() == 1234);
  CHECK(&a.pool(pool_kind::rl) == &a.rl());
  CHECK(&a.pool(pool_kind::eval) == &a.eval());
  CHECK(&a.pool(pool_kind::warm_start) == &a.warm_start());

  std::set<std::vector<int>> seen; // instruction token sequences across all three pools
  satisfaction_stats reference;
  for (const auto* pool : {&a.warm_start(), &a.rl(), &a.eval()})
    for (const auto& t : *pool) {
      CHECK(seen.insert(t.instr.tokens()).second);
      reference.add(t.instr, verify(t.instr, t.reference));
    }
  CHECK(seen.size() == 44512);
  CHECK(reference.ila() == 1.0);
  MESSAGE("pool constraint counts by kind: " << reference.summary());

  const task_suite b(task_config{}, 1234);
  CHECK(same_pool(a.warm_start(), b.warm_start()));
  CHECK(same_pool(a.rl(), b.rl()));
  CHECK(same_pool(a.eval(), b.eval()));
}

TEST_CASE("task suite: seeds, pool sizes, independence of the held-out pool") {
  const task_suite a(small_config(2000, 300, 100), 7);
  const task_suite b(small_config(2000, 300, 100), 7);
  const task_suite c(small_config(2000, 300, 100), 8);
  CHECK(same_pool(a.eval(), b.eval()));
  CHECK(same_pool(a.warm_start(), b.warm_start()));
  CHECK_FALSE(same_pool(a.eval(), c.eval()));
  CHECK_FALSE(same_pool(a.rl(), c.rl()));
  CHECK_FALSE(same_pool(a.warm_start(), c.warm_start()));
  // different seeds give mostly different instructions
  std::set<instruction> ca;
  for (const auto& t : a.warm_start())
    ca.insert(t.instr);
  std::size_t shared = 0;
  for (const auto& t : c.warm_start())
    shared += ca.count(t.instr);
  CHECK(shared < 200);

  // the held-out pool depends on the seed only, not on the other pools' sizes
  const task_suite d(small_config(10, 20, 100), 7);
  CHECK(same_pool(a.eval(), d.eval()));
  CHECK(d.warm_start().size() == 10);
  CHECK(d.rl().size() == 20);

  const task_suite empty(small_config(0, 0, 0), 7);
  CHECK(empty.eval().empty());

  task_config bad = small_config(1, 1, 1);
  bad.min_constraints = 0;
  CHECK_THROWS_AS(task_suite(bad, 1), hir::invalid_argument);
  bad.min_constraints = 3;
  bad.max_constraints = 8;
  CHECK_THROWS_AS(task_suite(bad, 1), hir::invalid_argument);
  bad.max_constraints = 7;
  bad.p_meet = 1.5;
  CHECK_THROWS_AS(task_suite(bad, 1), hir::invalid_argument);
  // one constraint per instruction: only a few hundred distinct instructions exist, so 100,000 cannot be drawn
  task_config tiny = small_config(100000, 0, 0);
  tiny.min_constraints = tiny.max_constraints = 1;
  CHECK_THROWS_AS(task_suite(tiny, 1), hir::invalid_argument);
  CHECK(instructions_of(a.eval()).size() == 100);
  CHECK(instructions_of(a.eval())[5] == a.eval()[5].instr);
}

TEST_CASE("task suite: generation is pinned to the seed on every platform") {
  // The pools are a pure function of (config, seed) through hir::philox and integer arithmetic only. These hashes
  // pin the streams: a change here means every pool changes (update them only on purpose, with the docs).
  const task_suite s(small_config(300, 200, 100), 2024);
  const std::uint64_t he = pool_hash(s.eval()), hr = pool_hash(s.rl()), hw = pool_hash(s.warm_start());
  MESSAGE("pool hashes: eval " << he << " rl " << hr << " warm " << hw);
  CHECK(he == 708582263362909521ull);
  CHECK(hr == 12122086423221594924ull);
  CHECK(hw == 9186757195304572173ull);
}

TEST_CASE("task respond: responses meeting exactly a chosen subset") {
  rng g(hir::test::seed(13), 0);
  int found = 0, tried = 0;
  for (int i = 0; i < 300; ++i) {
    const task t = sample_task(g);
    // all met: always realizable for a generated instruction
    const auto all = hir::detail::low_bits(static_cast<unsigned>(t.instr.size()));
    const auto y = respond(t.instr, all, g);
    REQUIRE(y.has_value());
    CHECK(verify(t.instr, *y).mask == all);
    CHECK(y->back() == V::eos);
    CHECK(y->size() <= static_cast<std::size_t>(max_response_tokens));
    // a random subset: when realized, it is realized exactly
    const std::uint64_t target = g.next() & all;
    ++tried;
    if (const auto z = respond(t.instr, target, g)) {
      ++found;
      CHECK(verify(t.instr, *z).mask == target);
    }
  }
  CHECK(found > tried * 3 / 4);

  const instruction exact = instruction::from_tokens(toks("<bos> T:fruit LEN>=:5 LEN<=:5 <sep>"));
  CHECK_FALSE(respond(exact, 0b00, g).has_value()); // fewer than 5 and more than 5 words at once: infeasible
  const auto y = respond(exact, 0b01, g);
  REQUIRE(y.has_value());
  CHECK(response_features::of(*y).words > 5);
  CHECK_THROWS_AS(respond(exact, 0b100, g), hir::invalid_argument);
}

TEST_CASE("task demonstrations: each constraint met with frequency about p") {
  // Fixed seeds: a statistical check with generous bounds. Redrawing unrealizable choices lifts the rates a little
  // above p (most for LEN>=/LEN<= pairs); the prototype measured 20.7% of demonstrations meeting every constraint.
  const task_suite s(small_config(20000, 0, 0), 99);
  for (double p : {0.7, 0.4}) {
    rng g(5, first_free_stream);
    satisfaction_stats st;
    double expect_all = 0.0; // Σ p^n: the all-met rate without redraws
    for (const auto& t : s.warm_start()) {
      const demo d = demonstration(t.instr, p, g);
      REQUIRE(d.verdicts == verify(t.instr, d.response)); // stored verdicts are the verifier's
      REQUIRE(d.response.size() <= static_cast<std::size_t>(max_response_tokens));
      REQUIRE(d.response.back() == V::eos);
      st.add(t.instr, d.verdicts);
      expect_all += std::pow(p, static_cast<double>(t.instr.size()));
    }
    expect_all /= static_cast<double>(s.warm_start().size());
    MESSAGE("p = " << p << ": constraint rate " << st.constraint_rate() << ", all met " << st.ila()
                   << " (independent draws alone: " << expect_all << "); " << st.summary());
    CHECK(st.constraint_rate() > p - 0.01);
    CHECK(st.constraint_rate() < p + 0.05);
    for (int k = 0; k < num_constraint_kinds; ++k) {
      const auto kind = static_cast<constraint_kind>(k);
      const double rate = st.kind_rate(kind);
      if (kind == constraint_kind::min_words || kind == constraint_kind::max_words) // LEN>=:a, LEN<=:b both unmet
        CHECK_MESSAGE((rate > p && rate < p + 0.25), std::string(kind_name(kind)) << " " << rate); // is infeasible
      else
        CHECK_MESSAGE(std::fabs(rate - p) < 0.06, std::string(kind_name(kind)) << " " << rate);
    }
    CHECK(st.ila() > expect_all - 0.02);
    CHECK(st.ila() < expect_all + 0.05);
    if (p == 0.7) {
      CHECK(st.ila() > 0.15); // "meets most constraints but rarely all of them"
      CHECK(st.ila() < 0.27);
    }
  }
}

TEST_CASE("task demonstrations: extremes, determinism and errors") {
  rng g(3, first_free_stream);
  const task_suite s(small_config(500, 0, 0), 4);
  for (const auto& t : s.warm_start())
    CHECK(demonstration(t.instr, 1.0, g).verdicts.all_met());

  const instruction q = instruction::from_tokens(toks("<bos> T:tool HAS:saw START:axe NOCOMMA <sep>"));
  for (int i = 0; i < 50; ++i)
    CHECK(demonstration(q, 0.0, g).verdicts.mask == 0); // every constraint violated

  rng g1(42, 17), g2(42, 17);
  for (const auto& t : s.warm_start()) {
    const demo a = demonstration(t.instr, 0.7, g1), b = demonstration(t.instr, 0.7, g2);
    CHECK(a.response == b.response);
    CHECK(a.verdicts == b.verdicts);
  }

  CHECK_THROWS_AS(demonstration(q, -0.1, g), hir::invalid_argument);
  CHECK_THROWS_AS(demonstration(q, 1.1, g), hir::invalid_argument);
  CHECK_THROWS_AS(demonstration(q, std::nan(""), g), hir::invalid_argument);
  const instruction impossible = instruction::from_tokens(toks("<bos> T:tool LEN>=:8 LEN<=:3 <sep>"));
  CHECK_THROWS_AS(demonstration(impossible, 1.0, g), hir::invalid_argument);
}

TEST_CASE("task rng: reproducible streams, ranges, shuffles") {
  rng a(1, 2), b(1, 2), c(1, 3), d(2, 2);
  bool differ_stream = false, differ_seed = false;
  for (int i = 0; i < 100; ++i) {
    const auto x = a.next();
    CHECK(x == b.next());
    differ_stream = differ_stream || x != c.next();
    differ_seed = differ_seed || x != d.next();
  }
  CHECK(differ_stream);
  CHECK(differ_seed);
  CHECK(a.counter() == 100);
  CHECK(a.stream() == 2);

  rng g(hir::test::seed(14), 0);
  std::vector<int> hist(7, 0);
  for (int i = 0; i < 70000; ++i) {
    const auto k = g.below(7);
    REQUIRE(k < 7);
    ++hist[k];
  }
  for (int h : hist)
    CHECK(std::abs(h - 10000) < 600); // > 6 sigma
  for (int i = 0; i < 1000; ++i) {
    const int x = g.between(-2, 3);
    CHECK(x >= -2);
    CHECK(x <= 3);
    const double u = g.uniform();
    CHECK(u >= 0.0);
    CHECK(u < 1.0);
  }
  CHECK(g.between(5, 5) == 5);
  CHECK_THROWS_AS(g.below(0), hir::invalid_argument);
  CHECK_THROWS_AS(g.between(2, 1), hir::invalid_argument);
  std::vector<int> v = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
  g.shuffle(v);
  CHECK(std::set<int>(v.begin(), v.end()).size() == 10);
  CHECK(g.bernoulli(1.0));
  CHECK_FALSE(g.bernoulli(0.0));
}

TEST_CASE("task stats and text helpers") {
  const instruction q = instruction::from_tokens(toks("<bos> T:fruit LEN>=:3 HAS:apple NOCOMMA <sep>"));
  const instruction r = instruction::from_tokens(toks("<bos> T:color SENT:1 <sep>"));
  const std::vector<instruction> qs = {q, q, r, r};
  const std::vector<std::vector<int>> ys = {toks("apple pear plum . <eos>"), toks("apple , pear <eos>"),
                                            toks("red . <eos>"), toks("red <eos>")};
  const satisfaction_stats st = evaluate(qs, ys);
  CHECK(st.responses == 4);
  CHECK(st.all_met == 2);
  CHECK(st.ila() == doctest::Approx(0.5));
  CHECK(st.cla() == doctest::Approx((1.0 + 1.0 / 3.0 + 1.0 + 0.0) / 4.0));
  CHECK(st.constraints == 8);
  CHECK(st.met == 5);
  CHECK(st.constraint_rate() == doctest::Approx(5.0 / 8.0));
  CHECK(st.kind_rate(constraint_kind::min_words) == doctest::Approx(0.5));
  CHECK(st.kind_rate(constraint_kind::include_word) == doctest::Approx(1.0));
  CHECK(st.kind_rate(constraint_kind::no_comma) == doctest::Approx(0.5));
  CHECK(st.kind_rate(constraint_kind::sentences) == doctest::Approx(0.5));
  CHECK(st.kind_rate(constraint_kind::word_count) == 0.0); // none judged
  CHECK(st.summary().find("n=4 ILA=0.500") == 0);
  CHECK(satisfaction_stats{}.ila() == 0.0);
  satisfaction_stats bad;
  CHECK_THROWS_AS(bad.add(q, verdict_vector{0, 2}), hir::invalid_argument);
  CHECK_THROWS_AS(evaluate(qs, std::vector<std::vector<int>>(3)), hir::invalid_argument);

  CHECK(response_text(toks("apple pear . plum , <eos> <pad> <pad>")) == "apple pear . plum ,");
  CHECK(response_text(toks("apple pear")) == "apple pear");
  CHECK(response_text(toks("<eos> apple")).empty());
  CHECK(to_text(toks("<bos> T:fruit HAS:apple <sep>")) == "<bos> T:fruit HAS:apple <sep>");
  CHECK(to_text(std::vector<int>{V::eos, -3, 999}) == "<eos> <?-3> <?999>");
}

TEST_CASE("task example: warm start, scoring a rollout, the HiR rewrite") {
  // example-begin task-suite
  hir::toy::task_config cfg; // defaults: 40,000 warm-start, 4,000 RL, 512 held-out instructions; p_meet 0.7
  cfg.warm_start_size = 1000;
  const hir::toy::task_suite suite(cfg, /*seed=*/1234);

  // Supervised warm start on imperfect demonstrations (a stream of the same seed the pools do not use).
  hir::toy::rng demo_rng(1234, hir::toy::first_free_stream);
  hir::toy::satisfaction_stats demo_stats;
  for (const hir::toy::task& t : suite.warm_start()) {
    const std::vector<int> prompt = t.instr.padded_tokens(); // <pad>… <bos> T:topic c_1 … c_n <sep>
    const hir::toy::demo d = hir::toy::demonstration(t.instr, cfg.p_meet, demo_rng);
    // ... train on prompt followed by d.response (which ends with <eos>) ...
    demo_stats.add(t.instr, d.verdicts);
    (void)prompt;
  }

  // RL: score a sampled response; an eligible failure (0 < CLA < 1) is replayed under the rewritten instruction.
  const hir::toy::instruction& q = suite.rl()[0].instr;
  const std::vector<int> response = hir::toy::demonstration(q, 0.5, demo_rng).response; // stands in for a rollout
  const hir::toy::verdict_vector v = hir::toy::verify(q, response);
  hir::verdict_batch verdicts;
  verdicts.push_back(v.mask, v.count); // hir's reward-vector layout
  if (v.num_met() > 0 && !v.all_met()) {
    const hir::toy::instruction replay = q.keep(v.mask); // same template, met constraints only
    CHECK(hir::toy::verify(replay, response).all_met());
  }
  // example-end task-suite
  CHECK(demo_stats.responses == 1000);
  CHECK(demo_stats.cla() > 0.6);
  CHECK(verdicts.size() == 1);
}
