// SPDX-License-Identifier: Apache-2.0
// One RL run of one variant from a base model: rollouts → verification → (HiR: select, rewrite, replay batch) →
// reference log-probs → advantages → policy loss → backward → AdamW, with held-out evaluation, a CSV of every step,
// checkpoints every N steps and resume (all randomness is indexed by (seed, step), so a resumed run reproduces an
// uninterrupted one).
#pragma once

#include "trainer.hpp"

namespace hir::train {

/// The result of one run, for tables and plots.
struct run_summary {
  std::string variant;
  std::uint64_t seed = 0;
  eval_result base, final;
  std::size_t steps = 0, rollouts = 0;
  std::vector<std::pair<std::size_t, double>> curve; ///< (rollouts, held-out sampled ILA) at each evaluation
  std::vector<std::pair<std::size_t, double>> curve_cla;
  double seconds = 0, mean_step_seconds = 0;
  double t_generate = 0, t_score = 0, t_select = 0, t_reference = 0, t_advantage_loss = 0, t_update = 0;

  /// Rollouts at the first evaluation whose sampled ILA reaches `level` (0 if never).
  std::size_t rollouts_to_reach(double level) const {
    for (const auto& [r, ila] : curve)
      if (ila >= level)
        return r;
    return 0;
  }
  /// Held-out ILA at the last evaluation with at most `rollouts` rollouts.
  double ila_at(std::size_t rollouts_budget) const {
    double v = base.sampled_ila;
    for (const auto& [r, ila] : curve)
      if (r <= rollouts_budget)
        v = ila;
    return v;
  }
};

inline void to_json(nlohmann::json& j, const eval_result& e) {
  j = {{"sampled_ila", e.sampled_ila},
       {"sampled_cla", e.sampled_cla},
       {"greedy_ila", e.greedy_ila},
       {"greedy_cla", e.greedy_cla},
       {"sampled_responses", e.sampled_responses}};
}

/// One variant trained from one experiment's base model.
class rl_run {
public:
  rl_run(const experiment& ex, const variant_config& v, std::string dir, bool quiet = false)
      : ex_(ex), cfg_(ex.config()), v_(v), dir_(std::move(dir)), quiet_(quiet), R_max_(experiment::max_rows(cfg_)),
        S_(experiment::sequence_length(cfg_)), N_(cfg_.max_new_tokens), policy_(cfg_.model_config(), R_max_, S_),
        ref_(cfg_.model_config(), R_max_, S_), opt_(policy_.params_layout()),
        engine_(cfg_, std::max<std::size_t>(R_max_, 256)) {
    const std::size_t per_step = cfg_.prompts_per_step * v_.rollouts;
    total_steps_ = (cfg_.rollout_budget + per_step - 1) / per_step;
    if (v_.algo == algorithm::hir) {
      hopt_ = v_.hir_preset == "hir_paper_eq" ? hir::presets::hir_paper_eq() : hir::presets::hir_paper_code();
      hopt_.rollouts_per_prompt = v_.rollouts;
      if (v_.selection == "random") {
        hopt_.select.ranking = replay_ranking::random;
        hopt_.select.seed = ex.seed();
      } else if (v_.selection == "integrity") {
        hopt_.select.ranking = replay_ranking::integrity_only;
      } else if (v_.selection == "diversity") {
        hopt_.select.ranking = replay_ranking::diversity_only;
      }
      if (v_.lambda == "constant")
        hopt_.select.lambda = lambda_schedule::constant(2.0);
      if (v_.diversity == "token_mean")
        hopt_.select.diversity = diversity_kind::token_mean;
      else if (v_.diversity == "token_sum")
        hopt_.select.diversity = diversity_kind::token_sum;
      if (v_.recompute_replay_logp) {
        hopt_.batch.old_logp = replay_old_logp::recomputed;
        hopt_.batch.ref_logp = replay_ref_logp::recomputed;
      }
    }
  }

  std::string csv_path() const { return dir_ + "/metrics.csv"; }
  std::string checkpoint_path() const { return dir_ + "/checkpoint.ckpt"; }
  std::size_t total_steps() const { return total_steps_; }

  /// Trains to the end of the budget (or stop_after steps, for tests), resuming from the run's checkpoint when
  /// `resume` is set. Writes metrics.csv, summary.json and checkpoints under the run's folder.
  run_summary run(bool resume, const std::function<void(const std::string&)>& log, std::size_t stop_after = 0);

private:
  void step(std::size_t s, step_metrics& m);
  void evaluate(step_metrics& m) {
    const auto held = toy::instructions_of(ex_.suite().eval());
    const eval_result e = engine_.evaluate(policy_, held, cfg_.eval_samples_per_prompt, ex_.seed() * 31 + 7);
    m.eval_ila = e.sampled_ila;
    m.eval_cla = e.sampled_cla;
    m.greedy_ila = e.greedy_ila;
    last_eval_ = e;
  }
  void save(std::size_t s) {
    nn::checkpoint_state st;
    st.step = s;
    st.rng_seed = ex_.seed();
    st.rng_counter = rollouts_;
    std::string rows;
    for (const auto& r : rows_)
      rows += r + "\n";
    st.blobs.push_back({"metrics_csv", std::vector<unsigned char>(rows.begin(), rows.end())});
    const std::string ev = nlohmann::json(last_eval_).dump();
    st.blobs.push_back({"last_eval", std::vector<unsigned char>(ev.begin(), ev.end())});
    st.blobs.push_back({"variant", [&] {
                          const std::string t = nlohmann::json(v_).dump();
                          return std::vector<unsigned char>(t.begin(), t.end());
                        }()});
    nn::save_checkpoint(checkpoint_path(), policy_, opt_, st);
  }

  const experiment& ex_;
  const trainer_config& cfg_;
  variant_config v_;
  std::string dir_;
  bool quiet_;
  std::size_t R_max_, S_, N_;
  nn::model<float> policy_, ref_;
  nn::adamw_state<float> opt_;
  rollout_engine engine_;
  hindsight_options hopt_;
  std::size_t total_steps_ = 0, rollouts_ = 0;
  std::vector<std::string> rows_;
  eval_result last_eval_;

  // per-step buffers (sized once, reused)
  std::vector<nn::token_t> tok_;
  std::vector<float> lp_, ent_, ref_lp_, adv_, grad_, dlogp_, cur_lp_;
  std::vector<std::size_t> len_;
  std::vector<std::uint8_t> mask_;
  sequence_batch seq_;
};

inline run_summary rl_run::run(bool resume, const std::function<void(const std::string&)>& log,
                               std::size_t stop_after) {
  std::error_code ec;
  std::filesystem::create_directories(dir_, ec);
  std::copy(ex_.base().parameters().begin(), ex_.base().parameters().end(), policy_.parameters().begin());
  std::copy(ex_.base().parameters().begin(), ex_.base().parameters().end(), ref_.parameters().begin());
  std::size_t first = 1;
  last_eval_ = ex_.base_eval();
  rows_.clear();
  rollouts_ = 0;
  if (resume) {
    if (!std::filesystem::exists(checkpoint_path()))
      hir::detail::fail("train::resume", "no checkpoint at \"", checkpoint_path(), "\"");
    nn::checkpoint_state st = nn::load_checkpoint(checkpoint_path(), policy_, opt_);
    const auto* vb = st.find("variant");
    if (!vb || nlohmann::json::parse(std::string(vb->data.begin(), vb->data.end())) != nlohmann::json(v_))
      hir::detail::fail("train::resume", "the checkpoint \"", checkpoint_path(), "\" was written by another variant");
    if (st.rng_seed != ex_.seed())
      hir::detail::fail("train::resume", "the checkpoint was written with seed ", st.rng_seed, ", not ", ex_.seed());
    first = static_cast<std::size_t>(st.step) + 1;
    rollouts_ = static_cast<std::size_t>(st.rng_counter);
    if (const auto* b = st.find("metrics_csv")) {
      std::istringstream in(std::string(b->data.begin(), b->data.end()));
      for (std::string line; std::getline(in, line);)
        if (!line.empty())
          rows_.push_back(line);
    }
    if (const auto* b = st.find("last_eval")) {
      const auto j = nlohmann::json::parse(std::string(b->data.begin(), b->data.end()));
      last_eval_ = {j["sampled_ila"], j["sampled_cla"], j["greedy_ila"], j["greedy_cla"], j["sampled_responses"]};
    }
    log("resumed " + v_.name + " at step " + std::to_string(first));
  }
  auto write_csv = [&] {
    const std::string tmp = csv_path() + ".tmp";
    {
      std::ofstream out(tmp);
      out << step_metrics::header() << '\n';
      for (const auto& r : rows_)
        out << r << '\n';
    }
    std::filesystem::rename(tmp, csv_path());
  };
  const auto t_start = clock_type::now();
  std::size_t done_here = 0;
  for (std::size_t s = first; s <= total_steps_; ++s) {
    step_metrics m;
    m.step = s;
    const auto t0 = clock_type::now();
    step(s, m);
    if (s % cfg_.eval_every == 0 || s == total_steps_)
      evaluate(m);
    m.wall = seconds_since(t0);
    rows_.push_back(m.csv());
    ++done_here;
    if (!quiet_) {
      const double per = seconds_since(t_start) / static_cast<double>(done_here);
      char b[256];
      std::snprintf(b, sizeof b,
                    "[%s seed %llu] step %zu/%zu  rollouts %zu  train ILA %.3f  held-out ILA %.3f  "
                    "replays %zu  ETA %.0f s",
                    v_.name.c_str(), static_cast<unsigned long long>(ex_.seed()), s, total_steps_, m.rollouts,
                    m.train_ila, last_eval_.sampled_ila, m.replays, per * static_cast<double>(total_steps_ - s));
      if (s % cfg_.eval_every == 0 || s == total_steps_ || s == first)
        log(b);
    }
    if (s % cfg_.checkpoint_every == 0 || s == total_steps_) {
      write_csv();
      save(s);
    }
    if (stop_after && done_here >= stop_after)
      break;
  }
  write_csv();

  // Summary from the CSV rows (so a resumed run summarizes the whole run).
  run_summary sum;
  sum.variant = v_.name;
  sum.seed = ex_.seed();
  sum.base = ex_.base_eval();
  sum.final = last_eval_;
  sum.curve.push_back({0, sum.base.sampled_ila});
  sum.curve_cla.push_back({0, sum.base.sampled_cla});
  for (const auto& r : rows_) {
    std::vector<std::string> f;
    std::stringstream ss(r);
    for (std::string x; std::getline(ss, x, ',');)
      f.push_back(x);
    f.resize(21);
    const auto num = [&](int i) {
      return f[static_cast<std::size_t>(i)].empty() ? NAN : std::stod(f[static_cast<std::size_t>(i)]);
    };
    sum.steps = static_cast<std::size_t>(num(0));
    sum.rollouts = static_cast<std::size_t>(num(1));
    if (!std::isnan(num(4))) {
      sum.curve.push_back({sum.rollouts, num(4)});
      sum.curve_cla.push_back({sum.rollouts, num(5)});
    }
    sum.seconds += num(14);
    sum.t_generate += num(15);
    sum.t_score += num(16);
    sum.t_select += num(17);
    sum.t_reference += num(18);
    sum.t_advantage_loss += num(19);
    sum.t_update += num(20);
  }
  const double n = static_cast<double>(std::max<std::size_t>(rows_.size(), 1));
  sum.mean_step_seconds =
      (sum.t_generate + sum.t_score + sum.t_select + sum.t_reference + sum.t_advantage_loss + sum.t_update) / n;
  nlohmann::json j = {{"variant", v_},
                      {"seed", sum.seed},
                      {"steps", sum.steps},
                      {"rollouts", sum.rollouts},
                      {"base", sum.base},
                      {"final", sum.final},
                      {"curve", sum.curve},
                      {"seconds_per_step",
                       {{"generate", sum.t_generate / n},
                        {"score", sum.t_score / n},
                        {"select", sum.t_select / n},
                        {"reference", sum.t_reference / n},
                        {"advantage_loss", sum.t_advantage_loss / n},
                        {"update", sum.t_update / n}}}};
  nlohmann::json reach = nlohmann::json::object();
  for (double level : cfg_.ila_levels) {
    const auto r = sum.rollouts_to_reach(level);
    char key[16];
    std::snprintf(key, sizeof key, "%.2f", level);
    reach[key] = r ? nlohmann::json(r) : nlohmann::json(nullptr);
  }
  j["rollouts_to_reach"] = reach;
  std::ofstream(dir_ + "/summary.json") << j.dump(2) << '\n';
  return sum;
}

inline void rl_run::step(std::size_t s, step_metrics& m) {
  const std::size_t B = cfg_.prompts_per_step, mm = v_.rollouts, R = B * mm, N = N_, S = S_;
  const auto& pool = ex_.suite().rl();
  auto t = clock_type::now();
  auto lap = [&](double& slot) {
    const auto now = clock_type::now();
    slot += std::chrono::duration<double>(now - t).count();
    t = now;
  };

  // 1. Prompts of this step: the same for every variant of a seed (common random numbers).
  toy::rng g(ex_.seed(), 1'000'000 + s);
  std::vector<std::size_t> idx(pool.size());
  std::iota(idx.begin(), idx.end(), std::size_t{0});
  for (std::size_t b = 0; b < B; ++b)
    std::swap(idx[b], idx[b + g.below(pool.size() - b)]);
  std::vector<const toy::instruction*> rows(R);
  for (std::size_t r = 0; r < R; ++r)
    rows[r] = &pool[idx[r / mm]].instr;

  // 2. Rollouts from the current policy.
  engine_.generate(policy_, rows, ex_.seed() * 1'000'003 + s, 0, cfg_.temperature, tok_, lp_, ent_, len_);
  rollouts_ += R;
  m.rollouts = rollouts_;
  lap(m.t_generate);

  // 3. Verdicts and rewards.
  verdict_batch vb;
  mask_.assign(R * N, 0);
  double ent_sum = 0, ent_n = 0;
  std::vector<float> ent_seq(R, 0.0f);
  std::vector<std::int64_t> lengths(R);
  for (std::size_t r = 0; r < R; ++r) {
    const auto v = toy::verify(*rows[r], span<const int>(tok_.data() + r * N, len_[r]));
    vb.push_back(v.mask, v.count);
    lengths[r] = static_cast<std::int64_t>(len_[r]);
    for (std::size_t j = 0; j < len_[r]; ++j) {
      mask_[r * N + j] = 1;
      ent_seq[r] += ent_[r * N + j];
    }
    ent_sum += ent_seq[r];
    ent_n += static_cast<double>(len_[r]);
  }
  std::vector<float> ila(R), cla(R);
  instruction_rewards(hir::cpu, vb.ref(), span<float>(ila));
  constraint_rewards(hir::cpu, vb.ref(), span<float>(cla));
  m.train_ila = std::accumulate(ila.begin(), ila.end(), 0.0) / static_cast<double>(R);
  m.train_cla = std::accumulate(cla.begin(), cla.end(), 0.0) / static_cast<double>(R);
  m.entropy = ent_n > 0 ? ent_sum / ent_n : 0.0;
  const std::vector<float>& scores = v_.reward == reward_kind::ila ? ila : cla;
  lap(m.t_score);

  // 4. Reference log-probs of the originals (the KL anchor).
  seq_.resize(R, S, N);
  for (std::size_t r = 0; r < R; ++r)
    seq_.set_row(r, rows[r]->tokens(), tok_.data() + r * N, len_[r]);
  ref_lp_.assign(R * N, 0.0f);
  ref_.forward(span<const nn::token_t>(seq_.tokens), span<const nn::token_t>(seq_.targets), R, S);
  seq_.gather(ref_.logp(), mask_.data(), ref_lp_.data());
  lap(m.t_reference);

  // 5. The training batch: originals, plus replays for HiR.
  std::size_t RT = R;
  const float* b_old = lp_.data();
  const float* b_ref = ref_lp_.data();
  const std::uint8_t* b_mask = mask_.data();
  std::vector<float> b_scores(scores.begin(), scores.end());
  group_layout groups = group_layout::uniform(R, mm);
  std::optional<replay_batch<float, backend::cpu::tag_t>> rb;
  if (v_.algo == algorithm::hir) {
    std::vector<std::int64_t> prompt(R);
    for (std::size_t r = 0; r < R; ++r)
      prompt[r] = static_cast<std::int64_t>(r / mm);
    replay_candidates_ref<float> cand;
    cand.num_prompts = B;
    cand.prompt = span<const std::int64_t>(prompt);
    cand.verdicts = vb.ref();
    cand.entropy_sum = span<const float>(ent_seq);
    cand.length = span<const std::int64_t>(lengths);
    auto sel = select_replays(hir::cpu, cand, static_cast<std::int64_t>(s), hopt_.select);
    m.shortfall = sel.shortfall;
    rollout_batch_ref<float> ro;
    ro.batch = R;
    ro.length = N;
    ro.num_prompts = B;
    ro.prompt = span<const std::int64_t>(prompt);
    ro.verdicts = vb.ref();
    ro.tokens = span<const std::int32_t>(tok_);
    ro.mask = span<const std::uint8_t>(mask_);
    ro.old_logp = span<const float>(lp_);
    ro.ref_logp = span<const float>(ref_lp_);
    ro.scores = span<const float>(ila);
    replay_logp_ref<float> rec;
    std::vector<float> rec_old, rec_ref;
    const std::size_t K = sel.indices.size();
    if (v_.recompute_replay_logp && K > 0) {
      // log π_old(y | q') and log π_ref(y | q') of each replay under its rewritten instruction: transformer work,
      // timed with the reference forward (t_reference), not with hir's selection.
      lap(m.t_select);
      sequence_batch rs;
      rs.resize(K, S, N);
      std::vector<std::uint8_t> rmask(K * N, 0);
      for (std::size_t k = 0; k < K; ++k) {
        const auto o = static_cast<std::size_t>(sel.indices[k]);
        rs.set_row(k, rows[o]->keep(vb.masks()[o]).tokens(), tok_.data() + o * N, len_[o]);
        std::copy(mask_.begin() + static_cast<std::ptrdiff_t>(o * N),
                  mask_.begin() + static_cast<std::ptrdiff_t>((o + 1) * N),
                  rmask.begin() + static_cast<std::ptrdiff_t>(k * N));
      }
      rec_old.assign(K * N, 0.0f);
      rec_ref.assign(K * N, 0.0f);
      policy_.forward(span<const nn::token_t>(rs.tokens), span<const nn::token_t>(rs.targets), K, S);
      rs.gather(policy_.logp(), rmask.data(), rec_old.data());
      ref_.forward(span<const nn::token_t>(rs.tokens), span<const nn::token_t>(rs.targets), K, S);
      rs.gather(ref_.logp(), rmask.data(), rec_ref.data());
      rec.old_logp = span<const float>(rec_old);
      rec.ref_logp = span<const float>(rec_ref);
      lap(m.t_reference);
    }
    rb.emplace(build_replay_batch(hir::cpu, ro, span<const std::int64_t>(sel.indices), hopt_.batch, rec));
    RT = rb->batch;
    m.replays = rb->num_replays;
    b_old = rb->old_logp.data();
    b_ref = rb->ref_logp.data();
    b_mask = rb->mask.data();
    b_scores.assign(rb->reward.begin(), rb->reward.end());
    groups = replay_group_layout(*rb);
    // Rows of the training sequences: each row's instruction is its prompt's instruction keeping its constraints.
    seq_.resize(RT, S, N);
    for (std::size_t r = 0; r < RT; ++r) {
      const auto& q = *rows[static_cast<std::size_t>(rb->origin[r])];
      const auto instr = rb->is_replay[r] ? q.keep(rb->constraint_mask[r]) : q;
      seq_.set_row(r, instr.tokens(), rb->tokens.data() + r * N, len_[static_cast<std::size_t>(rb->origin[r])]);
    }
  }
  lap(m.t_select);

  // 6. Advantages.
  const bool token_adv = v_.algo != algorithm::grpo;
  adv_.assign(token_adv ? RT * N : RT, 0.0f);
  token_batch_ref<float> tb;
  tb.batch = RT;
  tb.length = N;
  tb.mask = span<const std::uint8_t>(b_mask, RT * N);
  tb.old_logp = span<const float>(b_old, RT * N);
  tb.ref_logp = span<const float>(b_ref, RT * N);
  if (v_.algo == algorithm::grpo) {
    group_advantages(hir::cpu, span<const float>(b_scores), groups, span<float>(adv_), hir::presets::verl_grpo());
    std::size_t zero = 0;
    for (std::size_t gi = 0; gi < B; ++gi) {
      bool all0 = true;
      for (std::size_t k = 0; k < mm; ++k)
        all0 = all0 && adv_[gi * mm + k] == 0.0f;
      zero += all0;
    }
    m.zero_adv_groups = static_cast<double>(zero) / static_cast<double>(B);
  } else {
    auto ro = hir::presets::verl_reinforce_pp(cfg_.kl_coef);
    reinforce_pp_advantages(hir::cpu, span<const float>(b_scores), tb, groups, span<float>(adv_), ro);
  }
  lap(m.t_advantage_loss);

  // 7. Update: one epoch in `minibatches` optimizer steps.
  policy_loss_options lo = v_.algo == algorithm::hir ? hopt_.policy : hir::presets::verl_vanilla_loss();
  lo.clip_low = lo.clip_high = cfg_.clip;
  lo.dual_clip = cfg_.dual_clip;
  if (v_.algo == algorithm::grpo) {
    lo.kl = kl_estimator::k3;
    lo.kl_coef = cfg_.kl_coef;
  }
  nn::adamw_options aopt;
  aopt.weight_decay = cfg_.weight_decay;
  const std::size_t MB = cfg_.minibatches;
  double loss_sum = 0, kl_sum = 0, clip_sum = 0;
  for (std::size_t mb = 0; mb < MB; ++mb) {
    const std::size_t r0 = RT * mb / MB, r1 = RT * (mb + 1) / MB, n = r1 - r0;
    if (n == 0)
      continue;
    const auto t_fwd = clock_type::now();
    policy_.forward(span<const nn::token_t>(seq_.tokens.data() + r0 * S, n * S),
                    span<const nn::token_t>(seq_.targets.data() + r0 * S, n * S), n, S);
    cur_lp_.assign(n * N, 0.0f);
    sequence_batch view_rows; // the rows [r0, r1) as a batch of their own (prompt lengths only)
    view_rows.rows = n;
    view_rows.S = S;
    view_rows.N = N;
    view_rows.prompt_len.assign(seq_.prompt_len.begin() + static_cast<std::ptrdiff_t>(r0),
                                seq_.prompt_len.begin() + static_cast<std::ptrdiff_t>(r1));
    view_rows.gather(policy_.logp(), b_mask + r0 * N, cur_lp_.data());
    m.t_update += seconds_since(t_fwd);
    const auto t_loss = clock_type::now();
    token_batch_ref<float> mt;
    mt.batch = n;
    mt.length = N;
    mt.mask = span<const std::uint8_t>(b_mask + r0 * N, n * N);
    mt.logp = span<const float>(cur_lp_);
    mt.old_logp = span<const float>(b_old + r0 * N, n * N);
    mt.ref_logp = span<const float>(b_ref + r0 * N, n * N);
    grad_.assign(n * N, 0.0f);
    const span<const float> a =
        token_adv ? span<const float>(adv_.data() + r0 * N, n * N) : span<const float>(adv_.data() + r0, n);
    const auto res = policy_loss(hir::cpu, mt, a, span<float>(grad_), lo);
    loss_sum += res.loss;
    kl_sum += res.approx_kl;
    clip_sum += res.clip_fraction_low + res.clip_fraction_high;
    m.t_advantage_loss += seconds_since(t_loss);
    const auto t_bwd = clock_type::now();
    dlogp_.assign(n * S, 0.0f);
    view_rows.scatter(grad_.data(), dlogp_.data());
    policy_.backward(span<const float>(dlogp_));
    nn::clip_grad_norm(hir::cpu, policy_.gradients(), cfg_.grad_clip);
    opt_.update(hir::cpu, policy_.parameters(), span<const float>(policy_.gradients()), aopt, cfg_.lr);
    policy_.zero_grad();
    m.t_update += seconds_since(t_bwd);
  }
  m.loss = loss_sum / static_cast<double>(MB);
  m.kl = kl_sum / static_cast<double>(MB);
  m.clip_fraction = clip_sum / static_cast<double>(MB);
  t = clock_type::now();
}

} // namespace hir::train
