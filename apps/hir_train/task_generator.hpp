// SPDX-License-Identifier: Apache-2.0
// Generators of the toy task: reference ("hidden") responses, instructions derived from them (so every instruction
// is satisfiable), responses that meet exactly a chosen subset of an instruction's constraints, imperfect
// demonstrations (each constraint met with probability p, the rest violated, then verified), and the task suite:
// three instruction pools (warm start, RL prompts, held-out evaluation) that are disjoint as instruction sets and a
// pure function of (config, seed). The sampling scheme follows the PyTorch prototype (miniature.md) so the regime a
// tiny model learns in is the same; all randomness comes from toy::rng (hir::philox), never from std:: engines.
#pragma once

#include "task_constraints.hpp"
#include "task_vocabulary.hpp"

#include <hir/core/error.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <set>
#include <vector>

namespace hir::toy {
namespace detail {

/// Properties a response should have, collected from constraints that are to be met or violated. Word indices
/// are token id - vocabulary::first_word.
struct response_spec {
  static constexpr int nw = vocabulary::num_words;
  static constexpr int unbounded = 99;

  int min_words = 1;                         ///< content words ≥ min_words
  int max_words = max_response_words;        ///< content words ≤ max_words
  std::array<int, nw> count_lo{};            ///< per word: occurrences ≥ count_lo
  std::array<int, nw> count_hi{};            ///< per word: occurrences ≤ count_hi
  std::array<std::uint32_t, nw> count_not{}; ///< per word: bit k set = exactly k occurrences is forbidden
  std::array<bool, nw> touched{};            ///< per word: some constraint names it
  int first = -1;                            ///< word index the response must start with, -1 = free
  std::uint64_t first_not = 0;               ///< bit w set: must not start with word w
  int last = -1;                             ///< token id the response must end with, -1 = free
  std::uint64_t last_not = 0;                ///< bit end_bit(x) set: must not end with token x
  int periods = -1;                          ///< exact number of ".", -1 = free
  unsigned periods_not = 0;                  ///< bit k set: exactly k "." is forbidden
  int distinct = -1;                         ///< 1: no repeated word; 0: some word repeated; -1: free
  int comma = -1;                            ///< 1: at least one ","; 0: none; -1: free

  response_spec() { count_hi.fill(unbounded); }

  /// Bit of `last_not` for an end token: 0 ".", 1 ",", 2 + word index.
  static int end_bit(int token) {
    return token == vocabulary::period ? 0 : token == vocabulary::comma ? 1 : 2 + (token - vocabulary::first_word);
  }

  /// Adds constraint `c`, to be met (`meet`) or violated.
  void add(const constraint& c, bool meet) {
    const int w = vocabulary::is_word(c.word()) ? c.word() - vocabulary::first_word : -1;
    const int k = c.count();
    switch (c.kind()) {
    case constraint_kind::min_words:
      if (meet)
        min_words = std::max(min_words, k);
      else
        max_words = std::min(max_words, k - 1);
      break;
    case constraint_kind::max_words:
      if (meet)
        max_words = std::min(max_words, k);
      else
        min_words = std::max(min_words, k + 1);
      break;
    case constraint_kind::include_word:
    case constraint_kind::exclude_word:
      touched[w] = true;
      if ((c.kind() == constraint_kind::include_word) == meet)
        count_lo[w] = std::max(count_lo[w], 1);
      else
        count_hi[w] = 0;
      break;
    case constraint_kind::word_count:
      touched[w] = true;
      if (meet) {
        count_lo[w] = std::max(count_lo[w], k);
        count_hi[w] = std::min(count_hi[w], k);
      } else {
        count_not[w] |= 1u << k;
      }
      break;
    case constraint_kind::start_with:
      if (meet)
        first = w;
      else
        first_not |= std::uint64_t(1) << w;
      break;
    case constraint_kind::end_with:
      if (meet)
        last = c.word();
      else
        last_not |= std::uint64_t(1) << end_bit(c.word());
      break;
    case constraint_kind::sentences:
      if (meet)
        periods = k;
      else
        periods_not |= 1u << k;
      break;
    case constraint_kind::no_repeat:
      distinct = meet ? 1 : 0;
      break;
    case constraint_kind::no_comma:
      comma = meet ? 0 : 1;
      break;
    }
  }
};

/// One attempt at a response (word tokens, "." / ",", then `<eos>`) with the properties of `sp`, writing it to
/// `out`. Returns false when this attempt's random choices cannot satisfy the spec; the caller verifies the result
/// (the spec does not model every interaction) and retries. `repeat_p` is the chance that a filler word may repeat
/// one already used when the spec leaves repetition free.
inline bool sample_response(const response_spec& sp, int topic, rng& g, double repeat_p, std::vector<int>& out) {
  constexpr int nw = response_spec::nw;
  const auto bit = [](std::uint64_t set, int i) { return ((set >> i) & 1u) != 0; };

  // Occurrences of the words named by constraints (small counts preferred).
  std::array<int, nw> counts{};
  for (int w = 0; w < nw; ++w) {
    if (!sp.touched[w])
      continue;
    const int lo = sp.count_lo[w];
    int hi = std::min(sp.count_hi[w], std::max(3, lo));
    if (sp.distinct == 1)
      hi = std::min(hi, 1);
    int opts[8];
    int n_opts = 0;
    for (int k = lo; k <= hi; ++k)
      if (!((sp.count_not[w] >> k) & 1u))
        opts[n_opts++] = k;
    if (sp.count_not[w] != 0 && lo == 0 && n_opts > 0 && opts[0] == 0 && g.bernoulli(0.5))
      counts[w] = 0;
    else if (n_opts == 0)
      return false;
    else
      counts[w] = g.bernoulli(0.6) ? opts[0] : opts[g.below(static_cast<std::size_t>(n_opts))];
  }
  if (sp.first >= 0 && counts[sp.first] == 0) {
    if (sp.count_hi[sp.first] == 0)
      return false;
    counts[sp.first] = 1;
  }
  if (sp.last >= 0 && vocabulary::is_word(sp.last)) {
    const int lw = sp.last - vocabulary::first_word;
    const int need = 1 + (sp.first == lw ? 1 : 0);
    if (counts[lw] < need) {
      if (sp.count_hi[lw] < need)
        return false;
      counts[lw] = need;
    }
  }

  // Number of content words.
  int required = 0;
  for (int c : counts)
    required += c;
  const int lo = std::max({sp.min_words, required, 1});
  const int hi = sp.max_words;
  if (lo > hi)
    return false;
  const int n_words = g.bernoulli(0.7) ? g.between(lo, std::min(hi, lo + 6)) : g.between(lo, hi);

  // Filler words: mostly on topic, never a constrained word, repeated only when allowed.
  std::vector<int> topic_pool, other_pool, cands;
  for (int w = 0; w < nw; ++w)
    if (!sp.touched[w])
      (w / vocabulary::words_per_topic == topic ? topic_pool : other_pool).push_back(w);
  std::array<bool, nw> used{};
  bool has_repeat = false;
  for (int w = 0; w < nw; ++w) {
    used[w] = counts[w] > 0;
    has_repeat = has_repeat || counts[w] >= 2;
  }
  std::vector<int> filler;
  while (static_cast<int>(filler.size()) < n_words - required) {
    const std::vector<int>* pool = (g.bernoulli(0.8) && !topic_pool.empty()) ? &topic_pool : &other_pool;
    if (pool->empty())
      pool = &topic_pool;
    if (pool->empty())
      return false;
    int w = g.pick(*pool);
    if (used[w] && !(sp.distinct == -1 && g.bernoulli(repeat_p))) {
      cands.clear();
      for (int x : *pool)
        if (!used[x])
          cands.push_back(x);
      if (cands.empty())
        for (const auto* p : {&topic_pool, &other_pool})
          for (int x : *p)
            if (!used[x])
              cands.push_back(x);
      if (cands.empty())
        return false;
      w = g.pick(cands);
    }
    filler.push_back(w);
    used[w] = true;
  }
  if (sp.distinct == 0 && !has_repeat) { // violate NOREPEAT: make one word occur twice
    cands.clear();
    if (filler.empty()) {
      for (int w = 0; w < nw; ++w)
        if (counts[w] >= 1 && sp.count_hi[w] >= 2 && !((sp.count_not[w] >> (counts[w] + 1)) & 1u))
          cands.push_back(w);
      if (cands.empty() || n_words + 1 > hi)
        return false;
      ++counts[g.pick(cands)];
    } else {
      const std::size_t i = g.below(filler.size());
      for (int x : filler)
        if (x != filler[i])
          cands.push_back(x);
      for (int w = 0; w < nw; ++w)
        if (counts[w] >= 1 && sp.count_hi[w] >= 2)
          cands.push_back(w);
      if (cands.empty())
        return false;
      filler[i] = g.pick(cands);
    }
  }

  // Word order: shuffled, then the first and last word fixed where constrained.
  std::vector<int> words = filler;
  for (int w = 0; w < nw; ++w)
    words.insert(words.end(), static_cast<std::size_t>(counts[w]), w);
  g.shuffle(words);
  if (words.empty())
    return false;
  const int n = static_cast<int>(words.size());
  std::vector<int> alt;
  if (sp.first >= 0) {
    std::swap(words[0], *std::find(words.begin(), words.end(), sp.first));
  } else if (sp.first_not != 0 && bit(sp.first_not, words[0])) {
    for (int i = 0; i < n; ++i)
      if (!bit(sp.first_not, words[static_cast<std::size_t>(i)]))
        alt.push_back(i);
    if (alt.empty())
      return false;
    std::swap(words[0], words[static_cast<std::size_t>(g.pick(alt))]);
  }
  // The last token: a required one, else "." (0.8), "," (0.05) or a word (0.15) among those allowed.
  int last = sp.last; // a token id, or -1 = "some word"
  if (last < 0) {
    const double w_period = bit(sp.last_not, 0) ? 0.0 : 0.8, w_comma = bit(sp.last_not, 1) ? 0.0 : 0.05;
    const double u = g.uniform() * (w_period + w_comma + 0.15);
    last = u < w_period ? vocabulary::period : u < w_period + w_comma ? vocabulary::comma : -1;
  }
  const bool ends_with_word = last < 0 || vocabulary::is_word(last);
  if (last >= 0 && vocabulary::is_word(last)) {
    const int lw = last - vocabulary::first_word;
    int at = -1;
    for (int i = 0; i < n; ++i)
      if (words[static_cast<std::size_t>(i)] == lw && !(i == 0 && sp.first == lw && n > 1))
        at = i;
    if (at < 0)
      return false;
    std::swap(words[static_cast<std::size_t>(n - 1)], words[static_cast<std::size_t>(at)]);
    if (sp.first >= 0 && words[0] != sp.first)
      return false;
  } else if (last < 0 && bit(sp.last_not, response_spec::end_bit(vocabulary::first_word + words.back()))) {
    alt.clear();
    for (int i = 1; i < n; ++i)
      if (!bit(sp.last_not, response_spec::end_bit(vocabulary::first_word + words[static_cast<std::size_t>(i)])))
        alt.push_back(i);
    if (alt.empty())
      return false;
    std::swap(words.back(), words[static_cast<std::size_t>(g.pick(alt))]);
  }

  // Punctuation: P periods (mostly about one per five words) and C commas, in distinct gaps between words.
  int periods = sp.periods;
  if (periods < 0) {
    std::vector<int> opts;
    for (int k = 0; k <= max_sentences; ++k)
      if (!((sp.periods_not >> k) & 1u))
        opts.push_back(k);
    if (opts.empty())
      return false;
    if (g.bernoulli(0.3)) {
      periods = g.pick(opts);
    } else {
      const int target = 1 + n / 5;
      periods = opts[0];
      for (int k : opts)
        if (std::abs(k - target) < std::abs(periods - target))
          periods = k;
    }
  }
  int commas = 0;
  if (sp.comma == 1) {
    commas = g.below(3) == 2 ? 2 : 1;
  } else if (sp.comma == -1) {
    const double u = g.uniform();
    commas = u < 0.55 ? 0 : u < 0.85 ? 1 : 2;
  }
  int inner_periods = periods, inner_commas = commas;
  if (!ends_with_word) {
    if (last == vocabulary::period) {
      if (periods < 1)
        return false;
      --inner_periods;
    } else {
      if (commas < 1)
        return false;
      --inner_commas;
    }
  }
  const int marks = inner_periods + inner_commas;
  if (marks > n - 1)
    return false;
  std::vector<int> gaps; // gap i is before words[i]
  for (int i = 1; i < n; ++i)
    gaps.push_back(i);
  for (int j = 0; j < marks; ++j)
    std::swap(gaps[static_cast<std::size_t>(j)],
              gaps[static_cast<std::size_t>(j) + g.below(static_cast<std::size_t>(n - 1 - j))]);
  std::vector<int> mark(static_cast<std::size_t>(n), -1);
  for (int j = 0; j < marks; ++j)
    mark[static_cast<std::size_t>(gaps[static_cast<std::size_t>(j)])] =
        j < inner_periods ? vocabulary::period : vocabulary::comma;

  out.clear();
  for (int i = 0; i < n; ++i) {
    if (mark[static_cast<std::size_t>(i)] >= 0)
      out.push_back(mark[static_cast<std::size_t>(i)]);
    out.push_back(vocabulary::first_word + words[static_cast<std::size_t>(i)]);
  }
  if (!ends_with_word)
    out.push_back(last);
  out.push_back(vocabulary::eos);
  return true;
}

/// A natural response on `topic` (3–12 words, mostly on-topic, repeated words in about a third of them) from
/// which an instruction is derived.
inline std::vector<int> sample_reference(int topic, rng& g) {
  response_spec sp;
  sp.min_words = 3;
  const double repeat_p = g.bernoulli(0.35) ? 0.5 : 0.0;
  std::vector<int> y;
  for (int attempt = 0; attempt < 1000; ++attempt)
    if (sample_response(sp, topic, g, repeat_p, y))
      return y;
  hir::detail::fail("toy::sample_task", "internal error: no reference response in 1000 attempts");
}

} // namespace detail

/// An instruction together with the hidden reference response it was derived from (which meets every constraint;
/// tokens end with `<eos>`).
struct task {
  instruction instr;          ///< the instruction
  std::vector<int> reference; ///< a response meeting all of instr's constraints
};

/// Draws one task: a reference response on a random topic, then `n` ∈ [min_constraints, max_constraints]
/// constraints (uniformly without replacement) among those the reference meets — LEN>= and LEN<= near its word
/// count, HAS for one or two present words, NOT for an absent (mostly on-topic) word, START / END its first / last
/// token, SENT its number of ".", COUNT for a word it repeats 2–4 times (else NOREPEAT if nothing repeats),
/// NOCOMMA if it has no comma — sorted into canonical order. Bounds must satisfy 1 ≤ min ≤ max ≤ 7.
inline task sample_task(rng& g, int min_constraints = 3, int max_constraints = max_instruction_constraints) {
  if (min_constraints < 1 || min_constraints > max_constraints || max_constraints > max_instruction_constraints)
    hir::detail::fail("toy::sample_task", "constraint counts [", min_constraints, ", ", max_constraints,
                      "] are not within 1 <= min <= max <= ", max_instruction_constraints);
  std::vector<constraint> cands;
  std::vector<int> present, absent_topic, absent_any, reps;
  for (int attempt = 0; attempt < 10000; ++attempt) {
    const int topic = static_cast<int>(g.below(vocabulary::num_topics));
    std::vector<int> y = detail::sample_reference(topic, g);
    const response_features f = response_features::of(y);
    const int n_words = f.words;
    cands.clear();
    cands.push_back(constraint::min_words(g.between(std::max(1, n_words - 4), n_words)));
    cands.push_back(constraint::max_words(g.between(n_words, std::min(max_response_words, n_words + 4))));
    present.clear();
    absent_topic.clear();
    absent_any.clear();
    reps.clear();
    for (int w = vocabulary::first_word; w < vocabulary::first_word + vocabulary::num_words; ++w) {
      const int k = f.count(w);
      (k > 0 ? present : absent_any).push_back(w);
      if (k == 0 && vocabulary::topic_of_word(w) == topic)
        absent_topic.push_back(w);
      if (k >= min_word_count && k <= max_word_count)
        reps.push_back(w);
    }
    // HAS: a random sample of min(2, |present|) present words, of which the first one (2/3) or two (1/3) are used.
    const std::size_t n_sample = std::min<std::size_t>(2, present.size());
    for (std::size_t j = 0; j < n_sample; ++j)
      std::swap(present[j], present[j + g.below(present.size() - j)]);
    const std::size_t n_has = std::min<std::size_t>(g.below(3) == 2 ? 2 : 1, n_sample);
    for (std::size_t j = 0; j < n_has; ++j)
      cands.push_back(constraint::include_word(present[j]));
    cands.push_back(
        constraint::exclude_word(g.pick((!absent_topic.empty() && g.bernoulli(0.7)) ? absent_topic : absent_any)));
    if (vocabulary::is_word(f.first))
      cands.push_back(constraint::start_with(f.first));
    cands.push_back(constraint::end_with(f.last));
    cands.push_back(constraint::sentences(f.periods));
    if (!reps.empty()) {
      const int w = g.pick(reps);
      cands.push_back(constraint::word_count(w, f.count(w)));
    } else if (!f.repeated) {
      cands.push_back(constraint::no_repeat());
    }
    if (f.commas == 0)
      cands.push_back(constraint::no_comma());

    const int n = g.between(min_constraints, max_constraints);
    if (static_cast<int>(cands.size()) < n)
      continue;
    for (std::size_t j = 0; j < static_cast<std::size_t>(n); ++j)
      std::swap(cands[j], cands[j + g.below(cands.size() - j)]);
    std::vector<constraint> chosen(cands.begin(), cands.begin() + n);
    std::sort(chosen.begin(), chosen.end());
    task t{instruction(topic, std::move(chosen)), std::move(y)};
    if (!verify(t.instr, t.reference).all_met())
      hir::detail::fail("toy::sample_task", "internal error: the reference \"", response_text(t.reference),
                        "\" does not meet \"", t.instr.text(), "\"");
    return t;
  }
  hir::detail::fail("toy::sample_task", "no instruction with ", min_constraints, "..", max_constraints,
                    " constraints in 10000 attempts");
}

/// A response to `instr` that meets exactly the constraints whose bits are set in `target` (as verified), or
/// nullopt when `attempts` random constructions all miss (the target may be infeasible, e.g. violating both
/// LEN>=:5 and LEN<=:5). Bits at or above instr.size() must be zero. The response ends with `<eos>` and has at
/// most max_response_tokens tokens.
inline std::optional<std::vector<int>> respond(const instruction& instr, std::uint64_t target, rng& g,
                                               int attempts = 60) {
  if (instr.size() < max_constraints && (target >> instr.size()) != 0)
    hir::detail::fail("toy::respond", "target has bits set at or above the constraint count ", instr.size());
  detail::response_spec sp;
  for (std::size_t c = 0; c < instr.size(); ++c)
    sp.add(instr[c], ((target >> c) & 1u) != 0);
  std::vector<int> y;
  for (int a = 0; a < attempts; ++a)
    if (detail::sample_response(sp, instr.topic(), g, 0.0, y) && verify(instr, y).mask == target)
      return y;
  return std::nullopt;
}

/// An imperfect demonstration and the verifier's verdicts on it.
struct demo {
  std::vector<int> response; ///< tokens ending with `<eos>`
  verdict_vector verdicts;   ///< verify(instr, response)
};

/// An imperfect demonstration for `instr`: each constraint is chosen to be met independently with probability
/// `p_meet` ∈ [0, 1] and violated otherwise; a response meeting exactly that choice is constructed (respond()) and
/// verified. A choice that cannot be realized is redrawn (up to 64 times), which slightly raises the met rate of
/// constraints that cannot be violated together (e.g. LEN>=:k and LEN<=:k). Throws if no choice can be realized.
inline demo demonstration(const instruction& instr, double p_meet, rng& g) {
  if (!(p_meet >= 0.0 && p_meet <= 1.0))
    hir::detail::fail("toy::demonstration", "p_meet = ", p_meet, " is outside [0, 1]");
  for (int draw = 0; draw < 64; ++draw) {
    std::uint64_t target = 0;
    for (std::size_t c = 0; c < instr.size(); ++c)
      if (g.bernoulli(p_meet))
        target |= std::uint64_t(1) << c;
    if (auto y = respond(instr, target, g))
      return demo{*y, verify(instr, *y)};
  }
  hir::detail::fail("toy::demonstration", "no demonstration for \"", instr.text(), "\" with p_meet = ", p_meet,
                    " (is the instruction satisfiable?)");
}

/// Sizes of the three pools and the instructions' constraint counts.
struct task_config {
  std::size_t warm_start_size = 40000; ///< instructions for the supervised warm start
  std::size_t rl_size = 4000;          ///< RL prompts
  std::size_t eval_size = 512;         ///< held-out evaluation instructions
  int min_constraints = 3;             ///< fewest constraints per instruction (≥ 1)
  int max_constraints = 7;             ///< most constraints per instruction (≤ 7)
  double p_meet = 0.7;                 ///< per-constraint met probability for demonstration(); not used by the pools
};

/// The three pools.
enum class pool_kind { warm_start, rl, eval };

/// The philox stream a pool is drawn from; streams below first_free_stream are reserved for the task suite, so a
/// trainer drawing demonstrations or rollouts under the same seed should use streams ≥ first_free_stream.
inline constexpr std::uint64_t pool_stream(pool_kind p) {
  return 1 + static_cast<std::uint64_t>(p);
}
inline constexpr std::uint64_t first_free_stream = 16;

/// The task suite: three pools of tasks, disjoint as instruction sets (no instruction appears twice in a pool or
/// in two pools), generated from (config, seed) alone. The evaluation pool is drawn first (its own stream), then
/// the RL pool, then the warm-start pool, each skipping instructions already taken — so the held-out pool depends
/// only on the seed, eval_size and the constraint counts, not on the other pools' sizes.
class task_suite {
public:
  /// Generates the pools. Throws for invalid constraint counts or p_meet, or if a pool cannot be filled with
  /// distinct instructions (10,000 consecutive draws without a new one).
  task_suite(const task_config& config, std::uint64_t seed) : config_(config), seed_(seed) {
    if (!(config.p_meet >= 0.0 && config.p_meet <= 1.0))
      hir::detail::fail("toy::task_suite", "p_meet = ", config.p_meet, " is outside [0, 1]");
    std::set<instruction> seen;
    eval_ = draw(pool_kind::eval, config.eval_size, seen);
    rl_ = draw(pool_kind::rl, config.rl_size, seen);
    warm_start_ = draw(pool_kind::warm_start, config.warm_start_size, seen);
  }

  /// Warm-start (supervised) tasks.
  const std::vector<task>& warm_start() const noexcept { return warm_start_; }
  /// RL prompt tasks.
  const std::vector<task>& rl() const noexcept { return rl_; }
  /// Held-out evaluation tasks.
  const std::vector<task>& eval() const noexcept { return eval_; }
  /// The pool `p`.
  const std::vector<task>& pool(pool_kind p) const noexcept {
    return p == pool_kind::warm_start ? warm_start_ : p == pool_kind::rl ? rl_ : eval_;
  }
  /// The configuration it was built from.
  const task_config& config() const noexcept { return config_; }
  /// The seed it was built from.
  std::uint64_t seed() const noexcept { return seed_; }

private:
  std::vector<task> draw(pool_kind p, std::size_t n, std::set<instruction>& seen) const {
    rng g(seed_, pool_stream(p));
    std::vector<task> out;
    out.reserve(n);
    constexpr std::size_t max_stall = 10000; // consecutive draws without a new instruction
    for (std::size_t stall = 0; out.size() < n;) {
      if (stall == max_stall)
        hir::detail::fail("toy::task_suite", "found only ", out.size(), " of ", n,
                          " new distinct instructions: the last ", max_stall, " draws were all taken already");
      task t = sample_task(g, config_.min_constraints, config_.max_constraints);
      if (seen.insert(t.instr).second) {
        out.push_back(std::move(t));
        stall = 0;
      } else {
        ++stall;
      }
    }
    return out;
  }

  task_config config_;
  std::uint64_t seed_ = 0;
  std::vector<task> warm_start_, rl_, eval_;
};

/// The instructions of a pool, in order.
inline std::vector<instruction> instructions_of(const std::vector<task>& pool) {
  std::vector<instruction> out;
  out.reserve(pool.size());
  for (const auto& t : pool)
    out.push_back(t.instr);
  return out;
}

} // namespace hir::toy
