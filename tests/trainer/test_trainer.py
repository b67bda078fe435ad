#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""End-to-end tests of hir_train on a short, easy configuration (run by ctest as hir.trainer.*).

  learns     held-out sampled ILA after RL is above the base model's (easy task: 1-2 constraints per instruction)
  resume     a run killed with SIGKILL after a checkpoint and resumed gives exactly the metrics of an uninterrupted run
  errors     a corrupted config or checkpoint gives a clear error (exit code 2, message naming the problem)
  outputs    metrics.csv, summary.json and compare's results parse and hold what they claim

Usage: test_trainer.py <hir_train> <work dir> <case>
"""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

EASY = {  # 1-2 constraints, large disjoint pools (a small RL pool overfits and does not transfer to held-out)
    "warm_pool": 3000, "rl_pool": 3000, "eval_pool": 128, "min_constraints": 1, "max_constraints": 2,
    "channels": 64, "layers": 2, "warm_steps": 400, "warm_batch": 64, "warm_lr": 3e-3,
    "prompts_per_step": 16, "rollout_budget": 12800, "eval_every": 25, "eval_samples_per_prompt": 8,
    "checkpoint_every": 4, "lr": 5e-4, "seeds": [1], "threads": 2,
}
TIMING = {"wall", "t_generate", "t_score", "t_select", "t_reference", "t_advantage_loss", "t_update"}


def run(exe, *args, check=True):
    p = subprocess.run([exe, *args], capture_output=True, text=True)
    if check and p.returncode != 0:
        sys.exit(f"FAILED: {' '.join(args)} exited {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def write_config(path, **over):
    cfg = dict(EASY, **over)
    with open(path, "w") as f:
        json.dump(cfg, f)
    return path


def base_dir(work):
    """A folder holding the warm-started base model, shared by the cases (made once)."""
    d = os.path.join(work, "base")
    os.makedirs(d, exist_ok=True)
    return d


def seeded_out(work, exe, name, cfg):
    """An output folder with the shared base model copied in (so each case does not warm-start again)."""
    base = base_dir(work)
    ck = os.path.join(base, "base_seed1.ckpt")
    if not os.path.exists(ck):
        run(exe, "eval", "-c", cfg, "-o", base, "-q")
    out = os.path.join(work, name)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    shutil.copy(ck, out)
    return out


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def check(cond, msg):
    if not cond:
        sys.exit("FAILED: " + msg)
    print("ok:", msg)


def case_learns(exe, work):
    cfg = write_config(os.path.join(work, "easy.json"))
    out = seeded_out(work, exe, "learns", cfg)
    run(exe, "train", "-c", cfg, "-o", out, "-v", "grpo_cla", "-q")  # measured: ILA 0.43 -> 0.59 in 100 steps
    s = json.load(open(os.path.join(out, "grpo_cla_seed1", "summary.json")))
    base, final = s["base"]["sampled_ila"], s["final"]["sampled_ila"]
    n = s["final"]["sampled_responses"]
    print(f"base ILA {base:.4f}, final ILA {final:.4f} over {n} sampled held-out responses")
    # Binomial standard error of a difference of two estimates at p ≈ 0.5 with n = 1024 each is ≈ 0.022: ask for
    # more than 3 of them.
    check(n >= 1000, "at least 1,000 held-out responses per evaluation")
    check(final > base + 0.07, f"held-out ILA rises above the base model's ({base:.3f} -> {final:.3f})")


def case_resume(exe, work):
    cfg = write_config(os.path.join(work, "resume.json"), rollout_budget=1920, eval_every=3, checkpoint_every=3)
    ref = seeded_out(work, exe, "uninterrupted", cfg)
    run(exe, "train", "-c", cfg, "-o", ref, "-v", "hir_code", "-q")
    out = seeded_out(work, exe, "interrupted", cfg)
    ck = os.path.join(out, "hir_code_seed1", "checkpoint.ckpt")
    p = subprocess.Popen([exe, "train", "-c", cfg, "-o", out, "-v", "hir_code", "-q"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not os.path.exists(ck) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it run past the checkpoint, into the next steps
    killed = p.poll() is None
    if killed:
        p.send_signal(signal.SIGKILL)
    p.wait()
    check(os.path.exists(ck), "a checkpoint was written before the interruption")
    print("killed mid-run" if killed else "the run finished before it could be killed (resume restarts at its end)")
    run(exe, "resume", "-c", cfg, "-o", out, "-v", "hir_code", "-q")
    a = read_csv(os.path.join(ref, "hir_code_seed1", "metrics.csv"))
    b = read_csv(os.path.join(out, "hir_code_seed1", "metrics.csv"))
    check(len(a) == len(b) and len(a) > 0, f"both runs have every step ({len(a)} vs {len(b)} rows)")
    for ra, rb in zip(a, b):
        for k in ra:
            if k in TIMING:
                continue
            if ra[k] != rb[k]:
                sys.exit(f"FAILED: step {ra['step']} column {k}: uninterrupted {ra[k]} vs resumed {rb[k]}")
    check(True, "the resumed run's metrics equal the uninterrupted run's, column by column")


def case_errors(exe, work):
    bad = os.path.join(work, "bad.json")
    with open(bad, "w") as f:
        f.write('{"warm_steps": 10, "warm_stpes": 3}')
    p = run(exe, "train", "-c", bad, "-o", os.path.join(work, "bad"), check=False)
    check(p.returncode == 2 and 'unknown key "warm_stpes"' in p.stderr, "a misspelled key is named: " + p.stderr.strip())
    with open(bad, "w") as f:
        f.write('{"warm_steps": 10,')
    p = run(exe, "train", "-c", bad, "-o", os.path.join(work, "bad"), check=False)
    check(p.returncode == 2 and "is not valid JSON" in p.stderr, "a truncated config is reported: " + p.stderr.strip())
    with open(bad, "w") as f:
        f.write('{"p_meet": 1.5}')
    p = run(exe, "train", "-c", bad, "-o", os.path.join(work, "bad"), check=False)
    check(p.returncode == 2 and '"p_meet" = 1.5' in p.stderr, "an out-of-range value is named: " + p.stderr.strip())
    with open(bad, "w") as f:
        f.write('{"variants": [{"base": "hir_eq", "name": "mine", "diversity": "token_max"}]}')
    p = run(exe, "train", "-c", bad, "-o", os.path.join(work, "bad"), check=False)
    check(p.returncode == 2 and 'variant "mine": diversity = "token_max"' in p.stderr,
          "a bad variant field is named: " + p.stderr.strip())

    cfg = write_config(os.path.join(work, "ck.json"), rollout_budget=256, checkpoint_every=2)
    out = seeded_out(work, exe, "corrupt", cfg)
    run(exe, "train", "-c", cfg, "-o", out, "-v", "grpo_ila", "-q")
    ck = os.path.join(out, "grpo_ila_seed1", "checkpoint.ckpt")
    data = bytearray(open(ck, "rb").read())
    data[len(data) // 2] ^= 0x5A
    open(ck, "wb").write(bytes(data))
    p = run(exe, "resume", "-c", cfg, "-o", out, "-v", "grpo_ila", check=False)
    check(p.returncode == 2 and "checksum" in p.stderr.lower(), "a corrupted checkpoint is reported: " + p.stderr.strip())
    open(ck, "wb").write(bytes(data[: len(data) // 3]))
    p = run(exe, "resume", "-c", cfg, "-o", out, "-v", "grpo_ila", check=False)
    check(p.returncode == 2 and ("truncated" in p.stderr.lower() or "checksum" in p.stderr.lower()),
          "a truncated checkpoint is reported: " + p.stderr.strip())
    p = run(exe, "resume", "-c", cfg, "-o", out, "-v", "hir_code", check=False)
    check(p.returncode == 2 and "no checkpoint" in p.stderr, "resuming a run that never started is an error")


def case_outputs(exe, work):
    cfg = write_config(os.path.join(work, "out.json"), rollout_budget=1024, eval_every=2)
    out = seeded_out(work, exe, "compare", cfg)
    p = run(exe, "compare", "-c", cfg, "-o", out, "--variants", "grpo_ila,hir_code", "--threads", "1", "-q")
    rows = read_csv(os.path.join(out, "grpo_ila_seed1", "metrics.csv"))
    check(len(rows) == 1024 // 128, f"one CSV row per step ({len(rows)})")
    for r in rows:
        for k, v in r.items():
            if v != "":
                float(v)
    check(all(float(r["rollouts"]) == 128 * (i + 1) for i, r in enumerate(rows)), "rollouts count up by B·m per step")
    hrows = read_csv(os.path.join(out, "hir_code_seed1", "metrics.csv"))
    check(all(0 < int(r["replays"]) <= 32 for r in hrows), "HiR replays at most (8 − 6)·B per step, and some")
    s = json.load(open(os.path.join(out, "hir_code_seed1", "summary.json")))
    check(s["variant"]["name"] == "hir_code" and s["rollouts"] == 96 * len(hrows), "summary.json parses and counts")
    res = json.load(open(os.path.join(out, "results.json")))
    check({r["variant"] for r in res} == {"grpo_ila", "hir_code"}, "results.json lists both variants")
    md = open(os.path.join(out, "results.md")).read()
    check("Rollouts to first reach" in md and "hir_code" in md, "results.md holds the tables")
    if shutil.which("gnuplot"):
        check(os.path.getsize(os.path.join(out, "ila_vs_rollouts.png")) > 1000, "the plot was drawn")
    check("results.md" in p.stdout, "compare prints where the results are")


if __name__ == "__main__":
    exe, work, case = sys.argv[1], sys.argv[2], sys.argv[3]
    os.makedirs(work, exist_ok=True)
    {"base": lambda exe, work: base_dir(work) and seeded_out(work, exe, "base_check",
                                                               write_config(os.path.join(work, "easy.json"))),
     "learns": case_learns, "resume": case_resume, "errors": case_errors, "outputs": case_outputs}[case](exe, work)
    print("passed:", case)
