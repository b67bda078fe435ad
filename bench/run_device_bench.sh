#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The device backend on Thrust's OMP system beside the CPU backend, on this machine's CPUs. Builds (Release, -O3
# -march=native, HIR_DEVICE_SYSTEM=OMP) bench_device_omp (hir::device) and bench_device_cpu_peer (the same source
# on hir::cpu: same benchmarks, sizes and data), runs both with OMP_NUM_THREADS = 1 and 2, and prints one markdown
# table: each algorithm's bandwidth on the device backend, the device copy at the same N measured in the same run,
# the fraction of that copy, the CPU backend's figures (and its own copy's) and the ratio device / CPU.
#
#   bench/run_device_bench.sh                  # full run (about 5–8 minutes on 2 loaded cores)
#   QUICK=1 bench/run_device_bench.sh          # smoke test: the 1e6 sizes only, short runs, 2 threads only
#   REPORT_ONLY=1 bench/run_device_bench.sh    # reprint the table from the last run's results
#   BUILD_DIR=... MIN_TIME=0.5 REPS=2 THREADS="1 2" JOBS=2 bench/run_device_bench.sh
#
# Figures are the fastest iteration over REPS repetitions (thread CPU time on one thread, wall time on two: see
# bench/device/bench_device.cpp); both sides of every ratio are timed the same way in the same process. The GPU
# version of this table (CUDA events, the issue's targets) is printed by scripts/gpu_check.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/device-bench}"
MIN_TIME="${MIN_TIME:-0.5}"
REPS="${REPS:-2}"
THREADS="${THREADS:-1 2}"
FILTER="${FILTER:-}"
if [[ "${QUICK:-0}" != 0 ]]; then
  MIN_TIME=0.02
  REPS=1
  THREADS="${QUICK_THREADS:-2}"
  FILTER='(N:1000000/|N:1000000$|B:1000/|n:100000/|n:1000000/alloc:0)'
fi
JOBS="${JOBS:-2}"
OUT="$BUILD_DIR/results"

if [[ "${REPORT_ONLY:-0}" == 0 ]]; then
  mkdir -p "$OUT"
  rm -f "$OUT"/*.json "$OUT"/run.txt
  echo "== configure and build ($BUILD_DIR)" >&2
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DHIR_BUILD_BENCHMARKS=ON -DHIR_NATIVE=ON \
    -DHIR_BUILD_TESTS=OFF -DHIR_BUILD_EXAMPLES=OFF -DHIR_BUILD_APPS=OFF -DHIR_DEVICE_SYSTEM=OMP >"$OUT/configure.log"
  if ! cmake --build "$BUILD_DIR" --target bench_device_omp bench_device_cpu_peer -j"$JOBS" >"$OUT/build.log" 2>&1; then
    grep -E "error|Error" "$OUT/build.log" | head -30 >&2
    echo "build failed (see $OUT/build.log)" >&2
    exit 1
  fi
  {
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) CPUs"
    echo "load_start=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "settings=MIN_TIME=$MIN_TIME REPS=$REPS THREADS=\"$THREADS\" QUICK=${QUICK:-0}"
  } >"$OUT/run.txt"

  status=0
  run_bench() { # exe threads
    local exe="$BUILD_DIR/bench/device/$1"
    echo "== $1, OMP_NUM_THREADS=$2 (load $(cut -d' ' -f1 /proc/loadavg))" >&2
    local args=(--benchmark_min_time="$MIN_TIME" --benchmark_repetitions="$REPS" --benchmark_format=json
      --benchmark_out="$OUT/$1_t$2.json" --benchmark_out_format=json)
    [[ -n "$FILTER" ]] && args+=(--benchmark_filter="$FILTER")
    # OMP_WAIT_POLICY=passive: idle OpenMP threads sleep instead of spinning, so that on a shared machine a spinning
    # thread does not steal the core its partner needs; set for both executables alike.
    if ! OMP_NUM_THREADS="$2" OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}" OMP_PROC_BIND=false \
      "$exe" "${args[@]}" >"$OUT/$1_t$2.log" 2>&1; then
      echo "$1 (threads $2) failed: see $OUT/$1_t$2.log" >&2
      status=1
    fi
  }
  for t in $THREADS; do
    run_bench bench_device_omp "$t"
    run_bench bench_device_cpu_peer "$t"
  done
  echo "load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$OUT/run.txt"
  echo "wait_policy=${OMP_WAIT_POLICY:-passive}" >>"$OUT/run.txt"
  [[ $status == 0 ]] || echo "some runs failed; the table shows what came back" >&2
fi

if [[ ! -d "$OUT" ]]; then
  echo "no results in $OUT: run without REPORT_ONLY first" >&2
  exit 1
fi

/usr/bin/python3 - "$OUT" <<'PY'
import glob, json, os, re, sys
out = sys.argv[1]

info = {}
if os.path.exists(os.path.join(out, "run.txt")):
    for line in open(os.path.join(out, "run.txt")):
        k, _, v = line.strip().partition("=")
        info[k] = v

# best[(side, threads)][name without prefix] = the fastest repetition's record
best = {}
for path in sorted(glob.glob(os.path.join(out, "*.json"))):
    m = re.search(r"(bench_device_omp|bench_device_cpu_peer)_t(\d+)\.json$", path)
    if not m:
        continue
    side, threads = ("device" if m.group(1) == "bench_device_omp" else "cpu"), int(m.group(2))
    try:
        data = json.load(open(path))
    except (OSError, ValueError):
        print(f"(unreadable: {path})")
        continue
    table = best.setdefault((side, threads), {})
    for b in data.get("benchmarks", []):
        if b.get("run_type", "iteration") != "iteration" or "best_ms" not in b:
            continue
        name = re.sub(r"^BM_(Device|Cpu)", "", b.get("run_name", b["name"])).replace("/manual_time", "")
        if name not in table or b["best_ms"] < table[name]["best_ms"]:
            table[name] = b

def args(name):
    return dict(re.findall(r"(\w+):(\d+)", name))

def copy_gbps(side, threads, n):
    c = best.get((side, threads), {}).get(f"Copy/N:{n}")
    return c["best_GBps"] if c else None

def fmt(x, d=2, unit=""):
    return "–" if x is None else f"{x:.{d}f}{unit}"

def describe(name):
    a = args(name)
    algo = name.split("/")[0]
    if algo == "GroupAdvantages":
        return f"GRPO (verl_grpo), G = {a['G']}", f"N = {int(a['N']):,}"
    if algo == "ReinforcePP":
        return "REINFORCE++ (hir_paper_code)", f"{a['B']} × {a['L']}"
    if algo == "PolicyLoss":
        v = "fused validation" if a["fused"] == "1" else "validation before writing"
        return f"policy loss fwd+bwd (PPO clip + k3), {v}", f"{a['B']} × {a['L']}"
    if algo == "ConstraintNormalized":
        return f"GDPO (trl_gdpo), 6 constraints, G = {a['G']}", f"N = {int(a['N']):,}"
    if algo == "SelectReplays":
        kind = {"0": "top-K over the batch", "1": "top-k per prompt", "2": "even per prompt"}[a["alloc"]]
        return f"select_replays, {kind} (K = 2/prompt)", f"n = {int(a['n']):,}"
    if algo == "Copy":
        return "copy (reference)", f"N = {int(a['N']):,}"
    return algo, name

print(f"{info.get('date', '?')}; {info.get('cpu', '?')}; load average (1, 5, 15 min) {info.get('load_start', '?')} "
      f"at the start, {info.get('load_end', '?')} at the end; {info.get('settings', '')} "
      f"OMP_WAIT_POLICY={info.get('wait_policy', '?')}")
print("Device: bench_device_omp (hir::device, Thrust OMP); CPU: bench_device_cpu_peer (hir::cpu, same data). GB/s of "
      "the fastest iteration (thread CPU time on 1 thread, wall time on 2); copy = thrust::copy (device) or std::copy "
      "split over the threads (CPU) of N floats, 8 B per element, same process, same threads; select_replays in ms "
      "per call.\n")
print("| algorithm | size | threads | device-OMP | device copy GB/s (same run) | fraction of copy | CPU backend "
      "| CPU copy GB/s | CPU fraction of its copy | device / CPU |")
print("|---|---|---|---|---|---|---|---|---|---|")
threads_all = sorted({t for (_, t) in best})
names = []
for key in sorted(best):
    for name in best[key]:
        if name not in names:
            names.append(name)
order = ["Copy", "GroupAdvantages", "ReinforcePP", "PolicyLoss", "ConstraintNormalized", "SelectReplays"]
names.sort(key=lambda s: (order.index(s.split("/")[0]) if s.split("/")[0] in order else 99,
                          [int(v) for v in re.findall(r":(\d+)", s)]))
for name in names:
    if name.startswith("Copy/"):
        continue
    algo, size = describe(name)
    for t in threads_all:
        d = best.get(("device", t), {}).get(name)
        c = best.get(("cpu", t), {}).get(name)
        if d is None and c is None:
            continue
        n = int((d or c)["N"])
        if name.startswith("SelectReplays"):
            dv, cv = (d["best_ms"] if d else None), (c["best_ms"] if c else None)
            print(f"| {algo} | {size} | {t} | {fmt(dv, 1, ' ms')} | – | – | {fmt(cv, 1, ' ms')} | – | – | "
                  f"{fmt(cv / dv if dv and cv else None)} |")
            continue
        dg, cg = (d.get("best_GBps") if d else None), (c.get("best_GBps") if c else None)
        dc, cc = copy_gbps("device", t, n), copy_gbps("cpu", t, n)
        print(f"| {algo} | {size} | {t} | {fmt(dg, 2, ' GB/s')} | {fmt(dc)} | {fmt(dg / dc if dg and dc else None, 3)} | "
              f"{fmt(cg, 2, ' GB/s')} | {fmt(cc)} | {fmt(cg / cc if cg and cc else None, 3)} | "
              f"{fmt(dg / cg if dg and cg else None, 3)} |")
PY
