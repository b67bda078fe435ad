// SPDX-License-Identifier: Apache-2.0
// Independent double-precision reference implementations used by the tests. Written from the formulas in
// ../shared/docs/rl-reference.md (verl/TRL/OpenRLHF), deliberately naive: groups by id through std::map, no shared
// code with the library. Plain C++ (no Eigen) so the same file compiles under nvcc.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <vector>

namespace hir::ref {

struct group_norm_config {
  enum baseline_t { mean, loo, none } baseline = mean;
  enum scale_t { group, batch, unit } scale = group;
  bool unbiased = true;
  double eps = 1e-6;
  double var_floor = 0.0;
  enum singleton_t { zero, raw, err } singleton = zero;
};

/// Group-relative advantages, naive: group members collected by id, mean and std from their definitions.
inline std::vector<double> group_advantages(const std::vector<double>& s, const std::vector<std::int64_t>& ids,
                                            const group_norm_config& c) {
  std::map<std::int64_t, std::vector<std::size_t>> members;
  for (std::size_t i = 0; i < s.size(); ++i)
    members[ids[i]].push_back(i);
  double bsd = 0;
  if (c.scale == group_norm_config::batch) {
    double m = 0;
    for (double v : s)
      m += v;
    m /= static_cast<double>(s.size());
    double ss = 0;
    for (double v : s)
      ss += (v - m) * (v - m);
    const double dn = c.unbiased ? static_cast<double>(s.size()) - 1 : static_cast<double>(s.size());
    bsd = dn > 0 ? std::sqrt(ss / dn) : NAN;
  }
  std::vector<double> a(s.size());
  for (auto& [id, idx] : members) {
    const double n = static_cast<double>(idx.size());
    if (idx.size() == 1) {
      const std::size_t i = idx[0];
      if (c.singleton != group_norm_config::raw) {
        a[i] = 0;
      } else if (c.baseline == group_norm_config::loo || c.scale == group_norm_config::unit) {
        a[i] = s[i];
      } else if (c.scale == group_norm_config::group) {
        a[i] = s[i] / (1.0 + c.eps);
      } else {
        a[i] = std::isnan(bsd) ? 0.0 : s[i] / (bsd + c.eps);
      }
      continue;
    }
    bool constant = true;
    for (std::size_t i : idx)
      constant = constant && s[i] == s[idx[0]];
    double mu = 0;
    for (std::size_t i : idx)
      mu += s[i];
    mu /= n;
    double ss = 0;
    for (std::size_t i : idx)
      ss += (s[i] - mu) * (s[i] - mu);
    double var = ss / (c.unbiased ? n - 1 : n);
    if (var < c.var_floor)
      var = c.var_floor;
    for (std::size_t i : idx) {
      if (constant) {
        a[i] = 0;
        continue;
      }
      double base = 0;
      if (c.baseline == group_norm_config::mean)
        base = mu;
      if (c.baseline == group_norm_config::loo) {
        double others = 0;
        for (std::size_t j : idx)
          if (j != i)
            others += s[j];
        base = others / (n - 1);
      }
      double d = 1;
      if (c.scale == group_norm_config::group)
        d = std::sqrt(var) + c.eps;
      if (c.scale == group_norm_config::batch)
        d = bsd + c.eps;
      a[i] = (s[i] - base) / d;
    }
  }
  return a;
}

// ---- REINFORCE++ (verl compute_reinforce_plus_plus_outcome_advantage / _baseline_, OpenRLHF reinforce[_baseline]) --

struct reinforce_config {
  double gamma = 1.0;
  double beta = 0.0;
  enum kl_t { k1, abs_kl, k2, k3 } kl = k1;
  bool clamp_every_estimator = false; // OpenRLHF: every estimator clamped to [-10, 10]
  enum baseline_t { none, score_mean, return_mean } baseline = none;
  bool singleton_raw = true; // groups of one: mean 0 (verl) or the member's own value
  enum whiten_t { no_whitening, standard, center_only, keep_mean } whiten = standard;
  bool unbiased = true;
  bool eps_added = true; // rsqrt(var + eps) (verl) or rsqrt(max(var, eps)) (OpenRLHF)
  double eps = 1e-8;
};

/// Naive REINFORCE++: the token-reward matrix is built explicitly, returns are computed column by column over all
/// rows at once (verl's loop), whitening with masked sums over the whole batch. `ids` groups the rows.
inline std::vector<double> reinforce_pp(const std::vector<double>& score, const std::vector<std::uint8_t>& mask,
                                        const std::vector<double>& old_lp, const std::vector<double>& ref_lp,
                                        std::size_t B, std::size_t L, const std::vector<std::int64_t>& ids,
                                        const reinforce_config& c) {
  auto at = [L](std::size_t i, std::size_t t) { return i * L + t; };
  std::vector<double> kl(B * L, 0.0);
  if (c.beta > 0)
    for (std::size_t k = 0; k < B * L; ++k) {
      const double d = old_lp.empty() ? 0.0 : old_lp[k] - ref_lp[k];
      double v = d;
      if (c.kl == reinforce_config::abs_kl)
        v = std::fabs(d);
      if (c.kl == reinforce_config::k2)
        v = 0.5 * d * d;
      if (c.kl == reinforce_config::k3) {
        const double x = std::min(20.0, std::max(-20.0, -d)); // verl: clamp(ref - logp, -20, 20)
        v = std::min(10.0, std::exp(x) - x - 1.0);
      }
      if (c.clamp_every_estimator)
        v = std::min(10.0, std::max(-10.0, v));
      kl[k] = v * mask[k];
    }
  // Centred scores per group (std::map of ids).
  std::vector<double> s = score;
  std::map<std::int64_t, std::vector<std::size_t>> members;
  for (std::size_t i = 0; i < B; ++i)
    members[ids.empty() ? 0 : ids[i]].push_back(i);
  if (c.baseline != reinforce_config::none) {
    if (c.baseline == reinforce_config::return_mean)
      for (std::size_t i = 0; i < B; ++i)
        for (std::size_t t = 0; t < L; ++t)
          s[i] -= c.beta * kl[at(i, t)];
    std::vector<double> centred(B);
    for (auto& [id, idx] : members) {
      double mu = 0;
      for (std::size_t i : idx)
        mu += s[i];
      mu /= static_cast<double>(idx.size());
      if (idx.size() == 1)
        mu = c.singleton_raw ? 0.0 : s[idx[0]];
      for (std::size_t i : idx)
        centred[i] = s[i] - mu;
    }
    s = centred;
  }
  std::vector<double> values(B * L, 0.0);
  if (c.baseline == reinforce_config::return_mean) {
    for (std::size_t i = 0; i < B; ++i)
      for (std::size_t t = 0; t < L; ++t)
        values[at(i, t)] = s[i] * mask[at(i, t)];
  } else {
    std::vector<double> r(B * L, 0.0);
    for (std::size_t i = 0; i < B; ++i) {
      long long last = -1;
      for (std::size_t t = 0; t < L; ++t)
        if (mask[at(i, t)])
          last = static_cast<long long>(t);
      for (std::size_t t = 0; t < L; ++t)
        r[at(i, t)] = (static_cast<long long>(t) == last ? s[i] : 0.0) - c.beta * kl[at(i, t)];
    }
    std::vector<double> running(B, 0.0);
    for (std::size_t t = L; t-- > 0;)
      for (std::size_t i = 0; i < B; ++i) {
        running[i] = r[at(i, t)] + c.gamma * running[i];
        values[at(i, t)] = running[i];
        running[i] *= mask[at(i, t)];
      }
  }
  if (c.whiten == reinforce_config::no_whitening) {
    for (std::size_t k = 0; k < B * L; ++k)
      values[k] *= mask[k];
    return values;
  }
  double n = 0, sum = 0;
  for (std::size_t k = 0; k < B * L; ++k) {
    n += mask[k];
    sum += values[k] * mask[k];
  }
  const double mean = sum / n;
  double ss = 0;
  for (std::size_t k = 0; k < B * L; ++k)
    ss += (values[k] - mean) * (values[k] - mean) * mask[k];
  const double var = ss / (c.unbiased ? n - 1 : n);
  const double rs = 1.0 / std::sqrt(c.eps_added ? var + c.eps : std::max(var, c.eps));
  std::vector<double> a(B * L, 0.0);
  for (std::size_t k = 0; k < B * L; ++k) {
    double v = values[k] - mean;
    if (c.whiten == reinforce_config::standard)
      v *= rs;
    if (c.whiten == reinforce_config::keep_mean)
      v = v * rs + mean;
    a[k] = v * mask[k];
  }
  return a;
}

// ---- Per-constraint normalization (GDPO, TRL normalize_then_sum) ------------------------------------------------

struct gdpo_config {
  double eps = 1e-4;
  bool unbiased = true;
  enum singleton_t { zero, raw } singleton = zero;
  bool batch_normalize = true;
  double batch_eps = 1e-4;
  bool batch_unbiased = true;
};

/// Naive GDPO: `v[i]` holds sample i's verdicts (one bool per constraint), `ids` its group, `w` the slot weights
/// (empty: 1). Each constraint column of a group is z-scored from its definition.
inline std::vector<double> gdpo(const std::vector<std::vector<bool>>& v, const std::vector<std::int64_t>& ids,
                                const std::vector<double>& w, const gdpo_config& c) {
  const std::size_t n = v.size();
  std::map<std::int64_t, std::vector<std::size_t>> members;
  for (std::size_t i = 0; i < n; ++i)
    members[ids[i]].push_back(i);
  std::vector<double> r(n, 0.0);
  for (auto& [id, idx] : members) {
    const std::size_t nc = v[idx[0]].size();
    for (std::size_t k = 0; k < nc; ++k) {
      const double wk = w.empty() ? 1.0 : w[k];
      if (idx.size() == 1) {
        if (c.singleton == gdpo_config::raw)
          r[idx[0]] += wk * (v[idx[0]][k] ? 1.0 : 0.0) / (1.0 + c.eps);
        continue;
      }
      std::vector<double> col;
      for (std::size_t i : idx)
        col.push_back(v[i][k] ? 1.0 : 0.0);
      double mu = 0;
      for (double x : col)
        mu += x;
      mu /= static_cast<double>(col.size());
      double ss = 0;
      bool constant = true;
      for (double x : col) {
        ss += (x - mu) * (x - mu);
        constant = constant && x == col[0];
      }
      const double sd = std::sqrt(ss / (c.unbiased ? col.size() - 1.0 : static_cast<double>(col.size())));
      for (std::size_t j = 0; j < idx.size(); ++j)
        r[idx[j]] += constant ? 0.0 : wk * (col[j] - mu) / (sd + c.eps);
    }
  }
  if (!c.batch_normalize)
    return r;
  double mean = 0;
  for (double x : r)
    mean += x;
  mean /= static_cast<double>(n);
  double ss = 0;
  bool constant = true;
  for (double x : r) {
    ss += (x - mean) * (x - mean);
    constant = constant && x == r[0];
  }
  const double dn = c.batch_unbiased ? static_cast<double>(n) - 1.0 : static_cast<double>(n);
  std::vector<double> a(n, 0.0);
  if (constant || dn <= 0)
    return a;
  const double sd = std::sqrt(ss / dn);
  for (std::size_t i = 0; i < n; ++i)
    a[i] = (r[i] - mean) / (sd + c.batch_eps);
  return a;
}

// ---- Rewards from verdict vectors (hir/rewards/reward_vector.hpp) ------------------------------------------------

/// 1 if every constraint is met (also for no constraints), else 0.
inline double instruction_reward(const std::vector<bool>& v) {
  for (bool b : v)
    if (!b)
      return 0.0;
  return 1.0;
}

/// Fraction of constraints met (1 for no constraints).
inline double constraint_reward(const std::vector<bool>& v) {
  if (v.empty())
    return 1.0;
  double met = 0;
  for (bool b : v)
    met += b ? 1.0 : 0.0;
  return met / static_cast<double>(v.size());
}

/// Weighted fraction Σ w v / Σ w (1 for no constraints).
inline double weighted_constraint_reward(const std::vector<bool>& v, const std::vector<double>& w) {
  if (v.empty())
    return 1.0;
  double met = 0, all = 0;
  for (std::size_t c = 0; c < v.size(); ++c) {
    all += w[c];
    met += v[c] ? w[c] : 0.0;
  }
  return met / all;
}

/// Per group (by id, in order of first appearance) and slot c < stride: fraction of members meeting c.
inline std::vector<double> satisfaction_rates(const std::vector<std::vector<bool>>& v,
                                              const std::vector<std::int64_t>& ids, std::size_t stride) {
  std::vector<std::int64_t> order;
  std::map<std::int64_t, std::vector<std::size_t>> members;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (members.find(ids[i]) == members.end())
      order.push_back(ids[i]);
    members[ids[i]].push_back(i);
  }
  std::vector<double> out;
  for (std::int64_t id : order) {
    const auto& idx = members[id];
    for (std::size_t c = 0; c < stride; ++c) {
      double met = 0;
      for (std::size_t i : idx)
        met += c < v[i].size() && v[i][c] ? 1.0 : 0.0;
      out.push_back(met / static_cast<double>(idx.size()));
    }
  }
  return out;
}

} // namespace hir::ref
