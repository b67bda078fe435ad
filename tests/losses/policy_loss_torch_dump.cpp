// SPDX-License-Identifier: Apache-2.0
// Writes random batches and hir::policy_loss's results (loss, parts, metrics, gradient) as JSON on stdout for
// check_policy_loss_torch.py, which recomputes every case with PyTorch autograd on verl's formulation and compares.
// Cases: PPO (symmetric; clip-higher with dual clip), GSPO, CISPO (verl two-sided; TRL cap), REINFORCE × the seven KL
// estimators × the four aggregations, advantages per sequence or per token, in float64 and float32.
// Usage: hir_policy_loss_torch_dump [seed]
#include <hir/hir.hpp>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace {

template <class T>
void print_array(const char* name, const std::vector<T>& v) {
  std::printf("\"%s\": [", name);
  for (std::size_t k = 0; k < v.size(); ++k)
    std::printf(k ? ", %.17g" : "%.17g", static_cast<double>(v[k]));
  std::printf("], ");
}

template <class T>
void emit_case(std::mt19937_64& rng, const hir::policy_loss_options& o, bool token_adv, bool first) {
  const std::size_t B = 6, L = 13, n = B * L;
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<T> logp(n), old_logp(n), ref_logp(n), adv(token_adv ? n : B), grad(n);
  std::vector<std::uint8_t> mask(n);
  for (std::size_t i = 0; i < B; ++i) {
    const std::size_t len = i == 2 ? 0 : 1 + rng() % L; // row 2 is empty
    if (!token_adv)
      adv[i] = static_cast<T>(2 * u(rng));
    for (std::size_t t = 0; t < L; ++t) {
      const std::size_t k = i * L + t;
      mask[k] = t < len && rng() % 5 != 0;
      logp[k] = static_cast<T>(-2 + 0.5 * u(rng));
      old_logp[k] = static_cast<T>(double(logp[k]) + 0.6 * u(rng));
      ref_logp[k] = static_cast<T>(double(logp[k]) + 0.6 * u(rng));
      if (token_adv)
        adv[k] = static_cast<T>(2 * u(rng));
    }
  }
  hir::token_batch_ref<T> tb;
  tb.batch = B, tb.length = L, tb.mask = mask, tb.logp = logp, tb.old_logp = old_logp, tb.ref_logp = ref_logp;
  const auto r = hir::policy_loss(hir::cpu, tb, hir::span<const T>(adv), hir::view(grad), o);
  std::printf("%s{\"dtype\": \"%s\", \"kind\": %d, \"clip_low\": %.17g, \"clip_high\": %.17g, \"dual_clip\": %.17g, ",
              first ? "" : ",\n", sizeof(T) == 4 ? "float32" : "float64", static_cast<int>(o.kind), o.clip_low,
              o.clip_high, o.dual_clip);
  std::printf("\"log_ratio_clamp\": %.17g, \"gspo_log_ratio_max\": %.17g, \"cispo\": %d, \"cispo_cap\": %.17g, ",
              o.log_ratio_clamp, o.gspo_log_ratio_max, static_cast<int>(o.cispo), o.cispo_cap);
  std::printf("\"kl\": %d, \"kl_coef\": %.17g, \"aggregation\": %d, \"normalizer\": %.17g, \"B\": %zu, \"L\": %zu, ",
              static_cast<int>(o.kl), o.kl_coef, static_cast<int>(o.aggregation), r.normalizer, B, L);
  std::printf("\"token_adv\": %s, ", token_adv ? "true" : "false");
  print_array("mask", mask);
  print_array("logp", logp);
  print_array("old_logp", old_logp);
  print_array("ref_logp", ref_logp);
  print_array("adv", adv);
  print_array("grad", grad);
  std::printf("\"loss\": %.17g, \"pg_loss\": %.17g, \"kl_loss\": %.17g, \"clip_fraction\": %.17g, ", r.loss, r.pg_loss,
              r.kl_loss, r.clip_fraction_low + r.clip_fraction_high);
  std::printf("\"dual_clip_fraction\": %.17g, \"approx_kl\": %.17g}", r.dual_clip_fraction, r.approx_kl);
}

} // namespace

int main(int argc, char** argv) {
  std::mt19937_64 rng(argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 20240601ull);
  std::vector<hir::policy_loss_options> kinds;
  hir::policy_loss_options o;
  kinds.push_back(o); // PPO, symmetric, no dual clip
  o.clip_high = 0.28, o.dual_clip = 3.0;
  kinds.push_back(o); // DAPO clip-higher + dual clip (verl vanilla)
  o = hir::presets::verl_gspo_loss();
  kinds.push_back(o);
  kinds.push_back(hir::presets::verl_cispo_loss());
  o = hir::presets::trl_cispo_loss();
  o.cispo_cap = 1.3; // so that the cap is active on these ratios
  kinds.push_back(o);
  o = {};
  o.kind = hir::policy_loss_kind::reinforce;
  kinds.push_back(o);
  std::printf("[\n");
  bool first = true;
  int count = 0;
  for (const auto& k : kinds)
    for (int kl = 0; kl <= static_cast<int>(hir::kl_estimator::k3_st); ++kl)
      for (int agg = 0; agg < 4; ++agg) {
        auto c = k;
        c.kl = static_cast<hir::kl_estimator>(kl);
        c.kl_coef = kl ? 0.25 : 0.0;
        c.aggregation = static_cast<hir::loss_aggregation>(agg);
        if (agg == 3)
          c.normalizer = 50.0; // Dr.GRPO constant
        const bool token_adv = (count++ % 2) == 0;
        emit_case<double>(rng, c, token_adv, first);
        first = false;
        emit_case<float>(rng, c, token_adv, first);
      }
  std::printf("\n]\n");
  return 0;
}
