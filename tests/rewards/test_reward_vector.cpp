// SPDX-License-Identifier: Apache-2.0
// Reward vectors (hir/rewards/reward_vector.hpp): verdict_batch construction, instruction / constraint / weighted
// rewards and satisfaction rates on random ragged batches against the naive double reference, edge cases (no
// constraints, exactly 64), and invalid verdicts (more than 64 constraints, stray mask bits) as errors that write
// nothing.
#include "support/backends.hpp"
#include "support/compare.hpp"
#include "support/reference.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>

namespace {

std::vector<std::vector<bool>> random_verdicts(std::mt19937_64& rng, std::size_t n, std::size_t max_count) {
  std::vector<std::vector<bool>> v(n);
  for (auto& row : v) {
    row.resize(rng() % (max_count + 1));
    const double p = std::uniform_real_distribution<double>(0, 1)(rng);
    for (std::size_t c = 0; c < row.size(); ++c)
      row[c] = std::uniform_real_distribution<double>(0, 1)(rng) < p;
  }
  return v;
}

/// A span of const T over a vector (weights are taken as span<const W>).
template <class T>
hir::span<const T> cview(const std::vector<T>& v) {
  return hir::view(v);
}

hir::verdict_batch to_batch(const std::vector<std::vector<bool>>& v) {
  hir::verdict_batch b;
  for (const auto& row : v) {
    std::vector<char> bytes(row.begin(), row.end());
    b.push_back(hir::span<const bool>(reinterpret_cast<const bool*>(bytes.data()), bytes.size()));
  }
  return b;
}

} // namespace

TEST_CASE("verdict_batch: push_back from bools, masks and initializer lists") {
  hir::verdict_batch b;
  b.push_back({true, false, true});
  b.push_back(0b0110, 4);
  b.push_back({});
  std::vector<char> bytes(64, 1);
  bytes[63] = 0;
  b.push_back(hir::span<const bool>(reinterpret_cast<const bool*>(bytes.data()), bytes.size()));
  REQUIRE(b.size() == 4);
  CHECK(b.masks()[0] == 0b101);
  CHECK(b.counts()[0] == 3);
  CHECK(b.met(0, 0));
  CHECK(!b.met(0, 1));
  CHECK(b.met(1, 2));
  CHECK(b.masks()[2] == 0);
  CHECK(b.counts()[2] == 0);
  CHECK(b.counts()[3] == 64);
  CHECK(b.masks()[3] == (std::numeric_limits<std::uint64_t>::max() >> 1));
  CHECK(b.met(3, 62));
  CHECK(!b.met(3, 63));
  const hir::verdict_ref<> r = b;
  CHECK(r.size() == 4);
  CHECK(r.masks.data() == b.masks().data());

  // More than 64 constraints and stray bits are rejected and leave the batch unchanged.
  std::vector<char> too_many(65, 1);
  CHECK_THROWS_WITH_AS(
      b.push_back(hir::span<const bool>(reinterpret_cast<const bool*>(too_many.data()), too_many.size())),
      "hir::verdict_batch::push_back: a sample has 65 constraints; at most 64 are supported", hir::invalid_argument);
  CHECK_THROWS_WITH_AS(b.push_back(0x1, 65), "hir::verdict_batch::push_back: count = 65 exceeds 64 constraints",
                       hir::invalid_argument);
  CHECK_THROWS_WITH_AS(b.push_back(0b1000, 3), "hir::verdict_batch::push_back: mask has bits set at or above count = 3",
                       hir::invalid_argument);
  CHECK(b.size() == 4);
  b.push_back(~std::uint64_t(0), 64); // all 64 bits are allowed with 64 constraints
  CHECK(b.size() == 5);
}

namespace {
/// A verdict batch copied into backend B's memory.
template <class B>
struct verdicts_on {
  hir::vector<std::uint64_t, B> masks;
  hir::vector<std::uint8_t, B> counts;
  explicit verdicts_on(const hir::verdict_batch& b)
      : masks(hir::test::upload<B>(b.masks())), counts(hir::test::upload<B>(b.counts())) {}
  hir::verdict_ref<hir::memory_space_t<B>> ref() const { return {hir::view(masks), hir::view(counts)}; }
};
/// Runs f(out span) on a fresh backend vector of n elements and returns the host copy.
template <class B, class T, class F>
std::vector<T> on_backend(std::size_t n, F&& f, T init = T(0)) {
  hir::vector<T, B> out(n, init);
  f(hir::view(out));
  return hir::to_host(out);
}
} // namespace

TEST_CASE_TEMPLATE("rewards: instruction, constraint and weighted rewards match the reference", B, HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(31));
  for (int trial = 0; trial < 30; ++trial) {
    const std::size_t n = rng() % 200;
    const std::size_t max_count = trial % 3 == 0 ? 64 : 1 + rng() % 12;
    auto v = random_verdicts(rng, n, max_count);
    if (n > 0 && trial % 4 == 0)
      v[0] = std::vector<bool>(max_count, true); // all met
    const auto batch = to_batch(v);
    const verdicts_on<B> dv(batch);
    CAPTURE(trial);

    const auto ila = on_backend<B, double>(n, [&](auto o) { hir::instruction_rewards(B{}, dv.ref(), o); });
    const auto cla = on_backend<B, double>(n, [&](auto o) { hir::constraint_rewards(B{}, dv.ref(), o); });
    std::vector<double> ila_ref(n), cla_ref(n);
    for (std::size_t i = 0; i < n; ++i) {
      ila_ref[i] = hir::ref::instruction_reward(v[i]);
      cla_ref[i] = hir::ref::constraint_reward(v[i]);
    }
    CHECK(ila == ila_ref); // 0/1 exactly
    HIR_CHECK_CLOSE(cla, cla_ref, 0.0, 1e-15);
    const auto cla_f = on_backend<B, float>(n, [&](auto o) { hir::constraint_rewards(B{}, dv.ref(), o); });
    HIR_CHECK_CLOSE(cla_f, cla_ref, 0.0, 1e-7);

    // Weighted: row-major [n × stride] weights, entries past a row's count ignored (set to NaN to prove it).
    const std::size_t stride = max_count;
    std::vector<double> w(n * stride, std::numeric_limits<double>::quiet_NaN());
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t c = 0; c < v[i].size(); ++c)
        w[i * stride + c] = std::uniform_real_distribution<double>(0.1, 3.0)(rng);
    const auto dw = hir::test::upload<B>(w);
    const hir::span<const double, hir::memory_space_t<B>> cw(hir::view(dw));
    const auto wcla = on_backend<B, double>(n, [&](auto o) { hir::weighted_rewards(B{}, dv.ref(), cw, stride, o); });
    hir::weighted_reward_options soft;
    soft.level = hir::weighted_reward_options::kind::instruction_level;
    soft.threshold = 0.6;
    auto wila = on_backend<B, double>(n, [&](auto o) { hir::weighted_rewards(B{}, dv.ref(), cw, stride, o, soft); });
    for (std::size_t i = 0; i < n; ++i) {
      std::vector<double> wi(w.begin() + static_cast<long>(i * stride),
                             w.begin() + static_cast<long>(i * stride + v[i].size()));
      const double frac = hir::ref::weighted_constraint_reward(v[i], wi);
      CHECK(wcla[i] == doctest::Approx(frac).epsilon(1e-14));
      if (std::fabs(frac - 0.6) > 1e-12) // away from the threshold
        CHECK(wila[i] == (frac >= 0.6 ? 1.0 : 0.0));
    }
    // threshold 1 is the weighted "all met": equal to the instruction-level reward.
    soft.threshold = 1.0;
    wila = on_backend<B, double>(n, [&](auto o) { hir::weighted_rewards(B{}, dv.ref(), cw, stride, o, soft); });
    CHECK(wila == ila_ref);
  }
}

TEST_CASE_TEMPLATE("rewards: satisfaction rates on ragged groups match the reference", B, HIR_TEST_BACKEND) {
  std::mt19937_64 rng(hir::test::seed(32));
  for (int trial = 0; trial < 30; ++trial) {
    std::vector<std::vector<bool>> v;
    std::vector<std::int64_t> ids;
    const int groups = 1 + static_cast<int>(rng() % 10);
    std::size_t stride = 0;
    for (int g = 0; g < groups; ++g) {
      const std::size_t count = trial % 5 == 0 ? 64 : rng() % 9;
      stride = std::max(stride, count);
      const int size = 1 + static_cast<int>(rng() % 6);
      for (int k = 0; k < size; ++k) {
        auto row = random_verdicts(rng, 1, count)[0];
        row.resize(count, rng() % 2 == 0);
        v.push_back(row);
        ids.push_back(-5 + 11 * g);
      }
    }
    std::vector<std::size_t> perm(v.size());
    for (std::size_t i = 0; i < perm.size(); ++i)
      perm[i] = i;
    if (trial % 2)
      std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<std::vector<bool>> pv;
    std::vector<std::int64_t> pids;
    for (std::size_t i : perm) {
      pv.push_back(v[i]);
      pids.push_back(ids[i]);
    }
    const auto layout = hir::group_layout::from_ids(pids);
    const auto batch = to_batch(pv);
    stride += rng() % 3; // slots past every count are 0
    stride = std::min<std::size_t>(stride, 64);
    const verdicts_on<B> dv(batch);
    const hir::group_storage<B> dgroups(B{}, layout);
    const auto rates = on_backend<B, double>(
        layout.num_groups() * stride, [&](auto o) { hir::satisfaction_rates(B{}, dv.ref(), dgroups.ref(), stride, o); },
        -1.0);
    CAPTURE(trial);
    HIR_CHECK_CLOSE(rates, hir::ref::satisfaction_rates(pv, pids, stride), 0.0, 1e-15);
  }
}

#if !HIR_TEST_DEVICE // host-array error cases (the device backend's validation is exercised by the device advantages
                     // tests)
TEST_CASE_TEMPLATE("rewards: invalid verdicts and bad arguments throw and write nothing", B, HIR_TEST_BACKEND) {
  const std::vector<double> sentinel = {9, 9, 9};
  std::vector<double> out = sentinel;
  // Stray bit (bit 2 with 2 constraints) in sample 1; more than 64 constraints in sample 2.
  const std::vector<std::uint64_t> masks = {0x1, 0x5, 0x0};
  const std::vector<std::uint8_t> counts = {1, 2, 0};
  const hir::verdict_ref<> stray{hir::view(masks), hir::view(counts)};
  CHECK_THROWS_WITH_AS(hir::instruction_rewards(B{}, stray, hir::view(out)),
                       "hir::instruction_rewards: sample 1 has verdict bits set at or above its constraint count 2 "
                       "(mask = 0x5)",
                       hir::invalid_argument);
  CHECK_THROWS_WITH_AS(hir::constraint_rewards(B{}, stray, hir::view(out)),
                       doctest::Contains("hir::constraint_rewards: sample 1"), hir::invalid_argument);
  CHECK(out == sentinel);
  const std::vector<std::uint8_t> too_many = {1, 2, 70};
  const std::vector<std::uint64_t> ok_masks = {0x1, 0x1, 0x0};
  const hir::verdict_ref<> many{hir::view(ok_masks), hir::view(too_many)};
  CHECK_THROWS_WITH_AS(hir::validate_verdicts(B{}, "caller", many),
                       "hir::caller: sample 2 has 70 constraints; at most 64 are supported", hir::invalid_argument);
  CHECK_THROWS_AS(hir::constraint_rewards(B{}, many, hir::view(out)), hir::invalid_argument);
  CHECK(out == sentinel);
  const std::vector<std::uint8_t> short_counts = {1, 2};
  CHECK_THROWS_WITH_AS(
      hir::validate_verdicts(B{}, "caller", hir::verdict_ref<>{hir::view(ok_masks), hir::view(short_counts)}),
      "hir::caller: verdicts.masks.size() = 3 does not match verdicts.counts.size() = 2", hir::invalid_argument);

  hir::verdict_batch b;
  b.push_back({true, false});
  b.push_back({});
  b.push_back({false, false, true});
  std::vector<double> short_out(2);
  CHECK_THROWS_WITH_AS(hir::instruction_rewards(B{}, b.ref(), hir::view(short_out)),
                       "hir::instruction_rewards: verdicts.size() = 3 does not match out.size() = 2",
                       hir::invalid_argument);
  // No constraints: both rewards are 1 (vacuous truth).
  hir::instruction_rewards(B{}, b.ref(), hir::view(out));
  CHECK(out == std::vector<double>{0, 1, 0});
  hir::constraint_rewards(B{}, b.ref(), hir::view(out));
  CHECK(out == std::vector<double>{0.5, 1, 1.0 / 3.0});

  // Weighted rewards: negative, non-finite or all-zero weights, a count above the stride, bad options.
  out = sentinel;
  std::vector<double> w = {1, 1, 0, 5, 5, 5, 1, 2, 3};
  auto expect_bad_weights = [&](const std::vector<double>& weights, std::size_t stride, const auto& msg) {
    CHECK_THROWS_WITH_AS(hir::weighted_rewards(B{}, b.ref(), cview(weights), stride, hir::view(out)), msg,
                         hir::invalid_argument);
    CHECK(out == sentinel);
  };
  auto neg = w;
  neg[7] = -1;
  expect_bad_weights(neg, 3,
                     "hir::weighted_rewards: sample 2 has a negative or non-finite weight, a zero weight sum, or more "
                     "constraints than stride = 3");
  auto nan = w;
  nan[1] = std::numeric_limits<double>::quiet_NaN();
  expect_bad_weights(nan, 3, doctest::Contains("sample 0"));
  auto zero = w;
  zero[0] = zero[1] = 0;
  expect_bad_weights(zero, 3, doctest::Contains("sample 0"));
  const std::vector<double> w2 = {1, 1, 1, 1, 1, 1};
  expect_bad_weights(w2, 2, doctest::Contains("sample 2"));
  expect_bad_weights(w, 65, "hir::weighted_rewards: stride = 65 exceeds 64");
  expect_bad_weights(w2, 3, "hir::weighted_rewards: weights.size() = 6 does not match verdicts.size() * stride = 9");
  hir::weighted_reward_options bad_threshold;
  bad_threshold.threshold = 0.0;
  CHECK_THROWS_WITH_AS(hir::weighted_rewards(B{}, b.ref(), cview(w), 3, hir::view(out), bad_threshold),
                       "hir::weighted_rewards: threshold = 0 is outside (0, 1]", hir::invalid_argument);
  CHECK(out == sentinel);

  // Satisfaction rates: a group whose members have different constraint counts; a count above the stride.
  const auto layout = hir::group_layout::from_ids(std::vector<std::int64_t>{4, 4, 8});
  std::vector<double> rates(2 * 3, -1.0);
  const auto rates_before = rates;
  CHECK_THROWS_WITH_AS(hir::satisfaction_rates(B{}, b.ref(), layout.ref(), 3, hir::view(rates)),
                       "hir::satisfaction_rates: group 0 has members with different constraint counts, or more than "
                       "stride = 3",
                       hir::invalid_argument);
  CHECK(rates == rates_before);
  hir::verdict_batch same;
  same.push_back({true, false, true});
  same.push_back({true, true, false});
  same.push_back({true, true, true});
  std::vector<double> narrow(2 * 2);
  CHECK_THROWS_WITH_AS(hir::satisfaction_rates(B{}, same.ref(), layout.ref(), 2, hir::view(narrow)),
                       doctest::Contains("group 0"), hir::invalid_argument);
  hir::satisfaction_rates(B{}, same.ref(), layout.ref(), 3, hir::view(rates));
  CHECK(rates == std::vector<double>{1.0, 0.5, 0.5, 1.0, 1.0, 1.0});
}
#endif
