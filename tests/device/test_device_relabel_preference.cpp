// SPDX-License-Identifier: Apache-2.0
// The device backend against the CPU backend on the same random inputs for hindsight replay batches and the
// dual-level preference losses: build_replay_batch (ragged and shuffled groups, every grouping × placement × old/ref
// log-prob source × importance level, scores/tokens/ref/constraint counts present or not, masks with holes and
// garbage at masked positions, empty selections, reuse of an output batch), hindsight_advantages and
// weight_advantages, sequence_logp(_backward), build_preference_pairs (arbitrary prompt ids, both pairings, both
// levels, thresholds) and preference_loss (DPO with label smoothing and IPO, with and without reference, rows in
// several pairs, float and double), plus identical error messages on bad input with outputs left untouched. This TU
// includes the CPU backend's relabel and preference headers next to <hir/device.hpp>: they are plain C++ (no Eigen),
// so it compiles with nvcc too.
//
// Tolerances (documented in docs/device.md): the batch's integer fields, rewards, links, groups, copied log-probs
// (bit for bit, garbage included), pairs and pair counts are identical; token-level importance weights agree to
// 1e-14 relative (device exp), sequence-level ones to 1e-13 relative (the per-replay log-ratio sums associate
// differently); sequence_logp to 1e-13 relative + 1e-13 (double) and 2 float ulps (float: both sum in double);
// preference_loss values and margins to 1e-12 relative + 1e-14, accuracies exactly; its gradient to 1e-12 ·
// max|g| (double) and 1e-6 · max|g| (float); hindsight advantages as REINFORCE++ / group advantages (1e-11 ·
// (max|A| + 1) + 1e-11 relative).
// Order: the device umbrella first (Thrust's configuration decides HIR_DEVICE_IS_CUDA), then the CPU tag, whose
// to_backend/view overloads must be declared before the test helpers' templates that call them.
#include <hir/device.hpp>

#include <hir/backend/cpu/tag.hpp>

#include <hir/backend/cpu/preference.hpp>
#include <hir/backend/cpu/relabel.hpp>

#include "relabel/relabel_support.hpp"
#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/seed.hpp"

#if defined(__CUDACC__) && defined(EIGEN_WORLD_VERSION)
#  error "Eigen must not reach a CUDA translation unit"
#endif

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using cpu_be = hir::backend::cpu::tag_t;
using device_be = hir::backend::device::tag_t;
using i64 = std::vector<std::int64_t>;

using hir::test::max_abs;
using hir::test::what_of;

/// Bitwise equality (NaN garbage copied through compares equal).
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

double garbage(std::mt19937_64& rng) {
  const double g[] = {std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity(),
                      -std::numeric_limits<double>::infinity(), 1e300};
  return g[rng() % 4];
}

/// Random rollouts: B prompts with 1..7 responses each (ragged), optionally shuffled across the batch; 1..12
/// constraints per prompt; verdicts mixing successes, all-failed and partial responses; valid prefixes with holes
/// (some rows empty unless `nonempty`), garbage at masked positions; scores, tokens, ref_logp and constraint
/// counts present or not.
hir::test::host_rollouts ragged_rollouts(std::mt19937_64& rng, std::size_t B, std::size_t L, bool shuffle, bool scores,
                                         bool tokens, bool ref, bool counts, bool nonempty) {
  hir::test::host_rollouts r;
  r.B = B;
  r.L = L;
  std::uniform_real_distribution<double> lp(-4.0, 0.0), u(0.0, 1.0);
  std::vector<std::uint8_t> n_of(B);
  std::vector<std::size_t> order;
  for (std::size_t p = 0; p < B; ++p) {
    n_of[p] = static_cast<std::uint8_t>(1 + rng() % 12);
    const std::size_t m = 1 + rng() % 7;
    for (std::size_t k = 0; k < m; ++k)
      order.push_back(p);
  }
  if (shuffle)
    std::shuffle(order.begin(), order.end(), rng);
  r.N = order.size();
  for (std::size_t i = 0; i < r.N; ++i) {
    const std::size_t p = order[i];
    const unsigned n = n_of[p];
    std::uint64_t v = 0;
    const auto kind = rng() % 5;
    if (kind == 0)
      v = (1ull << n) - 1;
    else if (kind != 1)
      for (unsigned c = 0; c < n; ++c)
        v |= static_cast<std::uint64_t>(rng() % 2) << c;
    r.prompt.push_back(static_cast<std::int64_t>(p));
    r.masks.push_back(v);
    r.counts.push_back(static_cast<std::uint8_t>(n));
    if (scores)
      r.scores.push_back(u(rng));
    const std::size_t len = (!nonempty && rng() % 9 == 0) ? 0 : 1 + rng() % L;
    const bool holes = rng() % 2 == 0;
    for (std::size_t t = 0; t < L; ++t) {
      const bool valid = t < len && !(holes && t > 0 && rng() % 4 == 0);
      r.mask.push_back(valid ? 1 : 0);
      r.tokens.push_back(static_cast<std::int32_t>(rng() % 50000));
      r.old_logp.push_back(valid ? lp(rng) : garbage(rng));
      r.ref_logp.push_back(valid ? lp(rng) : garbage(rng));
      r.entropy.push_back(u(rng));
    }
  }
  if (!tokens)
    r.tokens.clear();
  if (!ref)
    r.ref_logp.clear();
  if (counts)
    r.constraint_counts = n_of;
  return r;
}

bool eligible_row(const hir::test::host_rollouts& h, std::size_t i) {
  const int met = hir::test::met_count(h.masks[i], h.counts[i]);
  bool any = false;
  for (std::size_t t = 0; t < h.L; ++t)
    any = any || h.mask[i * h.L + t];
  return any && met > 0 && met < static_cast<int>(h.counts[i]);
}

/// A random subset of the eligible non-empty responses, in random order (possibly none).
i64 random_replays(std::mt19937_64& rng, const hir::test::host_rollouts& h) {
  i64 idx;
  if (rng() % 6 == 0)
    return idx;
  for (std::size_t i = 0; i < h.N; ++i)
    if (eligible_row(h, i) && rng() % 3 != 0)
      idx.push_back(static_cast<std::int64_t>(i));
  std::shuffle(idx.begin(), idx.end(), rng);
  return idx;
}

/// Recomputed log-probs for the replays (garbage at the sources' masked positions).
std::vector<double> random_recomputed(std::mt19937_64& rng, const hir::test::host_rollouts& h, const i64& idx) {
  std::uniform_real_distribution<double> lp(-4.0, 0.0);
  std::vector<double> v;
  for (auto i : idx)
    for (std::size_t t = 0; t < h.L; ++t)
      v.push_back(h.mask[static_cast<std::size_t>(i) * h.L + t] ? lp(rng) : garbage(rng));
  return v;
}

/// The same build on one backend.
template <class B>
struct built {
  hir::replay_batch<double, B> batch;
  std::string error;
};

template <class B>
void build_into(const hir::test::host_rollouts& h, const i64& idx, const hir::replay_batch_options& o,
                const std::vector<double>& rec_old, const std::vector<double>& rec_ref,
                hir::replay_batch<double, B>& out, std::string& error) {
  hir::test::backend_rollouts<B> r(h);
  const auto d_idx = hir::test::upload<B>(idx);
  const auto d_old = hir::test::upload<B>(rec_old), d_ref = hir::test::upload<B>(rec_ref);
  hir::replay_logp_ref<double, hir::memory_space_t<B>> rec{hir::view(d_old), hir::view(d_ref)};
  error = what_of([&] {
    hir::build_replay_batch(B{}, r.ref(), hir::span_for<const std::int64_t, B>(hir::view(d_idx)), out, o, rec);
  });
}

/// Every field of the device batch equals the CPU batch (weights within the stated tolerances).
void check_same_batch(const hir::replay_batch<double, cpu_be>& c, const hir::replay_batch<double, device_be>& d,
                      const hir::replay_batch_options& o) {
  CHECK(d.batch == c.batch);
  CHECK(d.length == c.length);
  CHECK(d.num_prompts == c.num_prompts);
  CHECK(d.num_originals == c.num_originals);
  CHECK(d.num_replays == c.num_replays);
  CHECK(hir::to_host(d.prompt) == c.prompt);
  CHECK(hir::to_host(d.constraint_mask) == c.constraint_mask);
  CHECK(hir::to_host(d.constraint_count) == c.constraint_count);
  CHECK(same_bits(hir::to_host(d.reward), c.reward));
  CHECK(hir::to_host(d.is_replay) == c.is_replay);
  CHECK(hir::to_host(d.origin) == c.origin);
  CHECK(hir::to_host(d.source_row) == c.source_row);
  CHECK(hir::to_host(d.replay_row) == c.replay_row);
  CHECK(hir::to_host(d.group) == c.group);
  CHECK(hir::to_host(d.tokens) == c.tokens);
  CHECK(hir::to_host(d.mask) == c.mask);
  CHECK(same_bits(hir::to_host(d.old_logp), c.old_logp));
  CHECK(same_bits(hir::to_host(d.ref_logp), c.ref_logp));
  const double rel = o.importance == hir::importance_level::token ? 1e-14 : 1e-13;
  REQUIRE(d.weight.size() == c.weight.size());
  HIR_CHECK_CLOSE(hir::to_host(d.weight), c.weight, 0.0, rel);
}

} // namespace

TEST_CASE("device vs cpu: build_replay_batch on random ragged batches, every option") {
  std::mt19937_64 rng(hir::test::seed(501));
  int replays_seen = 0, empty_selections = 0;
  for (int trial = 0; trial < 48; ++trial) {
    CAPTURE(trial);
    const std::size_t B = 1 + rng() % 9, L = 1 + rng() % 12;
    const auto h = ragged_rollouts(rng, B, L, trial % 2 == 1, trial % 3 == 0, trial % 4 != 3, trial % 5 != 4,
                                   trial % 2 == 0, false);
    const i64 idx = random_replays(rng, h);
    replays_seen += static_cast<int>(idx.size());
    empty_selections += idx.empty() ? 1 : 0;
    const auto rec_old = random_recomputed(rng, h, idx), rec_ref = random_recomputed(rng, h, idx);
    hir::replay_batch_options o;
    o.grouping = static_cast<hir::replay_grouping>(trial % 3);
    o.placement = static_cast<hir::replay_placement>((trial / 3) % 2);
    o.old_logp = static_cast<hir::replay_old_logp>((trial / 6) % 3);
    o.importance = static_cast<hir::importance_level>((trial / 2) % 2);
    o.importance_cap = 0.5 + static_cast<double>(rng() % 4);
    o.ref_logp = h.ref_logp.empty() || trial % 4 == 1 ? hir::replay_ref_logp::copy_from_source
                                                      : hir::replay_ref_logp::recomputed;
    o.replay_reward = trial % 7 == 0 ? 0.75 : 1.0;
    CAPTURE(static_cast<int>(o.grouping));
    CAPTURE(static_cast<int>(o.placement));
    CAPTURE(static_cast<int>(o.old_logp));
    CAPTURE(static_cast<int>(o.ref_logp));
    hir::replay_batch<double, cpu_be> c;
    hir::replay_batch<double, device_be> d;
    std::string ec, ed;
    build_into<cpu_be>(h, idx, o, rec_old, rec_ref, c, ec);
    build_into<device_be>(h, idx, o, rec_old, rec_ref, d, ed);
    REQUIRE(ec == "");
    REQUIRE(ed == "");
    check_same_batch(c, d, o);
    // reuse: the same output batch with another (smaller or larger) input gives the fresh result
    const auto h2 = ragged_rollouts(rng, 1 + rng() % 5, 1 + rng() % 8, true, false, trial % 2 == 0, true, false, false);
    const i64 idx2 = random_replays(rng, h2);
    hir::replay_batch_options o2;
    o2.grouping = hir::replay_grouping::own_group;
    build_into<cpu_be>(h2, idx2, o2, {}, {}, c, ec);
    build_into<device_be>(h2, idx2, o2, {}, {}, d, ed);
    REQUIRE(ec == "");
    REQUIRE(ed == "");
    check_same_batch(c, d, o2);
  }
  CHECK(replays_seen > 50);
  CHECK(empty_selections > 0);
}

TEST_CASE("device vs cpu: build_replay_batch errors are identical and leave the batch untouched") {
  std::mt19937_64 rng(hir::test::seed(502));
  int errors = 0;
  for (int trial = 0; trial < 120; ++trial) {
    CAPTURE(trial);
    const std::size_t B = 1 + rng() % 6, L = 1 + rng() % 6;
    auto h = ragged_rollouts(rng, B, L, true, trial % 3 == 0, true, trial % 2 == 0, trial % 4 < 2, false);
    i64 idx = random_replays(rng, h);
    hir::replay_batch_options o;
    o.old_logp = static_cast<hir::replay_old_logp>(trial % 3);
    o.ref_logp = !h.ref_logp.empty() && trial % 5 < 2 ? hir::replay_ref_logp::recomputed
                                                      : hir::replay_ref_logp::copy_from_source;
    auto rec_old = random_recomputed(rng, h, idx), rec_ref = random_recomputed(rng, h, idx);
    // one to three corruptions, so that the first issue in the CPU's order must be found
    const int corruptions = 1 + static_cast<int>(rng() % 3);
    for (int c = 0; c < corruptions; ++c) {
      const std::size_t i = rng() % h.N, t = rng() % L;
      switch (rng() % 11) {
      case 0:
        h.prompt[i] = rng() % 2 ? -1 : static_cast<std::int64_t>(B);
        break;
      case 1:
        h.counts[i] = static_cast<std::uint8_t>(h.counts[i] + 1);
        break;
      case 2:
        if (!h.scores.empty())
          h.scores[i] = std::nan("");
        break;
      case 3:
        h.mask[i * L + t] = 2;
        break;
      case 4:
        if (h.mask[i * L + t])
          (rng() % 2 || h.ref_logp.empty() ? h.old_logp : h.ref_logp)[i * L + t] = garbage(rng);
        break;
      case 5:
        idx.push_back(static_cast<std::int64_t>(rng() % (2 * h.N)) - 1);
        break;
      case 6:
        if (!idx.empty())
          idx.push_back(idx[rng() % idx.size()]);
        break;
      case 7:
        idx.push_back(static_cast<std::int64_t>(i)); // may be ineligible, empty or repeated
        break;
      case 8:
        if (!rec_old.empty())
          rec_old[rng() % rec_old.size()] = garbage(rng);
        break;
      case 9:
        if (!rec_ref.empty())
          rec_ref[rng() % rec_ref.size()] = garbage(rng);
        break;
      default:
        for (std::size_t s = 0; s < L; ++s) // an empty response
          h.mask[i * L + s] = 0;
        break;
      }
    }
    // recomputed rows for the indices added above (so the size check passes and the row checks run)
    while (rec_old.size() < idx.size() * L)
      rec_old.push_back(-1.0);
    while (rec_ref.size() < idx.size() * L)
      rec_ref.push_back(-1.0);
    if (idx.size() > h.N)
      idx.resize(h.N);
    rec_old.resize(idx.size() * L);
    rec_ref.resize(idx.size() * L);
    // outputs start from a previous batch, which a failed call must leave as it is
    const auto h0 = ragged_rollouts(rng, 2, 3, false, false, true, true, true, true);
    hir::replay_batch<double, cpu_be> c;
    hir::replay_batch<double, device_be> d;
    std::string ec, ed;
    build_into<cpu_be>(h0, {}, {}, {}, {}, c, ec);
    build_into<device_be>(h0, {}, {}, {}, {}, d, ed);
    REQUIRE(ed == "");
    const auto before_old = hir::to_host(d.old_logp);
    const auto before_prompt = hir::to_host(d.prompt);
    build_into<cpu_be>(h, idx, o, rec_old, rec_ref, c, ec);
    build_into<device_be>(h, idx, o, rec_old, rec_ref, d, ed);
    CHECK(ed == ec);
    if (!ec.empty()) {
      ++errors;
      CHECK(d.batch == h0.N);
      CHECK(same_bits(hir::to_host(d.old_logp), before_old));
      CHECK(hir::to_host(d.prompt) == before_prompt);
    } else {
      check_same_batch(c, d, o);
    }
  }
  CHECK(errors > 60);
}

TEST_CASE("device vs cpu: hindsight_advantages and weight_advantages") {
  std::mt19937_64 rng(hir::test::seed(503));
  for (int trial = 0; trial < 24; ++trial) {
    CAPTURE(trial);
    // at least two prompts: two valid tokens, which REINFORCE++'s unbiased whitening needs
    const std::size_t B = 2 + rng() % 6, L = 1 + rng() % 10;
    const auto h = ragged_rollouts(rng, B, L, trial % 2 == 0, trial % 3 == 0, true, true, true, true);
    const i64 idx = random_replays(rng, h);
    const auto rec_old = random_recomputed(rng, h, idx);
    auto opt = hir::presets::hir_paper_code();
    opt.batch.grouping = static_cast<hir::replay_grouping>(trial % 3);
    opt.batch.old_logp = trial % 4 < 2 ? hir::replay_old_logp::truncated_is : hir::replay_old_logp::copy_from_source;
    opt.batch.importance = static_cast<hir::importance_level>(trial % 2);
    opt.batch.importance_cap = 1.5;
    if (trial % 2 == 1) {
      opt.estimator = hir::hindsight_advantage::group_relative;
      opt.group = hir::presets::verl_grpo();
      opt.group.singleton = hir::singleton_policy::zero;
    }
    hir::replay_batch<double, cpu_be> c;
    hir::replay_batch<double, device_be> d;
    std::string ec, ed;
    build_into<cpu_be>(h, idx, opt.batch, rec_old, {}, c, ec);
    build_into<device_be>(h, idx, opt.batch, rec_old, {}, d, ed);
    REQUIRE(ec == "");
    REQUIRE(ed == "");
    const auto ac = hir::hindsight_advantages(hir::cpu, c, opt);
    const auto ad = hir::to_host(hir::hindsight_advantages(hir::device, d, opt));
    REQUIRE(ad.size() == ac.size());
    HIR_CHECK_CLOSE(ad, ac, 1e-11 * (max_abs(ac) + 1), 1e-11);
  }
  // weight_advantages: one product per element, identical; the same message for a bad weight
  std::uniform_real_distribution<double> u(-2, 2), w(0, 2);
  const std::size_t R = 7, L = 5;
  std::vector<double> a_seq(R), a_tok(R * L), wt(R * L);
  for (auto& x : a_seq)
    x = u(rng);
  for (auto& x : a_tok)
    x = u(rng);
  for (auto& x : wt)
    x = w(rng);
  for (const auto* a : {&a_seq, &a_tok}) {
    std::vector<double> oc(R * L);
    hir::weight_advantages(hir::cpu, hir::span<const double>(hir::view(*a)), hir::span<const double>(hir::view(wt)), L,
                           hir::view(oc));
    const auto da = hir::to_backend(hir::device, *a), dw = hir::to_backend(hir::device, wt);
    thrust::device_vector<double> od(R * L);
    hir::weight_advantages(hir::device, hir::view(da), hir::view(dw), L, hir::view(od));
    CHECK(hir::to_host(od) == oc);
  }
  for (double bad : {-0.5, std::nan(""), std::numeric_limits<double>::infinity()}) {
    auto wb = wt;
    wb[13] = bad;
    wb[21] = -1;
    std::vector<double> oc(R * L, 7.0);
    const auto ec = what_of([&] {
      hir::weight_advantages(hir::cpu, hir::span<const double>(hir::view(a_seq)),
                             hir::span<const double>(hir::view(wb)), L, hir::view(oc));
    });
    const auto da = hir::to_backend(hir::device, a_seq), dw = hir::to_backend(hir::device, wb);
    thrust::device_vector<double> od(R * L, 7.0);
    const auto ed =
        what_of([&] { hir::weight_advantages(hir::device, hir::view(da), hir::view(dw), L, hir::view(od)); });
    CHECK(ec != "");
    CHECK(ed == ec);
    CHECK(hir::to_host(od) == std::vector<double>(R * L, 7.0));
  }
}

namespace {

template <class T>
void sequence_logp_case(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> lp(-6.0, 0.0);
  for (int trial = 0; trial < 12; ++trial) {
    CAPTURE(trial);
    const std::size_t R = 1 + rng() % 40, L = 1 + rng() % (trial % 4 == 0 ? 700 : 20);
    std::vector<T> logp(R * L), gseq(R);
    std::vector<std::uint8_t> mask(R * L);
    for (std::size_t r = 0; r < R; ++r) {
      const std::size_t len = r % 6 == 5 ? 0 : 1 + rng() % L;
      for (std::size_t t = 0; t < L; ++t) {
        const bool valid = t < len && rng() % 5 != 0;
        mask[r * L + t] = valid ? 1 : 0;
        logp[r * L + t] = valid ? static_cast<T>(lp(rng)) : static_cast<T>(garbage(rng));
      }
      gseq[r] = static_cast<T>(lp(rng) + 3.0);
    }
    const auto dl = hir::to_backend(hir::device, logp), dg = hir::to_backend(hir::device, gseq);
    const auto dm = hir::to_backend(hir::device, mask);
    for (auto red : {hir::sequence_reduction::sum, hir::sequence_reduction::mean}) {
      std::vector<T> sc(R), tc(R * L);
      hir::sequence_logp(hir::cpu, hir::span<const T>(hir::view(logp)), hir::span<const std::uint8_t>(hir::view(mask)),
                         L, hir::view(sc), red);
      thrust::device_vector<T> sd(R), td(R * L, T(5));
      hir::sequence_logp(hir::device, hir::view(dl), hir::view(dm), L, hir::view(sd), red);
      if (std::is_same<T, double>::value)
        HIR_CHECK_CLOSE(hir::to_host(sd), sc, 1e-13, 1e-13);
      else
        HIR_CHECK_CLOSE(hir::to_host(sd), sc, 0.0, 2.5e-7);
      hir::sequence_logp_backward(hir::cpu, hir::span<const T>(hir::view(gseq)),
                                  hir::span<const std::uint8_t>(hir::view(mask)), L, hir::view(tc), red);
      hir::sequence_logp_backward(hir::device, hir::view(dg), hir::view(dm), L, hir::view(td), red);
      CHECK(hir::to_host(td) == tc); // the same product per token
    }
    // errors: a mask entry of 2 after a NaN on a valid token (the row order decides), a non-finite grad_seq
    auto m2 = mask;
    auto l2 = logp;
    const std::size_t a = rng() % (R * L), b = rng() % (R * L);
    m2[a] = 2;
    m2[b] = 1;
    l2[b] = std::numeric_limits<T>::quiet_NaN();
    std::vector<T> sc(R, T(9));
    const auto ec = what_of([&] {
      hir::sequence_logp(hir::cpu, hir::span<const T>(hir::view(l2)), hir::span<const std::uint8_t>(hir::view(m2)), L,
                         hir::view(sc));
    });
    const auto dl2 = hir::to_backend(hir::device, l2);
    const auto dm2 = hir::to_backend(hir::device, m2);
    thrust::device_vector<T> sd(R, T(9));
    const auto ed = what_of([&] { hir::sequence_logp(hir::device, hir::view(dl2), hir::view(dm2), L, hir::view(sd)); });
    CHECK(ec != "");
    CHECK(ed == ec);
    CHECK(hir::to_host(sd) == std::vector<T>(R, T(9)));
    auto g2 = gseq;
    g2[rng() % R] = std::numeric_limits<T>::infinity();
    const auto dg2 = hir::to_backend(hir::device, g2);
    std::vector<T> tc(R * L);
    thrust::device_vector<T> td(R * L);
    CHECK(what_of([&] { hir::sequence_logp_backward(hir::device, hir::view(dg2), hir::view(dm), L, hir::view(td)); }) ==
          what_of([&] {
            hir::sequence_logp_backward(hir::cpu, hir::span<const T>(hir::view(g2)),
                                        hir::span<const std::uint8_t>(hir::view(mask)), L, hir::view(tc));
          }));
    CHECK(what_of([&] { hir::sequence_logp_backward(hir::device, hir::view(dg), hir::view(dm2), L, hir::view(td)); }) ==
          what_of([&] {
            hir::sequence_logp_backward(hir::cpu, hir::span<const T>(hir::view(gseq)),
                                        hir::span<const std::uint8_t>(hir::view(m2)), L, hir::view(tc));
          }));
  }
}

} // namespace

TEST_CASE("device vs cpu: sequence_logp and its token gradient (float and double)") {
  std::mt19937_64 rng(hir::test::seed(504));
  sequence_logp_case<double>(rng);
  sequence_logp_case<float>(rng);
}

namespace {

using hir::test::pair_rows;

/// Random rows: prompt ids from a small arbitrary set (negative, large, unsorted), originals and replays of them,
/// rewards from {0, 0.5, 1, random}.
pair_rows random_pair_rows(std::mt19937_64& rng, std::size_t R) {
  const std::int64_t ids[] = {7, -3, 1000000007, 0, 42, -1, 5};
  const std::size_t np = 1 + rng() % 7;
  pair_rows h;
  std::uniform_real_distribution<double> u(0, 1);
  for (std::size_t r = 0; r < R; ++r) {
    const std::int64_t p = ids[rng() % np];
    // a replay needs an earlier original of its prompt
    std::int64_t src = -1;
    if (rng() % 3 == 0)
      for (std::size_t s = 0; s < r; ++s)
        if (!h.is_replay[s] && h.prompt[s] == p && rng() % 2 == 0)
          src = static_cast<std::int64_t>(s);
    const double rw[] = {0.0, 0.5, 1.0, u(rng)};
    h.prompt.push_back(p);
    h.reward.push_back(src >= 0 ? 1.0 : rw[rng() % 4]);
    h.is_replay.push_back(src >= 0 ? 1 : 0);
    h.source_row.push_back(src >= 0 ? src : static_cast<std::int64_t>(r));
  }
  return h;
}

/// Pairs of h on backend B into out; the error message, or "" on success.
template <class B>
std::string pairs_of(const pair_rows& h, const hir::preference_pair_options& o, hir::preference_pairs<B>& out) {
  return what_of([&] { out = hir::test::pairs_of<B>(h, o); });
}

void check_same_pairs(const hir::preference_pairs<cpu_be>& c, const hir::preference_pairs<device_be>& d) {
  CHECK(d.num_response == c.num_response);
  CHECK(d.num_instruction == c.num_instruction);
  CHECK(hir::to_host(d.chosen) == c.chosen);
  CHECK(hir::to_host(d.rejected) == c.rejected);
  CHECK(hir::to_host(d.level) == c.level);
}

} // namespace

TEST_CASE("device vs cpu: build_preference_pairs") {
  std::mt19937_64 rng(hir::test::seed(505));
  std::size_t response_pairs = 0, instruction_pairs = 0;
  for (int trial = 0; trial < 60; ++trial) {
    CAPTURE(trial);
    const auto h = random_pair_rows(rng, 1 + rng() % (trial % 5 == 0 ? 300 : 30));
    hir::preference_pair_options o;
    o.pairing = static_cast<hir::response_pairing>(trial % 2);
    o.response_level = trial % 7 != 3;
    o.instruction_level = trial % 5 != 2;
    o.success_threshold = trial % 3 == 0 ? 0.5 : 1.0;
    hir::preference_pairs<cpu_be> c;
    hir::preference_pairs<device_be> d;
    const auto ec = pairs_of<cpu_be>(h, o, c), ed = pairs_of<device_be>(h, o, d);
    REQUIRE(ec == "");
    REQUIRE(ed == "");
    check_same_pairs(c, d);
    response_pairs += c.num_response;
    instruction_pairs += c.num_instruction;
  }
  CHECK(response_pairs > 100);
  CHECK(instruction_pairs > 20);
  // from replay batches built on each backend
  for (int trial = 0; trial < 10; ++trial) {
    const auto h = ragged_rollouts(rng, 1 + rng() % 6, 3, true, trial % 2 == 0, false, false, true, false);
    const i64 idx = random_replays(rng, h);
    hir::replay_batch_options bo;
    bo.placement = static_cast<hir::replay_placement>(trial % 2);
    hir::replay_batch<double, cpu_be> cb;
    hir::replay_batch<double, device_be> db;
    std::string ec, ed;
    build_into<cpu_be>(h, idx, bo, {}, {}, cb, ec);
    build_into<device_be>(h, idx, bo, {}, {}, db, ed);
    REQUIRE(ec == "");
    REQUIRE(ed == "");
    hir::preference_pair_options o;
    o.success_threshold = 0.6;
    check_same_pairs(hir::build_preference_pairs(hir::cpu, cb.ref(), o),
                     hir::build_preference_pairs(hir::device, db.ref(), o));
  }
  // the same message for invalid rows
  for (int trial = 0; trial < 20; ++trial) {
    CAPTURE(trial);
    auto h = random_pair_rows(rng, 5 + rng() % 20);
    const std::size_t r = rng() % h.prompt.size();
    switch (trial % 4) {
    case 0:
      h.reward[r] = std::nan("");
      break;
    case 1:
      h.is_replay[r] = 3;
      break;
    case 2:
      h.is_replay[r] = 1;
      h.source_row[r] = static_cast<std::int64_t>(h.prompt.size()) + 2;
      break;
    default:
      h.is_replay[r] = 1;
      h.source_row[r] = static_cast<std::int64_t>(r); // a replay of itself: not an original
      break;
    }
    hir::preference_pairs<cpu_be> c;
    hir::preference_pairs<device_be> d;
    const auto ec = pairs_of<cpu_be>(h, {}, c), ed = pairs_of<device_be>(h, {}, d);
    CHECK(ec != "");
    CHECK(ed == ec);
  }
}

namespace {

template <class T>
void preference_loss_case(std::mt19937_64& rng, double grad_tol) {
  std::uniform_real_distribution<double> d(-30, -1);
  for (int trial = 0; trial < 30; ++trial) {
    CAPTURE(trial);
    const std::size_t R = 2 + rng() % (trial % 6 == 0 ? 600 : 25), P = 1 + rng() % (trial % 6 == 0 ? 3000 : 50);
    i64 c(P), r(P);
    std::vector<std::uint8_t> lv(P);
    for (std::size_t j = 0; j < P; ++j) {
      c[j] = static_cast<std::int64_t>(rng() % R);
      r[j] = static_cast<std::int64_t>(rng() % R); // rows repeat (and c = r happens): gradients accumulate
      lv[j] = static_cast<std::uint8_t>(trial % 5 == 4 ? 1 : rng() % 2);
    }
    std::vector<T> lp(R), ref(trial % 3 == 2 ? 0 : R);
    for (auto& v : lp)
      v = static_cast<T>(d(rng));
    for (auto& v : ref)
      v = static_cast<T>(d(rng));
    hir::preference_loss_options o;
    o.kind = trial % 3 == 1 ? hir::preference_loss_kind::ipo : hir::preference_loss_kind::sigmoid;
    o.beta = o.kind == hir::preference_loss_kind::ipo ? 0.05 + 0.01 * trial : 0.02 + 0.03 * trial;
    o.label_smoothing = o.kind == hir::preference_loss_kind::sigmoid && trial % 2 == 0 ? 0.15 : 0.0;
    o.response_weight = 0.3 + 0.1 * (trial % 4);
    o.instruction_weight = 1.7 - 0.2 * (trial % 5);
    const bool with_grad = trial % 7 != 6;
    const hir::preference_pairs_ref<hir::host_space> pc{hir::view(c), hir::view(r), hir::view(lv)};
    std::vector<T> gc(with_grad ? R : 0);
    const auto rc = hir::preference_loss(hir::cpu, pc, hir::span<const T>(hir::view(lp)),
                                         hir::span<const T>(hir::view(ref)), hir::view(gc), o);
    const auto dc = hir::to_backend(hir::device, c), dr = hir::to_backend(hir::device, r);
    const auto dl = hir::to_backend(hir::device, lv);
    const auto dlp = hir::to_backend(hir::device, lp), dref = hir::to_backend(hir::device, ref);
    thrust::device_vector<T> gd(with_grad ? R : 0, T(3));
    const hir::preference_pairs_ref<hir::device_space> pd{hir::view(dc), hir::view(dr), hir::view(dl)};
    const auto rd = hir::preference_loss(hir::device, pd, hir::view(dlp), hir::view(dref), hir::view(gd), o);
    auto close = [](double a, double e) { return std::fabs(a - e) <= 1e-14 + 1e-12 * std::fabs(e); };
    CHECK(close(rd.loss, rc.loss));
    CHECK(close(rd.response_loss, rc.response_loss));
    CHECK(close(rd.instruction_loss, rc.instruction_loss));
    CHECK(close(rd.response_margin, rc.response_margin));
    CHECK(close(rd.instruction_margin, rc.instruction_margin));
    CHECK(rd.response_pairs == rc.response_pairs);
    CHECK(rd.instruction_pairs == rc.instruction_pairs);
    CHECK(rd.response_accuracy == rc.response_accuracy);
    CHECK(rd.instruction_accuracy == rc.instruction_accuracy);
    const auto g = hir::to_host(gd);
    HIR_CHECK_CLOSE(g, gc, grad_tol * max_abs(gc), grad_tol);
  }
}

} // namespace

TEST_CASE("device vs cpu: preference_loss, DPO (label smoothing) and IPO, float and double") {
  std::mt19937_64 rng(hir::test::seed(506));
  preference_loss_case<double>(rng, 1e-12);
  preference_loss_case<float>(rng, 1e-6);
}

TEST_CASE("device vs cpu: preference_loss errors are identical and leave the gradient untouched") {
  std::mt19937_64 rng(hir::test::seed(507));
  for (int trial = 0; trial < 40; ++trial) {
    CAPTURE(trial);
    const std::size_t R = 3 + rng() % 10, P = 1 + rng() % 12;
    i64 c(P), r(P);
    std::vector<std::uint8_t> lv(P);
    for (std::size_t j = 0; j < P; ++j) {
      c[j] = static_cast<std::int64_t>(rng() % R);
      r[j] = static_cast<std::int64_t>(rng() % R);
      lv[j] = static_cast<std::uint8_t>(rng() % 2);
    }
    std::vector<double> lp(R, -1.0), ref(R, -2.0);
    const int corruptions = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < corruptions; ++k) {
      const std::size_t j = rng() % P;
      switch (rng() % 5) {
      case 0:
        (rng() % 2 ? c : r)[j] = rng() % 2 ? -1 : static_cast<std::int64_t>(R);
        break;
      case 1:
        lv[j] = 2;
        break;
      case 2:
        lp[rng() % R] = garbage(rng);
        break;
      case 3:
        ref[rng() % R] = garbage(rng);
        break;
      default:
        break; // valid
      }
    }
    const hir::preference_pairs_ref<hir::host_space> pc{hir::view(c), hir::view(r), hir::view(lv)};
    std::vector<double> gc(R, 4.0);
    const auto ec = what_of([&] {
      hir::preference_loss(hir::cpu, pc, hir::span<const double>(hir::view(lp)),
                           hir::span<const double>(hir::view(ref)), hir::view(gc), hir::preference_loss_options{});
    });
    const auto dc = hir::to_backend(hir::device, c), dr = hir::to_backend(hir::device, r);
    const auto dl = hir::to_backend(hir::device, lv);
    const auto dlp = hir::to_backend(hir::device, lp), dref = hir::to_backend(hir::device, ref);
    thrust::device_vector<double> gd(R, 4.0);
    const hir::preference_pairs_ref<hir::device_space> pd{hir::view(dc), hir::view(dr), hir::view(dl)};
    const auto ed = what_of([&] {
      hir::preference_loss(hir::device, pd, hir::view(dlp), hir::view(dref), hir::view(gd),
                           hir::preference_loss_options{});
    });
    CHECK(ed == ec);
    if (!ec.empty())
      CHECK(hir::to_host(gd) == std::vector<double>(R, 4.0));
    else
      HIR_CHECK_CLOSE(hir::to_host(gd), gc, 1e-12 * max_abs(gc), 1e-12);
  }
}
