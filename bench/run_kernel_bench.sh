#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds hir's release benchmark configuration, runs the advantage benchmarks (group advantages, REINFORCE++), the
# policy-loss benchmark when it exists, and the PyTorch peer (bench/advantages/torch_peer_advantages.py) at
# PyTorch's best settings on the same sizes, then prints a markdown table of hir / triad (the STREAM triad over the
# same bytes, measured in the same process) and hir / PyTorch ratios, with the machine and the settings used.
#
#   bench/run_kernel_bench.sh                 # full run (about 3–5 minutes on 2 cores)
#   QUICK=1 bench/run_kernel_bench.sh         # fewer repetitions, for a smoke test
#   BUILD_DIR=... MIN_TIME=0.2 bench/run_kernel_bench.sh
#   REPORT_ONLY=1 bench/run_kernel_bench.sh   # reprint the table from the last run's results
#
# Figures are "best iteration" bandwidths: on a shared machine the fastest iteration is the least disturbed one, and
# both sides of every ratio are measured the same way in the same run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/kernel-bench}"
MIN_TIME="${MIN_TIME:-0.1}"
PEER_RUNS="${PEER_RUNS:-15}"
if [[ "${QUICK:-0}" != 0 ]]; then
  MIN_TIME=0.01
  PEER_RUNS=3
fi
JOBS="${JOBS:-2}"
OUT="$BUILD_DIR/results"
mkdir -p "$OUT"

if [[ "${REPORT_ONLY:-0}" == 0 ]]; then
echo "== configure and build ($BUILD_DIR)" >&2
cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHIR_BUILD_BENCHMARKS=ON \
  -DHIR_BUILD_TESTS=OFF -DHIR_BUILD_EXAMPLES=OFF -DHIR_BUILD_APPS=OFF -DHIR_DEVICE_SYSTEM=CPP >"$OUT/configure.log"
targets=(bench_advantages bench_reinforce_pp)
cmake --build "$BUILD_DIR" --target "${targets[@]}" -j"$JOBS" >"$OUT/build.log"
if [[ -f "$ROOT/bench/losses/CMakeLists.txt" ]]; then # another area's benchmark: optional
  if cmake --build "$BUILD_DIR" --target bench_losses -j"$JOBS" >>"$OUT/build.log" 2>&1; then
    targets+=(bench_losses)
  else
    echo "bench_losses does not build; skipping it (see $OUT/build.log)" >&2
  fi
fi

run_bench() { # name filter
  local exe
  exe="$(find "$BUILD_DIR/bench" -type f -name "$1" -perm -u+x | head -n1)"
  if [[ -z "$exe" ]]; then
    echo "missing $1" >&2
    return
  fi
  echo "== $1 ($2)" >&2
  "$exe" --benchmark_min_time="$MIN_TIME" --benchmark_filter="$2" --benchmark_format=json \
    --benchmark_out="$OUT/$1.json" --benchmark_out_format=json >/dev/null
}
run_bench bench_advantages 'BM_GroupAdvantages'
run_bench bench_reinforce_pp 'BM_ReinforcePP'
if [[ " ${targets[*]} " == *" bench_losses "* ]]; then
  run_bench bench_losses 'BM_PolicyLoss|BM_LossTriad'
fi

# PyTorch at its best settings on these machines (docs/performance.md): AVX-512 OpenBLAS kernels (no
# OPENBLAS_CORETYPE override), one BLAS thread per torch thread, glibc's malloc thresholds raised so big buffers are
# not returned to the kernel and re-faulted every call.
PEER=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1
  GLIBC_TUNABLES=glibc.malloc.trim_threshold=1073741824:glibc.malloc.mmap_threshold=1073741824
  /usr/bin/python3 "$ROOT/bench/advantages/torch_peer_advantages.py" --runs "$PEER_RUNS")
echo "== PyTorch peer, 1 thread" >&2
"${PEER[@]}" --threads 1 >"$OUT/torch_t1.txt"
echo "== PyTorch peer, 2 threads (GRPO only)" >&2
"${PEER[@]}" --threads 2 --only grpo --runs 5 >"$OUT/torch_t2.txt"
fi

/usr/bin/python3 - "$OUT" <<'PY'
import json, os, re, subprocess, sys, datetime
out = sys.argv[1]

def load(name):
    p = os.path.join(out, name + ".json")
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [b for b in json.load(f)["benchmarks"] if b.get("run_type", "iteration") == "iteration"]

def args(name):
    return dict(re.findall(r"(\w+):(\d+)", name))

torch = {}
settings = "?"
for t in ("torch_t1.txt", "torch_t2.txt"):
    p = os.path.join(out, t)
    if os.path.exists(p):
        for line in open(p):
            if line.startswith("RESULT"):
                torch[line.split()[1]] = {k: float(v) for k, v in re.findall(r"(median|min|max)=\s*([-+.\deE]+)", line)}
            elif line.startswith("SETTINGS"):
                settings = line.strip()

def peer(name, unit="GBps"):
    r = torch.get(f"{name}_{unit}")
    if r is None:
        return None
    return r["max"] if unit == "GBps" else r["min"]  # the best run (highest GB/s, lowest time)

def fmt(x, d=2):
    return "–" if x is None else f"{x:.{d}f}"

cpu = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p' | head -1"], capture_output=True,
                     text=True).stdout.strip()
print(f"Machine: {cpu}, {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the end; "
      f"{datetime.datetime.now().isoformat(timespec='minutes')}")
print(f"PyTorch peer: {settings}")
print("hir figures: fastest iteration (thread CPU time on 1 thread, wall time on 2), STREAM triad over the same bytes "
      "timed the same way in the same process; PyTorch: fastest of its runs.\n")

print("### Group advantages (GRPO, verl_grpo preset, float, uniform groups), bytes = 8·N\n")
print("| N | G | threads | hir best GB/s | triad GB/s | hir/triad | PyTorch literal GB/s | PyTorch best GB/s "
      "| hir/PyTorch best | hir/PyTorch literal | allocs/call |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for b in load("bench_advantages"):
    if not b["name"].startswith("BM_GroupAdvantages<"):
        continue
    a = args(b["name"])
    n, g, t = int(a["N"]), int(a["G"]), int(a["threads"])
    lit = peer(f"torch_grpo_N{n}_G{g}_t{t}_literal")
    best = peer(f"torch_grpo_N{n}_G{g}_t{t}_best")
    h = b["best_GBps"]
    print(f"| {n:,} | {g} | {t} | {h:.2f} | {b['triad_GBps']:.2f} | {b['triad_ratio']:.2f} | {fmt(lit)} | "
          f"{fmt(best)} | {fmt(h / best if best else None, 1)} | {fmt(h / lit if lit else None, 0)} | "
          f"{b['allocs']:.0f} |")
nv = [b for b in load("bench_advantages") if b["name"].startswith("BM_GroupAdvantagesFused")]
if nv:
    print("\nWith input_validation::fused (each block checked just before it is written; one read pass fewer), "
          "1 thread:\n")
    print("| N | G | best GB/s | triad GB/s | ratio |")
    print("|---|---|---|---|---|")
    for b in nv:
        a = args(b["name"])
        print(f"| {int(a['N']):,} | {a['G']} | {b['best_GBps']:.2f} | {b['triad_GBps']:.2f} | "
              f"{b['triad_ratio']:.2f} |")

print("\n### REINFORCE++ (k1 KL in the reward, β = 0.001, γ = 1, whitening), 1 thread, bytes = 13 per token\n")
print("| B × L | baseline | hir ns/token | hir best GB/s | triad GB/s | hir/triad | PyTorch verl loop ns/token "
      "| PyTorch cumsum ns/token | hir/PyTorch best | allocs/call |")
print("|---|---|---|---|---|---|---|---|---|---|")
for b in load("bench_reinforce_pp"):
    a = args(b["name"])
    B, L, base = int(a["B"]), int(a["L"]), int(a["baseline"])
    tag = f"torch_reinforce_pp_B{B}_L{L}_t1"
    if base:
        lit, fast = None, peer(tag + "_baseline", "ns_per_elem")
    else:
        lit, fast = peer(tag + "_literal", "ns_per_elem"), peer(tag + "_cumsum", "ns_per_elem")
    h = b["ns_per_token"]
    print(f"| {B} × {L} | {'group mean of return' if base else 'none'} | {h:.3f} | {b['best_GBps']:.2f} | "
          f"{b['triad_GBps']:.2f} | {b['triad_ratio']:.2f} | {fmt(lit, 1)} | {fmt(fast, 1)} | "
          f"{fmt(fast / h if fast else None, 1)} | {b['allocs']:.0f} |")

loss = load("bench_losses")
if loss:
    print("\n### Policy loss (bench_losses: PPO clip + k3 KL, forward + backward), 1 thread\n")
    print("hir: fastest iteration (best_GBps) and the triad over the same bytes timed the same way right after it "
          "(triad_GBps); mean: Google Benchmark's mean bytes/s over BM_LossTriad's mean at the same bytes.\n")
    print("| B × L | validation | per-token adv | hir ns/token | hir best GB/s | triad GB/s | hir/triad | mean ratio "
          "| PyTorch ns/token | hir/PyTorch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    triads = {int(args(b["name"])["bytes"]): b["bytes_per_second"] for b in loss if b["name"].startswith("BM_LossTriad")}
    for b in loss:
        if not b["name"].startswith("BM_PolicyLoss"):
            continue
        a = args(b["name"])
        B, L, fused, tok = int(a["B"]), int(a["L"]), int(a["fused"]), int(a["token_adv"])
        tri = triads.get((21 if tok else 17) * B * L)
        h_ns = b.get("ns_per_token")
        torch_ns = peer(f"torch_ppo_loss_B{B}_L{L}_t1_fwd_bwd", "ns_per_elem") if tok else None
        print(f"| {B} × {L} | {'fused' if fused else 'before writing'} | {'yes' if tok else 'no'} | {fmt(h_ns, 3)} | "
              f"{b['best_GBps']:.2f} | {b['triad_GBps']:.2f} | {b['triad_ratio']:.2f} | "
              f"{fmt(b['bytes_per_second'] / tri if tri else None)} | {fmt(torch_ns, 1)} | "
              f"{fmt(torch_ns / h_ns if torch_ns and h_ns else None, 1)} |")
PY
