// SPDX-License-Identifier: Apache-2.0
// The toy task's word-level vocabulary (special tokens, 40 content words in 5 topics, "." and ",", topic tokens and
// one fused token per atomic constraint), its fixed size limits, a sequential random generator over hir::philox
// so that every generated pool and demonstration is a pure function of (seed, stream), and token-to-text helpers
// for logging. The layout matches the PyTorch prototype's (shared/peers/torch-miniature/task.py): 363 tokens.
#pragma once

#include <hir/core/error.hpp>
#include <hir/core/random.hpp>
#include <hir/core/span.hpp>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace hir::toy {

/// The most content words a generated response has (also the largest `LEN>=` / `LEN<=` argument).
inline constexpr int max_response_words = 12;
/// The most "." tokens a generated response has (also the largest `SENT` argument).
inline constexpr int max_sentences = 3;
/// The most "," tokens a generated response has.
inline constexpr int max_commas = 2;
/// The counts a `COUNT:w:k` constraint can ask for: k ∈ [min_word_count, max_word_count].
inline constexpr int min_word_count = 2;
inline constexpr int max_word_count = 4;
/// Token budget of a response including its `<eos>`: 12 words + 3 "." + 2 "," + `<eos>` = 18 fit.
inline constexpr int max_response_tokens = 20;
/// The most constraints a generated instruction has.
inline constexpr int max_instruction_constraints = 7;
/// Length of a left-padded prompt: `<bos>`, topic, up to 7 constraint tokens, `<sep>`.
inline constexpr int prompt_length = 3 + max_instruction_constraints;

/// The ten constraint types, in the canonical order in which an instruction lists them.
enum class constraint_kind : std::uint8_t {
  min_words,    ///< `LEN>=:k`   at least k content words
  max_words,    ///< `LEN<=:k`   at most k content words
  include_word, ///< `HAS:w`     w occurs
  exclude_word, ///< `NOT:w`     w does not occur
  start_with,   ///< `START:w`   the first token is w
  end_with,     ///< `END:x`     the last token is x ("." "," or a word)
  sentences,    ///< `SENT:k`    exactly k "." tokens
  word_count,   ///< `COUNT:w:k` w occurs exactly k times
  no_repeat,    ///< `NOREPEAT`  no content word occurs twice
  no_comma,     ///< `NOCOMMA`   no "," token
};
/// Number of constraint kinds.
inline constexpr int num_constraint_kinds = 10;

/// The token-name prefix of a constraint kind ("LEN>=", "HAS", ..., "NOCOMMA").
inline const char* kind_name(constraint_kind k) {
  static constexpr const char* names[num_constraint_kinds] = {"LEN>=", "LEN<=", "HAS",   "NOT",      "START",
                                                              "END",   "SENT",  "COUNT", "NOREPEAT", "NOCOMMA"};
  return names[static_cast<int>(k)];
}

/// The vocabulary: fixed token ids and their names. All members are static; an object may be passed around for
/// readability. Layout (ids): `<pad>` 0, `<bos>` 1, `<sep>` 2, `<eos>` 3, "." 4, "," 5, words 6–45 (topic-major),
/// topic tokens `T:<topic>` 46–50, constraint tokens 51–362 in canonical order (see constraint_kind).
struct vocabulary {
  static constexpr int pad = 0;    ///< padding (left of prompts, right of responses)
  static constexpr int bos = 1;    ///< start of an instruction
  static constexpr int sep = 2;    ///< end of an instruction; the response follows
  static constexpr int eos = 3;    ///< end of a response
  static constexpr int period = 4; ///< "." (ends a sentence)
  static constexpr int comma = 5;  ///< ","
  static constexpr int num_topics = 5;
  static constexpr int words_per_topic = 8;
  static constexpr int num_words = num_topics * words_per_topic;
  static constexpr int first_word = 6;
  static constexpr int first_topic = first_word + num_words;
  static constexpr int first_constraint = first_topic + num_topics;
  /// Number of tokens of each constraint kind, in canonical order.
  static constexpr std::array<int, num_constraint_kinds> kind_tokens = {max_response_words,
                                                                        max_response_words,
                                                                        num_words,
                                                                        num_words,
                                                                        num_words,
                                                                        2 + num_words,
                                                                        max_sentences + 1,
                                                                        num_words*(max_word_count - min_word_count + 1),
                                                                        1,
                                                                        1};
  static constexpr int num_constraint_tokens = 2 * max_response_words + 3 * num_words + (2 + num_words) +
                                               (max_sentences + 1) + num_words * (max_word_count - min_word_count + 1) +
                                               2;
  static constexpr int num_tokens = first_constraint + num_constraint_tokens;

  /// Number of tokens (363).
  static constexpr std::size_t size() { return static_cast<std::size_t>(num_tokens); }

  /// The first token id of constraint kind `k`.
  static constexpr int kind_begin(constraint_kind k) {
    int id = first_constraint;
    for (int i = 0; i < static_cast<int>(k); ++i)
      id += kind_tokens[static_cast<std::size_t>(i)];
    return id;
  }

  /// Name of topic `t` ∈ [0, 5): fruit, color, animal, weather, tool.
  static const char* topic_name(int t) {
    check_topic("toy::vocabulary::topic_name", t);
    static constexpr const char* names[num_topics] = {"fruit", "color", "animal", "weather", "tool"};
    return names[t];
  }
  /// Token id of word `i` ∈ [0, 8) of topic `t`.
  static int word(int t, int i) {
    check_topic("toy::vocabulary::word", t);
    if (i < 0 || i >= words_per_topic)
      hir::detail::fail("toy::vocabulary::word", "word index ", i, " is outside [0, ", words_per_topic, ")");
    return first_word + t * words_per_topic + i;
  }
  /// Token id `T:<topic>` of topic `t`.
  static int topic_token(int t) {
    check_topic("toy::vocabulary::topic_token", t);
    return first_topic + t;
  }
  /// True for a valid token id.
  static constexpr bool valid(int id) { return id >= 0 && id < num_tokens; }
  /// True for one of the 40 content words.
  static constexpr bool is_word(int id) { return id >= first_word && id < first_word + num_words; }
  /// True for "." or ",".
  static constexpr bool is_punctuation(int id) { return id == period || id == comma; }
  /// True for a topic token `T:<topic>`.
  static constexpr bool is_topic(int id) { return id >= first_topic && id < first_topic + num_topics; }
  /// True for a constraint token.
  static constexpr bool is_constraint(int id) { return id >= first_constraint && id < num_tokens; }
  /// True for a token a generated response consists of: a word, "." "," or `<eos>`.
  static constexpr bool is_response_token(int id) { return is_word(id) || is_punctuation(id) || id == eos; }
  /// The topic a content word belongs to.
  static int topic_of_word(int id) {
    if (!is_word(id))
      hir::detail::fail("toy::vocabulary::topic_of_word", "token ", id, " is not a content word");
    return (id - first_word) / words_per_topic;
  }
  /// The ids a response may contain: "." "," the 40 words and `<eos>`, ascending.
  static std::vector<int> response_tokens() {
    std::vector<int> ids = {eos, period, comma};
    for (int w = 0; w < num_words; ++w)
      ids.push_back(first_word + w);
    return ids;
  }

  /// The name of token `id` ("<eos>", ".", "apple", "T:fruit", "COUNT:red:2"); throws for an invalid id.
  static const std::string& name(int id) {
    if (!valid(id))
      hir::detail::fail("toy::vocabulary::name", "token id ", id, " is outside [0, ", num_tokens, ")");
    return names()[static_cast<std::size_t>(id)];
  }
  /// The id of the token named `s`, or -1 when there is none.
  static int id(std::string_view s) {
    static const std::unordered_map<std::string, int> index = [] {
      std::unordered_map<std::string, int> m;
      const auto& n = names();
      for (std::size_t i = 0; i < n.size(); ++i)
        m.emplace(n[i], static_cast<int>(i));
      return m;
    }();
    const auto it = index.find(std::string(s));
    return it == index.end() ? -1 : it->second;
  }

  /// All token names, indexed by id.
  static const std::vector<std::string>& names() {
    static const std::vector<std::string> table = build_names();
    return table;
  }

private:
  static void check_topic(const char* fn, int t) {
    if (t < 0 || t >= num_topics)
      hir::detail::fail(fn, "topic ", t, " is outside [0, ", num_topics, ")");
  }

  static std::vector<std::string> build_names() {
    static constexpr const char* words[num_words] = {
        "apple", "pear",  "plum",  "grape", "lemon", "mango",  "peach", "berry", // fruit
        "red",   "blue",  "green", "gold",  "pink",  "gray",   "black", "white", // color
        "cat",   "dog",   "fox",   "owl",   "bee",   "cow",    "hen",   "frog",  // animal
        "rain",  "snow",  "wind",  "sun",   "fog",   "storm",  "cloud", "frost", // weather
        "saw",   "drill", "nail",  "rope",  "axe",   "hammer", "brush", "knife", // tool
    };
    std::vector<std::string> n = {"<pad>", "<bos>", "<sep>", "<eos>", ".", ","};
    for (const char* w : words)
      n.emplace_back(w);
    for (int t = 0; t < num_topics; ++t)
      n.push_back(std::string("T:") + topic_name(t));
    const auto word_name = [&](int w) { return std::string(words[w]); };
    for (int k = 1; k <= max_response_words; ++k)
      n.push_back("LEN>=:" + std::to_string(k));
    for (int k = 1; k <= max_response_words; ++k)
      n.push_back("LEN<=:" + std::to_string(k));
    for (const char* prefix : {"HAS:", "NOT:", "START:"})
      for (int w = 0; w < num_words; ++w)
        n.push_back(prefix + word_name(w));
    n.emplace_back("END:.");
    n.emplace_back("END:,");
    for (int w = 0; w < num_words; ++w)
      n.push_back("END:" + word_name(w));
    for (int k = 0; k <= max_sentences; ++k)
      n.push_back("SENT:" + std::to_string(k));
    for (int w = 0; w < num_words; ++w)
      for (int k = min_word_count; k <= max_word_count; ++k)
        n.push_back("COUNT:" + word_name(w) + ":" + std::to_string(k));
    n.emplace_back("NOREPEAT");
    n.emplace_back("NOCOMMA");
    if (n.size() != static_cast<std::size_t>(num_tokens))
      hir::detail::fail("toy::vocabulary", "internal error: built ", n.size(), " names for ", num_tokens, " tokens");
    return n;
  }
};

/// A sequential stream of random numbers: draw i of stream `stream` under `seed` is hir::philox's word for
/// (stream, i), so a generator is reproducible from (seed, stream) on every platform. Integer draws are unbiased
/// (rejection sampling); no std:: distribution is used (their output is implementation-defined).
class rng {
public:
  /// Stream `stream` of the generator keyed by `seed`, starting at draw 0.
  rng(std::uint64_t seed, std::uint64_t stream) : gen_{seed}, stream_(stream) {}

  /// 64 random bits.
  std::uint64_t next() { return gen_.bits64(stream_, counter_++); }
  /// A uniform double in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  /// A uniform integer in [0, n); n must be positive.
  std::size_t below(std::size_t n) {
    if (n == 0)
      hir::detail::fail("toy::rng::below", "n = 0");
    const std::uint64_t m = static_cast<std::uint64_t>(n);
    const std::uint64_t limit = ~std::uint64_t(0) - (~std::uint64_t(0) % m + 1) % m; // largest multiple of m, - 1
    std::uint64_t x = next();
    while (x > limit)
      x = next();
    return static_cast<std::size_t>(x % m);
  }
  /// A uniform integer in [lo, hi] (inclusive); requires lo ≤ hi.
  int between(int lo, int hi) {
    if (lo > hi)
      hir::detail::fail("toy::rng::between", "lo = ", lo, " > hi = ", hi);
    return lo + static_cast<int>(below(static_cast<std::size_t>(hi - lo) + 1));
  }
  /// True with probability p.
  bool bernoulli(double p) { return uniform() < p; }
  /// A uniformly chosen element of a non-empty vector.
  template <class T>
  const T& pick(const std::vector<T>& v) {
    return v[below(v.size())];
  }
  /// Fisher–Yates shuffle of `v`.
  template <class T>
  void shuffle(std::vector<T>& v) {
    for (std::size_t i = v.size(); i > 1; --i)
      std::swap(v[i - 1], v[below(i)]);
  }
  /// Number of draws taken so far.
  std::uint64_t counter() const noexcept { return counter_; }
  /// The stream id.
  std::uint64_t stream() const noexcept { return stream_; }

private:
  philox gen_;
  std::uint64_t stream_ = 0;
  std::uint64_t counter_ = 0;
};

/// True for the tokens that end a response: `<eos>` and `<pad>` (a right-padded row without `<eos>`).
inline bool ends_response(int id) {
  return id == vocabulary::eos || id == vocabulary::pad;
}

/// All tokens' names joined by single spaces, for logging ("<bos> T:fruit HAS:apple <sep>"). Invalid ids are
/// rendered as "<?id>" rather than rejected.
inline std::string to_text(span<const int> tokens) {
  std::string s;
  for (std::size_t i = 0; i < tokens.size(); ++i) {
    if (i)
      s += ' ';
    const int id = tokens[i];
    s += vocabulary::valid(id) ? vocabulary::name(id) : "<?" + std::to_string(id) + ">";
  }
  return s;
}

/// The text of a response: the names of its tokens before the first `<eos>` / `<pad>`, joined by spaces
/// ("apple pear . plum ,"); empty for an empty response.
inline std::string response_text(span<const int> tokens) {
  std::size_t n = 0;
  while (n < tokens.size() && !ends_response(tokens[n]))
    ++n;
  return to_text(tokens.subspan(0, n));
}

} // namespace hir::toy
