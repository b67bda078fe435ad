#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Time per RL step of hir_train beside the PyTorch prototype of the same experiment (shared/peers/torch-miniature),
# measured side by side in one run of this script, on the same work: 16 prompts per step, 8 rollouts per prompt
# (GRPO-ILA) or 6 rollouts + replays (HiR, authors' code preset), responses of at most 20 tokens, a GPT of width 96,
# 3 layers, 4 heads, 2 optimizer steps per batch, each side starting from its own 1,500-step warm start.
#
# The runs alternate (peer, hir 1 thread, hir 2 threads, then again) so that a change of load on this shared machine
# hits both sides; every figure is the mean over the measured steps of the time spent in the step's phases (held-out
# evaluations excluded on both sides). The peer runs at its best settings (one torch thread, as its README measured;
# one OpenBLAS thread; glibc malloc thresholds raised; OPENBLAS_CORETYPE unset).
#
# Usage: bench/trainer/run_step_bench.sh            STEPS=30 (measured steps per run), ROUNDS=2, PEER_SFT_STEPS=1500
#        REPORT_ONLY=1 bench/trainer/run_step_bench.sh   reprints the table of the last run
# Writes build/step-bench/ (the peer's work folder, hir's runs and results.txt).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
steps="${STEPS:-30}"
rounds="${ROUNDS:-2}"
sft_steps="${PEER_SFT_STEPS:-1500}"
peer="${HIR_SHARED_DIR:-$root/../shared}/peers/torch-miniature"
work="$root/build/step-bench"
exe="$root/build/release/apps/hir_train/hir_train"
py=/usr/bin/python3
mkdir -p "$work/peer" "$work/hir"

if [[ "${REPORT_ONLY:-0}" != 1 ]]; then
  [[ -d "$peer" ]] || { echo "run_step_bench: the peer is not at $peer (set HIR_SHARED_DIR)" >&2; exit 1; }
  export PATH="/usr/local/cuda/bin:$PATH"
  cmake --preset release >/dev/null
  cmake --build --preset release --target hir_train -j "$(nproc)" >/dev/null

  # The peer at its best settings (shared/docs/performance.md); its work folder is ours (shared/ is read-only).
  peer_env=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
            GLIBC_TUNABLES=glibc.malloc.trim_threshold=1073741824:glibc.malloc.mmap_threshold=1073741824
            HIR_PEER_WORK="$work/peer")
  if [[ ! -f "$work/peer/data/base.pt" ]]; then
    echo "peer: warm start ($sft_steps steps; about 4 minutes on a quiet machine)"
    (cd "$peer" && "${peer_env[@]}" $py sft.py --steps "$sft_steps" >"$work/peer/sft.log" 2>&1)
  fi
  # hir: the same recipe (built-in defaults: 1,500 warm-start steps of 128), cached in the run folder.
  cat >"$work/hir/config.json" <<EOF
{"rollout_budget": $((steps * 128)), "eval_every": 100000, "checkpoint_every": 100000}
EOF
  rm -f "$work"/timings.txt
  for round in $(seq 1 "$rounds"); do
    for method in grpo_ila hir; do
      echo "round $round: peer $method"
      (cd "$peer" && "${peer_env[@]}" $py rl.py --method "$method" --seed 0 --steps "$steps" --eval_every 100000 \
        --n_eval 64 --eval_samples 1 --tag "speed_${method}_r$round" >"$work/peer/${method}_r$round.log" 2>&1)
      echo "peer $method $round $work/peer/runs/speed_${method}_r$round/metrics.csv" >>"$work/timings.txt"
      variant=$([[ $method == hir ]] && echo hir_code || echo grpo_ila)
      for threads in 1 2; do
        echo "round $round: hir $variant, $threads thread(s)"
        sed "s/}$/, \"threads\": $threads}/" "$work/hir/config.json" >"$work/hir/config_t$threads.json"
        rm -rf "$work/hir/run/${variant}_seed1"
        "$exe" train -q -c "$work/hir/config_t$threads.json" -v "$variant" -o "$work/hir/run" \
          >"$work/hir/${variant}_t${threads}_r$round.log" 2>&1
        cp "$work/hir/run/${variant}_seed1/metrics.csv" "$work/hir/${variant}_t${threads}_r$round.csv"
        echo "hir$threads $method $round $work/hir/${variant}_t${threads}_r$round.csv" >>"$work/timings.txt"
      done
    done
  done
  uptime >"$work/load.txt"
fi

$py - "$work" <<'EOF' | tee "$work/results.txt"
import csv, sys, os, statistics
work = sys.argv[1]
runs = {}
for line in open(os.path.join(work, "timings.txt")):
    side, method, rnd, path = line.split()
    rows = list(csv.DictReader(open(path)))
    rows = [r for r in rows if r["step"] not in ("", "0")]
    if side == "peer":
        cols = {"generate": ["t_gen"], "score": ["t_score"], "reference": ["t_ref"],
                "select+adv+loss": ["t_select_adv"], "update": ["t_update"]}
    else:
        cols = {"generate": ["t_generate"], "score": ["t_score"], "reference": ["t_reference"],
                "select+adv+loss": ["t_select", "t_advantage_loss"], "update": ["t_update"]}
    per = {k: statistics.mean(sum(float(r[c]) for c in cs) for r in rows) for k, cs in cols.items()}
    per["total"] = sum(per.values())
    runs.setdefault((side, method), []).append(per)
names = {"peer": "PyTorch peer, 1 thread", "hir1": "hir_train, 1 thread", "hir2": "hir_train, 2 threads"}
phases = ["generate", "score", "reference", "select+adv+loss", "update", "total"]
print("Seconds per RL step (mean over the measured steps; best round), 16 prompts x 8 rollouts (grpo_ila) or "
      "x 6 + replays (hir)")
print()
print("| method | side | " + " | ".join(phases) + " | peer / side |")
print("|---|---|" + "---|" * (len(phases) + 1))
for method in ("grpo_ila", "hir"):
    best = {side: min(runs[(side, method)], key=lambda p: p["total"]) for side in ("peer", "hir1", "hir2")
            if (side, method) in runs}
    for side, p in best.items():
        ratio = best["peer"]["total"] / p["total"] if "peer" in best else float("nan")
        print(f"| {method} | {names[side]} | " + " | ".join(f"{p[k]:.4f}" for k in phases) + f" | {ratio:.1f}x |")
print()
allr = {k: [round(p["total"], 4) for p in v] for k, v in runs.items()}
print("every round's total:", "; ".join(f"{m} {names[s]}: {v}" for (s, m), v in sorted(allr.items())))
load = os.path.join(work, "load.txt")
if os.path.exists(load):
    print("load at the end of the run:", open(load).read().strip())
EOF
