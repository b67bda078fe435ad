// SPDX-License-Identifier: Apache-2.0
// `compare`: aggregates the runs of several variants × seeds into a markdown table (rollouts to reach held-out ILA
// levels as a ratio to GRPO-ILA, held-out ILA/CLA at equal rollout budgets and at the end, spread across seeds,
// time per step split), a JSON summary and a plot of held-out ILA against rollouts (gnuplot, skipped if absent).
#pragma once

#include "rl.hpp"

#include <cstdlib>
#include <map>

namespace hir::train {

struct mean_spread {
  double mean = NAN, lo = NAN, hi = NAN;
  std::size_t n = 0;
};
inline mean_spread stats(const std::vector<double>& v) {
  mean_spread s;
  for (double x : v) {
    if (std::isnan(x))
      continue;
    s.mean = s.n ? s.mean + x : x;
    s.lo = s.n ? std::min(s.lo, x) : x;
    s.hi = s.n ? std::max(s.hi, x) : x;
    ++s.n;
  }
  if (s.n)
    s.mean /= static_cast<double>(s.n);
  return s;
}
inline std::string fmt(const mean_spread& s, int digits = 3) {
  if (s.n == 0)
    return "–";
  char b[96];
  if (s.n == 1 || s.lo == s.hi)
    std::snprintf(b, sizeof b, "%.*f", digits, s.mean);
  else
    std::snprintf(b, sizeof b, "%.*f [%.*f, %.*f]", digits, s.mean, digits, s.lo, digits, s.hi);
  return b;
}

/// Writes results.md, results.json and the plot into `out`; returns the markdown.
inline std::string write_report(const trainer_config& cfg, const std::vector<run_summary>& runs, const std::string& out,
                                const std::string& command) {
  std::map<std::string, std::vector<const run_summary*>> by;
  std::vector<std::string> order;
  for (const auto& r : runs) {
    if (!by.count(r.variant))
      order.push_back(r.variant);
    by[r.variant].push_back(&r);
  }
  std::ostringstream md;
  std::set<std::uint64_t> seeds;
  for (const auto& r : runs)
    seeds.insert(r.seed);
  md << "Command: `" << command << "`\n\n";
  md << "Seeds: " << seeds.size() << " (";
  for (auto it = seeds.begin(); it != seeds.end(); ++it)
    md << (it == seeds.begin() ? "" : ", ") << *it;
  md << "). Primary metric: held-out **sampled** ILA (T = " << cfg.temperature << ", "
     << cfg.eval_pool * cfg.eval_samples_per_prompt << " responses per evaluation, every " << cfg.eval_every
     << " steps). Values are the mean over seeds with [min, max] across seeds.\n\n";

  // Base model.
  std::vector<double> b_ila, b_cla, b_g;
  std::set<std::uint64_t> seen;
  for (const auto& r : runs)
    if (seen.insert(r.seed).second) {
      b_ila.push_back(r.base.sampled_ila);
      b_cla.push_back(r.base.sampled_cla);
      b_g.push_back(r.base.greedy_ila);
    }
  md << "Base model (warm start): held-out sampled ILA " << fmt(stats(b_ila)) << ", CLA " << fmt(stats(b_cla))
     << ", greedy ILA " << fmt(stats(b_g)) << ".\n\n";

  // Rollouts to reach ILA levels, as a ratio to GRPO-ILA.
  const std::string ref_name = by.count("grpo_ila") ? "grpo_ila" : order.front();
  md << "### Rollouts to first reach a held-out ILA level (ratio to " << ref_name << ", same seed)\n\n| variant |";
  for (double l : cfg.ila_levels)
    md << " ILA ≥ " << l << " |";
  md << "\n|---|";
  for (std::size_t i = 0; i < cfg.ila_levels.size(); ++i)
    md << "---|";
  md << "\n";
  for (const auto& name : order) {
    md << "| " << name << " |";
    for (double l : cfg.ila_levels) {
      std::vector<double> ratios, abs;
      std::size_t never = 0;
      for (const auto* r : by[name]) {
        const auto n = r->rollouts_to_reach(l);
        const run_summary* ref = nullptr;
        for (const auto* q : by[ref_name])
          if (q->seed == r->seed)
            ref = q;
        if (!n) {
          ++never;
          continue;
        }
        abs.push_back(static_cast<double>(n));
        if (ref && ref->rollouts_to_reach(l))
          ratios.push_back(static_cast<double>(n) / static_cast<double>(ref->rollouts_to_reach(l)));
      }
      const auto rs = stats(ratios);
      char b[160];
      if (rs.n)
        std::snprintf(b, sizeof b, " %s× (%.0f)%s |", fmt(rs, 2).c_str(), stats(abs).mean,
                      never ? (" " + std::to_string(never) + " never").c_str() : "");
      else if (abs.size())
        std::snprintf(b, sizeof b, " (%.0f; ref never) |", stats(abs).mean);
      else
        std::snprintf(b, sizeof b, " never |");
      md << b;
    }
    md << "\n";
  }
  md << "\nRatio < 1: fewer rollouts than " << ref_name
     << " (the paper's direction for HiR). In parentheses: mean rollouts; \"never\": runs that did not reach "
        "the level within the budget.\n\n";

  // ILA/CLA at equal budgets and at the end.
  std::vector<std::size_t> budgets;
  for (double f : {0.25, 0.5, 0.75, 1.0})
    budgets.push_back(static_cast<std::size_t>(f * static_cast<double>(cfg.rollout_budget)));
  md << "### Held-out sampled ILA at equal rollout budgets, and final ILA / CLA / greedy ILA\n\n| variant |";
  for (auto b : budgets)
    md << " ILA @ " << b << " |";
  md << " final ILA | final CLA | final greedy ILA |\n|---|";
  for (std::size_t i = 0; i < budgets.size() + 3; ++i)
    md << "---|";
  md << "\n";
  for (const auto& name : order) {
    md << "| " << name << " |";
    for (auto b : budgets) {
      std::vector<double> v;
      for (const auto* r : by[name])
        v.push_back(r->ila_at(b));
      md << " " << fmt(stats(v)) << " |";
    }
    std::vector<double> fi, fc, fg;
    for (const auto* r : by[name]) {
      fi.push_back(r->final.sampled_ila);
      fc.push_back(r->final.sampled_cla);
      fg.push_back(r->final.greedy_ila);
    }
    md << " " << fmt(stats(fi)) << " | " << fmt(stats(fc)) << " | " << fmt(stats(fg)) << " |\n";
  }

  // Time per step.
  md << "\n### Wall time per RL step (seconds, mean over steps and seeds)\n\n"
        "| variant | generate | score | select+replay | reference | advantage+loss | update | total | hir share |\n"
        "|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& name : order) {
    double g = 0, sc = 0, se = 0, re = 0, al = 0, up = 0, steps = 0;
    for (const auto* r : by[name]) {
      g += r->t_generate;
      sc += r->t_score;
      se += r->t_select;
      re += r->t_reference;
      al += r->t_advantage_loss;
      up += r->t_update;
      steps += static_cast<double>(r->steps);
    }
    const double tot = g + sc + se + re + al + up;
    char b[256];
    std::snprintf(b, sizeof b, "| %s | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f | %.2f%% |\n", name.c_str(),
                  g / steps, sc / steps, se / steps, re / steps, al / steps, up / steps, tot / steps,
                  100.0 * (sc + se + al) / tot);
    md << b;
  }
  md << "\n\"hir share\": scoring, selection/replay building and advantage+loss (hir's algorithms) as a share of the "
        "step; the rest is the transformer (generation, reference forward — with hir_recompute's forward of the "
        "replays under their rewritten instructions —, forward+backward+AdamW).\n";

  std::error_code ec;
  std::filesystem::create_directories(out, ec);
  std::ofstream(out + "/results.md") << md.str();

  // JSON and the data behind the plot.
  nlohmann::json j = nlohmann::json::array();
  std::ofstream dat(out + "/curves.dat");
  for (const auto& name : order) {
    // Mean curve across seeds at each evaluation (runs of one variant share evaluation points).
    std::map<std::size_t, std::vector<double>> pts;
    for (const auto* r : by[name]) {
      for (const auto& [ro, ila] : r->curve)
        pts[ro].push_back(ila);
      j.push_back({{"variant", name},
                   {"seed", r->seed},
                   {"final", r->final},
                   {"curve", r->curve},
                   {"curve_cla", r->curve_cla},
                   {"steps", r->steps},
                   {"mean_step_seconds", r->mean_step_seconds}});
    }
    dat << "# " << name << "\n";
    for (const auto& [ro, v] : pts) {
      const auto s = stats(v);
      dat << ro << ' ' << s.mean << ' ' << s.lo << ' ' << s.hi << '\n';
    }
    dat << "\n\n";
  }
  dat.close();
  std::ofstream(out + "/results.json") << j.dump(2) << '\n';

  // Plot with gnuplot when it is installed.
  if (std::system("command -v gnuplot >/dev/null 2>&1") == 0) {
    std::ofstream gp(out + "/plot.gp");
    gp << "set terminal pngcairo size 1000,560 font 'sans,11' noenhanced\nset output '" << out
       << "/ila_vs_rollouts.png'\n"
       << "set title 'Held-out sampled ILA vs rollouts (mean over seeds; bars: min-max)'\n"
       << "set xlabel 'rollouts'\nset ylabel 'held-out sampled ILA'\nset key outside right top\nset grid\n"
       << "plot ";
    for (std::size_t i = 0; i < order.size(); ++i)
      gp << (i ? ", " : "") << "'" << out << "/curves.dat' index " << i << " using 1:2:3:4 with yerrorlines title '"
         << order[i] << "'";
    gp << "\n";
    gp.close();
    if (std::system(("gnuplot '" + out + "/plot.gp' 2>/dev/null").c_str()) != 0)
      md << "\n(gnuplot failed; the plot was not drawn)\n";
    else
      md << "\nPlot: `" << out << "/ila_vs_rollouts.png`\n";
  } else {
    md << "\n(gnuplot is not installed: the plot step was skipped; `apt-get install gnuplot-nox` enables it)\n";
  }
  return md.str();
}

} // namespace hir::train
