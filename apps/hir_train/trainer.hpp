// SPDX-License-Identifier: Apache-2.0
// The end-to-end trainer: a supervised warm start of the reference transformer on imperfect demonstrations, then RL
// with one variant (GRPO, REINFORCE++ or HiR), held-out evaluation, per-step metrics, checkpoints and resume.
//
// Row layout of a training sequence: [instruction tokens (p ≤ 10)] [response tokens (≤ N)] [pad], length
// S = prompt_length + N. The response token j sits at position p + j and is predicted from position p − 1 + j, so
// the per-token arrays hir's algorithms see are [rows, N] (logp, old_logp, ref_logp, mask), gathered from and
// scattered to the model's [rows, S] arrays by the row's prompt length.
#pragma once

#include "config.hpp"
#include "task.hpp"

#include <hir/hir.hpp>
#include <hir/nn.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace hir::train {

using clock_type = std::chrono::steady_clock;
inline double seconds_since(clock_type::time_point t0) {
  return std::chrono::duration<double>(clock_type::now() - t0).count();
}

/// Held-out evaluation of a policy: sampled (T = 1) and greedy instruction- and constraint-level accuracy.
struct eval_result {
  double sampled_ila = 0, sampled_cla = 0, greedy_ila = 0, greedy_cla = 0;
  std::size_t sampled_responses = 0;
};

/// Metrics of one RL step (one CSV row).
struct step_metrics {
  std::size_t step = 0, rollouts = 0;
  double train_ila = 0, train_cla = 0;
  double eval_ila = NAN, eval_cla = NAN, greedy_ila = NAN;
  std::size_t replays = 0, shortfall = 0;
  double loss = 0, kl = 0, entropy = 0, clip_fraction = 0, zero_adv_groups = 0;
  double wall = 0, t_generate = 0, t_score = 0, t_select = 0, t_reference = 0, t_advantage_loss = 0, t_update = 0;

  static const char* header() {
    return "step,rollouts,train_ila,train_cla,eval_ila,eval_cla,greedy_ila,replays,shortfall,loss,kl,entropy,"
           "clip_fraction,zero_adv_groups,wall,t_generate,t_score,t_select,t_reference,t_advantage_loss,t_update";
  }
  std::string csv() const {
    auto f = [](double v) {
      if (std::isnan(v))
        return std::string();
      char b[32];
      std::snprintf(b, sizeof b, "%.6g", v);
      return std::string(b);
    };
    std::ostringstream os;
    os << step << ',' << rollouts << ',' << f(train_ila) << ',' << f(train_cla) << ',' << f(eval_ila) << ','
       << f(eval_cla) << ',' << f(greedy_ila) << ',' << replays << ',' << shortfall << ',' << f(loss) << ',' << f(kl)
       << ',' << f(entropy) << ',' << f(clip_fraction) << ',' << f(zero_adv_groups) << ',' << f(wall) << ','
       << f(t_generate) << ',' << f(t_score) << ',' << f(t_select) << ',' << f(t_reference) << ','
       << f(t_advantage_loss) << ',' << f(t_update);
    return os.str();
  }
};

/// Sequences of instruction + response tokens as the model sees them.
struct sequence_batch {
  std::size_t rows = 0, S = 0, N = 0;
  std::vector<nn::token_t> tokens, targets; // [rows, S]
  std::vector<std::size_t> prompt_len;      // [rows]

  void resize(std::size_t r, std::size_t s, std::size_t n) {
    rows = r;
    S = s;
    N = n;
    tokens.assign(r * s, toy::vocabulary::pad);
    targets.assign(r * s, -1);
    prompt_len.assign(r, 0);
  }
  /// Row r = instruction + response (resp_len tokens); targets only at response positions.
  void set_row(std::size_t r, const std::vector<int>& instr, const nn::token_t* resp, std::size_t resp_len) {
    const std::size_t p = instr.size();
    prompt_len[r] = p;
    nn::token_t* t = tokens.data() + r * S;
    nn::token_t* y = targets.data() + r * S;
    std::fill(t, t + S, toy::vocabulary::pad);
    std::fill(y, y + S, -1);
    for (std::size_t i = 0; i < p; ++i)
      t[i] = instr[i];
    for (std::size_t j = 0; j < resp_len; ++j) {
      if (p + j < S)
        t[p + j] = resp[j];
      y[p - 1 + j] = resp[j];
    }
  }
  /// Gathers model per-position values [rows, S] into response positions [rows, N] (0 elsewhere).
  void gather(span<const float> model_values, const std::uint8_t* mask, float* out) const {
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t j = 0; j < N; ++j)
        out[r * N + j] = mask[r * N + j] ? model_values[r * S + prompt_len[r] - 1 + j] : 0.0f;
  }
  /// Scatters response-position gradients [rows, N] into model positions [rows, S].
  void scatter(const float* grad, float* out) const {
    std::fill(out, out + rows * S, 0.0f);
    for (std::size_t r = 0; r < rows; ++r)
      for (std::size_t j = 0; j < N; ++j)
        out[r * S + prompt_len[r] - 1 + j] = grad[r * N + j];
  }
};

/// Everything one seed shares across variants: the task suite and the warm-started base model.
class experiment {
public:
  experiment(const trainer_config& cfg, std::uint64_t seed, std::string out_dir, bool quiet = false)
      : cfg_(cfg), seed_(seed), out_dir_(std::move(out_dir)), quiet_(quiet), suite_(task_cfg(cfg), seed),
        base_(cfg.model_config(), max_rows(cfg), sequence_length(cfg)) {}

  static toy::task_config task_cfg(const trainer_config& c) {
    toy::task_config t;
    t.warm_start_size = c.warm_pool;
    t.rl_size = c.rl_pool;
    t.eval_size = c.eval_pool;
    t.p_meet = c.p_meet;
    t.min_constraints = c.min_constraints;
    t.max_constraints = c.max_constraints;
    return t;
  }
  static std::size_t sequence_length(const trainer_config& c) { return toy::prompt_length + c.max_new_tokens; }
  static std::size_t max_rows(const trainer_config& c) {
    std::size_t m = c.warm_batch;
    for (const auto& v : c.variants)
      m = std::max(m, c.prompts_per_step * std::max<std::size_t>(v.rollouts, 8));
    return std::max<std::size_t>(m, c.prompts_per_step * 8);
  }

  const toy::task_suite& suite() const { return suite_; }
  const nn::model<float>& base() const { return base_; }
  const trainer_config& config() const { return cfg_; }
  std::uint64_t seed() const { return seed_; }
  const eval_result& base_eval() const { return base_eval_; }
  double warm_seconds() const { return warm_seconds_; }

  /// The base model's checkpoint path (shared by every variant of this seed).
  std::string base_path() const { return out_dir_ + "/base_seed" + std::to_string(seed_) + ".ckpt"; }

  /// Loads the base model if its checkpoint exists with this config, else warm-starts and saves it.
  void prepare(const std::function<void(const std::string&)>& log);

private:
  trainer_config cfg_;
  std::uint64_t seed_;
  std::string out_dir_;
  bool quiet_;
  toy::task_suite suite_;
  nn::model<float> base_;
  eval_result base_eval_;
  double warm_seconds_ = 0;
};

/// Samples with a shared generator: batched generation of responses to instructions and their verification.
class rollout_engine {
public:
  rollout_engine(const trainer_config& cfg, std::size_t max_rows)
      : cfg_(cfg), N_(cfg.max_new_tokens), P_(toy::prompt_length),
        gen_(cfg.model_config(), max_rows, toy::prompt_length + cfg.max_new_tokens), max_rows_(max_rows) {}

  std::size_t max_rows() const { return max_rows_; }

  /// Generates one response per entry of `instrs` (rows ≤ max_rows) with sequence ids id0 + r.
  void generate(const nn::model<float>& m, const std::vector<const toy::instruction*>& instrs, std::uint64_t seed,
                std::uint64_t id0, double temperature, std::vector<nn::token_t>& tokens, std::vector<float>& logp,
                std::vector<float>& entropy, std::vector<std::size_t>& lengths) {
    const std::size_t R = instrs.size();
    prompts_.assign(R * P_, toy::vocabulary::pad);
    plen_.resize(R);
    ids_.resize(R);
    for (std::size_t r = 0; r < R; ++r) {
      const auto t = instrs[r]->tokens();
      std::copy(t.begin(), t.end(), prompts_.begin() + static_cast<std::ptrdiff_t>(r * P_));
      plen_[r] = t.size();
      ids_[r] = id0 + r;
    }
    tokens.resize(R * N_);
    logp.resize(R * N_);
    entropy.resize(R * N_);
    lengths.resize(R);
    nn::generation_options opt;
    opt.max_new_tokens = N_;
    opt.stop_token = toy::vocabulary::eos;
    opt.pad_token = toy::vocabulary::pad;
    opt.seed = seed;
    opt.sampling.temperature = temperature;
    gen_.generate(m, span<const nn::token_t>(prompts_), span<const std::size_t>(plen_), span<const std::uint64_t>(ids_),
                  R, P_, opt, span<nn::token_t>(tokens), span<float>(logp), span<float>(entropy),
                  span<std::size_t>(lengths));
  }

  /// Evaluates `m` on instructions: `samples` sampled responses each at T = 1 and one greedy response.
  eval_result evaluate(const nn::model<float>& m, const std::vector<toy::instruction>& instrs, std::size_t samples,
                       std::uint64_t seed) {
    eval_result e;
    std::vector<const toy::instruction*> rows;
    std::vector<nn::token_t> tok;
    std::vector<float> lp, ent;
    std::vector<std::size_t> len;
    auto run = [&](double temperature, std::size_t per, double& ila, double& cla, std::size_t& count) {
      double s_ila = 0, s_cla = 0;
      std::size_t n = 0;
      const std::size_t total = instrs.size() * per;
      for (std::size_t start = 0; start < total; start += max_rows_) {
        const std::size_t end = std::min(total, start + max_rows_);
        rows.clear();
        for (std::size_t k = start; k < end; ++k)
          rows.push_back(&instrs[k / per]);
        generate(m, rows, seed, start, temperature, tok, lp, ent, len);
        for (std::size_t r = 0; r < rows.size(); ++r) {
          const auto v = toy::verify(*rows[r], span<const int>(tok.data() + r * N_, len[r]));
          s_ila += v.all_met() ? 1.0 : 0.0;
          s_cla += v.cla();
          ++n;
        }
      }
      ila = s_ila / static_cast<double>(n);
      cla = s_cla / static_cast<double>(n);
      count = n;
    };
    std::size_t dummy = 0;
    run(cfg_.temperature, samples, e.sampled_ila, e.sampled_cla, e.sampled_responses);
    run(0.0, 1, e.greedy_ila, e.greedy_cla, dummy);
    return e;
  }

private:
  trainer_config cfg_;
  std::size_t N_, P_;
  nn::generator<float> gen_;
  std::size_t max_rows_;
  std::vector<nn::token_t> prompts_;
  std::vector<std::size_t> plen_;
  std::vector<std::uint64_t> ids_;
};

inline void experiment::prepare(const std::function<void(const std::string&)>& log) {
  const std::string path = base_path();
  std::error_code ec;
  std::filesystem::create_directories(out_dir_, ec);
  // The base model depends on the task, model and warm-start settings: they are stored with it and compared.
  nlohmann::json key = {{"seed", seed_},
                        {"warm_pool", cfg_.warm_pool},
                        {"p_meet", cfg_.p_meet},
                        {"min_constraints", cfg_.min_constraints},
                        {"max_constraints", cfg_.max_constraints},
                        {"context", cfg_.context},
                        {"channels", cfg_.channels},
                        {"layers", cfg_.layers},
                        {"heads", cfg_.heads},
                        {"warm_steps", cfg_.warm_steps},
                        {"warm_batch", cfg_.warm_batch},
                        {"warm_lr", cfg_.warm_lr},
                        {"warm_min_lr", cfg_.warm_min_lr},
                        {"warm_warmup", cfg_.warm_warmup},
                        {"max_new_tokens", cfg_.max_new_tokens},
                        {"eval_pool", cfg_.eval_pool},
                        {"eval_samples_per_prompt", cfg_.eval_samples_per_prompt},
                        {"temperature", cfg_.temperature}};
  const std::string key_text = key.dump();
  nn::adamw_state<float> opt(base_.params_layout());
  if (std::filesystem::exists(path)) {
    try {
      nn::checkpoint_state st = nn::load_checkpoint(path, base_, opt);
      const auto* blob = st.find("base_key");
      if (blob && std::string(blob->data.begin(), blob->data.end()) == key_text) {
        const auto* ev = st.find("base_eval");
        if (ev) {
          const auto j = nlohmann::json::parse(std::string(ev->data.begin(), ev->data.end()));
          base_eval_ = {j["sampled_ila"], j["sampled_cla"], j["greedy_ila"], j["greedy_cla"], j["responses"]};
          warm_seconds_ = j.value("warm_seconds", 0.0);
        }
        log("base model: loaded " + path);
        return;
      }
      log("base model: " + path + " was made with other settings; warm-starting again");
    } catch (const std::exception& e) {
      log(std::string("base model: cannot use ") + path + " (" + e.what() + "); warm-starting again");
    }
  }
  const auto t0 = clock_type::now();
  base_.init_parameters(seed_ * 7919 + 17);
  opt = nn::adamw_state<float>(base_.params_layout());
  nn::adamw_options aopt;
  aopt.weight_decay = 0.0;
  nn::lr_schedule sched;
  sched.kind = nn::lr_schedule::cosine;
  sched.lr = cfg_.warm_lr;
  sched.min_lr = cfg_.warm_min_lr;
  sched.warmup_steps = cfg_.warm_warmup;
  sched.total_steps = cfg_.warm_steps;
  const std::size_t Bw = cfg_.warm_batch, S = sequence_length(cfg_), N = cfg_.max_new_tokens;
  sequence_batch seq;
  std::vector<float> mask(Bw * S), scratch(Bw * S);
  const auto& pool = suite_.warm_start();
  double ema = 0;
  for (std::size_t step = 0; step < cfg_.warm_steps; ++step) {
    toy::rng g(seed_, toy::first_free_stream + step); // step-indexed stream: reproducible, resumable
    seq.resize(Bw, S, N);
    std::fill(mask.begin(), mask.end(), 0.0f);
    for (std::size_t r = 0; r < Bw; ++r) {
      const auto& task = pool[g.below(pool.size())];
      const auto d = toy::demonstration(task.instr, cfg_.p_meet, g);
      const std::size_t n = std::min(d.response.size(), N);
      std::vector<nn::token_t> resp(d.response.begin(), d.response.begin() + static_cast<std::ptrdiff_t>(n));
      seq.set_row(r, task.instr.tokens(), resp.data(), n);
      for (std::size_t j = 0; j < n; ++j)
        mask[r * S + seq.prompt_len[r] - 1 + j] = 1.0f;
    }
    base_.forward(span<const nn::token_t>(seq.tokens), span<const nn::token_t>(seq.targets), Bw, S);
    const double loss = base_.backward_cross_entropy(span<const float>(mask), span<float>(scratch));
    nn::clip_grad_norm(hir::cpu, base_.gradients(), 1.0);
    opt.update(hir::cpu, base_.parameters(), span<const float>(base_.gradients()), aopt, sched.at(step));
    base_.zero_grad();
    ema = step == 0 ? loss : 0.98 * ema + 0.02 * loss;
    if (!quiet_ && ((step + 1) % 100 == 0 || step + 1 == cfg_.warm_steps)) {
      char b[160];
      std::snprintf(b, sizeof b, "warm start seed %llu: step %zu/%zu  loss %.4f  (%.0f s)",
                    static_cast<unsigned long long>(seed_), step + 1, cfg_.warm_steps, ema, seconds_since(t0));
      log(b);
    }
  }
  warm_seconds_ = seconds_since(t0);
  rollout_engine eng(cfg_, 256);
  std::vector<toy::instruction> held = toy::instructions_of(suite_.eval());
  base_eval_ = eng.evaluate(base_, held, cfg_.eval_samples_per_prompt, seed_ * 31 + 7);
  nn::checkpoint_state st;
  st.rng_seed = seed_;
  st.blobs.push_back({"base_key", std::vector<unsigned char>(key_text.begin(), key_text.end())});
  const std::string ev =
      nlohmann::json{{"sampled_ila", base_eval_.sampled_ila},     {"sampled_cla", base_eval_.sampled_cla},
                     {"greedy_ila", base_eval_.greedy_ila},       {"greedy_cla", base_eval_.greedy_cla},
                     {"responses", base_eval_.sampled_responses}, {"warm_seconds", warm_seconds_}}
          .dump();
  st.blobs.push_back({"base_eval", std::vector<unsigned char>(ev.begin(), ev.end())});
  nn::save_checkpoint(path, base_, opt, st);
  char b[200];
  std::snprintf(b, sizeof b, "base model seed %llu: held-out sampled ILA %.3f CLA %.3f, greedy ILA %.3f (%.0f s)",
                static_cast<unsigned long long>(seed_), base_eval_.sampled_ila, base_eval_.sampled_cla,
                base_eval_.greedy_ila, warm_seconds_);
  log(b);
}

} // namespace hir::train
