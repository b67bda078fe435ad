// SPDX-License-Identifier: Apache-2.0
// The authors' whole HiR step, written here a second time as naive pseudo-code (hir-algorithm.md §2–4, Appendix
// style: a list of rows, full sorts, text built by string concatenation) and compared on random batches with the
// library flow a trainer runs: select_replays → row_instructions / tokenize_instructions → build_replay_batch →
// advantages → policy_loss, configured by presets::hir_paper_code(). Also checks the two presets.
#include "relabel_support.hpp"

#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>

namespace {

// ---- the naive reference -----------------------------------------------------------------------------------------

struct ref_prompt {
  std::string task;
  std::vector<std::string> constraints;
  int type; // the authors' q_type, 1..6
};

struct ref_row {
  std::int64_t prompt;
  std::string instruction;
  double reward;
  bool replay;
  std::size_t source; // index of the response in the input batch
  std::vector<std::uint8_t> mask;
  std::vector<double> old_logp, ref_logp;
};

/// The authors' _concat_question, transcribed.
std::string concat_question(const std::string& raw, const std::vector<std::string>& criteria, int type) {
  auto py_strip = [](std::string s) {
    const std::string ws = " \t\n\r\v\f\x1c\x1d\x1e\x1f";
    const auto b = s.find_first_not_of(ws);
    if (b == std::string::npos)
      return std::string();
    const auto e = s.find_last_not_of(ws);
    return s.substr(b, e - b + 1);
  };
  auto sentences = [&] {
    std::string ins;
    for (const auto& cc : criteria) {
      const char l = cc.back();
      ins += (l != ',' && l != '.' && l != '?' && l != '!') ? cc + ". " : cc + " ";
    }
    return py_strip(ins);
  };
  std::string ins;
  switch (type) {
  case 1:
    return raw + " " + sentences();
  case 2:
    return raw + "\n" + sentences();
  case 3:
    ins = "The output must follow the following rules:\n";
    for (std::size_t i = 0; i < criteria.size(); ++i)
      ins += std::to_string(i + 1) + ". " + criteria[i] + "\n";
    return raw + "\n\n" + py_strip(ins);
  case 4:
    for (const auto& cc : criteria)
      ins += "- " + cc + "\n";
    return raw + "\n\n" + py_strip(ins);
  case 5:
    return sentences() + "\n\n" + raw;
  default:
    for (const auto& cc : criteria)
      ins += cc + "\n";
    return raw + "\n\n" + py_strip(ins);
  }
}

struct ref_step {
  std::vector<std::size_t> replay_index; // chosen responses, ascending
  std::size_t resample_n = 0;
  std::vector<ref_row> rows; // the batch, replays inserted after their source
  std::vector<std::vector<double>> advantages;
  double loss = 0;
  std::vector<std::vector<double>> grad;
};

/// One step of the authors' trainer (n_target = 8 in the config, m = indeed_n rollouts per prompt).
ref_step authors_step(const std::vector<ref_prompt>& prompts, const hir::test::host_rollouts& h, std::int64_t step,
                      std::size_t m, const std::vector<std::vector<double>>& new_logp_by_row_source) {
  ref_step out;
  const std::size_t B = prompts.size(), N = h.N, L = h.L;
  const std::size_t original_n = 8;
  // dense reward (CLA) and eligibility
  std::vector<double> dense(N);
  std::vector<std::size_t> valid;
  for (std::size_t i = 0; i < N; ++i) {
    const double n = h.counts[i];
    dense[i] = hir::test::met_count(h.masks[i], h.counts[i]) / n;
    if (dense[i] > 0 && dense[i] < 1)
      valid.push_back(i);
  }
  const std::int64_t need = static_cast<std::int64_t>((original_n - m) * B) - static_cast<std::int64_t>(valid.size());
  const std::int64_t resample = need > 0 ? (need + static_cast<std::int64_t>(B) - 1) / static_cast<std::int64_t>(B) : 0;
  out.resample_n = static_cast<std::size_t>(resample);
  const std::size_t num_replay = std::min(valid.size(), (original_n - m) * B);
  // trajectory score = λ·dense + token-mean entropy; the top num_replay
  const double lambda = std::pow(1.05, static_cast<double>(step)) * 2.0;
  std::vector<std::pair<double, std::size_t>> score;
  for (auto i : valid) {
    double ent = 0, cnt = 0;
    for (std::size_t t = 0; t < L; ++t)
      if (h.mask[i * L + t]) {
        ent += h.entropy[i * L + t];
        cnt += 1;
      }
    score.push_back({lambda * dense[i] + ent / cnt, i});
  }
  std::sort(score.begin(), score.end(), [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  });
  for (std::size_t k = 0; k < num_replay; ++k)
    out.replay_index.push_back(score[k].second);
  std::sort(out.replay_index.begin(), out.replay_index.end());
  // the batch: every original, and after each chosen one its replay
  auto slice = [&](const std::vector<double>& a, std::size_t i) {
    return std::vector<double>(a.begin() + static_cast<std::ptrdiff_t>(i * L),
                               a.begin() + static_cast<std::ptrdiff_t>((i + 1) * L));
  };
  for (std::size_t i = 0; i < N; ++i) {
    const auto& q = prompts[static_cast<std::size_t>(h.prompt[i])];
    ref_row o;
    o.prompt = h.prompt[i];
    o.instruction = concat_question(q.task, q.constraints, q.type);
    o.reward = dense[i] == 1.0 ? 1.0 : 0.0;
    o.replay = false;
    o.source = i;
    o.mask.assign(h.mask.begin() + static_cast<std::ptrdiff_t>(i * L),
                  h.mask.begin() + static_cast<std::ptrdiff_t>((i + 1) * L));
    o.old_logp = slice(h.old_logp, i);
    o.ref_logp = slice(h.ref_logp, i);
    out.rows.push_back(o);
    if (std::find(out.replay_index.begin(), out.replay_index.end(), i) != out.replay_index.end()) {
      std::vector<std::string> criteria;
      for (std::size_t c = 0; c < q.constraints.size(); ++c)
        if ((h.masks[i] >> c) & 1u)
          criteria.push_back(q.constraints[c]);
      ref_row r = o;
      r.instruction = concat_question(q.task, criteria, q.type);
      r.reward = 1.0;
      r.replay = true;
      out.rows.push_back(r);
    }
  }
  // REINFORCE++: k1 KL in the reward (β = 0.001), γ = 1 returns, whitening over all valid tokens (unbiased)
  const double beta = 0.001;
  std::vector<std::vector<double>> G;
  double sum = 0, count = 0;
  for (const auto& r : out.rows) {
    std::size_t last = 0;
    for (std::size_t t = 0; t < L; ++t)
      if (r.mask[t])
        last = t;
    std::vector<double> g(L, 0.0);
    double run = 0;
    for (std::size_t t = L; t-- > 0;) {
      if (!r.mask[t])
        continue;
      run += (t == last ? r.reward : 0.0) - beta * (r.old_logp[t] - r.ref_logp[t]);
      g[t] = run;
      sum += run;
      count += 1;
    }
    G.push_back(g);
  }
  const double mu = sum / count;
  double ss = 0;
  for (std::size_t k = 0; k < out.rows.size(); ++k)
    for (std::size_t t = 0; t < L; ++t)
      if (out.rows[k].mask[t])
        ss += (G[k][t] - mu) * (G[k][t] - mu);
  const double var = ss / (count - 1);
  for (std::size_t k = 0; k < out.rows.size(); ++k) {
    std::vector<double> a(L, 0.0);
    for (std::size_t t = 0; t < L; ++t)
      if (out.rows[k].mask[t])
        a[t] = (G[k][t] - mu) / std::sqrt(var + 1e-8);
    out.advantages.push_back(a);
  }
  // PPO clip 0.2, dual clip 3, token mean; new log-probs under each row's instruction are given per row
  double total = 0;
  out.grad.assign(out.rows.size(), std::vector<double>(L, 0.0));
  for (std::size_t k = 0; k < out.rows.size(); ++k)
    for (std::size_t t = 0; t < L; ++t) {
      if (!out.rows[k].mask[t])
        continue;
      const double A = out.advantages[k][t];
      const double lr = std::max(-20.0, std::min(20.0, new_logp_by_row_source[k][t] - out.rows[k].old_logp[t]));
      const double rho = std::exp(lr);
      const double clipped = std::max(0.8, std::min(1.2, rho));
      double l = std::max(-A * rho, -A * clipped);
      bool unclipped = -A * rho >= -A * clipped; // the gradient flows through ρ when the first term is the max
      if (A < 0 && -3.0 * A < l) {
        l = -3.0 * A;
        unclipped = false;
      }
      total += l;
      out.grad[k][t] = unclipped ? -A * rho : 0.0; // ∂(−Aρ)/∂logp = −Aρ; the clipped branch is constant
    }
  out.loss = total / count;
  for (auto& g : out.grad)
    for (auto& v : g)
      v /= count;
  return out;
}

// ---- random instructions -----------------------------------------------------------------------------------------

std::vector<ref_prompt> random_prompts(std::mt19937_64& rng, const std::vector<std::uint8_t>& counts) {
  static const char* words[] = {"Use", "exactly", "three", "lines", "no", "commas", "in", "French", "mention", "cats"};
  static const char* endings[] = {"", ".", ",", "?", "!"};
  std::vector<ref_prompt> out;
  for (std::size_t p = 0; p < counts.size(); ++p) {
    ref_prompt q;
    q.task = "Task " + std::to_string(p) + ": write about " + words[rng() % 10] + ".";
    for (unsigned c = 0; c < counts[p]; ++c) {
      std::string s = words[rng() % 10];
      for (int w = 0; w < 3; ++w)
        s += std::string(" ") + words[rng() % 10];
      q.constraints.push_back(s + endings[rng() % 5]);
    }
    q.type = 1 + static_cast<int>(rng() % 6);
    out.push_back(q);
  }
  return out;
}

} // namespace

TEST_CASE("presets: hir_paper_code and hir_paper_eq") {
  const auto code = hir::presets::hir_paper_code();
  CHECK(code.rollouts_per_prompt == 6);
  CHECK(code.select.allocation == hir::replay_allocation::top_k_global);
  CHECK(code.select.diversity == hir::diversity_kind::token_mean);
  CHECK(code.select.budget_kind == hir::replay_budget_kind::fill_to_target);
  CHECK(code.select.target_group_size == 8);
  CHECK(hir::replay_budget(64, code.rollouts_per_prompt, code.select.target_group_size) == 128);
  CHECK(code.select.lambda(50) == doctest::Approx(2.0 * std::pow(1.05, 50)));
  CHECK(code.select.lambda(100) == doctest::Approx(263.0).epsilon(0.01));
  CHECK(code.batch.old_logp == hir::replay_old_logp::copy_from_source);
  CHECK(code.batch.ref_logp == hir::replay_ref_logp::copy_from_source);
  CHECK(code.batch.grouping == hir::replay_grouping::global);
  CHECK(code.policy.kind == hir::policy_loss_kind::ppo_clip);
  CHECK(code.policy.clip_low == 0.2);
  CHECK(code.policy.clip_high == 0.2);
  CHECK(code.policy.dual_clip == 3.0);
  CHECK(code.policy.aggregation == hir::loss_aggregation::token_mean);
  CHECK(code.policy.kl == hir::kl_estimator::none);
  CHECK(code.estimator == hir::hindsight_advantage::reinforce_pp);
  CHECK(code.reinforce_pp.kl_coef == 0.001);
  CHECK(code.reinforce_pp.kl == hir::kl_estimator::k1);
  CHECK(code.reinforce_pp.gamma == 1.0);
  CHECK(code.reinforce_pp.baseline == hir::reinforce_baseline::none);
  CHECK(code.reinforce_pp.whiten == hir::whitening::standard);
  CHECK(code.reinforce_pp.std == hir::std_kind::unbiased);
  CHECK(code.batch.placement == hir::replay_placement::after_source);
  const auto eq = hir::presets::hir_paper_eq();
  CHECK(eq.select.allocation == hir::replay_allocation::top_k_per_group);
  CHECK(eq.select.replays_per_prompt == 2);
  CHECK(eq.select.diversity == hir::diversity_kind::token_sum);
  CHECK(eq.batch.old_logp == code.batch.old_logp);
  CHECK(eq.policy.dual_clip == 3.0);
}

TEST_CASE_TEMPLATE("hindsight step: the library flow with hir_paper_code equals the authors' step, written naively", B,
                   HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(41));
  const auto opt = hir::presets::hir_paper_code();
  const std::size_t m = opt.rollouts_per_prompt;
  int with_shortfall = 0;
  for (int trial = 0; trial < 25; ++trial) {
    CAPTURE(trial);
    const std::size_t B_ = 1 + rng() % 9, L = 2 + rng() % 10;
    const std::int64_t step = 1 + static_cast<std::int64_t>(rng() % 120);
    auto h = hir::test::random_rollouts(rng, B_, m, L);
    if (trial % 4 == 0) // mostly successes: fewer eligible responses than K = 2B, so the shortfall path runs
      for (std::size_t i = 1; i < h.N; ++i)
        h.masks[i] = (1ull << h.counts[i]) - 1;
    const auto ref_prompts = random_prompts(rng, h.constraint_counts);
    std::vector<hir::instruction> prompts;
    for (const auto& q : ref_prompts)
      prompts.push_back({q.task, q.constraints, hir::instruction_layouts[static_cast<std::size_t>(q.type - 1)]});

    // ---- the library flow a trainer runs -----------------------------------------------------------------------
    hir::test::backend_rollouts<B> r(h);
    const auto sel = hir::select_replays(B{}, r.ref(), step, opt.select);
    const auto batch = hir::build_replay_batch(B{}, r.ref(), sel, opt.batch);
    const auto row_prompt = hir::to_host(batch.prompt);
    const auto row_mask = hir::to_host(batch.constraint_mask);
    const auto texts = hir::row_instructions(prompts, row_prompt, row_mask);
    int calls = 0;
    const auto prompt_tokens =
        hir::tokenize_instructions(prompts, row_prompt, row_mask, [&calls](const std::string& s) {
          ++calls;
          return std::vector<std::int32_t>(s.begin(), s.end());
        });

    // the caller's forward pass under each row's instruction: new log-probs, here old + noise
    const std::size_t R = batch.batch;
    const auto old = hir::to_host(batch.old_logp);
    std::vector<double> logp(R * L);
    std::vector<std::vector<double>> logp_rows(R, std::vector<double>(L));
    std::normal_distribution<double> noise(0.0, 0.3);
    for (std::size_t i = 0; i < R * L; ++i) {
      logp[i] = old[i] + noise(rng);
      logp_rows[i / L][i % L] = logp[i];
    }

    // ---- the naive reference ----------------------------------------------------------------------------------
    const auto expect = authors_step(ref_prompts, h, step, m, logp_rows);

    // selection and the "need more rollouts" report
    std::vector<std::size_t> chosen;
    for (auto i : hir::to_host(sel.indices))
      chosen.push_back(static_cast<std::size_t>(i));
    CHECK(chosen == expect.replay_index);
    CHECK(sel.extra_rollouts_per_prompt == expect.resample_n);
    with_shortfall += sel.complete() ? 0 : 1;
    // rows: instruction text, reward, flag, link, token arrays
    REQUIRE(R == expect.rows.size());
    const auto reward = hir::to_host(batch.reward);
    const auto is_replay = hir::to_host(batch.is_replay);
    const auto origin = hir::to_host(batch.origin);
    const auto mask = hir::to_host(batch.mask);
    const auto refl = hir::to_host(batch.ref_logp);
    for (std::size_t k = 0; k < R; ++k) {
      CAPTURE(k);
      const auto& e = expect.rows[k];
      CHECK(texts[k].render() == e.instruction);
      CHECK(std::string(prompt_tokens.row(k).begin(), prompt_tokens.row(k).end()) == e.instruction);
      CHECK(reward[k] == e.reward);
      CHECK(static_cast<bool>(is_replay[k]) == e.replay);
      CHECK(static_cast<std::size_t>(origin[k]) == e.source);
      for (std::size_t t = 0; t < L; ++t) {
        CHECK(mask[k * L + t] == e.mask[t]);
        CHECK(old[k * L + t] == e.old_logp[t]);
        CHECK(refl[k * L + t] == e.ref_logp[t]);
      }
    }
    CHECK(calls <= static_cast<int>(B_ + sel.size()));

    // advantages: REINFORCE++ with the preset's options on the replay batch
    const auto adv = hir::hindsight_advantages(B{}, batch, opt);
    std::vector<double> adv_expect(R * L);
    for (std::size_t k = 0; k < R; ++k)
      for (std::size_t t = 0; t < L; ++t)
        adv_expect[k * L + t] = expect.advantages[k][t];
    HIR_CHECK_CLOSE(hir::to_host(adv), adv_expect, 1e-10, 1e-9);

    // the loss: hir::policy_loss with the preset's options
    const auto d_logp = hir::test::upload<B>(logp);
    hir::vector<double, B> d_grad(R * L);
    auto tb = batch.token_batch();
    tb.logp = hir::view(d_logp);
    const auto res =
        hir::policy_loss(B{}, tb, hir::span_for<const double, B>(hir::view(adv)), hir::view(d_grad), opt.policy);
    CHECK(res.loss == doctest::Approx(expect.loss).epsilon(1e-9));
    std::vector<double> g_expect(R * L);
    for (std::size_t k = 0; k < R; ++k)
      for (std::size_t t = 0; t < L; ++t)
        g_expect[k * L + t] = expect.grad[k][t];
    HIR_CHECK_CLOSE(hir::to_host(d_grad), g_expect, 1e-10, 1e-8);
  }
  CHECK(with_shortfall > 0); // small batches often lack eligible responses: the report path is exercised
}

TEST_CASE_TEMPLATE("hindsight_advantages: group-relative advantages with replays joining or forming groups", B,
                   HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(42));
  for (int trial = 0; trial < 10; ++trial) {
    const auto h = hir::test::random_rollouts(rng, 2 + rng() % 6, 6, 5);
    hir::test::backend_rollouts<B> r(h);
    auto opt = hir::presets::hir_paper_code();
    opt.estimator = hir::hindsight_advantage::group_relative;
    opt.group = hir::presets::verl_grpo();
    opt.group.singleton = hir::singleton_policy::zero; // (verl's raw_score would give a lone replay A = 1/(1 + ε))
    opt.select.allocation = hir::replay_allocation::all_eligible;
    const auto sel = hir::select_replays(B{}, r.ref(), 1, opt.select);
    for (auto g : {hir::replay_grouping::join_source, hir::replay_grouping::own_group, hir::replay_grouping::global}) {
      CAPTURE(static_cast<int>(g));
      opt.batch.grouping = g;
      const auto batch = hir::build_replay_batch(B{}, r.ref(), sel, opt.batch);
      const auto adv = hir::to_host(hir::hindsight_advantages(B{}, batch, opt));
      REQUIRE(adv.size() == batch.batch);
      // naive GRPO: rows grouped by (prompt, replay?) as the grouping says; (R − μ)/(σ + 1e-6), unbiased σ
      const auto prompt = hir::to_host(batch.prompt);
      const auto rep = hir::to_host(batch.is_replay);
      const auto reward = hir::to_host(batch.reward);
      auto key = [&](std::size_t k) -> std::int64_t {
        if (g == hir::replay_grouping::global)
          return 0;
        return prompt[k] * 2 + (g == hir::replay_grouping::own_group && rep[k] ? 1 : 0);
      };
      for (std::size_t k = 0; k < batch.batch; ++k) {
        double sum = 0, n = 0, lo = 1e300, hi = -1e300;
        for (std::size_t j = 0; j < batch.batch; ++j)
          if (key(j) == key(k)) {
            sum += reward[j];
            n += 1;
            lo = std::min(lo, reward[j]);
            hi = std::max(hi, reward[j]);
          }
        const double mu = sum / n;
        double ss = 0;
        for (std::size_t j = 0; j < batch.batch; ++j)
          if (key(j) == key(k))
            ss += (reward[j] - mu) * (reward[j] - mu);
        const double expect = (n < 2 || lo == hi) ? 0.0 : (reward[k] - mu) / (std::sqrt(ss / (n - 1)) + 1e-6);
        CHECK(adv[k] == doctest::Approx(expect).epsilon(1e-12).scale(1e-12));
        if (g == hir::replay_grouping::own_group && rep[k])
          CHECK(adv[k] == 0.0); // replays all have reward 1: a group of their own carries no signal under GRPO
      }
    }
  }
}

TEST_CASE_TEMPLATE("weight_advantages: per-sequence and per-token advantages times importance weights", B,
                   HIR_TEST_BACKEND) {
  const auto w = hir::test::upload<B>(std::vector<double>{1, 1, 0.5, 2, 1, 0});
  const auto a_seq = hir::test::upload<B>(std::vector<double>{2, -1});
  const auto a_tok = hir::test::upload<B>(std::vector<double>{1, 2, 3, 4, 5, 6});
  hir::vector<double, B> out(6);
  hir::weight_advantages(B{}, hir::span_for<const double, B>(hir::view(a_seq)),
                         hir::span_for<const double, B>(hir::view(w)), 3, hir::view(out));
  CHECK(hir::to_host(out) == std::vector<double>{2, 2, 1, -2, -1, 0});
  hir::weight_advantages(B{}, hir::span_for<const double, B>(hir::view(a_tok)),
                         hir::span_for<const double, B>(hir::view(w)), 3, hir::view(out));
  CHECK(hir::to_host(out) == std::vector<double>{1, 2, 1.5, 8, 5, 0});
  const auto bad = hir::test::upload<B>(std::vector<double>{1, 1, -0.5, 2, 1, 0});
  CHECK_THROWS_WITH_AS(hir::weight_advantages(B{}, hir::span_for<const double, B>(hir::view(a_seq)),
                                              hir::span_for<const double, B>(hir::view(bad)), 3, hir::view(out)),
                       doctest::Contains("weight[2] = -0.5 is negative or not finite"), hir::invalid_argument);
  CHECK_THROWS_WITH_AS(hir::weight_advantages(B{}, hir::span_for<const double, B>(hir::view(a_seq)),
                                              hir::span_for<const double, B>(hir::view(w)), 2, hir::view(out)),
                       doctest::Contains("advantages.size() = 2 is neither rows = 3 nor rows * length = 6"),
                       hir::invalid_argument);
}

// example-begin hindsight-step
TEST_CASE_TEMPLATE("hindsight step: a trainer's flow with hir_paper_eq, recomputed log-probs and truncated weights", B,
                   HIR_TEST_BACKEND) {
  // Two prompts, three rollouts each (the caller's verifier produced the verdicts).
  std::vector<hir::instruction> prompts = {
      {"Describe a cat.",
       {"Use two sentences", "Mention its tail", "Write in English"},
       hir::instruction_layout::numbered_rules},
      {"Name a color.", {"Answer in one word", "Use lowercase"}, hir::instruction_layout::bullet_list}};
  hir::test::host_rollouts h;
  h.N = 6;
  h.L = 4;
  h.B = 2;
  h.prompt = {0, 0, 0, 1, 1, 1};
  h.masks = {0b101, 0b111, 0b001, 0b01, 0b00, 0b10};
  h.counts = {3, 3, 3, 2, 2, 2};
  h.constraint_counts = hir::constraint_counts(prompts);
  h.mask = {1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0};
  for (std::size_t i = 0; i < 24; ++i) {
    h.tokens.push_back(static_cast<std::int32_t>(100 + i));
    h.old_logp.push_back(-0.1 * static_cast<double>(1 + i % 7));
    h.ref_logp.push_back(-0.1 * static_cast<double>(1 + i % 5));
    h.entropy.push_back(0.05 * static_cast<double>(i % 9));
  }
  hir::test::backend_rollouts<B> rollouts(h);

  auto opt = hir::presets::hir_paper_eq();
  opt.rollouts_per_prompt = 3;
  opt.select.replays_per_prompt = 1;
  opt.batch.old_logp =
      hir::replay_old_logp::truncated_is; // PPO ratio against π_old(y|q'), weight π_old(y|q')/π_old(y|q)
  opt.batch.importance = hir::importance_level::sequence;

  // 1. select: r0 (2/3) and r2 (1/3) are eligible for prompt 0, r3 (1/2) and r5 (1/2) for prompt 1
  const auto sel = hir::select_replays(B{}, rollouts.ref(), /*step=*/1, opt.select);
  const auto chosen = hir::to_host(sel.indices);
  REQUIRE(chosen.size() == 2);
  // 2. rewrite: the instruction of each replay, rendered with its prompt's template and tokenized by the caller
  std::vector<std::int64_t> rp;
  std::vector<std::uint64_t> rm;
  for (auto i : chosen) {
    rp.push_back(h.prompt[static_cast<std::size_t>(i)]);
    rm.push_back(h.masks[static_cast<std::size_t>(i)]);
  }
  const auto rewritten = hir::row_instructions(prompts, rp, rm);
  // 3. the caller recomputes log π_old(y|q') of each replayed response under its rewritten prompt (here: a stand-in
  //    that shifts the behaviour log-probs by the number of dropped constraints)
  std::vector<double> rec_old;
  for (std::size_t k = 0; k < chosen.size(); ++k)
    for (std::size_t t = 0; t < h.L; ++t)
      rec_old.push_back(h.old_logp[static_cast<std::size_t>(chosen[k]) * h.L + t] +
                        0.05 * static_cast<double>(prompts[static_cast<std::size_t>(rp[k])].constraints.size() -
                                                   rewritten[k].constraints.size()));
  const auto d_rec = hir::test::upload<B>(rec_old);
  hir::replay_logp_ref<double, hir::memory_space_t<B>> recomputed{hir::view(d_rec), {}};
  // 4. the batch of originals + replays
  const auto batch = hir::build_replay_batch(B{}, rollouts.ref(), sel, opt.batch, recomputed);
  const auto prompt_ids =
      hir::tokenize_instructions(prompts, hir::to_host(batch.prompt), hir::to_host(batch.constraint_mask),
                                 [](const std::string& s) { return std::vector<std::int32_t>(s.begin(), s.end()); });
  CHECK(prompt_ids.size() == batch.batch);
  // 5. advantages (REINFORCE++ with KL in the reward, importance weights applied) and 6. the policy loss
  const auto adv = hir::hindsight_advantages(B{}, batch, opt);
  CHECK(adv.size() == batch.batch * batch.length);
  std::vector<double> logp = hir::to_host(batch.old_logp); // the caller's forward pass; here π_θ = π_old(·|q̃)
  const auto d_logp = hir::test::upload<B>(logp);
  auto tb = batch.token_batch();
  tb.logp = hir::view(d_logp);
  hir::vector<double, B> grad(batch.batch * batch.length);
  const auto res =
      hir::policy_loss(B{}, tb, hir::span_for<const double, B>(hir::view(adv)), hir::view(grad), opt.policy);
  CHECK(std::isfinite(res.loss));
  // 7. optionally the dual-level preference view of the same batch
  const auto pairs = hir::build_preference_pairs(B{}, batch.ref(), opt.pairs);
  CHECK(pairs.num_instruction == 2);
  CHECK(pairs.num_response == 2); // prompt 0: r1 ≻ r0, r1 ≻ r2; prompt 1 has no success
  // example-end hindsight-step

  // What the steps produced, by hand: step 1, λ = 2.1, summed entropies (paper) over valid tokens:
  //   r0: H(0,1,2) = 0, .05, .1 → .15 + 2.1·2/3 = 1.55      r2: H(8) = .4 → .4 + 2.1/3 = 1.1   → r0
  //   r3: H(12) = 12 % 9 · .05 = .15 → .15 + 1.05 = 1.2     r5: H(20,21,22) = .1+.15+.2 = .45 → .45 + 1.05 = 1.5 → r5
  CHECK(chosen == std::vector<std::int64_t>{0, 5});
  CHECK(rewritten[0].render() ==
        "Describe a cat.\n\nThe output must follow the following rules:\n1. Use two sentences\n"
        "2. Write in English");
  CHECK(rewritten[1].render() == "Name a color.\n\n- Use lowercase");
  // replays follow their sources: rows r0, r0', r1, r2, r3, r4, r5, r5'
  CHECK(hir::to_host(batch.is_replay) == std::vector<std::uint8_t>{0, 1, 0, 0, 0, 0, 0, 1});
  CHECK(hir::to_host(batch.reward) == std::vector<double>{0, 1, 1, 0, 0, 0, 0, 1});
  // sequence weights min(exp(Σ_t 0.05·dropped), 2): r0' drops 1 constraint over 3 tokens → e^0.15; r5' drops 1
  // over 3 tokens → e^0.15
  const auto w = hir::to_host(batch.weight);
  CHECK(w[1 * 4 + 0] == doctest::Approx(std::exp(0.15)));
  CHECK(w[1 * 4 + 3] == 1.0); // padding
  CHECK(w[7 * 4 + 2] == doctest::Approx(std::exp(0.15)));
  CHECK(w[0] == 1.0);
}

TEST_CASE_TEMPLATE("docs/hindsight.md worked example", B, HIR_TEST_BACKEND) {
  std::vector<hir::instruction> prompts = {
      {"Write a haiku about autumn.",
       {"Use exactly three lines", "Mention the moon", "Do not use commas", "End with a question"},
       hir::instruction_layout::numbered_rules},
      {"Name a color.",
       {"Answer in one word", "Use lowercase", "Add no punctuation"},
       hir::instruction_layout::bullet_list}};
  hir::test::host_rollouts h;
  h.N = 8;
  h.L = 6;
  h.B = 2;
  h.prompt = {0, 0, 0, 0, 1, 1, 1, 1};
  h.masks = {0b1111, 0b0101, 0b0000, 0b0111, 0b001, 0b011, 0b110, 0b111};
  h.counts = {4, 4, 4, 4, 3, 3, 3, 3};
  h.constraint_counts = hir::constraint_counts(prompts);
  const std::vector<double> entropy_sum = {1.0, 2.0, 3.0, 0.6, 4.5, 1.2, 0.8, 0.1};
  const std::vector<int> length = {2, 4, 6, 3, 5, 4, 2, 1};
  for (std::size_t i = 0; i < h.N; ++i)
    for (int t = 0; t < 6; ++t) {
      h.mask.push_back(t < length[i] ? 1 : 0);
      h.entropy.push_back(t < length[i] ? entropy_sum[i] / length[i] : 0.0);
      h.old_logp.push_back(-1.0);
      h.ref_logp.push_back(-1.0); // old = ref: no KL in the reward
    }
  hir::test::backend_rollouts<B> r(h);
  auto code = hir::presets::hir_paper_code();
  code.rollouts_per_prompt = 4;
  code.select.target_group_size = 6; // K = (6 − 4)·2 = 4
  auto eq = hir::presets::hir_paper_eq();
  eq.rollouts_per_prompt = 4;

  const auto sel = hir::select_replays(B{}, r.ref(), 1, code.select);
  CHECK(sel.lambda == doctest::Approx(2.1));
  CHECK(sel.budget == 4);
  CHECK(hir::to_host(sel.indices) == std::vector<std::int64_t>{3, 4, 5, 6});
  CHECK(hir::to_host(hir::select_replays(B{}, r.ref(), 1, eq.select).indices) == std::vector<std::int64_t>{1, 3, 4, 5});
  {
    auto three = h; // only 3 eligible: shortfall 1, one more rollout per prompt
    three.masks[1] = 0;
    three.masks[5] = 0b111;
    hir::test::backend_rollouts<B> r3(three);
    const auto s3 = hir::select_replays(B{}, r3.ref(), 1, code.select);
    CHECK(s3.shortfall == 1);
    CHECK(s3.extra_rollouts_per_prompt == 1);
  }

  const auto batch = hir::build_replay_batch(B{}, r.ref(), sel, code.batch);
  CHECK(hir::to_host(batch.origin) == std::vector<std::int64_t>{0, 1, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7});
  CHECK(hir::to_host(batch.reward) == std::vector<double>{1, 0, 0, 0, 1, 0, 1, 0, 1, 0, 1, 1});
  CHECK(hir::to_host(batch.source_row) == std::vector<std::int64_t>{0, 1, 2, 3, 3, 5, 5, 7, 7, 9, 9, 11});
  const auto rows = hir::row_instructions(prompts, hir::to_host(batch.prompt), hir::to_host(batch.constraint_mask));
  CHECK(rows[4].render() == "Write a haiku about autumn.\n\nThe output must follow the following rules:\n"
                            "1. Use exactly three lines\n2. Mention the moon\n3. Do not use commas");
  CHECK(rows[6].render() == "Name a color.\n\n- Answer in one word");
  CHECK(rows[8].render() == "Name a color.\n\n- Answer in one word\n- Use lowercase");
  CHECK(rows[10].render() == "Name a color.\n\n- Use lowercase\n- Add no punctuation");

  const auto adv = hir::to_host(hir::hindsight_advantages(B{}, batch, code));
  const auto reward = hir::to_host(batch.reward);
  const auto mask = hir::to_host(batch.mask);
  for (std::size_t k = 0; k < batch.batch; ++k)
    for (std::size_t t = 0; t < 6; ++t)
      if (mask[k * 6 + t])
        CHECK(adv[k * 6 + t] == doctest::Approx(reward[k] > 0 ? 1.1736 : -0.8313).epsilon(1e-4));

  auto grpo = code;
  grpo.batch.grouping = hir::replay_grouping::join_source;
  grpo.estimator = hir::hindsight_advantage::group_relative;
  grpo.group = hir::presets::verl_grpo();
  const auto gbatch = hir::build_replay_batch(B{}, r.ref(), sel, grpo.batch);
  const auto gadv = hir::to_host(hir::hindsight_advantages(B{}, gbatch, grpo));
  const auto gprompt = hir::to_host(gbatch.prompt);
  for (std::size_t k = 0; k < gbatch.batch; ++k) {
    const double expect = gprompt[k] == 0 ? (reward[k] > 0 ? 1.0954 : -0.7303) : (reward[k] > 0 ? 0.8018 : -1.0690);
    CHECK(gadv[k] == doctest::Approx(expect).epsilon(1e-4));
  }

  const auto pairs = hir::build_preference_pairs(B{}, batch.ref(), code.pairs);
  // rows: r0 0, r1 1, r2 2, r3 3, r3′ 4, r4 5, r4′ 6, r5 7, r5′ 8, r6 9, r6′ 10, r7 11
  CHECK(hir::to_host(pairs.chosen) == std::vector<std::int64_t>{0, 0, 0, 11, 11, 11, 4, 6, 8, 10});
  CHECK(hir::to_host(pairs.rejected) == std::vector<std::int64_t>{1, 2, 3, 5, 7, 9, 3, 5, 7, 9});
}
