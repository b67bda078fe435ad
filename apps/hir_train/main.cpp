// SPDX-License-Identifier: Apache-2.0
// hir_train: the end-to-end trainer. Subcommands: train, resume, eval, compare, config (docs/trainer.md).
#include "report.hpp"

#include <CLI/CLI.hpp>

#include <iostream>

#if defined(_OPENMP)
#  include <omp.h>
#endif

namespace {

using namespace hir::train;

void log_line(const std::string& s) {
  std::fprintf(stderr, "%s\n", s.c_str());
}

trainer_config load(const std::string& path) {
  if (path.empty()) {
    trainer_config c = default_config();
    validate(c);
    return c;
  }
  return load_config(path);
}

void apply_threads(const trainer_config& c) {
#if defined(_OPENMP)
  if (c.threads)
    omp_set_num_threads(static_cast<int>(c.threads));
#else
  (void)c;
#endif
}

std::string run_dir(const std::string& out, const variant_config& v, std::uint64_t seed) {
  return out + "/" + v.name + "_seed" + std::to_string(seed);
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"hir_train: trains the reference transformer on a synthetic instruction-following task with GRPO, "
               "REINFORCE++ and Hindsight instruction Replay, and compares them"};
  app.require_subcommand(1);
  std::string config_path, out = "runs/default", variant_name, checkpoint;
  std::uint64_t seed = 0;
  std::vector<std::string> variant_names;
  std::vector<std::uint64_t> seeds;
  std::size_t stop_after = 0;
  long threads = -1;
  bool quiet = false;

  auto add_common = [&](CLI::App* s) {
    s->add_option("-c,--config", config_path, "JSON config file (defaults are built in; see `hir_train config`)");
    s->add_option("-o,--out", out, "output folder (the last one given wins)")
        ->capture_default_str()
        ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    s->add_flag("-q,--quiet", quiet, "no progress lines");
    s->add_option("-t,--threads", threads, "OpenMP threads (overrides the config's \"threads\"; 0 = all cores)")
        ->check(CLI::Range(0L, 4096L));
  };
  auto* train = app.add_subcommand("train", "warm-start (or load the cached base model) and train one variant");
  add_common(train);
  train->add_option("-v,--variant", variant_name, "variant name (default: the config's first variant)");
  train->add_option("-s,--seed", seed, "seed (default: the config's first seed)");
  train->add_option("--stop-after", stop_after, "stop after this many steps (to test interruption)");
  auto* resume = app.add_subcommand("resume", "continue an interrupted `train` from its last checkpoint");
  add_common(resume);
  resume->add_option("-v,--variant", variant_name, "variant name");
  resume->add_option("-s,--seed", seed, "seed");
  auto* eval = app.add_subcommand("eval", "evaluate the base model or a run's checkpoint on the held-out pool");
  add_common(eval);
  eval->add_option("-s,--seed", seed, "seed of the task suite (default: the config's first seed)");
  eval->add_option("--checkpoint", checkpoint, "checkpoint to evaluate (default: the base model)");
  auto* compare = app.add_subcommand("compare", "train several variants × seeds and write one table and plot");
  add_common(compare);
  compare->add_option("--variants", variant_names, "variant names (default: the config's variants)")->delimiter(',');
  compare->add_option("--seeds", seeds, "seeds (default: the config's seeds)")->delimiter(',');
  auto* show = app.add_subcommand("config", "print the effective config as JSON (defaults, or --config merged)");
  show->add_option("-c,--config", config_path, "JSON config file");
  auto* variants = app.add_subcommand("variants", "list the built-in variants");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    trainer_config cfg = load(config_path);
    if (threads >= 0)
      cfg.threads = static_cast<std::size_t>(threads);
    if (*variants) {
      for (const auto& v : builtin_variants())
        std::cout << nlohmann::json(v).dump() << '\n';
      return 0;
    }
    if (*show) {
      std::cout << nlohmann::json(cfg).dump(2) << '\n';
      return 0;
    }
    apply_threads(cfg);
    const auto log = [&](const std::string& s) {
      if (!quiet)
        log_line(s);
    };
    if (*train || *resume) {
      const variant_config v = variant_name.empty() ? cfg.variants.at(0) : find_variant(variant_name);
      if (variant_name.size()) {
        bool present = false;
        for (const auto& x : cfg.variants)
          present = present || x.name == v.name;
        if (!present)
          cfg.variants.push_back(v);
      }
      validate(cfg);
      const std::uint64_t s = seed ? seed : cfg.seeds.at(0);
      experiment ex(cfg, s, out, quiet);
      ex.prepare(log_line);
      rl_run run(ex, v, run_dir(out, v, s), quiet);
      const auto sum = run.run(static_cast<bool>(*resume), log_line, stop_after);
      std::printf("%s seed %llu: %zu steps, %zu rollouts, held-out sampled ILA %.3f -> %.3f, CLA %.3f -> %.3f\n"
                  "metrics: %s\n",
                  v.name.c_str(), static_cast<unsigned long long>(s), sum.steps, sum.rollouts, sum.base.sampled_ila,
                  sum.final.sampled_ila, sum.base.sampled_cla, sum.final.sampled_cla, run.csv_path().c_str());
      return 0;
    }
    if (*eval) {
      const std::uint64_t s = seed ? seed : cfg.seeds.at(0);
      experiment ex(cfg, s, out, quiet);
      ex.prepare(log);
      hir::nn::model<float> m(cfg.model_config(), 256, experiment::sequence_length(cfg));
      if (checkpoint.empty()) {
        std::copy(ex.base().parameters().begin(), ex.base().parameters().end(), m.parameters().begin());
      } else {
        hir::nn::adamw_state<float> o(m.params_layout());
        hir::nn::load_checkpoint(checkpoint, m, o);
      }
      rollout_engine eng(cfg, 256);
      const auto e =
          eng.evaluate(m, hir::toy::instructions_of(ex.suite().eval()), cfg.eval_samples_per_prompt, s * 31 + 7);
      std::printf("held-out (%zu sampled responses): sampled ILA %.4f CLA %.4f; greedy ILA %.4f CLA %.4f\n",
                  e.sampled_responses, e.sampled_ila, e.sampled_cla, e.greedy_ila, e.greedy_cla);
      return 0;
    }
    if (*compare) {
      if (!variant_names.empty()) {
        cfg.variants.clear();
        for (const auto& n : variant_names)
          cfg.variants.push_back(find_variant(n));
      }
      if (!seeds.empty())
        cfg.seeds = seeds;
      validate(cfg);
      std::string command = "hir_train compare";
      for (int i = 2; i < argc; ++i)
        command += std::string(" ") + argv[i];
      std::vector<run_summary> runs;
      const auto t0 = clock_type::now();
      for (const auto s : cfg.seeds) {
        experiment ex(cfg, s, out, quiet);
        ex.prepare(log_line);
        for (const auto& v : cfg.variants) {
          rl_run run(ex, v, run_dir(out, v, s), quiet);
          runs.push_back(run.run(false, log_line));
        }
      }
      const std::string md = write_report(cfg, runs, out, command);
      std::printf("%s\nwall time: %.0f s. Results: %s/results.md, plot: %s/ila_vs_rollouts.png, per-run CSVs under "
                  "%s/<variant>_seed<seed>/\n",
                  md.c_str(), seconds_since(t0), out.c_str(), out.c_str(), out.c_str());
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hir_train: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
