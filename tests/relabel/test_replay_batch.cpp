// SPDX-License-Identifier: Apache-2.0
// build_replay_batch: a hand-worked batch whose rows (prompts, constraint masks, rewards, flags, links, groups and
// gathered token arrays) are asserted exactly for both placements and every grouping; the log-prob sources and
// truncated importance weights against naive loops; the select → build flow from a rollout batch; bad input.
#include "relabel_support.hpp"

#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <random>

namespace {

using i64 = std::vector<std::int64_t>;

// N = 6 responses of length L = 3 to B = 2 prompts:
//   prompt 0 (3 constraints): r0 111 success, r1 011 (eligible), r2 000 all failed
//   prompt 1 (2 constraints): r3 01 (eligible), r4 10 (eligible), r5 11 success
// token (i, t) = 10·i + t; old_logp (i, t) = −(i + 1) − 0.1·t; ref_logp = old_logp − 0.5.
hir::test::host_rollouts worked_rollouts() {
  hir::test::host_rollouts h;
  h.N = 6;
  h.L = 3;
  h.B = 2;
  h.prompt = {0, 0, 0, 1, 1, 1};
  h.masks = {0b111, 0b011, 0b000, 0b01, 0b10, 0b11};
  h.counts = {3, 3, 3, 2, 2, 2};
  h.constraint_counts = {3, 2};
  h.mask = {1, 1, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0};
  for (std::size_t i = 0; i < 6; ++i)
    for (std::size_t t = 0; t < 3; ++t) {
      h.tokens.push_back(static_cast<std::int32_t>(10 * i + t));
      h.old_logp.push_back(-(static_cast<double>(i) + 1) - 0.1 * static_cast<double>(t));
      h.ref_logp.push_back(h.old_logp.back() - 0.5);
      h.entropy.push_back(0.25 * static_cast<double>(i + t));
    }
  return h;
}

template <class B>
hir::replay_batch<double, B> build(const hir::test::host_rollouts& h, const i64& replays,
                                   const hir::replay_batch_options& o, const std::vector<double>& rec_old = {},
                                   const std::vector<double>& rec_ref = {}) {
  hir::test::backend_rollouts<B> r(h);
  const auto d_idx = hir::test::upload<B>(replays);
  const auto d_old = hir::test::upload<B>(rec_old);
  const auto d_ref = hir::test::upload<B>(rec_ref);
  hir::replay_logp_ref<double, hir::memory_space_t<B>> rec{hir::view(d_old), hir::view(d_ref)};
  return hir::build_replay_batch(B{}, r.ref(), hir::span_for<const std::int64_t, B>(hir::view(d_idx)), o, rec);
}

/// Row `i` of a [·, L] array.
template <class T>
std::vector<T> row(const std::vector<T>& a, std::size_t i, std::size_t L) {
  return std::vector<T>(a.begin() + static_cast<std::ptrdiff_t>(i * L),
                        a.begin() + static_cast<std::ptrdiff_t>((i + 1) * L));
}

} // namespace

TEST_CASE_TEMPLATE("build_replay_batch: hand-worked batch, replays after the originals", B, HIR_TEST_BACKEND) {
  const auto h = worked_rollouts();
  hir::replay_batch_options o; // authors' log-probs, global group
  const auto b = build<B>(h, {4, 1}, o);
  CHECK(b.batch == 8);
  CHECK(b.num_originals == 6);
  CHECK(b.num_replays == 2);
  CHECK(b.length == 3);
  CHECK(hir::to_host(b.prompt) == i64{0, 0, 0, 1, 1, 1, 1, 0});
  // Row 6 replays r4 (verdicts 10) under "prompt 1 with constraint 1 only"; row 7 replays r1 under constraints 0, 1.
  CHECK(hir::to_host(b.constraint_mask) ==
        std::vector<std::uint64_t>{0b111, 0b111, 0b111, 0b11, 0b11, 0b11, 0b10, 0b011});
  CHECK(hir::to_host(b.constraint_count) == std::vector<std::uint8_t>{3, 3, 3, 2, 2, 2, 2, 3});
  CHECK(hir::to_host(b.reward) == std::vector<double>{1, 0, 0, 0, 0, 1, 1, 1});
  CHECK(hir::to_host(b.is_replay) == std::vector<std::uint8_t>{0, 0, 0, 0, 0, 0, 1, 1});
  CHECK(hir::to_host(b.origin) == i64{0, 1, 2, 3, 4, 5, 4, 1});
  CHECK(hir::to_host(b.source_row) == i64{0, 1, 2, 3, 4, 5, 4, 1});
  CHECK(hir::to_host(b.replay_row) == i64{-1, 7, -1, -1, 6, -1, -1, -1});
  CHECK(hir::to_host(b.group) == i64(8, 0));
  const auto tok = hir::to_host(b.tokens);
  const auto msk = hir::to_host(b.mask);
  const auto old = hir::to_host(b.old_logp), ref = hir::to_host(b.ref_logp);
  CHECK(row(tok, 6, 3) == std::vector<std::int32_t>{40, 41, 42});
  CHECK(row(tok, 7, 3) == std::vector<std::int32_t>{10, 11, 12});
  CHECK(row(msk, 6, 3) == std::vector<std::uint8_t>{1, 1, 1});
  CHECK(row(msk, 2, 3) == std::vector<std::uint8_t>{1, 0, 0});
  CHECK(row(old, 6, 3) == row(h.old_logp, 4, 3)); // log π_old(y|q) copied (authors)
  CHECK(row(ref, 7, 3) == row(h.ref_logp, 1, 3));
  CHECK(row(old, 3, 3) == row(h.old_logp, 3, 3));
  CHECK(b.weight.empty());
  // the token view for advantages and losses
  const auto tb = b.token_batch();
  CHECK(tb.batch == 8);
  CHECK(tb.length == 3);
  CHECK(tb.mask.size() == 24);
  CHECK(tb.old_logp.size() == 24);
  CHECK(tb.ref_logp.size() == 24);
  CHECK(tb.logp.empty());
  CHECK(hir::replay_group_layout(b).num_groups() == 1);
}

TEST_CASE_TEMPLATE("build_replay_batch: hand-worked batch, replays after their source, groupings", B,
                   HIR_TEST_BACKEND) {
  auto h = worked_rollouts();
  hir::replay_batch_options o;
  o.placement = hir::replay_placement::after_source;
  SUBCASE("join_source") {
    o.grouping = hir::replay_grouping::join_source;
    const auto b = build<B>(h, {4, 1}, o);
    // rows: r0, r1, r1', r2, r3, r4, r4', r5
    CHECK(hir::to_host(b.prompt) == i64{0, 0, 0, 0, 1, 1, 1, 1});
    CHECK(hir::to_host(b.reward) == std::vector<double>{1, 0, 1, 0, 0, 0, 1, 1});
    CHECK(hir::to_host(b.is_replay) == std::vector<std::uint8_t>{0, 0, 1, 0, 0, 0, 1, 0});
    CHECK(hir::to_host(b.origin) == i64{0, 1, 1, 2, 3, 4, 4, 5});
    CHECK(hir::to_host(b.source_row) == i64{0, 1, 1, 3, 4, 5, 5, 7});
    CHECK(hir::to_host(b.replay_row) == i64{-1, 2, -1, -1, -1, 6, -1, -1});
    CHECK(hir::to_host(b.constraint_mask) ==
          std::vector<std::uint64_t>{0b111, 0b111, 0b011, 0b111, 0b11, 0b11, 0b10, 0b11});
    CHECK(hir::to_host(b.group) == i64{0, 0, 0, 0, 1, 1, 1, 1});
    const auto layout = hir::replay_group_layout(b);
    CHECK(layout.num_groups() == 2);
    CHECK(layout.size(0) == 4);
    CHECK(row(hir::to_host(b.tokens), 2, 3) == std::vector<std::int32_t>{10, 11, 12});
    CHECK(row(hir::to_host(b.tokens), 6, 3) == std::vector<std::int32_t>{40, 41, 42});
  }
  SUBCASE("own_group: replays of prompt p form group B + p") {
    o.grouping = hir::replay_grouping::own_group;
    const auto b = build<B>(h, {4, 1, 3}, o);
    // rows: r0, r1, r1', r2, r3, r3', r4, r4', r5
    CHECK(hir::to_host(b.group) == i64{0, 0, 2, 0, 1, 3, 1, 3, 1});
    CHECK(hir::replay_group_layout(b).num_groups() == 4);
    CHECK(hir::to_host(b.constraint_mask)[5] == 0b01);
  }
  SUBCASE("caller scores instead of ILA") {
    h.scores = {1.0, 2.0 / 3.0, 0.0, 0.5, 0.5, 1.0}; // CLA
    const auto b = build<B>(h, {1}, o);
    CHECK(hir::to_host(b.reward) == std::vector<double>{1.0, 2.0 / 3.0, 1.0, 0.0, 0.5, 0.5, 1.0});
  }
  SUBCASE("no tokens, no reference log-probs, another replay reward") {
    h.tokens.clear();
    h.ref_logp.clear();
    o.replay_reward = 0.75;
    const auto b = build<B>(h, {3}, o);
    CHECK(b.tokens.empty());
    CHECK(b.ref_logp.empty());
    CHECK(hir::to_host(b.reward) == std::vector<double>{1, 0, 0, 0, 0.75, 0, 1});
  }
  SUBCASE("no replays") {
    const auto b = build<B>(h, {}, o);
    CHECK(b.batch == 6);
    CHECK(hir::to_host(b.replay_row) == i64(6, -1));
  }
}

TEST_CASE_TEMPLATE("build_replay_batch: replay log-probs copied, recomputed, or with truncated importance weights", B,
                   HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(21));
  const auto h = hir::test::random_rollouts(rng, 5, 6, 7);
  // every eligible response, in descending index order (the order the caller's recomputed rows follow)
  i64 replays;
  for (std::size_t i = h.N; i-- > 0;) {
    const int met = hir::test::met_count(h.masks[i], h.counts[i]);
    if (met > 0 && met < static_cast<int>(h.counts[i]))
      replays.push_back(static_cast<std::int64_t>(i));
  }
  REQUIRE(!replays.empty());
  const std::size_t K = replays.size(), L = h.L;
  std::vector<double> rec_old(K * L), rec_ref(K * L);
  std::uniform_real_distribution<double> d(-4, 0);
  for (auto& v : rec_old)
    v = d(rng);
  for (auto& v : rec_ref)
    v = d(rng);
  hir::replay_batch_options o;
  SUBCASE("recomputed old and ref") {
    o.old_logp = hir::replay_old_logp::recomputed;
    o.ref_logp = hir::replay_ref_logp::recomputed;
    const auto b = build<B>(h, replays, o, rec_old, rec_ref);
    const auto old = hir::to_host(b.old_logp), ref = hir::to_host(b.ref_logp);
    for (std::size_t k = 0; k < K; ++k) {
      CHECK(row(old, h.N + k, L) == row(rec_old, k, L));
      CHECK(row(ref, h.N + k, L) == row(rec_ref, k, L));
    }
    CHECK(row(old, 0, L) == row(h.old_logp, 0, L));
    CHECK(b.weight.empty());
  }
  SUBCASE("recomputed old, copied ref") {
    o.old_logp = hir::replay_old_logp::recomputed;
    const auto b = build<B>(h, replays, o, rec_old);
    const auto ref = hir::to_host(b.ref_logp);
    for (std::size_t k = 0; k < K; ++k)
      CHECK(row(ref, h.N + k, L) == row(h.ref_logp, static_cast<std::size_t>(replays[k]), L));
  }
  for (auto level : {hir::importance_level::token, hir::importance_level::sequence}) {
    CAPTURE(static_cast<int>(level));
    o = {};
    o.old_logp = hir::replay_old_logp::truncated_is;
    o.importance = level;
    o.importance_cap = 1.5;
    const auto b = build<B>(h, replays, o, rec_old);
    const auto w = hir::to_host(b.weight), old = hir::to_host(b.old_logp);
    REQUIRE(w.size() == (h.N + K) * L);
    std::vector<double> expect((h.N + K) * L, 1.0);
    for (std::size_t k = 0; k < K; ++k) {
      const auto i = static_cast<std::size_t>(replays[k]);
      double sum = 0;
      for (std::size_t t = 0; t < L; ++t)
        if (h.mask[i * L + t])
          sum += rec_old[k * L + t] - h.old_logp[i * L + t];
      for (std::size_t t = 0; t < L; ++t)
        if (h.mask[i * L + t])
          expect[(h.N + k) * L + t] = level == hir::importance_level::token
                                          ? std::min(std::exp(rec_old[k * L + t] - h.old_logp[i * L + t]), 1.5)
                                          : std::min(std::exp(sum), 1.5);
      CHECK(row(old, h.N + k, L) == row(rec_old, k, L));
    }
    HIR_CHECK_CLOSE(w, expect, 1e-14, 1e-13);
  }
}

TEST_CASE_TEMPLATE("build_replay_batch: reusing a batch gives the same rows as a fresh one", B, HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(22));
  auto big = hir::test::random_rollouts(rng, 6, 6, 9);
  auto small = worked_rollouts();
  small.tokens.clear();
  small.ref_logp.clear();
  hir::replay_batch<double, B> out;
  hir::replay_batch_options truncated;
  truncated.old_logp = hir::replay_old_logp::truncated_is;
  i64 eligible;
  for (std::size_t i = 0; i < big.N; ++i) {
    const int met = hir::test::met_count(big.masks[i], big.counts[i]);
    if (met > 0 && met < static_cast<int>(big.counts[i]))
      eligible.push_back(static_cast<std::int64_t>(i));
  }
  const std::vector<double> rec(eligible.size() * big.L, -0.5);
  auto into = [&](const hir::test::host_rollouts& h, const i64& idx, const hir::replay_batch_options& o,
                  const std::vector<double>& rec_old) {
    hir::test::backend_rollouts<B> r(h);
    const auto d_idx = hir::test::upload<B>(idx);
    const auto d_old = hir::test::upload<B>(rec_old);
    hir::replay_logp_ref<double, hir::memory_space_t<B>> re{hir::view(d_old), {}};
    hir::build_replay_batch(B{}, r.ref(), hir::span_for<const std::int64_t, B>(hir::view(d_idx)), out, o, re);
  };
  into(big, eligible, truncated, rec);
  CHECK(hir::to_host(out.weight).size() == out.batch * out.length);
  into(small, {4, 1}, hir::replay_batch_options{}, {});
  const auto fresh = build<B>(small, {4, 1}, hir::replay_batch_options{});
  CHECK(out.batch == fresh.batch);
  CHECK(out.length == fresh.length);
  CHECK(hir::to_host(out.prompt) == hir::to_host(fresh.prompt));
  CHECK(hir::to_host(out.reward) == hir::to_host(fresh.reward));
  CHECK(hir::to_host(out.source_row) == hir::to_host(fresh.source_row));
  CHECK(hir::to_host(out.mask) == hir::to_host(fresh.mask));
  CHECK(hir::to_host(out.old_logp) == hir::to_host(fresh.old_logp));
  CHECK(out.tokens.empty());
  CHECK(out.ref_logp.empty());
  CHECK(out.weight.empty());
  // a failed call leaves the batch untouched
  CHECK_THROWS_AS(into(small, {0}, hir::replay_batch_options{}, {}), hir::invalid_argument);
  CHECK(hir::to_host(out.old_logp) == hir::to_host(fresh.old_logp));
  CHECK(out.batch == fresh.batch);
}

TEST_CASE_TEMPLATE("build_replay_batch: select then build from a rollout batch", B, HIR_TEST_BACKEND) {
  const auto h = worked_rollouts();
  hir::test::backend_rollouts<B> r(h);
  // Token-mean entropies: r1 (0.25, 0.5, 0.75) → 0.5; r3 (0.75, 1.0) → 0.875; r4 (1.0, 1.25, 1.5) → 1.25.
  // Step 0 (λ = 2): r1 0.5 + 4/3 = 1.83, r3 0.875 + 1 = 1.875, r4 1.25 + 1 = 2.25. K = (4 − 3)·2 = 2 → r3, r4.
  hir::replay_select_options so;
  so.target_group_size = 4;
  const auto sel = hir::select_replays(B{}, r.ref(), 0, so);
  CHECK(hir::to_host(sel.indices) == i64{3, 4});
  CHECK(sel.complete());
  const auto b = hir::build_replay_batch(B{}, r.ref(), sel, hir::replay_batch_options{});
  CHECK(hir::to_host(b.origin) == i64{0, 1, 2, 3, 4, 5, 3, 4});
  CHECK(hir::to_host(b.constraint_mask)[6] == 0b01);
  CHECK(hir::to_host(b.constraint_mask)[7] == 0b10);
  // summed entropy (paper): r1 1.5 + 4/3 = 2.83, r3 1.75 + 1 = 2.75, r4 3.75 + 1 = 4.75 → r1, r4
  so.diversity = hir::diversity_kind::token_sum;
  CHECK(hir::to_host(hir::select_replays(B{}, r.ref(), 0, so).indices) == i64{1, 4});
}

TEST_CASE_TEMPLATE("build_replay_batch: bad input gives clear errors", B, HIR_TEST_BACKEND) {
  const auto good = worked_rollouts();
  hir::replay_batch_options o;
  auto throws = [&](const hir::test::host_rollouts& h, const i64& idx, const hir::replay_batch_options& oo,
                    const char* text, const std::vector<double>& rec = {}) {
    CHECK_THROWS_WITH_AS(build<B>(h, idx, oo, rec), doctest::Contains(text), hir::invalid_argument);
  };
  CHECK_NOTHROW(build<B>(good, {1, 3}, o));
  throws(good, {0}, o, "replay 0 (index 0) selects a response that met no constraint or every constraint");
  throws(good, {1, 2}, o, "replay 1 (index 2) selects a response that met no constraint or every constraint");
  throws(good, {1, 3, 1}, o, "replay 2 (index 1) selects a response that an earlier replay already selected");
  throws(good, {6}, o, "replay 0 (index 6) is outside [0, batch)");
  throws(good, {1, 3, 4, 1, 3, 4, 1}, o, "replays.size() = 7 exceeds the batch of 6 responses");
  {
    auto h = good;
    h.mask[3] = h.mask[4] = h.mask[5] = 0; // r1 has no valid token
    throws(h, {1}, o, "replay 0 (index 1) selects a response without valid tokens");
  }
  {
    hir::test::host_rollouts h; // empty batch
    h.L = 3;
    h.B = 1;
    throws(h, {}, o, "hir::build_replay_batch: the batch is empty");
  }
  {
    auto h = good; // verdicts that disagree with the constraint count
    h.counts[4] = 3;
    throws(h, {1}, o, "response 4 has a verdict count that disagrees with its prompt's constraint count");
    h.masks[4] = 0b1000;
    throws(h, {1}, o, "sample 4 has verdict bits set at or above its constraint count 3");
  }
  {
    auto h = good;
    h.old_logp[4] = std::nan("");
    throws(h, {3}, o, "response 1 has a non-finite log-probability on a valid token");
    h = good;
    h.old_logp[2] = std::nan(""); // r0, t = 2 is padding: not read
    CHECK_NOTHROW(build<B>(h, {1}, o));
    h = good;
    h.mask[7] = 2;
    throws(h, {1}, o, "response 2 has a token mask entry other than 0 or 1");
    h = good;
    h.prompt[5] = -1;
    throws(h, {1}, o, "response 5 has a prompt index outside [0, num_prompts)");
    h = good;
    h.mask.pop_back();
    throws(h, {1}, o, "mask.size() = 17 does not match batch * length = 18");
  }
  {
    auto oo = o;
    oo.old_logp = hir::replay_old_logp::recomputed;
    throws(good, {1, 3}, oo, "recomputed.old_logp.size() = 0 does not match replays.size() * length = 6");
    std::vector<double> rec(6, -1.0);
    rec[4] = std::nan(""); // replay 1 (r3), t = 1: valid
    throws(good, {1, 3}, oo, "replay 1 (index 3) has a non-finite recomputed log-probability on a valid token", rec);
    oo.old_logp = hir::replay_old_logp::truncated_is;
    oo.importance_cap = 0;
    throws(good, {1}, oo, "importance_cap = 0 must be finite and > 0", std::vector<double>(3, -1.0));
    auto bad = o;
    bad.grouping = static_cast<hir::replay_grouping>(5);
    throws(good, {1}, bad, "grouping = 5 is not a replay_grouping");
    auto rr = o;
    rr.ref_logp = hir::replay_ref_logp::recomputed;
    auto h = good;
    h.ref_logp.clear();
    throws(h, {1}, rr, "ref_logp = recomputed but the rollouts have no ref_logp");
  }
}
