// SPDX-License-Identifier: Apache-2.0
// The end-to-end trainer's configuration: task suite, model, supervised warm start, RL and the compared variants,
// with JSON (de)serialization (nlohmann-json). Every field has a built-in default (docs/trainer.md); a config file
// overrides any subset. Unknown keys and out-of-range values are errors naming the key.
#pragma once

#include "task.hpp"

#include <hir/hir.hpp>
#include <hir/nn.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <fstream>
#include <set>
#include <string>
#include <vector>

namespace hir::train {

/// The RL algorithm of a variant.
enum class algorithm {
  grpo,         ///< group-normalized advantages (verl GRPO), k3 KL loss
  reinforce_pp, ///< REINFORCE++: k1 KL in the reward, returns whitened over all valid tokens of the batch
  hir           ///< hindsight instruction replay (REINFORCE++ on originals + replays)
};
enum class reward_kind { ila, cla };

/// One compared training recipe. Everything that distinguishes the variants is here.
struct variant_config {
  std::string name = "grpo_ila";
  algorithm algo = algorithm::grpo;
  reward_kind reward = reward_kind::ila;
  std::size_t rollouts = 8;                  ///< m, responses sampled per prompt
  std::string hir_preset = "hir_paper_code"; ///< hir_paper_code | hir_paper_eq (algorithm::hir only)
  std::string selection = "score";           ///< score | random | integrity | diversity (algorithm::hir)
  std::string lambda = "exponential";        ///< exponential | constant (algorithm::hir)
  std::string diversity = "preset";          ///< preset | token_mean | token_sum: entropy term of F (algorithm::hir)
  bool recompute_replay_logp = false;        ///< old/ref log-probs of replays recomputed under q' (algorithm::hir)
};

struct trainer_config {
  std::uint64_t seed = 1;
  // task suite
  std::size_t warm_pool = 40000, rl_pool = 4000, eval_pool = 512;
  double p_meet = 0.7;
  int min_constraints = 3, max_constraints = 7; ///< constraints per instruction (1 ≤ min ≤ max ≤ 7)
  // model
  std::size_t context = 32, channels = 96, layers = 3, heads = 4;
  // supervised warm start
  std::size_t warm_steps = 1500, warm_batch = 128;
  double warm_lr = 2e-3, warm_min_lr = 2e-4;
  std::size_t warm_warmup = 50;
  // RL
  std::size_t prompts_per_step = 16;
  std::size_t rollout_budget = 19200; ///< rollouts per run (GRPO-8: 150 steps; HiR-6: 200 steps)
  std::size_t max_new_tokens = 20;
  double lr = 3e-4, weight_decay = 0.0, grad_clip = 1.0;
  std::size_t minibatches = 2;
  double clip = 0.2, dual_clip = 3.0, kl_coef = 0.001;
  double temperature = 1.0;
  // evaluation and bookkeeping
  std::size_t eval_every = 10;             ///< steps between held-out evaluations (and at the end)
  std::size_t eval_samples_per_prompt = 2; ///< sampled responses per held-out instruction (T = 1)
  std::size_t checkpoint_every = 25;
  std::size_t threads = 0; ///< OpenMP threads (0 = all cores)
  std::vector<double> ila_levels = {0.15, 0.20, 0.25, 0.30};
  std::vector<variant_config> variants; ///< for `compare`; `train` uses the first unless --variant is given
  std::vector<std::uint64_t> seeds = {1};

  nn::transformer_config model_config() const {
    nn::transformer_config c;
    c.vocab = toy::vocabulary::size();
    c.context = context;
    c.channels = channels;
    c.layers = layers;
    c.heads = heads;
    return c;
  }
};

/// The built-in variants, selectable by name.
inline std::vector<variant_config> builtin_variants() {
  std::vector<variant_config> v;
  auto add = [&](std::string name, algorithm a, reward_kind r, std::size_t m) -> variant_config& {
    variant_config c;
    c.name = std::move(name);
    c.algo = a;
    c.reward = r;
    c.rollouts = m;
    v.push_back(c);
    return v.back();
  };
  add("grpo_ila", algorithm::grpo, reward_kind::ila, 8);
  add("grpo_cla", algorithm::grpo, reward_kind::cla, 8);
  add("rfpp_ila_8", algorithm::reinforce_pp, reward_kind::ila, 8);
  add("rfpp_ila_6", algorithm::reinforce_pp, reward_kind::ila, 6);
  add("hir_code", algorithm::hir, reward_kind::ila, 6);
  add("hir_eq", algorithm::hir, reward_kind::ila, 6).hir_preset = "hir_paper_eq";
  add("hir_random", algorithm::hir, reward_kind::ila, 6).selection = "random";
  add("hir_const_lambda", algorithm::hir, reward_kind::ila, 6).lambda = "constant";
  add("hir_recompute", algorithm::hir, reward_kind::ila, 6).recompute_replay_logp = true;
  return v;
}

/// The built-in variant called `name`. \throws hir::invalid_argument listing the known names.
inline variant_config find_variant(const std::string& name) {
  std::string known;
  for (const auto& v : builtin_variants()) {
    if (v.name == name)
      return v;
    known += (known.empty() ? "" : ", ") + v.name;
  }
  hir::detail::fail("train::find_variant", "unknown variant \"", name, "\"; built-in variants: ", known);
}

NLOHMANN_JSON_SERIALIZE_ENUM(algorithm, {{algorithm::grpo, "grpo"},
                                         {algorithm::reinforce_pp, "reinforce_pp"},
                                         {algorithm::hir, "hir"}})
NLOHMANN_JSON_SERIALIZE_ENUM(reward_kind, {{reward_kind::ila, "ila"}, {reward_kind::cla, "cla"}})

inline void to_json(nlohmann::json& j, const variant_config& v) {
  j = {{"name", v.name},         {"algorithm", v.algo},        {"reward", v.reward},
       {"rollouts", v.rollouts}, {"hir_preset", v.hir_preset}, {"selection", v.selection},
       {"lambda", v.lambda},     {"diversity", v.diversity},   {"recompute_replay_logp", v.recompute_replay_logp}};
}

namespace detail {
/// Reads j[key] into out if present; remembers the key as known.
template <class U>
void read(const nlohmann::json& j, const char* key, U& out, std::set<std::string>& known, const char* where) {
  known.insert(key);
  if (!j.contains(key))
    return;
  try {
    out = j.at(key).get<U>();
  } catch (const nlohmann::json::exception& e) {
    hir::detail::fail("train::config", where, "\"", key, "\" has the wrong type: ", e.what());
  }
}
inline void reject_unknown(const nlohmann::json& j, const std::set<std::string>& known, const char* where) {
  for (auto it = j.begin(); it != j.end(); ++it)
    if (!known.count(it.key()))
      hir::detail::fail("train::config", where, "unknown key \"", it.key(), "\"");
}
} // namespace detail

inline void from_json(const nlohmann::json& j, variant_config& v) {
  if (!j.is_object())
    hir::detail::fail("train::config", "a variant must be an object or a built-in name");
  std::set<std::string> known;
  std::string base;
  detail::read(j, "base", base, known, "variant: ");
  if (!base.empty())
    v = find_variant(base);
  detail::read(j, "name", v.name, known, "variant: ");
  detail::read(j, "algorithm", v.algo, known, "variant: ");
  detail::read(j, "reward", v.reward, known, "variant: ");
  detail::read(j, "rollouts", v.rollouts, known, "variant: ");
  detail::read(j, "hir_preset", v.hir_preset, known, "variant: ");
  detail::read(j, "selection", v.selection, known, "variant: ");
  detail::read(j, "lambda", v.lambda, known, "variant: ");
  detail::read(j, "diversity", v.diversity, known, "variant: ");
  detail::read(j, "recompute_replay_logp", v.recompute_replay_logp, known, "variant: ");
  detail::reject_unknown(j, known, "variant: ");
}

// clang-format 14 does not reach a fixed point on this X-macro.
// clang-format off
#define HIR_TRAIN_FIELDS(X) \
  X(seed) X(warm_pool) X(rl_pool) X(eval_pool) X(p_meet) X(min_constraints) X(max_constraints) X(context) \
  X(channels) X(layers) X(heads) X(warm_steps) X(warm_batch) X(warm_lr) X(warm_min_lr) X(warm_warmup) \
  X(prompts_per_step) X(rollout_budget) X(max_new_tokens) X(lr) X(weight_decay) X(grad_clip) X(minibatches) \
  X(clip) X(dual_clip) X(kl_coef) X(temperature) X(eval_every) X(eval_samples_per_prompt) X(checkpoint_every) \
  X(threads) X(ila_levels) X(seeds)
// clang-format on

inline void to_json(nlohmann::json& j, const trainer_config& c) {
  j = nlohmann::json::object();
#define HIR_TRAIN_TO(f) j[#f] = c.f;
  HIR_TRAIN_FIELDS(HIR_TRAIN_TO)
#undef HIR_TRAIN_TO
  j["variants"] = c.variants;
}

/// Checks every value; \throws hir::invalid_argument naming the key and value.
inline void validate(const trainer_config& c) {
  const char* fn = "train::config";
  auto positive = [&](const char* key, std::size_t v) {
    if (v == 0)
      hir::detail::fail(fn, "\"", key, "\" = 0 must be positive");
  };
  positive("warm_pool", c.warm_pool);
  positive("rl_pool", c.rl_pool);
  positive("eval_pool", c.eval_pool);
  positive("warm_batch", c.warm_batch);
  positive("prompts_per_step", c.prompts_per_step);
  positive("rollout_budget", c.rollout_budget);
  positive("max_new_tokens", c.max_new_tokens);
  positive("minibatches", c.minibatches);
  positive("eval_every", c.eval_every);
  positive("eval_samples_per_prompt", c.eval_samples_per_prompt);
  positive("checkpoint_every", c.checkpoint_every);
  if (!(c.p_meet >= 0 && c.p_meet <= 1))
    hir::detail::fail(fn, "\"p_meet\" = ", c.p_meet, " is outside [0, 1]");
  if (c.min_constraints < 1 || c.min_constraints > c.max_constraints ||
      c.max_constraints > toy::max_instruction_constraints)
    hir::detail::fail(fn, "need 1 <= \"min_constraints\" (", c.min_constraints, ") <= \"max_constraints\" (",
                      c.max_constraints, ") <= ", toy::max_instruction_constraints);
  if (toy::prompt_length + c.max_new_tokens > c.context)
    hir::detail::fail(fn, "\"context\" = ", c.context, " is shorter than the longest prompt (", toy::prompt_length,
                      ") + max_new_tokens (", c.max_new_tokens, ")");
  for (double v : {c.lr, c.warm_lr, c.grad_clip})
    if (!(v > 0 && v < 1e3))
      hir::detail::fail(fn, "learning rates and grad_clip must be positive, got ", v);
  if (!(c.temperature > 0 && c.temperature < 100))
    hir::detail::fail(fn, "\"temperature\" = ", c.temperature, " must be positive");
  if (c.seeds.empty())
    hir::detail::fail(fn, "\"seeds\" is empty");
  c.model_config().validate(fn);
  std::set<std::string> names;
  for (const auto& v : c.variants) {
    if (v.rollouts < 2)
      hir::detail::fail(fn, "variant \"", v.name, "\": rollouts = ", v.rollouts, " (at least 2 per prompt)");
    if (!names.insert(v.name).second)
      hir::detail::fail(fn, "variant name \"", v.name, "\" appears twice");
    if (v.hir_preset != "hir_paper_code" && v.hir_preset != "hir_paper_eq")
      hir::detail::fail(fn, "variant \"", v.name, "\": hir_preset = \"", v.hir_preset, "\"");
    if (v.selection != "score" && v.selection != "random" && v.selection != "integrity" && v.selection != "diversity")
      hir::detail::fail(fn, "variant \"", v.name, "\": selection = \"", v.selection, "\"");
    if (v.lambda != "exponential" && v.lambda != "constant")
      hir::detail::fail(fn, "variant \"", v.name, "\": lambda = \"", v.lambda, "\"");
    if (v.diversity != "preset" && v.diversity != "token_mean" && v.diversity != "token_sum")
      hir::detail::fail(fn, "variant \"", v.name, "\": diversity = \"", v.diversity,
                        "\" (preset, token_mean or token_sum)");
  }
}

inline void from_json(const nlohmann::json& j, trainer_config& c) {
  if (!j.is_object())
    hir::detail::fail("train::config", "the config must be a JSON object");
  std::set<std::string> known;
#define HIR_TRAIN_FROM(f) detail::read(j, #f, c.f, known, "");
  HIR_TRAIN_FIELDS(HIR_TRAIN_FROM)
#undef HIR_TRAIN_FROM
  known.insert("variants");
  if (j.contains("variants")) {
    if (!j["variants"].is_array())
      hir::detail::fail("train::config", "\"variants\" must be an array of names or objects");
    c.variants.clear();
    for (const auto& v : j["variants"])
      c.variants.push_back(v.is_string() ? find_variant(v.get<std::string>()) : v.get<variant_config>());
  }
  detail::reject_unknown(j, known, "");
}

/// Defaults of the built-in `compare`: HiR against GRPO with the binary and the dense reward.
inline trainer_config default_config() {
  trainer_config c;
  c.variants = {find_variant("grpo_ila"), find_variant("grpo_cla"), find_variant("hir_code")};
  return c;
}

/// Loads a config file over the defaults. \throws hir::invalid_argument on unreadable files, JSON syntax errors
/// (with the position), unknown keys and invalid values.
inline trainer_config load_config(const std::string& path) {
  std::ifstream in(path);
  if (!in)
    hir::detail::fail("train::load_config", "cannot read \"", path, "\"");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    hir::detail::fail("train::load_config", "\"", path, "\" is not valid JSON: ", e.what());
  }
  trainer_config c = default_config();
  from_json(j, c);
  validate(c);
  return c;
}

} // namespace hir::train
