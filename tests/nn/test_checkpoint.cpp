// SPDX-License-Identifier: Apache-2.0
// hir::nn checkpoints: a round trip restores parameters, AdamW moments and step, trainer state and extra blobs
// exactly; truncated, corrupted, wrong-version and wrong-config files are clear errors that write nothing; a failed
// save leaves the previous checkpoint intact and no temporary file behind.
#include "nn_test_util.hpp"
#include "support/seed.hpp"

#include <doctest/doctest.h>

#include <hir/nn.hpp>

#include <cstdio>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#ifndef HIR_NN_TEST_DIR
#  define HIR_NN_TEST_DIR "."
#endif

namespace {

hir::nn::transformer_config cfg() {
  hir::nn::transformer_config c;
  c.vocab = 17;
  c.context = 9;
  c.channels = 8;
  c.layers = 2;
  c.heads = 2;
  return c;
}

std::vector<char> read_all(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<char>(std::istreambuf_iterator<char>(f), {});
}
void write_all(const std::string& p, const std::vector<char>& d) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(d.data(), static_cast<std::streamsize>(d.size()));
}
bool exists(const std::string& p) {
  return std::ifstream(p).good();
}

// Expects load to throw checkpoint_error whose message contains `what`, leaving the targets untouched.
void expect_load_error(const std::string& path, const std::string& what) {
  hir::nn::model<float> m(cfg(), 1);
  hir::nn::adamw_state<float> opt(m.params_layout());
  std::fill(m.parameters().begin(), m.parameters().end(), 7.f);
  try {
    hir::nn::load_checkpoint(path, m, opt);
    FAIL("no error for " << what);
  } catch (const hir::nn::checkpoint_error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find(what) != std::string::npos);
  }
  CHECK(std::all_of(m.parameters().begin(), m.parameters().end(), [](float x) { return x == 7.f; }));
  CHECK(opt.step() == 0);
}

} // namespace

TEST_CASE("nn checkpoint: round trip, corruption, truncation, config mismatch, atomic save") {
  const std::string dir = HIR_NN_TEST_DIR;
  const std::string path = dir + "/nn_test_checkpoint.bin";
  hir::nn::model<float> m(cfg(), 2);
  m.init_parameters(hir::test::seed(501));
  hir::nn::adamw_state<float> opt(m.params_layout());
  std::mt19937_64 rng(hir::test::seed(502));
  for (int i = 0; i < 3; ++i) {
    const auto g = hir::test::nn::uniform<float>(rng, m.params_layout().total);
    opt.update(hir::cpu, m.parameters(), g, {}, 1e-2);
  }
  hir::nn::checkpoint_state st;
  st.step = 42;
  st.rng_seed = 0xDEADBEEFCAFEull;
  st.rng_counter = 123456789;
  st.blobs.push_back({"trainer.counters", {1, 2, 3, 4, 5}});
  st.blobs.push_back({"empty", {}});
  hir::nn::save_checkpoint(path, m, opt, st);
  CHECK_FALSE(exists(path + ".tmp"));
  CHECK(hir::nn::read_checkpoint_config(path) == cfg());

  hir::nn::model<float> m2(cfg(), 1);
  hir::nn::adamw_state<float> opt2(m2.params_layout());
  const auto back = hir::nn::load_checkpoint(path, m2, opt2);
  CHECK(std::equal(m.parameters().begin(), m.parameters().end(), m2.parameters().begin()));
  CHECK(std::equal(opt.m().begin(), opt.m().end(), opt2.m().begin()));
  CHECK(std::equal(opt.v().begin(), opt.v().end(), opt2.v().begin()));
  CHECK(opt2.step() == 3);
  CHECK(back.step == 42);
  CHECK(back.rng_seed == st.rng_seed);
  CHECK(back.rng_counter == st.rng_counter);
  REQUIRE(back.find("trainer.counters") != nullptr);
  CHECK(back.find("trainer.counters")->data == st.blobs[0].data);
  REQUIRE(back.find("empty") != nullptr);
  CHECK(back.find("empty")->data.empty());
  CHECK(back.find("missing") == nullptr);

  const auto good = read_all(path);
  const std::string bad = dir + "/nn_test_checkpoint_bad.bin";
  SUBCASE("truncated") {
    for (std::size_t keep : {std::size_t{0}, std::size_t{6}, std::size_t{40}, good.size() / 2, good.size() - 1}) {
      write_all(bad, std::vector<char>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(keep)));
      expect_load_error(bad, keep < 8 ? "truncated" : "truncated");
    }
  }
  SUBCASE("corrupted payload byte") {
    auto d = good;
    d[good.size() / 2] ^= 0x10;
    write_all(bad, d);
    expect_load_error(bad, "checksum mismatch");
  }
  SUBCASE("bad magic, future version, trailing bytes") {
    auto d = good;
    d[0] = 'X';
    write_all(bad, d);
    expect_load_error(bad, "bad magic");
    d = good;
    d[8] = 2;
    write_all(bad, d);
    expect_load_error(bad, "version 2");
    d = good;
    d.push_back(0);
    write_all(bad, d);
    expect_load_error(bad, "unexpected bytes");
  }
  SUBCASE("config mismatch and scalar type mismatch") {
    auto c2 = cfg();
    c2.channels = 16;
    hir::nn::model<float> other(c2, 1);
    hir::nn::adamw_state<float> o2(other.params_layout());
    hir::nn::save_checkpoint(bad, other, o2, {});
    expect_load_error(bad, "config mismatch");
    hir::nn::model<double> md(cfg(), 1);
    hir::nn::adamw_state<double> od(md.params_layout());
    hir::nn::save_checkpoint(bad, md, od, {});
    expect_load_error(bad, "scalar size mismatch");
    expect_load_error(dir + "/does_not_exist.bin", "cannot open");
  }
  SUBCASE("a failed save keeps the previous checkpoint") {
    // Make "<path>.tmp" impossible to create: a directory of that name.
    const std::string blocked = dir + "/nn_test_blocked.bin";
    hir::nn::save_checkpoint(blocked, m, opt, st);
    const auto before = read_all(blocked);
    std::remove((blocked + ".tmp").c_str());
    REQUIRE(std::system(("mkdir -p '" + blocked + ".tmp'").c_str()) == 0);
    CHECK_THROWS_AS(hir::nn::save_checkpoint(blocked, m, opt, {}), hir::nn::checkpoint_error);
    CHECK(read_all(blocked) == before);
    REQUIRE(std::system(("rmdir '" + blocked + ".tmp'").c_str()) == 0);
    std::remove(blocked.c_str());
  }
  SUBCASE("reserved and duplicate blob names") {
    hir::nn::checkpoint_state s2;
    s2.blobs.push_back({"params", {}});
    CHECK_THROWS_AS(hir::nn::save_checkpoint(bad, m, opt, s2), hir::invalid_argument);
    s2.blobs[0].name = "x";
    s2.blobs.push_back({"x", {}});
    CHECK_THROWS_AS(hir::nn::save_checkpoint(bad, m, opt, s2), hir::invalid_argument);
  }
  std::remove(bad.c_str());
}
