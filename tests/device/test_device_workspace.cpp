// SPDX-License-Identifier: Apache-2.0
// hir::device_workspace: the caching allocator itself (blocks, reuse, merging, reserve, release, move), and the device
// algorithms run with `hir::device.with(ws)`: after a first call, repeated calls with the same sizes make no new device
// allocation (counted by the workspace), give the same results as calls without a workspace, and bad input still
// throws before anything is written, with every scratch block returned. Covers policy_loss, reinforce_pp_advantages,
// constraint_normalized_advantages, select_replays, build_replay_batch, sequence_logp(_backward),
// build_preference_pairs and preference_loss (results compared bit for bit).
#include "relabel/relabel_support.hpp"
#include "support/backends.hpp"

#include <hir/device.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <tuple>
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

/// The bits of a device array of doubles (NaN payloads and −0 included), for bitwise comparisons.
std::vector<std::uint64_t> bits(const dvec<double>& v) {
  const std::vector<double> h = hir::to_host(v);
  std::vector<std::uint64_t> b(h.size());
  if (!h.empty())
    std::memcpy(b.data(), h.data(), h.size() * sizeof(double));
  return b;
}

/// Every array of a replay batch, as comparable host vectors.
struct batch_fields {
  std::vector<std::int64_t> prompt, origin, source_row, replay_row, group;
  std::vector<std::uint64_t> constraint_mask, reward, old_logp, ref_logp, weight;
  std::vector<std::uint8_t> constraint_count, is_replay, mask;
  std::vector<std::int32_t> tokens;
  std::size_t batch, num_originals, num_replays;
  bool operator==(const batch_fields& o) const {
    return prompt == o.prompt && origin == o.origin && source_row == o.source_row && replay_row == o.replay_row &&
           group == o.group && constraint_mask == o.constraint_mask && reward == o.reward && old_logp == o.old_logp &&
           ref_logp == o.ref_logp && weight == o.weight && constraint_count == o.constraint_count &&
           is_replay == o.is_replay && mask == o.mask && tokens == o.tokens && batch == o.batch &&
           num_originals == o.num_originals && num_replays == o.num_replays;
  }
};
batch_fields fields_of(const hir::replay_batch<double, dtag>& b) {
  return {hir::to_host(b.prompt),
          hir::to_host(b.origin),
          hir::to_host(b.source_row),
          hir::to_host(b.replay_row),
          hir::to_host(b.group),
          hir::to_host(b.constraint_mask),
          bits(b.reward),
          bits(b.old_logp),
          bits(b.ref_logp),
          bits(b.weight),
          hir::to_host(b.constraint_count),
          hir::to_host(b.is_replay),
          hir::to_host(b.mask),
          hir::to_host(b.tokens),
          b.batch,
          b.num_originals,
          b.num_replays};
}

/// A rollout batch on the device with replays of its eligible responses (in descending order) and recomputed
/// log-probabilities for them.
struct replay_inputs {
  hir::test::host_rollouts h;
  std::vector<std::int64_t> idx;
  std::vector<double> rec_old, rec_ref;
  explicit replay_inputs(std::uint64_t seed) {
    std::mt19937_64 rng(seed);
    h = hir::test::random_rollouts(rng, 5, 4, 6);
    std::uniform_real_distribution<double> lp(-4.0, 0.0);
    for (std::size_t i = h.N; i-- > 0;) {
      const int met = hir::test::met_count(h.masks[i], h.counts[i]);
      if (met > 0 && met < static_cast<int>(h.counts[i]))
        idx.push_back(static_cast<std::int64_t>(i));
    }
    for (std::size_t k = 0; k < idx.size() * h.L; ++k) {
      rec_old.push_back(lp(rng));
      rec_ref.push_back(lp(rng));
    }
  }
};

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

TEST_CASE("device_workspace: build_replay_batch reuses the workspace") {
  const replay_inputs in(6);
  REQUIRE(in.idx.size() >= 2);
  const hir::test::backend_rollouts<dtag> r(in.h);
  const dvec<std::int64_t> d_idx = up(in.idx);
  const dvec<double> d_old = up(in.rec_old), d_ref = up(in.rec_ref);
  const hir::replay_logp_ref<double, hir::device_space> rec{hir::view(d_old), hir::view(d_ref)};
  for (const auto placement : {hir::replay_placement::after_originals, hir::replay_placement::after_source})
    for (const auto old : {hir::replay_old_logp::copy_from_source, hir::replay_old_logp::truncated_is})
      for (const auto importance : {hir::importance_level::token, hir::importance_level::sequence}) {
        CAPTURE(static_cast<int>(placement));
        CAPTURE(static_cast<int>(old));
        CAPTURE(static_cast<int>(importance));
        hir::replay_batch_options o;
        o.placement = placement;
        o.old_logp = old;
        o.importance = importance;
        o.ref_logp = hir::replay_ref_logp::recomputed;
        o.grouping = hir::replay_grouping::own_group;
        check_reuse([&](const dtag& be) {
          hir::replay_batch<double, dtag> out;
          hir::build_replay_batch(be, r.ref(), hir::view(d_idx), out, o, rec);
          return fields_of(out);
        });
      }
  // Without constraint counts the rollout check finds each prompt's first response (first_of_prompt's scratch).
  hir::test::host_rollouts h2 = in.h;
  h2.constraint_counts.clear();
  const hir::test::backend_rollouts<dtag> r2(h2);
  check_reuse([&](const dtag& be) {
    hir::replay_batch<double, dtag> out;
    hir::build_replay_batch(be, r2.ref(), hir::view(d_idx), out);
    return fields_of(out);
  });
}

TEST_CASE("device_workspace: sequence_logp and its backward pass reuse the workspace") {
  const token_inputs in = random_tokens(11, 9, 7);
  const dvec<double> logp = up(in.old_logp), gseq = up(in.adv);
  const dvec<std::uint8_t> mask = up(in.mask);
  for (const auto red : {hir::sequence_reduction::sum, hir::sequence_reduction::mean}) {
    CAPTURE(static_cast<int>(red));
    check_reuse([&](const dtag& be) {
      dvec<double> seq(in.B, 7.0);
      hir::sequence_logp(be, hir::view(logp), hir::view(mask), in.L, hir::view(seq), red);
      return bits(seq);
    });
    // sum has no scratch of hir's own (and no Thrust temporaries): only the mean's counts need a workspace
    if (red == hir::sequence_reduction::mean)
      check_reuse([&](const dtag& be) {
        dvec<double> grad(in.B * in.L, 7.0);
        hir::sequence_logp_backward(be, hir::view(gseq), hir::view(mask), in.L, hir::view(grad), red);
        return bits(grad);
      });
  }
}

TEST_CASE("device_workspace: build_preference_pairs and preference_loss reuse the workspace") {
  const replay_inputs in(8);
  const hir::test::backend_rollouts<dtag> r(in.h);
  const dvec<std::int64_t> d_idx = up(in.idx);
  hir::replay_batch<double, dtag> batch;
  hir::build_replay_batch(hir::device, r.ref(), hir::view(d_idx), batch);
  using pairs_host = std::tuple<std::vector<std::int64_t>, std::vector<std::int64_t>, std::vector<std::uint8_t>,
                                std::size_t, std::size_t>;
  std::size_t response_pairs = 0;
  for (const auto pairing : {hir::response_pairing::all_pairs, hir::response_pairing::round_robin}) {
    hir::preference_pair_options o;
    o.pairing = pairing;
    o.success_threshold = 0.6;
    check_reuse([&](const dtag& be) {
      const hir::preference_pairs<dtag> p = hir::build_preference_pairs(be, batch.ref(), o);
      response_pairs = p.num_response;
      return pairs_host{hir::to_host(p.chosen), hir::to_host(p.rejected), hir::to_host(p.level), p.num_response,
                        p.num_instruction};
    });
    CHECK(response_pairs > 0); // the response level's sorts and buckets ran
  }

  const hir::preference_pairs<dtag> pairs = hir::build_preference_pairs(hir::device, batch.ref());
  REQUIRE(pairs.size() > 0);
  std::mt19937_64 rng(9);
  std::uniform_real_distribution<double> d(-30, -1);
  std::vector<double> lp(batch.batch), ref(batch.batch);
  for (auto& v : lp)
    v = d(rng);
  for (auto& v : ref)
    v = d(rng);
  const dvec<double> d_lp = up(lp), d_ref = up(ref);
  for (const auto kind : {hir::preference_loss_kind::sigmoid, hir::preference_loss_kind::ipo}) {
    hir::preference_loss_options o;
    o.kind = kind;
    o.beta = 0.1;
    check_reuse([&](const dtag& be) {
      dvec<double> grad(batch.batch, 3.0);
      const hir::preference_loss_result res =
          hir::preference_loss(be, pairs.ref(), hir::view(d_lp), hir::view(d_ref), hir::view(grad), o);
      std::vector<std::uint64_t> out = bits(grad);
      for (const double x : {res.loss, res.response_loss, res.instruction_loss, res.response_accuracy,
                             res.instruction_accuracy, res.response_margin, res.instruction_margin}) {
        std::uint64_t b;
        std::memcpy(&b, &x, sizeof b);
        out.push_back(b);
      }
      out.push_back(res.response_pairs);
      out.push_back(res.instruction_pairs);
      return out;
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

  // build_replay_batch: a repeated replay index; the batch built before is left as it was.
  const replay_inputs ri(6);
  REQUIRE(ri.idx.size() >= 2);
  const hir::test::backend_rollouts<dtag> r(ri.h);
  const dvec<std::int64_t> d_idx = up(ri.idx);
  hir::replay_batch<double, dtag> batch;
  hir::build_replay_batch(be, r.ref(), hir::view(d_idx), batch);
  CHECK(ws.bytes_in_use() == 0);
  const batch_fields built = fields_of(batch);
  std::vector<std::int64_t> repeated = ri.idx;
  repeated.back() = repeated.front();
  const dvec<std::int64_t> d_repeated = up(repeated);
  CHECK_THROWS_AS(hir::build_replay_batch(be, r.ref(), hir::view(d_repeated), batch), hir::invalid_argument);
  CHECK(fields_of(batch) == built);
  CHECK(ws.bytes_in_use() == 0);
  // ... and a prompt index out of range in the rollouts (checked with first_of_prompt's scratch).
  hir::test::host_rollouts h2 = ri.h;
  h2.constraint_counts.clear();
  h2.prompt[1] = 99;
  const hir::test::backend_rollouts<dtag> r2(h2);
  CHECK_THROWS_AS(hir::build_replay_batch(be, r2.ref(), hir::view(d_idx), batch), hir::invalid_argument);
  CHECK(fields_of(batch) == built);
  CHECK(ws.bytes_in_use() == 0);

  // sequence_logp: a mask entry of 2; the output is untouched.
  std::vector<std::uint8_t> m2 = in.mask;
  m2[4 * 7 + 1] = 2;
  const dvec<std::uint8_t> d_m2 = up(m2);
  dvec<double> seq(in.B, 7.0);
  CHECK_THROWS_AS(hir::sequence_logp(be, hir::view(d.old_logp), hir::view(d_m2), in.L, hir::view(seq),
                                     hir::sequence_reduction::mean),
                  hir::invalid_argument);
  for (double x : hir::to_host(seq))
    REQUIRE(x == 7.0);
  CHECK(ws.bytes_in_use() == 0);

  // build_preference_pairs: a non-finite reward.
  hir::replay_batch_ref<double, hir::device_space> rows = batch.ref();
  std::vector<double> reward = hir::to_host(batch.reward);
  reward[0] = std::numeric_limits<double>::quiet_NaN();
  const dvec<double> d_reward = up(reward);
  rows.reward = hir::view(d_reward);
  CHECK_THROWS_AS((void)hir::build_preference_pairs(be, rows), hir::invalid_argument);
  CHECK(ws.bytes_in_use() == 0);

  // preference_loss: a pair row out of range; the gradient is untouched.
  const dvec<std::int64_t> chosen = up(std::vector<std::int64_t>{0, 1, 2}),
                           rejected = up(std::vector<std::int64_t>{1, 9, 0});
  const dvec<std::uint8_t> level = up(std::vector<std::uint8_t>{0, 1, 0});
  const hir::preference_pairs_ref<hir::device_space> bad_pairs{hir::view(chosen), hir::view(rejected),
                                                               hir::view(level)};
  const dvec<double> lp3 = up(std::vector<double>{-1.0, -2.0, -3.0});
  dvec<double> grad3(3, 7.0);
  CHECK_THROWS_AS((void)hir::preference_loss(be, bad_pairs, hir::view(lp3),
                                             hir::span<const double, hir::device_space>{}, hir::view(grad3)),
                  hir::invalid_argument);
  for (double x : hir::to_host(grad3))
    REQUIRE(x == 7.0);
  CHECK(ws.bytes_in_use() == 0);
}
