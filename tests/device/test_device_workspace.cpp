// SPDX-License-Identifier: Apache-2.0
// hir::device_workspace: the caching allocator itself (blocks, reuse, merging, reserve, release, move), and the device
// algorithms run with `hir::device.with(ws)`: after a first call, repeated calls with the same sizes make no new device
// allocation (counted by the workspace), give the same results as calls without a workspace, and bad input still
// throws before anything is written, with every scratch block returned. Covers policy_loss, reinforce_pp_advantages,
// constraint_normalized_advantages and select_replays.
#include "support/backends.hpp"

#include <hir/device.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <utility>
#include <vector>

namespace {

using dtag = hir::backend::device::tag_t;

template <class T>
using dvec = thrust::device_vector<T>;

template <class T>
dvec<T> up(const std::vector<T>& v) {
  return hir::test::upload<dtag>(v);
}

/// Runs `call(be)` once with a fresh workspace, then `repeats` more times, and checks that the repeats allocate
/// nothing new and return what the call without a workspace returns.
template <class F>
void check_reuse(F&& call, int repeats = 3) {
  const auto plain = call(hir::device);
  hir::device_workspace ws;
  const auto be = hir::device.with(ws);
  const auto first = call(be);
  CHECK(first == plain);
  const std::size_t allocations = ws.allocations(), held = ws.bytes_held();
  CHECK(allocations > 0); // the call's scratch and Thrust's temporaries came from the workspace
  CHECK(ws.bytes_in_use() == 0);
  for (int r = 0; r < repeats; ++r) {
    const auto again = call(be);
    CHECK(again == plain);
    CHECK(ws.allocations() == allocations);
    CHECK(ws.bytes_held() == held);
    CHECK(ws.bytes_in_use() == 0);
  }
  // A workspace reserved up front with what the first call held serves every call without a new allocation.
  hir::device_workspace pre(held);
  CHECK(pre.allocations() == 1);
  CHECK(call(hir::device.with(pre)) == plain);
  CHECK(pre.allocations() == 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Inputs

struct token_inputs {
  std::size_t B, L;
  std::vector<double> logp, old_logp, ref_logp, adv, scores;
  std::vector<std::uint8_t> mask;
  std::vector<std::int64_t> ids;
};

token_inputs random_tokens(std::size_t B, std::size_t L, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-1, 1);
  token_inputs in{B, L, {}, {}, {}, {}, {}, {}, {}};
  for (std::size_t i = 0; i < B; ++i) {
    const std::size_t len = 1 + rng() % L;
    for (std::size_t t = 0; t < L; ++t) {
      const bool valid = t < len;
      in.mask.push_back(valid ? 1 : 0);
      const double x = -2.0 + 0.5 * u(rng);
      in.logp.push_back(valid ? x : std::numeric_limits<double>::quiet_NaN());
      in.old_logp.push_back(x + 0.3 * u(rng));
      in.ref_logp.push_back(x + 0.3 * u(rng));
    }
    in.adv.push_back(u(rng));
    in.scores.push_back(u(rng) > 0 ? 1.0 : 0.0);
    in.ids.push_back(static_cast<std::int64_t>(i % 3)); // interleaved groups
  }
  return in;
}

struct device_tokens {
  dvec<double> logp, old_logp, ref_logp, adv, scores;
  dvec<std::uint8_t> mask;
  hir::token_batch_ref<double, hir::device_space> tb;
  explicit device_tokens(const token_inputs& in)
      : logp(up(in.logp)), old_logp(up(in.old_logp)), ref_logp(up(in.ref_logp)), adv(up(in.adv)), scores(up(in.scores)),
        mask(up(in.mask)) {
    tb.batch = in.B;
    tb.length = in.L;
    tb.mask = hir::view(mask);
    tb.logp = hir::view(logp);
    tb.old_logp = hir::view(old_logp);
    tb.ref_logp = hir::view(ref_logp);
  }
};

/// policy_loss's gradient and the loss, as one comparable vector.
std::vector<double> run_policy_loss(const dtag& be, const device_tokens& d, const hir::policy_loss_options& o) {
  dvec<double> grad(d.tb.batch * d.tb.length, 7.0);
  const hir::policy_loss_result r = hir::policy_loss(be, d.tb, hir::view(d.adv), hir::view(grad), o);
  std::vector<double> out = hir::to_host(grad);
  out.insert(out.end(), {r.loss, r.pg_loss, r.kl_loss, r.clip_fraction_low, r.clip_fraction_high, r.approx_kl,
                         r.mean_ratio, r.mean_kl, static_cast<double>(r.valid_tokens), r.normalizer});
  return out;
}

} // namespace

// ---------------------------------------------------------------------------------------------------------------

TEST_CASE("device_workspace: blocks are aligned, reused, merged, reserved and released") {
  hir::device_workspace ws;
  CHECK(ws.bytes_held() == 0);
  CHECK(ws.allocations() == 0);
  void* a = ws.allocate(1000); // one chunk of 1024
  void* b = ws.allocate(1);    // a second chunk of 256
  CHECK(a != b);
  CHECK(reinterpret_cast<std::uintptr_t>(a) % hir::device_workspace::alignment == 0);
  CHECK(reinterpret_cast<std::uintptr_t>(b) % hir::device_workspace::alignment == 0);
  CHECK(ws.allocations() == 2);
  CHECK(ws.bytes_held() == 1024 + 256);
  CHECK(ws.bytes_in_use() == 1024 + 256);
  ws.deallocate(a);
  ws.deallocate(b);
  CHECK(ws.bytes_in_use() == 0);
  // Two blocks carved from the freed 1024-byte chunk (best fit), then merged back into one range when both return.
  void* c = ws.allocate(512);
  void* d = ws.allocate(300);
  CHECK(ws.allocations() == 2);
  CHECK(c == a);
  CHECK(static_cast<char*>(d) == static_cast<char*>(a) + 512);
  ws.deallocate(c);
  ws.deallocate(d);
  void* e = ws.allocate(1024);
  CHECK(e == a);
  CHECK(ws.allocations() == 2);
  ws.deallocate(e);
  ws.deallocate(nullptr); // ignored
  // release frees what no block uses.
  void* f = ws.allocate(200); // from the 256-byte chunk (best fit)
  CHECK(f == b);
  ws.release();
  CHECK(ws.bytes_held() == 256);
  ws.deallocate(f);
  ws.release();
  CHECK(ws.bytes_held() == 0);
  // reserve holds one free block of at least the size asked; a zero-byte request still gets a distinct block.
  ws.reserve(4000);
  CHECK(ws.bytes_held() == 4096);
  ws.reserve(100);
  CHECK(ws.bytes_held() == 4096);
  void* z0 = ws.allocate(0);
  void* z1 = ws.allocate(0);
  CHECK(z0 != z1);
  CHECK(ws.allocations() == 3);
  ws.deallocate(z0);
  ws.deallocate(z1);
  // Movable: the blocks go with the object.
  hir::device_workspace moved(std::move(ws));
  CHECK(moved.bytes_held() == 4096);
  CHECK(ws.bytes_held() == 0); // NOLINT(bugprone-use-after-move): a moved-from workspace is empty
  hir::device_workspace other(512);
  other = std::move(moved);
  CHECK(other.bytes_held() == 4096);
}

TEST_CASE("device_workspace: the tag carries it, and .with combines with .on") {
  hir::device_workspace ws;
  CHECK(hir::device.workspace == nullptr);
  const auto be = hir::device.with(ws);
  CHECK(be.workspace == &ws);
#if HIR_DEVICE_IS_CUDA
  const cudaStream_t s = reinterpret_cast<cudaStream_t>(std::uintptr_t(0x10));
  CHECK(be.on(s).workspace == &ws);
  CHECK(be.on(s).stream == s);
  CHECK(hir::device.on(s).with(ws).stream == s);
  CHECK(hir::device.on(s).with(ws).workspace == &ws);
#endif
  // A scratch buffer draws from the workspace and gives its block back.
  {
    const hir::backend::device::detail::scratch_buffer<double> buf(be, 100);
    CHECK(buf.size() == 100);
    CHECK(ws.bytes_in_use() == 1024);
  }
  CHECK(ws.bytes_in_use() == 0);
  {
    auto make = [&] { // a helper may return a scratch buffer (moved; the block stays in use once)
      hir::backend::device::detail::scratch_buffer<int> b(be, 10);
      return b;
    };
    const auto moved = make();
    CHECK(moved.size() == 10);
    CHECK(ws.bytes_in_use() == 256);
  }
  CHECK(ws.bytes_in_use() == 0);
  const hir::backend::device::detail::scratch_buffer<double> none(hir::device, 10); // plain Thrust allocation
  CHECK(none.data() != nullptr);
  CHECK(ws.allocations() == 1);
}

TEST_CASE("device_workspace: policy_loss reuses the workspace") {
  const token_inputs in = random_tokens(37, 29, 1);
  const device_tokens d(in);
  for (const auto kind : {hir::policy_loss_kind::ppo_clip, hir::policy_loss_kind::gspo}) {
    hir::policy_loss_options o;
    o.kind = kind;
    o.kl = hir::kl_estimator::k3;
    o.kl_coef = 0.1;
    o.aggregation = hir::loss_aggregation::seq_mean_token_mean;
    for (const auto v : {hir::input_validation::before_writing, hir::input_validation::fused}) {
      o.validation = v;
      check_reuse([&](const dtag& be) { return run_policy_loss(be, d, o); });
    }
  }
}

TEST_CASE("device_workspace: reinforce_pp_advantages reuses the workspace") {
  const token_inputs in = random_tokens(41, 23, 2);
  const device_tokens d(in);
  const hir::group_storage<dtag> groups(hir::device, hir::group_layout::from_ids(in.ids));
  for (const auto baseline : {hir::reinforce_baseline::group_mean_of_score, hir::reinforce_baseline::none,
                              hir::reinforce_baseline::group_mean_of_return}) {
    hir::reinforce_pp_options o;
    o.baseline = baseline;
    o.kl = hir::kl_estimator::k1;
    o.kl_coef = 0.05;
    check_reuse([&](const dtag& be) {
      dvec<double> out(in.B * in.L, 7.0);
      hir::reinforce_pp_advantages(be, hir::view(d.scores), d.tb, groups.ref(), hir::view(out), o);
      return hir::to_host(out);
    });
  }
}

TEST_CASE("device_workspace: constraint_normalized_advantages reuses the workspace") {
  std::mt19937_64 rng(3);
  std::vector<std::uint64_t> masks;
  std::vector<std::uint8_t> counts;
  std::vector<std::int64_t> ids;
  for (std::size_t i = 0; i < 60; ++i) {
    const std::int64_t g = static_cast<std::int64_t>(i % 13);
    ids.push_back(g);
    counts.push_back(static_cast<std::uint8_t>(2 + g % 4));
    masks.push_back(rng() & ((std::uint64_t(1) << counts.back()) - 1));
  }
  ids.push_back(99); // a group of one
  counts.push_back(3);
  masks.push_back(5);
  const dvec<std::uint64_t> d_masks = up(masks);
  const dvec<std::uint8_t> d_counts = up(counts);
  const dvec<double> w = up(std::vector<double>{1.0, 0.5, 2.0, 0.25, 1.5});
  const hir::verdict_ref<hir::device_space> v{hir::view(d_masks), hir::view(d_counts)};
  const hir::group_storage<dtag> groups(hir::device, hir::group_layout::from_ids(ids));
  for (const bool batch_normalize : {false, true}) {
    hir::constraint_normalized_options o;
    o.batch_normalize = batch_normalize;
    check_reuse([&](const dtag& be) {
      dvec<float> out(ids.size(), 7.0f);
      hir::constraint_normalized_advantages(be, v, groups.ref(), hir::view(w), hir::view(out), o);
      return hir::to_host(out);
    });
  }
}

TEST_CASE("device_workspace: select_replays reuses the workspace") {
  std::mt19937_64 rng(4);
  const std::size_t B = 6, m = 8;
  std::vector<std::int64_t> prompt, length;
  std::vector<std::uint64_t> masks;
  std::vector<std::uint8_t> counts;
  std::vector<double> entropy;
  for (std::size_t i = 0; i < B * m; ++i) {
    prompt.push_back(static_cast<std::int64_t>(i % B));
    counts.push_back(4);
    masks.push_back(rng() % 16);
    entropy.push_back(0.1 * static_cast<double>(rng() % 50));
    length.push_back(static_cast<std::int64_t>(1 + rng() % 9));
  }
  const dvec<std::int64_t> d_prompt = up(prompt), d_length = up(length);
  const dvec<std::uint64_t> d_masks = up(masks);
  const dvec<std::uint8_t> d_counts = up(counts);
  const dvec<double> d_entropy = up(entropy);
  hir::replay_candidates_ref<double, hir::device_space> c;
  c.num_prompts = B;
  c.prompt = hir::view(d_prompt);
  c.verdicts = {hir::view(d_masks), hir::view(d_counts)};
  c.entropy_sum = hir::view(d_entropy);
  c.length = hir::view(d_length);
  for (const auto allocation : {hir::replay_allocation::top_k_global, hir::replay_allocation::top_k_per_group,
                                hir::replay_allocation::all_eligible}) {
    hir::replay_select_options o;
    o.allocation = allocation;
    o.budget_kind = hir::replay_budget_kind::per_prompt;
    o.replays_per_prompt = 1;
    check_reuse([&](const dtag& be) {
      const auto r = hir::select_replays(be, c, 3, o);
      return std::make_pair(hir::to_host(r.indices), r.eligible);
    });
  }
}

TEST_CASE("device_workspace: bad input throws before writing and returns every block") {
  hir::device_workspace ws;
  const auto be = hir::device.with(ws);
  token_inputs in = random_tokens(9, 7, 5);
  in.old_logp[3 * 7] = std::numeric_limits<double>::infinity(); // row 3 has a valid token 0
  in.mask[5 * 7 + 6] = 2;
  const device_tokens d(in);
  hir::policy_loss_options o;
  for (const auto v : {hir::input_validation::before_writing, hir::input_validation::fused}) {
    o.validation = v;
    dvec<double> grad(in.B * in.L, 7.0);
    CHECK_THROWS_WITH_AS((void)hir::policy_loss(be, d.tb, hir::view(d.adv), hir::view(grad), o),
                         "hir::policy_loss: old_logp[3, 0] = inf is not finite (a valid token)", hir::invalid_argument);
    const std::vector<double> g = hir::to_host(grad);
    // before_writing: untouched; fused: zero-filled (as on the CPU)
    const double expect = v == hir::input_validation::fused ? 0.0 : 7.0;
    for (double x : g)
      REQUIRE(x == expect);
    CHECK(ws.bytes_in_use() == 0);
  }

  const hir::group_storage<dtag> groups(hir::device, hir::group_layout::from_ids(in.ids));
  dvec<double> out(in.B * in.L, 7.0);
  hir::reinforce_pp_options ro;
  ro.kl = hir::kl_estimator::k1;
  ro.kl_coef = 0.1;
  CHECK_THROWS_WITH_AS(hir::reinforce_pp_advantages(be, hir::view(d.scores), d.tb, groups.ref(), hir::view(out), ro),
                       "hir::reinforce_pp_advantages: old_logp[3, 0] = inf is not finite", hir::invalid_argument);
  for (double x : hir::to_host(out))
    REQUIRE(x == 7.0);
  CHECK(ws.bytes_in_use() == 0);

  const dvec<std::uint64_t> masks = up(std::vector<std::uint64_t>{1, 0, 3, 1});
  const dvec<std::uint8_t> counts = up(std::vector<std::uint8_t>{1, 1, 2, 2});
  const hir::group_storage<dtag> pairs(hir::device, hir::group_layout::uniform(4, 2));
  dvec<float> adv(4, 7.0f);
  const hir::verdict_ref<hir::device_space> good{hir::view(masks), hir::view(counts)};
  CHECK_NOTHROW(hir::constraint_normalized_advantages(be, good, pairs.ref(), hir::view(adv))); // the groups agree
  const std::vector<float> before = hir::to_host(adv);
  const dvec<std::uint8_t> bad_counts = up(std::vector<std::uint8_t>{1, 1, 2, 3});
  const hir::verdict_ref<hir::device_space> bad{hir::view(masks), hir::view(bad_counts)};
  CHECK_THROWS_WITH_AS(hir::constraint_normalized_advantages(be, bad, pairs.ref(), hir::view(adv)),
                       "hir::constraint_normalized_advantages: group 1 has members with different constraint counts "
                       "(sample 2: 2, sample 3: 3)",
                       hir::invalid_argument);
  CHECK(hir::to_host(adv) == before);
  CHECK(ws.bytes_in_use() == 0);
}
