// SPDX-License-Identifier: Apache-2.0
// Independent double-precision reference implementations used by the tests. Written from the formulas in
// ../shared/docs/rl-reference.md (verl/TRL/OpenRLHF), deliberately naive: groups by id through std::map, no shared
// code with the library. Plain C++ (no Eigen) so the same file compiles under nvcc.
#pragma once

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

} // namespace hir::ref
