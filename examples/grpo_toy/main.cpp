// SPDX-License-Identifier: Apache-2.0
// A walkthrough of hir on one realistic batch: 4 prompts × 4 rollouts, each response with per-constraint verdicts
// and per-token log-probabilities under the current, old (sampling) and reference policies. It prints the rewards,
// the advantages of every estimator, the policy losses with their metrics, and one HiR step (select → rewrite →
// replay batch → REINFORCE++ advantages), each with a short explanation.
#include <hir/hir.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr std::size_t B = 4, G = 4, N = B * G, L = 12; // prompts, rollouts per prompt, responses, max length

void print_row(const char* name, const std::vector<float>& v, std::size_t stride = 1) {
  std::printf("  %-34s", name);
  for (std::size_t i = 0; i < v.size(); i += stride)
    std::printf("%s%7.3f", i && (i / stride) % G == 0 ? "  |" : "", v[i]);
  std::printf("\n");
}

} // namespace

int main() {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(0.f, 1.f);

  // Prompts have 3, 4, 5 and 6 constraints; each rollout meets each constraint with a prompt-dependent rate.
  const unsigned counts[B] = {3, 4, 5, 6};
  const double meet[B] = {0.9, 0.7, 0.5, 0.3};
  hir::verdict_batch verdicts;
  std::vector<std::int64_t> prompt(N);
  for (std::size_t i = 0; i < N; ++i) {
    const std::size_t p = i / G;
    prompt[i] = static_cast<std::int64_t>(p);
    std::uint64_t mask = 0;
    for (unsigned c = 0; c < counts[p]; ++c)
      if (u(rng) < meet[p])
        mask |= std::uint64_t(1) << c;
    verdicts.push_back(mask, counts[p]);
  }
  // Token arrays [N, L]: lengths 5..12, log-probs around −1.5, the current policy a little away from the old one.
  std::vector<std::uint8_t> mask(N * L, 0);
  std::vector<float> logp(N * L, 0.f), old_logp(N * L, 0.f), ref_logp(N * L, 0.f), entropy(N * L, 0.f);
  std::vector<std::int32_t> tokens(N * L, 0);
  std::vector<float> entropy_sum(N, 0.f);
  std::vector<std::int64_t> lengths(N);
  std::normal_distribution<float> nrm(0.f, 1.f);
  for (std::size_t i = 0; i < N; ++i) {
    lengths[i] = 5 + static_cast<std::int64_t>(rng() % 8);
    for (std::size_t t = 0; t < static_cast<std::size_t>(lengths[i]); ++t) {
      const std::size_t k = i * L + t;
      mask[k] = 1;
      tokens[k] = static_cast<std::int32_t>(rng() % 100);
      old_logp[k] = -1.5f + 0.5f * nrm(rng);
      logp[k] = old_logp[k] + 0.15f * nrm(rng);
      ref_logp[k] = old_logp[k] + 0.1f * nrm(rng);
      entropy[k] = 1.0f + 0.5f * u(rng);
      entropy_sum[i] += entropy[k];
    }
  }
  const auto groups = hir::group_layout::uniform(N, G);

  std::printf("hir %d.%d.%d walkthrough: %zu prompts x %zu rollouts (groups separated by |)\n\n", HIR_VERSION_MAJOR,
              HIR_VERSION_MINOR, HIR_VERSION_PATCH, B, G);
  std::printf("Rewards from the verdict vectors:\n");
  std::vector<float> ila(N), cla(N);
  hir::instruction_rewards(hir::cpu, verdicts.ref(), hir::span<float>(ila));
  hir::constraint_rewards(hir::cpu, verdicts.ref(), hir::span<float>(cla));
  print_row("ILA (1 iff all constraints met)", ila);
  print_row("CLA (fraction met)", cla);

  std::printf("\nGroup-relative advantages of the ILA reward (one value per response):\n");
  struct named {
    const char* name;
    hir::group_advantage_options opt;
  };
  const named estimators[] = {
      {"GRPO verl  (s-mu)/(sd+1e-6)", hir::presets::verl_grpo()},
      {"GRPO TRL   (s-mu)/(sd+1e-4)", hir::presets::trl_grpo()},
      {"GRPO TRL batch std", hir::presets::trl_grpo_batch()},
      {"Dr.GRPO    s-mu", hir::presets::verl_dr_grpo()},
      {"RLOO       s - mean(others)", hir::presets::verl_rloo()},
  };
  std::vector<float> adv(N);
  for (const auto& e : estimators) {
    hir::group_advantages(hir::cpu, hir::span<const float>(ila), groups, hir::span<float>(adv), e.opt);
    print_row(e.name, adv);
  }
  std::printf("  (all-equal groups get exact zeros: no learning signal from them, the sparse-reward problem)\n");
  hir::group_advantages(hir::cpu, hir::span<const float>(cla), groups, hir::span<float>(adv),
                        hir::presets::verl_grpo());
  print_row("GRPO on the dense CLA reward", adv);
  hir::constraint_normalized_advantages(hir::cpu, verdicts.ref(), groups, hir::span<float>(adv));
  print_row("per-constraint z-scores (GDPO)", adv);

  std::printf("\nREINFORCE++ (token level: returns with k1 KL in the reward, whitened over all valid tokens);\n"
              "first token of each response:\n");
  hir::token_batch_ref<float> tb;
  tb.batch = N;
  tb.length = L;
  tb.mask = hir::span<const std::uint8_t>(mask);
  tb.logp = hir::span<const float>(logp);
  tb.old_logp = hir::span<const float>(old_logp);
  tb.ref_logp = hir::span<const float>(ref_logp);
  std::vector<float> tok_adv(N * L);
  hir::reinforce_pp_advantages(hir::cpu, hir::span<const float>(ila), tb, groups, hir::span<float>(tok_adv),
                               hir::presets::verl_reinforce_pp(0.001));
  print_row("REINFORCE++ A[i, 0]", tok_adv, L);

  std::printf("\nPolicy losses on the GRPO (verl) advantages; gradient = d loss / d logp, one fused pass:\n");
  hir::group_advantages(hir::cpu, hir::span<const float>(ila), groups, hir::span<float>(adv),
                        hir::presets::verl_grpo());
  std::vector<float> grad(N * L);
  struct loss_case {
    const char* name;
    hir::policy_loss_options opt;
  };
  auto with = [](hir::policy_loss_options o, auto f) {
    f(o);
    return o;
  };
  const loss_case losses[] = {
      {"PPO clip 0.2", hir::policy_loss_options{}},
      {"PPO clip 0.2 + dual clip 3 (verl)", hir::presets::verl_vanilla_loss()},
      {"clip-higher 0.2/0.28 (DAPO)", hir::presets::dapo_loss()},
      {"GSPO (sequence ratio)", hir::presets::verl_gspo_loss()},
      {"CISPO (clipped IS weight)", hir::presets::verl_cispo_loss()},
      {"REINFORCE (-A logp)",
       with(hir::policy_loss_options{}, [](auto& o) { o.kind = hir::policy_loss_kind::reinforce; })},
      {"PPO + k3 KL, beta 0.04", with(hir::presets::verl_vanilla_loss(),
                                      [](auto& o) {
                                        o.kl = hir::kl_estimator::k3;
                                        o.kl_coef = 0.04;
                                      })},
      {"PPO, seq-mean-token-mean", with(hir::presets::verl_vanilla_loss(),
                                        [](auto& o) { o.aggregation = hir::loss_aggregation::seq_mean_token_mean; })},
      {"PPO, Dr.GRPO sum / 4096", with(hir::presets::verl_vanilla_loss(),
                                       [](auto& o) {
                                         o.aggregation = hir::loss_aggregation::seq_sum_constant;
                                         o.normalizer = 4096;
                                       })},
  };
  std::printf("  %-34s %9s %9s %9s %8s %8s %9s %9s\n", "loss", "loss", "pg", "kl", "clip_lo", "clip_hi", "ratio",
              "|grad|");
  for (const auto& c : losses) {
    const auto r = hir::policy_loss(hir::cpu, tb, hir::span<const float>(adv), hir::span<float>(grad), c.opt);
    double gn = 0;
    for (float g : grad)
      gn += static_cast<double>(g) * g;
    std::printf("  %-34s %9.5f %9.5f %9.5f %8.3f %8.3f %9.5f %9.5f\n", c.name, r.loss, r.pg_loss, r.kl_loss,
                r.clip_fraction_low, r.clip_fraction_high, r.mean_ratio, std::sqrt(gn));
  }

  std::printf("\nOne HiR step (authors' code preset hir_paper_code, step 1):\n");
  auto hopt = hir::presets::hir_paper_code();
  hir::replay_candidates_ref<float> cand;
  cand.num_prompts = B;
  cand.prompt = hir::span<const std::int64_t>(prompt);
  cand.verdicts = verdicts.ref();
  cand.entropy_sum = hir::span<const float>(entropy_sum);
  cand.length = hir::span<const std::int64_t>(lengths);
  hopt.select.target_group_size = G + 2; // K = (6 − 4)·B = 8 replays for this small batch
  const auto sel = hir::select_replays(hir::cpu, cand, 1, hopt.select);
  std::printf("  eligible failures (0 < CLA < 1): %zu, budget K = %zu, chosen %zu, lambda(1) = %.2f%s\n", sel.eligible,
              sel.budget, sel.size(), sel.lambda, sel.complete() ? "" : "  (shortfall: draw more rollouts per prompt)");
  for (std::size_t k = 0; k < sel.size(); ++k) {
    const auto i = static_cast<std::size_t>(sel.indices[k]);
    std::string kept;
    for (unsigned c = 0; c < verdicts.counts()[i]; ++c)
      kept += verdicts.met(i, c) ? "c" + std::to_string(c) + " " : "";
    std::printf("  replay response %2zu of prompt %lld: keeps constraints { %s} of %u -> reward 1\n", i,
                static_cast<long long>(prompt[i]), kept.c_str(), static_cast<unsigned>(verdicts.counts()[i]));
  }
  hir::rollout_batch_ref<float> ro;
  ro.batch = N;
  ro.length = L;
  ro.num_prompts = B;
  ro.prompt = hir::span<const std::int64_t>(prompt);
  ro.verdicts = verdicts.ref();
  ro.tokens = hir::span<const std::int32_t>(tokens);
  ro.mask = hir::span<const std::uint8_t>(mask);
  ro.old_logp = hir::span<const float>(old_logp);
  ro.ref_logp = hir::span<const float>(ref_logp);
  const auto rb = hir::build_replay_batch(hir::cpu, ro, hir::span<const std::int64_t>(sel.indices), hopt.batch);
  std::printf("  training batch: %zu originals + %zu replays = %zu rows\n", rb.num_originals, rb.num_replays, rb.batch);
  hir::token_batch_ref<float> rt;
  rt.batch = rb.batch;
  rt.length = L;
  rt.mask = hir::span<const std::uint8_t>(rb.mask);
  rt.old_logp = hir::span<const float>(rb.old_logp);
  rt.ref_logp = hir::span<const float>(rb.ref_logp);
  std::vector<float> radv(rb.batch * L);
  hir::reinforce_pp_advantages(hir::cpu, hir::span<const float>(rb.reward), rt, hir::replay_group_layout(rb),
                               hir::span<float>(radv), hir::presets::verl_reinforce_pp(0.001));
  std::printf("  REINFORCE++ advantage at the first token of each row (rows in batch order; R = replay of the\n"
              "  row before it): a replay carries a positive signal for a response that failed its instruction.\n  ");
  for (std::size_t r = 0; r < rb.batch; ++r)
    std::printf("%s%.2f%s", r ? "  " : "", radv[r * L], rb.is_replay[r] ? "R" : "");
  std::printf("\n");
  return 0;
}
