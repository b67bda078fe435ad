// SPDX-License-Identifier: Apache-2.0
// The toy task's constraints, instructions and verifiers. A constraint is one of ten IFEval-like types with its
// arguments and is rendered as one fused token ("HAS:apple", "COUNT:red:2", "LEN>=:6"); an instruction is a topic
// plus constraints in canonical (token-id) order, rendered `<bos> T:<topic> c_1 … c_n <sep>`. verify() runs every
// constraint's verifier on a response and returns the verdict vector in hir's layout (bit c = constraint c met,
// plus the count); instruction::keep() is the HiR rewrite (met constraints only, same order, same template).
// satisfaction_stats aggregates ILA / CLA and per-type rates over a set of responses.
#pragma once

#include "task_vocabulary.hpp"

#include <hir/core/error.hpp>
#include <hir/core/span.hpp>
#include <hir/rewards/reward_vector.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace hir::toy {

/// What the verifiers look at in a response. A response is the token prefix before the first `<eos>` or `<pad>`
/// (all tokens when there is neither). Content words are counted per word; "." and "," are counted; other valid
/// tokens (`<bos>`, `<sep>`, topic or constraint tokens a model may emit) are neither words nor punctuation but
/// still count as the first / last token.
struct response_features {
  std::array<int, vocabulary::num_words> word_counts{}; ///< occurrences of each content word (index id - first_word)
  int words = 0;                                        ///< number of content-word tokens
  int periods = 0;                                      ///< number of "." tokens
  int commas = 0;                                       ///< number of "," tokens
  int first = -1;                                       ///< first token id, -1 for an empty response
  int last = -1;                                        ///< last token id, -1 for an empty response
  std::size_t length = 0;                               ///< tokens before the terminator
  bool repeated = false;                                ///< some content word occurs at least twice

  /// Features of `response`. Throws hir::invalid_argument for a token id outside the vocabulary.
  static response_features of(span<const int> response) {
    response_features f;
    for (std::size_t i = 0; i < response.size(); ++i) {
      const int id = response[i];
      if (!vocabulary::valid(id))
        hir::detail::fail("toy::response_features::of", "response token ", i, " has id ", id,
                          ", outside the vocabulary [0, ", vocabulary::size(), ")");
      if (ends_response(id))
        break;
      if (f.length == 0)
        f.first = id;
      f.last = id;
      ++f.length;
      if (vocabulary::is_word(id)) {
        ++f.words;
        if (++f.word_counts[static_cast<std::size_t>(id - vocabulary::first_word)] == 2)
          f.repeated = true;
      } else if (id == vocabulary::period) {
        ++f.periods;
      } else if (id == vocabulary::comma) {
        ++f.commas;
      }
    }
    return f;
  }
  /// Occurrences of content word `word` (a token id).
  int count(int word) const { return word_counts[static_cast<std::size_t>(word - vocabulary::first_word)]; }
};

/// One atomic constraint: a kind and its arguments (a word or punctuation token, a count). Built by the named
/// factories (which validate the arguments) or from its token. Every constraint has exactly one token.
class constraint {
public:
  /// `LEN>=:k`: at least k content words, k ∈ [1, 12].
  static constraint min_words(int k) { return make(constraint_kind::min_words, -1, k); }
  /// `LEN<=:k`: at most k content words, k ∈ [1, 12].
  static constraint max_words(int k) { return make(constraint_kind::max_words, -1, k); }
  /// `HAS:w`: the content word w (a token id) occurs at least once.
  static constraint include_word(int w) { return make(constraint_kind::include_word, w, 0); }
  /// `NOT:w`: the content word w does not occur.
  static constraint exclude_word(int w) { return make(constraint_kind::exclude_word, w, 0); }
  /// `START:w`: the first token is the content word w.
  static constraint start_with(int w) { return make(constraint_kind::start_with, w, 0); }
  /// `END:x`: the last token is x, a content word, "." or ",".
  static constraint end_with(int x) { return make(constraint_kind::end_with, x, 0); }
  /// `SENT:k`: exactly k "." tokens (sentences), k ∈ [0, 3].
  static constraint sentences(int k) { return make(constraint_kind::sentences, -1, k); }
  /// `COUNT:w:k`: the content word w occurs exactly k times, k ∈ [2, 4].
  static constraint word_count(int w, int k) { return make(constraint_kind::word_count, w, k); }
  /// `NOREPEAT`: no content word occurs twice.
  static constraint no_repeat() { return make(constraint_kind::no_repeat, -1, 0); }
  /// `NOCOMMA`: no "," token.
  static constraint no_comma() { return make(constraint_kind::no_comma, -1, 0); }

  /// The constraint whose token is `id`; throws unless vocabulary::is_constraint(id).
  static constraint from_token(int id) {
    if (!vocabulary::is_constraint(id))
      hir::detail::fail("toy::constraint::from_token", "token ", id, " is not a constraint token");
    int kind = 0;
    while (id >= vocabulary::kind_begin(static_cast<constraint_kind>(kind)) +
                     vocabulary::kind_tokens[static_cast<std::size_t>(kind)])
      ++kind;
    const auto k = static_cast<constraint_kind>(kind);
    const int i = id - vocabulary::kind_begin(k);
    switch (k) {
    case constraint_kind::min_words:
    case constraint_kind::max_words:
      return make(k, -1, i + 1);
    case constraint_kind::include_word:
    case constraint_kind::exclude_word:
    case constraint_kind::start_with:
      return make(k, vocabulary::first_word + i, 0);
    case constraint_kind::end_with:
      return make(k, i == 0 ? vocabulary::period : i == 1 ? vocabulary::comma : vocabulary::first_word + i - 2, 0);
    case constraint_kind::sentences:
      return make(k, -1, i);
    case constraint_kind::word_count: {
      const int per_word = max_word_count - min_word_count + 1;
      return make(k, vocabulary::first_word + i / per_word, min_word_count + i % per_word);
    }
    default:
      return make(k, -1, 0);
    }
  }

  /// The constraint's kind.
  constraint_kind kind() const noexcept { return kind_; }
  /// Its word or punctuation argument (a token id), -1 for kinds without one.
  int word() const noexcept { return arg_; }
  /// Its count argument (k of LEN>=, LEN<=, SENT, COUNT), 0 for kinds without one.
  int count() const noexcept { return k_; }

  /// Its token id; the canonical order of constraints is ascending token id.
  int token() const {
    const int begin = vocabulary::kind_begin(kind_);
    switch (kind_) {
    case constraint_kind::min_words:
    case constraint_kind::max_words:
      return begin + k_ - 1;
    case constraint_kind::include_word:
    case constraint_kind::exclude_word:
    case constraint_kind::start_with:
      return begin + (arg_ - vocabulary::first_word);
    case constraint_kind::end_with:
      return begin + (arg_ == vocabulary::period  ? 0
                      : arg_ == vocabulary::comma ? 1
                                                  : 2 + (arg_ - vocabulary::first_word));
    case constraint_kind::sentences:
      return begin + k_;
    case constraint_kind::word_count:
      return begin + (arg_ - vocabulary::first_word) * (max_word_count - min_word_count + 1) + (k_ - min_word_count);
    default:
      return begin;
    }
  }
  /// Its token's name ("LEN<=:6").
  const std::string& name() const { return vocabulary::name(token()); }

  /// A short English description: "at most 6 words", "include the word apple", "end with a period".
  std::string description() const {
    const auto w = [&] { return vocabulary::name(arg_); };
    const auto times = [](int k, const char* one, const char* many) {
      return std::to_string(k) + " " + (k == 1 ? one : many);
    };
    switch (kind_) {
    case constraint_kind::min_words:
      return "at least " + times(k_, "word", "words");
    case constraint_kind::max_words:
      return "at most " + times(k_, "word", "words");
    case constraint_kind::include_word:
      return "include the word " + w();
    case constraint_kind::exclude_word:
      return "do not use the word " + w();
    case constraint_kind::start_with:
      return "start with the word " + w();
    case constraint_kind::end_with:
      return arg_ == vocabulary::period  ? std::string("end with a period")
             : arg_ == vocabulary::comma ? std::string("end with a comma")
                                         : "end with the word " + w();
    case constraint_kind::sentences:
      return "exactly " + times(k_, "sentence", "sentences");
    case constraint_kind::word_count:
      return "use the word " + w() + " exactly " + std::to_string(k_) + " times";
    case constraint_kind::no_repeat:
      return "use no word more than once";
    default:
      return "use no commas";
    }
  }

  /// The verifier on precomputed features.
  bool check(const response_features& f) const {
    switch (kind_) {
    case constraint_kind::min_words:
      return f.words >= k_;
    case constraint_kind::max_words:
      return f.words <= k_;
    case constraint_kind::include_word:
      return f.count(arg_) >= 1;
    case constraint_kind::exclude_word:
      return f.count(arg_) == 0;
    case constraint_kind::start_with:
      return f.length > 0 && f.first == arg_;
    case constraint_kind::end_with:
      return f.length > 0 && f.last == arg_;
    case constraint_kind::sentences:
      return f.periods == k_;
    case constraint_kind::word_count:
      return f.count(arg_) == k_;
    case constraint_kind::no_repeat:
      return !f.repeated;
    default:
      return f.commas == 0;
    }
  }
  /// The verifier: true when `response` (tokens, optionally ended by `<eos>` / `<pad>`) meets the constraint.
  /// Throws hir::invalid_argument for a token id outside the vocabulary.
  bool check(span<const int> response) const { return check(response_features::of(response)); }

  friend bool operator==(const constraint& a, const constraint& b) {
    return a.kind_ == b.kind_ && a.arg_ == b.arg_ && a.k_ == b.k_;
  }
  friend bool operator!=(const constraint& a, const constraint& b) { return !(a == b); }
  /// Canonical order (by token id).
  friend bool operator<(const constraint& a, const constraint& b) { return a.token() < b.token(); }

private:
  constraint(constraint_kind kind, int arg, int k) : kind_(kind), arg_(arg), k_(k) {}

  static constraint make(constraint_kind kind, int arg, int k) {
    const auto bad = [&](const char* what, int v) {
      hir::detail::fail("toy::constraint", kind_name(kind), ": ", what, " = ", v, " is out of range");
    };
    switch (kind) {
    case constraint_kind::min_words:
    case constraint_kind::max_words:
      if (k < 1 || k > max_response_words)
        bad("k", k);
      break;
    case constraint_kind::include_word:
    case constraint_kind::exclude_word:
    case constraint_kind::start_with:
      if (!vocabulary::is_word(arg))
        bad("word token", arg);
      break;
    case constraint_kind::end_with:
      if (!vocabulary::is_word(arg) && !vocabulary::is_punctuation(arg))
        bad("end token", arg);
      break;
    case constraint_kind::sentences:
      if (k < 0 || k > max_sentences)
        bad("k", k);
      break;
    case constraint_kind::word_count:
      if (!vocabulary::is_word(arg))
        bad("word token", arg);
      if (k < min_word_count || k > max_word_count)
        bad("k", k);
      break;
    default:
      break;
    }
    return constraint(kind, arg, k);
  }

  constraint_kind kind_ = constraint_kind::no_comma;
  int arg_ = -1;
  int k_ = 0;
};

/// An instruction: a topic ("write about <topic>") and its constraints in canonical order (strictly ascending
/// token ids, so no constraint appears twice). The same template renders original and rewritten instructions.
class instruction {
public:
  /// Topic 0 without constraints.
  instruction() = default;
  /// Topic `topic` ∈ [0, 5) with `constraints` (at most 64, strictly ascending by token id). Throws otherwise.
  instruction(int topic, std::vector<constraint> constraints) : topic_(topic), constraints_(std::move(constraints)) {
    if (topic < 0 || topic >= vocabulary::num_topics)
      hir::detail::fail("toy::instruction", "topic ", topic, " is outside [0, ", vocabulary::num_topics, ")");
    if (constraints_.size() > max_constraints)
      hir::detail::fail("toy::instruction", constraints_.size(), " constraints; at most ", max_constraints,
                        " are supported");
    for (std::size_t c = 1; c < constraints_.size(); ++c)
      if (!(constraints_[c - 1] < constraints_[c]))
        hir::detail::fail("toy::instruction", "constraints are not in canonical order: ", constraints_[c - 1].name(),
                          " (position ", c - 1, ") is followed by ", constraints_[c].name());
  }

  /// Parses `[<pad>…] <bos> T:<topic> c_1 … c_n <sep>`; throws hir::invalid_argument for anything else.
  static instruction from_tokens(span<const int> tokens) {
    std::size_t i = 0;
    while (i < tokens.size() && tokens[i] == vocabulary::pad)
      ++i;
    if (tokens.size() < i + 3 || tokens[i] != vocabulary::bos || !vocabulary::is_topic(tokens[i + 1]) ||
        tokens[tokens.size() - 1] != vocabulary::sep)
      hir::detail::fail("toy::instruction::from_tokens",
                        "expected [<pad>...] <bos> T:<topic> constraints... <sep>, got \"", to_text(tokens), "\"");
    std::vector<constraint> cs;
    for (std::size_t j = i + 2; j + 1 < tokens.size(); ++j) {
      if (!vocabulary::is_constraint(tokens[j]))
        hir::detail::fail("toy::instruction::from_tokens", "token ", j, " (", tokens[j],
                          ") is not a constraint token in \"", to_text(tokens), "\"");
      cs.push_back(constraint::from_token(tokens[j]));
    }
    return instruction(tokens[i + 1] - vocabulary::first_topic, std::move(cs));
  }

  /// The topic index ∈ [0, 5).
  int topic() const noexcept { return topic_; }
  /// The constraints, in canonical order.
  const std::vector<constraint>& constraints() const noexcept { return constraints_; }
  /// Number of constraints.
  std::size_t size() const noexcept { return constraints_.size(); }
  /// Constraint c.
  const constraint& operator[](std::size_t c) const { return constraints_[c]; }

  /// `<bos> T:<topic> c_1 … c_n <sep>` (n + 3 tokens).
  std::vector<int> tokens() const {
    std::vector<int> t;
    t.reserve(constraints_.size() + 3);
    t.push_back(vocabulary::bos);
    t.push_back(vocabulary::topic_token(topic_));
    for (const auto& c : constraints_)
      t.push_back(c.token());
    t.push_back(vocabulary::sep);
    return t;
  }
  /// tokens() left-padded with `<pad>` to `length` tokens, so that every response starts at the same position.
  /// Throws if the instruction is longer than `length`.
  std::vector<int> padded_tokens(std::size_t length = prompt_length) const {
    std::vector<int> t = tokens();
    if (t.size() > length)
      hir::detail::fail("toy::instruction::padded_tokens", "the instruction has ", t.size(),
                        " tokens; length = ", length);
    t.insert(t.begin(), length - t.size(), vocabulary::pad);
    return t;
  }

  /// The HiR rewrite: the same topic with only the constraints whose bit is set in `met_mask`, in their original
  /// order. Bits at or above size() must be zero.
  instruction keep(std::uint64_t met_mask) const {
    if (constraints_.size() < max_constraints && (met_mask >> constraints_.size()) != 0)
      hir::detail::fail("toy::instruction::keep", "met_mask has bits set at or above the constraint count ",
                        constraints_.size());
    instruction r;
    r.topic_ = topic_;
    for (std::size_t c = 0; c < constraints_.size(); ++c)
      if ((met_mask >> c) & 1u)
        r.constraints_.push_back(constraints_[c]);
    return r;
  }

  /// The tokens' names ("<bos> T:fruit HAS:apple LEN<=:6 <sep>").
  std::string text() const { return to_text(tokens()); }
  /// English rendering for logs: "write about fruit: include the word apple; at most 6 words".
  std::string describe() const {
    std::string s = std::string("write about ") + vocabulary::topic_name(topic_);
    for (std::size_t c = 0; c < constraints_.size(); ++c)
      s += (c == 0 ? ": " : "; ") + constraints_[c].description();
    return s;
  }

  friend bool operator==(const instruction& a, const instruction& b) {
    return a.topic_ == b.topic_ && a.constraints_ == b.constraints_;
  }
  friend bool operator!=(const instruction& a, const instruction& b) { return !(a == b); }
  /// A strict order (topic, then constraints lexicographically), for sets and maps.
  friend bool operator<(const instruction& a, const instruction& b) {
    if (a.topic_ != b.topic_)
      return a.topic_ < b.topic_;
    const std::size_t n = std::min(a.size(), b.size());
    for (std::size_t c = 0; c < n; ++c)
      if (a[c] != b[c])
        return a[c] < b[c];
    return a.size() < b.size();
  }

private:
  int topic_ = 0;
  std::vector<constraint> constraints_;
};

/// One response's verdicts in hir's reward-vector layout: bit c of `mask` = constraint c met; `count` constraints.
struct verdict_vector {
  std::uint64_t mask = 0; ///< bit c set: constraint c (canonical order) is met
  std::uint8_t count = 0; ///< number of constraints of the instruction

  /// Whether constraint c is met.
  bool met(std::size_t c) const noexcept { return (mask >> c) & 1u; }
  /// Number of constraints met.
  int num_met() const noexcept { return hir::detail::popcount64(mask); }
  /// Instruction-level verdict (ILA = 1): every constraint met (vacuously true for no constraints).
  bool all_met() const noexcept { return num_met() == count; }
  /// Constraint-level accuracy num_met / count (1 for no constraints).
  double cla() const noexcept { return count == 0 ? 1.0 : static_cast<double>(num_met()) / count; }

  friend bool operator==(const verdict_vector& a, const verdict_vector& b) {
    return a.mask == b.mask && a.count == b.count;
  }
  friend bool operator!=(const verdict_vector& a, const verdict_vector& b) { return !(a == b); }
};

/// Runs every constraint's verifier of `instr` on `response`. Throws for a token id outside the vocabulary.
inline verdict_vector verify(const instruction& instr, span<const int> response) {
  const response_features f = response_features::of(response);
  verdict_vector v;
  v.count = static_cast<std::uint8_t>(instr.size());
  for (std::size_t c = 0; c < instr.size(); ++c)
    if (instr[c].check(f))
      v.mask |= std::uint64_t(1) << c;
  return v;
}

/// Verifies response i against instruction i for every i and returns the verdicts as a hir::verdict_batch.
inline verdict_batch verify_all(span<const instruction> instructions, span<const std::vector<int>> responses) {
  hir::detail::check_size("toy::verify_all", "instructions.size()", instructions.size(), "responses.size()",
                          responses.size());
  verdict_batch b;
  for (std::size_t i = 0; i < instructions.size(); ++i) {
    const verdict_vector v = verify(instructions[i], responses[i]);
    b.push_back(v.mask, v.count);
  }
  return b;
}

/// Aggregate satisfaction over a set of (instruction, verdicts) pairs: ILA, CLA and per-kind rates.
struct satisfaction_stats {
  std::size_t responses = 0;                                  ///< responses added
  std::size_t all_met = 0;                                    ///< responses that met every constraint
  std::size_t constraints = 0;                                ///< constraints judged, over all responses
  std::size_t met = 0;                                        ///< constraints met, over all responses
  double cla_sum = 0.0;                                       ///< Σ of per-response CLA
  std::array<std::size_t, num_constraint_kinds> kind_total{}; ///< constraints judged, per kind
  std::array<std::size_t, num_constraint_kinds> kind_met{};   ///< constraints met, per kind

  /// Adds one response's verdicts on `instr`; throws if the counts disagree.
  void add(const instruction& instr, const verdict_vector& v) {
    hir::detail::check_size("toy::satisfaction_stats::add", "instruction size", instr.size(), "verdict count", v.count);
    ++responses;
    all_met += v.all_met() ? 1 : 0;
    constraints += instr.size();
    met += static_cast<std::size_t>(v.num_met());
    cla_sum += v.cla();
    for (std::size_t c = 0; c < instr.size(); ++c) {
      const auto k = static_cast<std::size_t>(instr[c].kind());
      ++kind_total[k];
      kind_met[k] += v.met(c) ? 1 : 0;
    }
  }
  /// Instruction-level accuracy: the fraction of responses meeting every constraint (0 when empty).
  double ila() const { return responses ? static_cast<double>(all_met) / responses : 0.0; }
  /// Constraint-level accuracy: the mean over responses of num_met / count (0 when empty).
  double cla() const { return responses ? cla_sum / responses : 0.0; }
  /// The fraction of all judged constraints that were met (pooled over responses; 0 when empty).
  double constraint_rate() const { return constraints ? static_cast<double>(met) / constraints : 0.0; }
  /// The fraction of constraints of kind `k` that were met (0 when none was judged).
  double kind_rate(constraint_kind k) const {
    const auto i = static_cast<std::size_t>(k);
    return kind_total[i] ? static_cast<double>(kind_met[i]) / kind_total[i] : 0.0;
  }
  /// One line: "n=512 ILA=0.107 CLA=0.631 | LEN>= 0.80 (1142) ...".
  std::string summary() const {
    char buf[96];
    std::snprintf(buf, sizeof buf, "n=%zu ILA=%.3f CLA=%.3f |", responses, ila(), cla());
    std::string s = buf;
    for (int k = 0; k < num_constraint_kinds; ++k) {
      const auto kind = static_cast<constraint_kind>(k);
      std::snprintf(buf, sizeof buf, " %s %.2f (%zu)", kind_name(kind), kind_rate(kind),
                    kind_total[static_cast<std::size_t>(k)]);
      s += buf;
    }
    return s;
  }
};

/// Verifies response i against instruction i and aggregates the verdicts.
inline satisfaction_stats evaluate(span<const instruction> instructions, span<const std::vector<int>> responses) {
  hir::detail::check_size("toy::evaluate", "instructions.size()", instructions.size(), "responses.size()",
                          responses.size());
  satisfaction_stats s;
  for (std::size_t i = 0; i < instructions.size(); ++i)
    s.add(instructions[i], verify(instructions[i], responses[i]));
  return s;
}

} // namespace hir::toy
